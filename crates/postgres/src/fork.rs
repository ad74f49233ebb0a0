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
}

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
/// the switch point, and the next line's timeline (or the file's own) started there.
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
    let edges = history_edges(history);
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
    // The parent's WAL ends before the switch point's segment (nothing to compare or leave
    // out), or retention collected it on purpose (no restore reaches it).
    if reach <= seg_start || signers.cutoff().collects(reach) {
        return Ok(None);
    }
    let left_out = |end: u64| {
        Some(Abandoned {
            timeline: child,
            parent,
            switch,
            parent_end: Lsn(end),
        })
    };
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
}
