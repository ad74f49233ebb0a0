//! Status figures of continuous WAL: per dataset and site, the last durable LSN and when it was
//! captured, and the lag behind the server in bytes and seconds. The agent and `embassy status`
//! call [`wal_status`].
//!
//! The newest WAL is judged by checked objects only: one whose bytes hash to the id in its name,
//! whose header matches its name, and whose signer may have signed it (a signer of the dataset
//! by the vault's signed configuration and ledger, keyless: [`wal::read_checked`]). A hostile
//! site can add objects named like later WAL; judged by names alone, one of them would move the
//! end as far as it likes (red team 7).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::id::ObjectId;
use embassy_core::site::Site;

use crate::error::Result;
use crate::lsn::Lsn;
use crate::replication::{ConnConfig, ReplicationConnection};
use crate::wal;

/// The newest WAL one site holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteWal {
    /// The site's location.
    pub site: String,
    /// Newest timeline there.
    pub timeline: u32,
    /// End of the newest durable WAL there.
    pub durable: Lsn,
    /// When that WAL was received (ns since the Unix epoch), 0 if unknown.
    pub captured_at_ns: i64,
}

/// Continuous-WAL status of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct WalStatus {
    /// The dataset.
    pub dataset: String,
    /// Per site (None when the site holds no WAL of the dataset or could not be read: see
    /// `errors`).
    pub sites: Vec<SiteWal>,
    /// Sites that could not be read, with why.
    pub errors: Vec<(String, String)>,
    /// The server's current WAL position, if it was asked.
    pub server_lsn: Option<Lsn>,
    /// Bytes of WAL the server has that the least advanced site does not.
    pub lag_bytes: Option<u64>,
    /// Seconds since the newest WAL durable on the least advanced site was received, when the
    /// server has more (0 when it has nothing more).
    pub lag_seconds: Option<f64>,
}

/// What the dataset's ledger holds, by its listing alone: the number of entry names and the
/// last of them. Objects are judged again when it changes (a signer added, revoked, fenced).
type LedgerMark = (usize, Option<String>);

fn ledger_mark(site: &dyn Site, dataset: &str) -> Result<LedgerMark> {
    let names = site.list(&embassy_core::format::layout::ledger_prefix(dataset))?;
    let last = names
        .iter()
        .map(|i| i.path.as_str())
        .max()
        .map(str::to_string);
    Ok((names.len(), last))
}

/// The newest checked WAL of one dataset at one site, asked again and again (the embassy node
/// asks every second): the ids of objects that checked out (with when their WAL was captured)
/// and of noise are remembered while the dataset's ledger does not change (one listing of its
/// names per look), so a look reads only objects it has not judged yet, and the ledger's
/// entries only when they changed.
#[derive(Debug, Default)]
pub struct CheckedWal {
    /// What the objects were judged by, and what was found.
    judged: Judged,
    /// The signers the objects were judged by (read again when the ledger changes).
    signers: Option<wal::WalSigners>,
    /// The ledger they were read from.
    ledger: Option<LedgerMark>,
}

/// Verdicts on WAL objects by one set of signers.
#[derive(Debug, Default)]
struct Judged {
    /// Objects that checked out, with their header's `captured_at_ns`.
    valid: HashMap<ObjectId, i64>,
    /// Objects that are noise (damaged, unsigned, signed by no signer of the dataset).
    noise: HashSet<ObjectId>,
}

impl Judged {
    /// The newest object of `listing` that checks out by `signers`: remembered verdicts first,
    /// the others read (newest first) until one checks out.
    fn newest(
        &mut self,
        location: &str,
        site: &dyn Site,
        listing: &wal::WalListing,
        signers: &wal::WalSigners,
    ) -> Result<Option<SiteWal>> {
        for candidate in listing.newest_first() {
            let id = candidate.name.id;
            let captured_at_ns = match self.valid.get(&id) {
                Some(at) => *at,
                None if self.noise.contains(&id) => continue,
                None => match wal::read_checked(site, candidate, signers) {
                    Ok((header, _)) => {
                        self.valid.insert(id, header.captured_at_ns);
                        header.captured_at_ns
                    }
                    Err(e) if wal::is_noise(&e) => {
                        self.noise.insert(id);
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            return Ok(Some(SiteWal {
                site: location.to_string(),
                timeline: candidate.name.timeline,
                durable: Lsn(candidate.name.end),
                captured_at_ns,
            }));
        }
        Ok(None)
    }
}

impl CheckedWal {
    /// Nothing judged yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The signers of `dataset`'s WAL and the verdicts by them: read again (with every verdict
    /// forgotten) when the ledger's listing changed since they were read (a signer added,
    /// revoked, fenced).
    fn judge(&mut self, vault: &Vault, dataset: &str) -> Result<(&wal::WalSigners, &mut Judged)> {
        let mark = ledger_mark(vault.site().as_ref(), dataset)?;
        if self.ledger.as_ref() != Some(&mark) {
            self.judged = Judged::default();
            self.signers = None;
            self.ledger = Some(mark);
        }
        let signers = match self.signers.take() {
            Some(signers) => signers,
            None => wal::dataset_signers(vault, dataset)?,
        };
        Ok((self.signers.insert(signers), &mut self.judged))
    }

    /// The signers `dataset`'s WAL is judged by (its ledger read once per change of the ledger).
    pub fn signers(&mut self, vault: &Vault, dataset: &str) -> Result<&wal::WalSigners> {
        Ok(self.judge(vault, dataset)?.0)
    }

    /// The newest checked WAL object of `dataset` at the vault's site, named `location` in the
    /// answer; None when the site holds no WAL of the dataset that checks out.
    pub fn newest(
        &mut self,
        location: &str,
        vault: &Vault,
        dataset: &str,
    ) -> Result<Option<SiteWal>> {
        let site = vault.site().as_ref();
        let listing = wal::list(site, dataset)?;
        if listing.newest().is_none() {
            return Ok(None);
        }
        let (signers, judged) = self.judge(vault, dataset)?;
        judged.newest(location, site, &listing, signers)
    }

    /// The content of `timeline`'s history file in the vault (decrypted with `keyring`),
    /// judged by the dataset's signers; None when the vault holds none that checks out.
    pub fn history(
        &mut self,
        vault: &Vault,
        keyring: &Keyring,
        dataset: &str,
        timeline: u32,
    ) -> Result<Option<String>> {
        let (signers, _) = self.judge(vault, dataset)?;
        let site = vault.site().as_ref();
        let listing = wal::list_histories(site, dataset, timeline)?;
        Ok(
            wal::history_file(site, keyring, &listing, timeline, signers)?
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        )
    }
}

/// The newest checked WAL object on the vault's site (see the module documentation), keyless:
/// the signers come from the vault's signed configuration and the dataset's ledger.
pub fn site_wal(location: &str, vault: &Vault, dataset: &str) -> Result<Option<SiteWal>> {
    let site = vault.site().as_ref();
    let listing = wal::list(site, dataset)?;
    if listing.newest().is_none() {
        return Ok(None);
    }
    let signers = wal::dataset_signers(vault, dataset)?;
    Judged::default().newest(location, site, &listing, &signers)
}

/// [`site_wal`] at `site`, judged by `signers` (the caller read the dataset's accepted
/// `history` already), with the WAL that history anchors and the site does not list
/// ([`wal::missing_anchored`]) and the anchored WAL a newer timeline leaves out
/// ([`wal::abandoned_anchored`]), one problem line each: a site that lost or withholds WAL in
/// the middle cannot restore past it, whatever its newest object says (red team 11).
pub fn site_wal_with(
    location: &str,
    site: &dyn Site,
    dataset: &str,
    signers: &wal::WalSigners,
    history: &[embassy_core::history::ledger::Record],
) -> Result<(Option<SiteWal>, Vec<String>)> {
    let listing = wal::list(site, dataset)?;
    let held: HashSet<ObjectId> = listing
        .pieces
        .iter()
        .chain(&listing.segments)
        .chain(&listing.histories)
        .map(|o| o.name.id)
        .collect();
    let segments: Vec<(u32, u64, u64)> = listing
        .segments
        .iter()
        .map(|o| (o.name.timeline, o.name.start, o.name.end))
        .collect();
    let mut missing =
        wal::missing_anchored(history, |id| held.contains(id), &segments, signers.cutoff());
    missing.extend(wal::abandoned_anchored(
        history,
        listing.pieces.iter().chain(&listing.segments),
        signers.cutoff(),
    ));
    let newest = Judged::default().newest(location, site, &listing, signers)?;
    Ok((newest, missing))
}

/// The server's current WAL position (`IDENTIFY_SYSTEM` over a replication connection).
pub fn server_lsn(conn: &ConnConfig) -> Result<Lsn> {
    let mut c = ReplicationConnection::connect(conn)?;
    let pos = c.identify_system()?.xlogpos;
    c.close();
    Ok(pos)
}

/// Status of `dataset` on each of `sites` (each judged by its own configuration and ledger); `server` (if given) is the source's current position.
pub fn wal_status(
    sites: &[(String, Arc<dyn Site>)],
    dataset: &str,
    server: Option<Lsn>,
) -> WalStatus {
    let mut out = WalStatus {
        dataset: dataset.to_string(),
        sites: Vec::new(),
        errors: Vec::new(),
        server_lsn: server,
        lag_bytes: None,
        lag_seconds: None,
    };
    for (location, site) in sites {
        let newest = Vault::open(site.clone())
            .map_err(crate::PgError::from)
            .and_then(|vault| site_wal(location, &vault, dataset));
        match newest {
            Ok(Some(s)) => out.sites.push(s),
            Ok(None) => out
                .errors
                .push((location.clone(), "holds no WAL of this dataset".into())),
            Err(e) => out.errors.push((location.clone(), e.to_string())),
        }
    }
    if let (Some(server), Some(least)) = (server, out.sites.iter().min_by_key(|s| s.durable)) {
        let lag = server.0.saturating_sub(least.durable.0);
        out.lag_bytes = Some(lag);
        let now = embassy_core::format::config::now_unix_nanos();
        out.lag_seconds = Some(if lag == 0 || least.captured_at_ns == 0 {
            0.0
        } else {
            (now - least.captured_at_ns).max(0) as f64 / 1e9
        });
    }
    out
}

/// Where a standby stands against the vault's newest timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// It follows (or will switch to) the vault's newest timeline: bytes of the vault's WAL it
    /// has not replayed along that timeline's history (never 0 while it is on an older
    /// timeline the vault's newest one has left).
    Follows {
        /// Bytes of durable WAL it has not replayed.
        lag_bytes: u64,
    },
    /// It can never follow the vault's newest timeline: its replay went past where that
    /// timeline left the standby's (or the standby's timeline is not in its history).
    /// PostgreSQL says so in its log ("new timeline N forked off current database system
    /// timeline T before current recovery point") and stays where it is.
    Diverged {
        /// The standby's timeline (as far as it is known).
        timeline: u32,
        /// Where the vault's newest timeline left it; None when it is not in its history.
        fork: Option<Lsn>,
    },
    /// Not known: the vault's newest timeline's history could not be read.
    Unknown(String),
}

/// The newest timeline a standby that replayed to `replay` can be on, from the names of the
/// WAL files in its `pg_wal` (`wal_files`): PostgreSQL keeps each segment it restored under its
/// name, which carries the timeline it read it as, so the segment holding the last byte it
/// replayed is there under its replay timeline (and, for a segment where it switched, under
/// the older one too: the newest counts). None when no such file is there.
pub fn replay_timeline<'a>(
    replay: Lsn,
    wal_files: impl IntoIterator<Item = &'a str>,
) -> Option<u32> {
    let segno = replay.0.checked_sub(1)? / crate::lsn::SEGMENT_SIZE;
    wal_files
        .into_iter()
        .filter_map(|name| match crate::lsn::parse_wal_file_name(name) {
            Ok(crate::lsn::WalFile::Segment { timeline, segno: s }) if s == segno => Some(timeline),
            _ => None,
        })
        .max()
}

/// Judges a standby that replayed to `replay` on a timeline from `lowest` to `target` (the
/// timeline of its last restartpoint or minimum recovery point, and the newest timeline its
/// replay can be on: [`replay_timeline`]) against the vault's newest checked WAL, `durable` on
/// `newest`, whose history file holds `history` (None when `newest` is 1 or it could not be
/// read).
///
/// PostgreSQL follows a newer timeline only when its replay is at or before where that
/// timeline left its own (`rescanLatestTimeLine`); LSNs run on across a switch, so the lag
/// along the newest timeline's history is `durable - replay`.
pub fn standing(
    lowest: u32,
    target: u32,
    replay: Lsn,
    newest: u32,
    durable: Lsn,
    history: Option<&str>,
) -> Standing {
    let target = target.max(lowest);
    if target >= newest {
        return Standing::Follows {
            lag_bytes: durable.0.saturating_sub(replay.0),
        };
    }
    let Some(history) = history else {
        return Standing::Unknown(format!(
            "the history file of the vault's newest timeline {newest} could not be read"
        ));
    };
    // Its replay timeline is somewhere from `lowest` to `target`: it can follow when the
    // newest timeline leaves any of them at or after its replay.
    let mut fork = None;
    for tl in (lowest..=target).rev() {
        if let Some((_, end)) = crate::replication::messages::timeline_fork(history, tl, newest) {
            if replay <= end {
                return Standing::Follows {
                    lag_bytes: durable.0.saturating_sub(replay.0).max(1),
                };
            }
            fork.get_or_insert((tl, end));
        }
    }
    match fork {
        Some((timeline, end)) => Standing::Diverged {
            timeline,
            fork: Some(end),
        },
        None => Standing::Diverged {
            timeline: target,
            fork: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HISTORY: &str = "1\t0/5000060\tno recovery target specified\n";

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn the_replay_timeline_is_that_of_the_wal_file_it_replays_from() {
        // Replayed into segment 4 of timeline 1 (recycled files ahead carry its timeline).
        let files = [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000005",
            "00000002.history",
        ];
        assert_eq!(replay_timeline(lsn("0/445AB90"), files), Some(1));
        // Switched to timeline 2 in segment 3 and replaying segment 4 of timeline 2.
        let files = [
            "000000010000000000000003",
            "000000020000000000000003",
            "000000020000000000000004",
            "000000010000000000000005",
        ];
        assert_eq!(replay_timeline(lsn("0/3000200"), files), Some(2));
        assert_eq!(replay_timeline(lsn("0/4000100"), files), Some(2));
        // The last byte replayed ends a segment: that segment.
        assert_eq!(replay_timeline(lsn("0/4000000"), files), Some(2));
        assert_eq!(replay_timeline(lsn("0/7000100"), files), None);
    }

    #[test]
    fn a_standby_on_the_vaults_timeline_lags_by_bytes() {
        let s = standing(2, 2, lsn("0/6000000"), 2, lsn("0/6000100"), Some(HISTORY));
        assert_eq!(s, Standing::Follows { lag_bytes: 0x100 });
        // Caught up: no lag.
        let s = standing(1, 1, lsn("0/6000100"), 1, lsn("0/6000100"), None);
        assert_eq!(s, Standing::Follows { lag_bytes: 0 });
    }

    #[test]
    fn a_standby_before_the_fork_follows_and_is_never_shown_caught_up() {
        // Replayed to before the fork: it switches; the lag runs across the switch.
        let s = standing(1, 1, lsn("0/5000000"), 2, lsn("0/5001000"), Some(HISTORY));
        assert_eq!(s, Standing::Follows { lag_bytes: 0x1000 });
        // At the fork point itself: still follows (PostgreSQL's rule is "forked before").
        let s = standing(1, 1, lsn("0/5000060"), 2, lsn("0/5000060"), Some(HISTORY));
        assert_eq!(s, Standing::Follows { lag_bytes: 1 });
    }

    #[test]
    fn a_standby_past_the_fork_on_the_old_timeline_has_diverged() {
        // Past the fork, and past the vault's end too (the red team's "lag 0").
        let s = standing(1, 1, lsn("0/9000000"), 2, lsn("0/5002000"), Some(HISTORY));
        assert_eq!(
            s,
            Standing::Diverged {
                timeline: 1,
                fork: Some(lsn("0/5000060"))
            }
        );
        // Past the fork and short of the vault's end: diverged all the same.
        let s = standing(1, 1, lsn("0/5000100"), 2, lsn("0/7000000"), Some(HISTORY));
        assert!(matches!(s, Standing::Diverged { .. }), "{s:?}");
        // A timeline the vault's newest does not descend from.
        let s = standing(3, 3, lsn("0/5000000"), 4, lsn("0/7000000"), Some(HISTORY));
        assert_eq!(
            s,
            Standing::Diverged {
                timeline: 3,
                fork: None
            }
        );
        // Its target accepted the newest timeline: it follows.
        let s = standing(1, 2, lsn("0/5000100"), 2, lsn("0/7000000"), Some(HISTORY));
        assert!(matches!(s, Standing::Follows { .. }), "{s:?}");
        // The newest timeline's history unread: not known, never "caught up".
        let s = standing(1, 1, lsn("0/9000000"), 2, lsn("0/5002000"), None);
        assert!(matches!(s, Standing::Unknown(_)), "{s:?}");
    }
}
