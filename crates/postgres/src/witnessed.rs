//! The base backup a restore under the witness quorum starts from: the newest one that reaches
//! the target; when that one is not witnessed yet, the newest witnessed one from which the
//! vault's streamed WAL reaches the same point (issue 16: `restore --latest` refused although
//! the previous witnessed base backup and the same WAL got there).

use embassy_core::engine::vault::{Vault, Version};

use crate::base_backup::BaseBackupInfo;
use crate::error::PgError;
use crate::target::{reaches, RecoveryTarget};
use crate::wal::WalListing;

/// A restore that started from an older, witnessed base backup because the newest one that
/// reaches the target is not witnessed yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FellBack {
    /// The number of the newer base backup passed over.
    pub skipped: u64,
    /// Why, in words (for stderr and `--json`).
    pub reason: String,
}

/// The trusted version of `chosen` (the newest base backup reaching `target`), or, when it is
/// not witnessed yet and `allow_unwitnessed` is off, the newest older base backup that is
/// witnessed, reaches the target too, and from which the streamed WAL runs without a gap to
/// `chosen`'s end: with what was passed over.
pub fn trusted_base_backup(
    vault: &Vault,
    dataset: &str,
    backups: &[(Version, BaseBackupInfo)],
    chosen: &(Version, BaseBackupInfo),
    target: &RecoveryTarget,
    allow_unwitnessed: bool,
) -> Result<(Version, BaseBackupInfo, Option<FellBack>), PgError> {
    let trusted = |v: &Version| {
        // By its ledger entry's id: exact, whatever numbers the selector grammar gives.
        vault.find_trusted_version(dataset, Some(&v.ledger_id.to_hex()), allow_unwitnessed)
    };
    let unwitnessed = match trusted(&chosen.0) {
        Ok(version) => return Ok((version, chosen.1.clone(), None)),
        Err(e @ embassy_core::Error::Unwitnessed { .. }) => e,
        Err(e) => return Err(PgError::Vault(e)),
    };
    let listing = crate::wal::list(vault.site().as_ref(), dataset)?;
    let (skipped, newest) = chosen;
    for (older, info) in backups.iter().rev().filter(|(v, _)| v.seq < skipped.seq) {
        if !reaches(info, target) || info.timeline != newest.timeline {
            continue;
        }
        // Its own WAL runs to its stop when inside it; the stream must carry it from there
        // (or from its start) past the newer backup's end, so recovery gets as far.
        let from = if info.wal_included {
            info.stop_lsn.0
        } else {
            info.start_lsn.0
        };
        if !streamed_covers(&listing, info.timeline, from, newest.stop_lsn.0) {
            continue;
        }
        let Ok(version) = trusted(older) else {
            continue;
        };
        let reason = format!(
            "base backup version {} of {dataset} is not witnessed yet: restoring from version \
             {}, the newest witnessed base backup, whose streamed WAL reaches the same point",
            skipped.number, version.number
        );
        return Ok((
            version,
            info.clone(),
            Some(FellBack {
                skipped: skipped.number,
                reason,
            }),
        ));
    }
    Err(PgError::Vault(unwitnessed))
}

/// True when the streamed WAL of `timeline` (pieces and segments) runs without a gap from
/// `from` to at least `to`.
fn streamed_covers(listing: &WalListing, timeline: u32, from: u64, to: u64) -> bool {
    let mut spans: Vec<(u64, u64)> = listing
        .pieces
        .iter()
        .chain(listing.segments.iter())
        .filter(|o| o.name.timeline == timeline)
        .map(|o| (o.name.start, o.name.end))
        .collect();
    spans.sort_unstable();
    let mut reached = from;
    for (start, end) in spans {
        if start > reached {
            break;
        }
        reached = reached.max(end);
    }
    reached >= to
}
