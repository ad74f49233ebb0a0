//! Whether a timeline leaves out acknowledged WAL of its parent, judged exactly (with a key
//! that reads the WAL): the check a restore of a dataset makes before it follows the newest
//! timeline (red teams 11 and 12).
//!
//! A new timeline forks off its parent at the switch point its history file names (the end of
//! the last record the promoted server replayed). When the parent's WAL in the vault holds a
//! complete record ending after that point, the new timeline leaves it out, and a restore that
//! follows it loses what the record held: acknowledged commits. A takeover that an authoritative
//! `promoted` entry records decided that (`promote --accept-data-loss`); anything else is a
//! failover that dropped acknowledged commits, or a credential that signs the dataset's WAL
//! (stolen, still valid) forking the history from an older copy of the database. Keyless
//! `verify` and `status` see such a fork only when it reaches back past the parent's last
//! anchored segment ([`crate::wal::abandoned_anchored`]); this judge reads the parent's last
//! segments and walks their records, so a fork a few records back is caught too.

use embassy_core::engine::vault::{Keyring, Vault};

use crate::error::Result;
use crate::lsn::{Lsn, SEGMENT_SIZE};
use crate::wal::{self, WalListing, WalSigners};
use crate::walend;

/// Past this many segments between the switch point and the parent's reach the records are
/// not walked: WAL that far past the switch point is left out whatever it holds.
const MAX_WALKED_SEGMENTS: u64 = 4;

/// A timeline that leaves out WAL its parent holds, with nothing that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abandoned {
    /// The timeline that leaves it out.
    pub timeline: u32,
    /// The timeline it forked off.
    pub parent: u32,
    /// Where it forked off (its history file's switch point).
    pub switch: Lsn,
    /// Where the parent's left-out WAL ends: the end of its last complete record, or how far
    /// its stored WAL reaches when the records were not walked.
    pub parent_end: Lsn,
    /// Why the fork is not followed.
    pub why: Why,
}

/// Why a fork is not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The parent's WAL holds records the fork leaves out (or it cannot be read to tell).
    LeavesOut,
    /// The parent's WAL in the vault ends before the segment of the switch point the history
    /// file names: nothing shows the fork started where it says.
    Unchecked,
    /// The history file is not written the way PostgreSQL writes it.
    NotPostgresFormat,
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.why {
            Why::LeavesOut => {}
            Why::Unchecked => {
                return write!(
                    f,
                    "timeline {} forked off timeline {} at {}, but the vault holds timeline \
                     {}'s WAL only up to {}, not into that point's segment: nothing in the \
                     vault shows where timeline {} really parted, and no takeover (an authoritative \
                     promotion) decided it",
                    self.timeline,
                    self.parent,
                    self.switch,
                    self.parent,
                    self.parent_end,
                    self.timeline
                )
            }
            Why::NotPostgresFormat => {
                return write!(
                    f,
                    "the history file of timeline {} is not written the way PostgreSQL writes \
                     it (timeline, tab, upper-case LSN without leading zeros, increasing \
                     timelines): PostgreSQL and this check could read it differently, so timeline \
                     {} is not followed unasked",
                    self.timeline, self.timeline
                )
            }
        }
        write!(
            f,
            "timeline {} forked off timeline {} at {}, but the vault holds timeline {}'s WAL up \
             to {}: following timeline {} leaves out those acknowledged records, and no takeover \
             (an authoritative promotion) decided it",
            self.timeline, self.parent, self.switch, self.parent, self.parent_end, self.timeline
        )
    }
}

/// The `(timeline, switch point)` lines of a history file, oldest first: timeline `t` ended at
/// the switch point, and the next line's timeline (or the file's own) started there. Lenient:
/// lines that do not parse are passed over (for reading a server's own history).
pub fn history_edges(history: &str) -> Vec<(u32, Lsn)> {
    history
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.parse().ok()?, cols.next()?.parse().ok()?))
        })
        .collect()
}

/// The lines of the history file of `timeline` exactly as PostgreSQL writes them
/// (`%u\t%X/%X\t<reason>`: a timeline from 1, upper-case hexadecimal without leading zeros,
/// timelines increasing and below `timeline`; blank lines and `#` comments passed over), oldest
/// first; None when any line is written otherwise. PostgreSQL reads such files with `sscanf`,
/// which also takes `0x` prefixes, leading zeros, overflowing numbers and timeline 0: a file
/// that PostgreSQL and the fork judge would read differently is not judged but refused (red
/// team 14).
pub fn strict_history_edges(history: &str, timeline: u32) -> Option<Vec<(u32, Lsn)>> {
    fn hex(part: &str) -> Option<u32> {
        let canonical = part == "0"
            || (!part.is_empty()
                && part.len() <= 8
                && !part.starts_with('0')
                && part
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)));
        canonical.then(|| u32::from_str_radix(part, 16).ok())?
    }
    // PostgreSQL reads the file in lines of at most 1023 bytes (`fgets` into MAXPGPATH): a
    // longer line, comment or not, goes on as another line it reads and this would not (red
    // team 15). Carriage returns and NUL bytes are not PostgreSQL's either.
    if history
        .split('\n')
        .any(|l| l.len() >= 1023 || l.contains(['\r', '\0']))
    {
        return None;
    }
    let mut edges: Vec<(u32, Lsn)> = Vec::new();
    for line in history.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut cols = line.splitn(3, '\t');
        let tli = cols.next()?;
        let lsn = cols.next()?;
        if tli.is_empty() || tli.starts_with('0') || !tli.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let tli: u32 = tli.parse().ok()?;
        let (hi, lo) = lsn.split_once('/')?;
        let at = Lsn((u64::from(hex(hi)?) << 32) | u64::from(hex(lo)?));
        if edges.last().is_some_and(|&(prev, _)| prev >= tli) || tli >= timeline {
            return None;
        }
        edges.push((tli, at));
    }
    Some(edges)
}

/// The first fork in the lineage of `timeline` (whose history file holds `history`), newest
/// first, that leaves out complete WAL records its parent holds in the vault, unless a takeover
/// decided it: a timeline an authoritative `promoted` entry names is followed, with everything
/// its own history holds. None when every fork is whole or decided.
pub fn abandoned(
    vault: &Vault,
    keyring: &Keyring,
    listing: &WalListing,
    signers: &WalSigners,
    timeline: u32,
    history: &str,
) -> Result<Option<Abandoned>> {
    let Some(edges) = strict_history_edges(history, timeline) else {
        return Ok(Some(Abandoned {
            timeline,
            parent: timeline.saturating_sub(1),
            switch: Lsn(0),
            parent_end: Lsn(0),
            why: Why::NotPostgresFormat,
        }));
    };
    let children = edges
        .iter()
        .skip(1)
        .map(|&(t, _)| t)
        .chain(std::iter::once(timeline));
    let forks: Vec<(u32, Lsn, u32)> = edges
        .iter()
        .zip(children)
        .map(|(&(parent, switch), child)| (parent, switch, child))
        .collect();
    for &(parent, switch, child) in forks.iter().rev() {
        if signers.authority().decided(child) {
            return Ok(None);
        }
        if let Some(a) = judge_fork(vault, keyring, listing, signers, parent, switch, child)? {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// Whether `child`, forking off `parent` at `switch`, leaves out complete records of the
/// parent's WAL: how far the parent's WAL reaches (its furthest anchor, or its furthest object
/// that checks out); then the child's copy of its parent's WAL in the switch point's segment
/// (a promoted server starts its new timeline's first segment with the old one's bytes up to
/// the switch point), which must equal the parent's: a history file naming a later switch point
/// than where the child's WAL really parts would make recovery replay the child's records as
/// the parent's; then the parent's records from the switch point's segment up to its reach.
fn judge_fork(
    vault: &Vault,
    keyring: &Keyring,
    listing: &WalListing,
    signers: &WalSigners,
    parent: u32,
    switch: Lsn,
    child: u32,
) -> Result<Option<Abandoned>> {
    let site = vault.site().as_ref();
    let mut reach = signers
        .authority()
        .anchors()
        .iter()
        .filter(|a| a.timeline == parent)
        .map(|a| a.end)
        .max()
        .unwrap_or(0);
    for o in listing
        .newest_first()
        .into_iter()
        .filter(|o| o.name.timeline == parent && o.name.end > reach)
    {
        match wal::read_checked(site, o, signers) {
            Ok(_) => {
                reach = o.name.end;
                break;
            }
            Err(e) if wal::is_noise(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let first = switch.0 / SEGMENT_SIZE;
    let seg_start = first * SEGMENT_SIZE;
    // The vault never held the parent's WAL (streaming began on a later timeline), or
    // retention collected it on purpose: nothing a restore could reach is left out.
    if reach == 0 || signers.cutoff().collects(reach) {
        return Ok(None);
    }
    let left_out = |end: u64| {
        Some(Abandoned {
            timeline: child,
            parent,
            switch,
            parent_end: Lsn(end),
            why: Why::LeavesOut,
        })
    };
    // The parent's WAL ends at or before the start of the switch point's segment: no copy to
    // compare, so a history file could name any later switch point (red team 14). A streamer
    // that follows the new primary stores the parent's WAL up to the switch point first, so an
    // honest fork reaches here only when the vault lost the parent's last WAL, or when the
    // switch point is a segment's start (a standby promoted right after replaying a segment
    // switch). That one is refused too: the parent's bytes before it can be a credential's that
    // signs the dataset's WAL, a segment switch record included (red teams 15 and 16), and
    // nothing else in the vault shows where the child parted.
    if reach <= seg_start {
        return Ok(Some(Abandoned {
            timeline: child,
            parent,
            switch,
            parent_end: Lsn(reach),
            why: Why::Unchecked,
        }));
    }
    let last = (reach - 1) / SEGMENT_SIZE;
    if last - first >= MAX_WALKED_SEGMENTS {
        return Ok(left_out(reach));
    }
    let mut bytes = Vec::new();
    for segno in first..=last {
        match wal::assemble_segment(site, keyring, listing, parent, segno, signers)? {
            Some(a) if a.complete || segno == last => bytes.extend_from_slice(&a.bytes),
            // The parent's WAL there cannot be read whole: judged by its reach.
            _ => return Ok(left_out(reach)),
        }
    }
    // A site that withholds the parent's WAL the ledger anchors must not shorten the walk.
    if (bytes.len() as u64) < reach - seg_start {
        return Ok(left_out(reach));
    }
    // The child's copy of the parent's bytes before the switch point.
    let copied = usize::try_from(switch.0.min(reach) - seg_start).unwrap_or(usize::MAX);
    if copied > 0 {
        let same = match wal::assemble_segment(site, keyring, listing, child, first, signers)? {
            Some(c) => {
                c.bytes.len() >= copied
                    && bytes.len() >= copied
                    && c.bytes[..copied] == bytes[..copied]
            }
            None => false,
        };
        if !same {
            return Ok(left_out(reach));
        }
    }
    if reach <= switch.0 {
        return Ok(None);
    }
    Ok(match walend::last_data_end(&bytes, seg_start, reach) {
        Ok(Some(end)) if end > switch.0 => left_out(end),
        Ok(_) => None,
        Err(walend::NotWal) => left_out(reach),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_file_lists_each_ancestor_and_where_it_ended() {
        let history = "1\t0/3000A28\tno recovery target specified\n\n# note\n\
                       2\t0/5000060\tbefore 2026-12-07\n";
        assert_eq!(
            history_edges(history),
            vec![
                (1, "0/3000A28".parse().unwrap()),
                (2, "0/5000060".parse().unwrap())
            ]
        );
        assert!(history_edges("garbage\n").is_empty());
    }

    /// Only what PostgreSQL itself writes is judged: spellings that its `sscanf` reads one way
    /// and a parser another are refused (red team 14).
    #[test]
    fn a_history_file_is_judged_only_as_postgresql_writes_it() {
        let ok = "1\t0/3000A28\tno recovery target specified\n\n# c\n2\t1/5000060\tx\n";
        assert_eq!(
            strict_history_edges(ok, 3),
            Some(vec![(1, Lsn(0x3000A28)), (2, Lsn(0x1_0500_0060))])
        );
        assert_eq!(strict_history_edges("", 2), Some(vec![]));
        for bad in [
            "1\t0x0/0x40001D8\tx\n",
            "1\t0/0040001D8\tx\n",
            "0\t0/40001D8\tx\n",
            "01\t0/40001D8\tx\n",
            "1\t0/40001d8\tx\n",
            "1 0/40001D8 x\n",
            "4294967297\t0/40001D8\tx\n",
            "1\t100000000/0\tx\n",
            "2\t0/1\tx\n1\t0/2\tx\n",
            "1\t0/40001D8\tx\n",
            &format!("#{}1\t0/40001D8\tx\n", "x".repeat(1022)),
            &format!("1\t0/3000A28\t{}\n", "r".repeat(1100)),
            "1\t0/3000A28\tx\r\n",
            "1\t0/3000A28\tx\0\n",
        ] {
            let child = if bad.starts_with("1\t0/40001D8") {
                1
            } else {
                3
            };
            assert_eq!(strict_history_edges(bad, child), None, "{bad:?}");
        }
    }

    /// The judge against a real vault in a local folder holding synthetic WAL: timeline 2
    /// forks off timeline 1 at the switch point its history file names.
    mod judged {
        use std::sync::Arc;

        use embassy_core::engine::vault::{Keyring, Vault};
        use embassy_core::format::config::VaultConfig;
        use embassy_core::format::wal_log::{LogKind, LogSpec};
        use embassy_core::id::ObjectId;
        use embassy_core::keys::RootSecret;
        use embassy_core::site::Site;
        use embassy_sites::LocalSite;

        use super::super::*;
        use crate::walend::tests::{wal_at, RM_HEAP};
        use crate::walend::{RM_XACT, RM_XLOG, XLOG_SWITCH};

        const DS: &str = "registry";
        const SEG: u64 = SEGMENT_SIZE;
        /// `xl_info` of a commit record (`XLOG_XACT_COMMIT`).
        const COMMIT: u8 = 0x00;

        struct World {
            _dir: tempfile::TempDir,
            vault: Vault,
            keyring: Keyring,
        }

        impl World {
            fn new() -> Self {
                let dir = tempfile::tempdir().unwrap();
                let site: Arc<dyn Site> =
                    Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
                let root = RootSecret::generate();
                VaultConfig::new(&root)
                    .create(site.as_ref(), &root)
                    .unwrap();
                let vault = Vault::open(site).unwrap();
                let keyring =
                    Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config())
                        .unwrap();
                Self {
                    _dir: dir,
                    vault,
                    keyring,
                }
            }

            /// Stores `bytes` as WAL of `timeline` from `start`, signed by the vault's writer;
            /// returns the object's id.
            fn put(&self, timeline: u32, start: u64, bytes: &[u8]) -> ObjectId {
                let end = start + bytes.len() as u64;
                let kind = if start.is_multiple_of(SEG) && end - start == SEG {
                    LogKind::Segment
                } else {
                    LogKind::Piece
                };
                let spec = LogSpec {
                    kind,
                    timeline,
                    start,
                    end,
                    prev: None,
                    captured_at_ns: 1,
                    system_id: 7,
                };
                let keys = self.keyring.dataset_at(DS, 0).unwrap();
                let signer = self.keyring.signer().unwrap();
                wal::put(self.vault.site().as_ref(), &keys, &signer, &spec, bytes)
                    .unwrap()
                    .0
            }

            /// Anchors object `id` (WAL of `timeline` from `start` to `end`) by a ledger entry
            /// of the vault's writer.
            fn anchor(&self, id: ObjectId, timeline: u32, (start, end): (u64, u64)) {
                use embassy_core::history::ledger::{self, Event};
                let history = self.vault.history(DS).unwrap();
                ledger::append(
                    self.vault.site().as_ref(),
                    &self.keyring.signer().unwrap(),
                    DS,
                    history.last(),
                    Event::LogRangeAdded {
                        manifest: id,
                        timeline,
                        start,
                        end,
                        captured_at_ns: 1,
                        history: None,
                    },
                )
                .unwrap();
            }

            /// Segment 3 of timeline 1 as readers assemble it.
            fn assemble(&self) -> Result<Option<wal::Assembled>> {
                let site = self.vault.site().as_ref();
                let listing = wal::list(site, DS).unwrap();
                let signers = wal::dataset_signers(&self.vault, DS).unwrap();
                wal::assemble_segment(site, &self.keyring, &listing, 1, 3, &signers)
            }

            /// The judge's verdict on timeline 2 forking off timeline 1 at `switch`.
            fn judge(&self, switch: u64) -> Option<Abandoned> {
                let site = self.vault.site().as_ref();
                let listing = wal::list(site, DS).unwrap();
                let signers = wal::dataset_signers(&self.vault, DS).unwrap();
                let history = format!("1\t{}\tno recovery target specified\n", Lsn(switch));
                abandoned(&self.vault, &self.keyring, &listing, &signers, 2, &history).unwrap()
            }
        }

        /// The child's first segment: the parent's bytes up to the switch point, then its own.
        fn child_copy(parent: &[u8], upto: usize) -> Vec<u8> {
            let mut bytes = parent[..upto].to_vec();
            bytes.extend_from_slice(&[0x5A; 200]);
            bytes
        }

        /// Past the switch point only records that make no transaction durable (a row of a
        /// transaction that never committed, a checkpoint): followed. A commit past it: left
        /// out, up to the commit's end. A child whose copy of the parent's bytes differs before
        /// the switch point (a history file naming a later switch point than the real one):
        /// left out up to the parent's reach.
        #[test]
        fn a_commit_past_the_switch_point_is_left_out_and_other_records_are_not() {
            let s = 3 * SEG;
            let (parent, starts) = wal_at(
                s,
                0,
                &[
                    (64, COMMIT, RM_XACT),
                    (96, 0, RM_HEAP),
                    (120, 0, RM_XLOG),
                    (56, 0x10, RM_XACT),
                ],
            );
            let switch = starts[0] + 64;
            let quiet = usize::try_from(starts[2] + 120).unwrap();
            let w = World::new();
            w.put(1, s, &parent[..quiet]);
            w.put(2, s, &child_copy(&parent, switch as usize));
            assert_eq!(w.judge(s + switch), None);

            // The prepare record past the switch point reaches the vault too.
            w.put(1, s + quiet as u64, &parent[quiet..]);
            let verdict = w
                .judge(s + switch)
                .expect("a prepare past the switch point");
            assert_eq!(verdict.why, Why::LeavesOut);
            assert_eq!(
                (verdict.timeline, verdict.parent, verdict.switch),
                (2, 1, Lsn(s + switch))
            );
            assert_eq!(verdict.parent_end, Lsn(s + starts[3] + 56));

            // A child that parted earlier than its history file says.
            let w = World::new();
            w.put(1, s, &parent[..quiet]);
            let mut forged = child_copy(&parent, switch as usize);
            forged[usize::try_from(starts[0]).unwrap() + 30] ^= 1;
            w.put(2, s, &forged);
            let verdict = w.judge(s + switch).expect("a copy that differs");
            assert_eq!(verdict.why, Why::LeavesOut);
            assert_eq!(verdict.parent_end, Lsn(s + quiet as u64));
            // No copy at all.
            let w = World::new();
            w.put(1, s, &parent[..quiet]);
            assert_eq!(w.judge(s + switch).map(|a| a.why), Some(Why::LeavesOut));
        }

        /// A parent whose WAL in the vault ends at or before the start of the switch point's
        /// segment is refused as unchecked (red team 14), also when it ends exactly there with
        /// a segment switch record: a credential that signs the dataset's WAL can store that
        /// record after the last real one (red team 16); a parent the vault never held leaves
        /// nothing out.
        #[test]
        fn a_switch_point_at_or_past_the_parents_end_is_unchecked() {
            let s = 3 * SEG;
            let (mut switched, _) =
                wal_at(s, 0, &[(64, COMMIT, RM_XACT), (32, XLOG_SWITCH, RM_XLOG)]);
            switched.resize(SEG as usize, 0);
            let (mut committed, _) = wal_at(s, 0, &[(64, COMMIT, RM_XACT), (48, COMMIT, RM_XACT)]);
            committed.resize(SEG as usize, 0);

            // A parent that ends within segment 3; a switch point named in segment 5.
            let w = World::new();
            w.put(1, s, &committed[..4096]);
            let verdict = w.judge(5 * SEG + 0x28).expect("a later switch point");
            assert_eq!(verdict.why, Why::Unchecked);
            assert_eq!(verdict.parent_end, Lsn(s + 4096));
            assert!(verdict
                .to_string()
                .contains("not into that point's segment"));
            // Named at the next segment's start: not ended by a switch there either.
            assert_eq!(w.judge(4 * SEG).map(|a| a.why), Some(Why::Unchecked));

            // The whole segment 3, ended by a segment switch record: a fork at 4's start, or at
            // any other point of segment 4 or later, is unchecked.
            let w = World::new();
            w.put(1, s, &switched);
            assert_eq!(w.judge(4 * SEG).map(|a| a.why), Some(Why::Unchecked));
            assert_eq!(w.judge(4 * SEG + 0x28).map(|a| a.why), Some(Why::Unchecked));
            assert_eq!(w.judge(5 * SEG).map(|a| a.why), Some(Why::Unchecked));

            // The whole segment 3 ending with a commit and padding: unchecked.
            let w = World::new();
            w.put(1, s, &committed);
            let verdict = w.judge(4 * SEG).expect("no switch record");
            assert_eq!(
                (verdict.why, verdict.parent_end),
                (Why::Unchecked, Lsn(4 * SEG))
            );

            // Streaming began on timeline 2: nothing of timeline 1 to leave out.
            let w = World::new();
            w.put(2, 4 * SEG, &switched[..4096]);
            assert_eq!(w.judge(4 * SEG), None);
        }

        /// Two valid objects of one timeline over the same range: honest copies hold the same
        /// bytes and are served; other bytes are a fork inside the timeline and neither is
        /// served, so neither the judge nor a restore reads a thief's copy of anchored WAL (red
        /// team 17).
        #[test]
        fn objects_of_one_timeline_that_disagree_are_refused() {
            let s = 3 * SEG;
            let (wal, _) = wal_at(s, 0, &[(64, COMMIT, RM_XACT), (96, 0, RM_HEAP)]);
            let w = World::new();
            w.put(1, s, &wal[..100]);
            w.put(1, s, &wal);
            let whole = w.assemble().unwrap().unwrap();
            assert_eq!(whole.bytes, wal);

            let mut other = wal.clone();
            other[90] ^= 1;
            w.put(1, s, &other[..120]);
            let err = w.assemble().unwrap_err().to_string();
            assert!(
                err.contains(
                    "two valid WAL objects of timeline 1 hold different bytes at 0/300005A: a fork"
                ),
                "{err}"
            );
        }

        /// Whatever the ledger anchors, and in whichever order, objects that disagree are never
        /// served: anchors cannot say which is real (red team 18: a thief anchored first a whole
        /// segment the streamer had not written yet, or anchored an honest piece again to lower
        /// its standing, and readers that trusted the anchors' order served the thief's bytes).
        #[test]
        fn no_anchor_makes_one_of_two_disagreeing_objects_served() {
            let s = 3 * SEG;
            let (wal, _) = wal_at(s, 0, &[(64, COMMIT, RM_XACT), (96, 0, RM_HEAP)]);
            let mut thief = wal.clone();
            thief[90] ^= 1;
            thief.resize(SEG as usize, 0);
            for thief_first in [false, true] {
                let w = World::new();
                let (honest_range, thief_range) = ((s, s + wal.len() as u64), (s, s + SEG));
                if thief_first {
                    let forged = w.put(1, s, &thief);
                    w.anchor(forged, 1, thief_range);
                }
                let honest = w.put(1, s, &wal);
                w.anchor(honest, 1, honest_range);
                if !thief_first {
                    let forged = w.put(1, s, &thief);
                    w.anchor(forged, 1, thief_range);
                    // The honest piece anchored again, after the thief's.
                    w.anchor(honest, 1, honest_range);
                }
                let err = w.assemble().unwrap_err().to_string();
                assert!(err.contains("hold different bytes at 0/300005A"), "{err}");
            }
        }
    }
}
