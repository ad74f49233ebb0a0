//! Before a standby is promoted: has it replayed the WAL the vault holds durably?
//!
//! The vault's ledger anchors streamed WAL (`log_range_added` entries, signed by the streamer):
//! that end is known to every site that serves the ledger and to this machine's remembered
//! heads, even when a site withholds the WAL objects themselves (a hostile or damaged site).
//! The streamer anchors only every minute and at each whole segment, so the commits it
//! acknowledged since are in signed WAL objects newer than the last anchor: the durable end is
//! the further of the two. A standby that has not replayed up to it would go live at an older
//! state, silently dropping acknowledged commits; [`check`] refuses that unless the operator
//! accepts the loss, which the `promoted` entry then records.

use std::collections::HashSet;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::history::ledger::{Event, Record};
use embassy_core::id::ObjectId;

use crate::error::PgError;
use crate::walend::DurableWal;
use crate::Lsn;

/// The end of the WAL the ledger anchors: the highest timeline with an anchor, and the end of
/// its furthest anchor. None when no WAL was streamed.
pub fn anchored_end(records: &[Record]) -> Option<(u32, Lsn)> {
    records
        .iter()
        .filter(|r| r.refused.is_none())
        .filter_map(|r| match &r.entry.event {
            Event::LogRangeAdded { timeline, end, .. } => Some((*timeline, Lsn(*end))),
            _ => None,
        })
        .max()
}

/// Whether a standby that replayed to `replay` holds all the WAL known stored up to `known`:
/// at or past it; or, when the sites serve WAL without a gap to `reachable` at or past it and
/// its last complete record (`last_record`, starting there) begins before `known`, past that
/// record's start (the bytes after it are a record no server can replay yet).
pub fn replayed_enough(
    replay: Lsn,
    known: Lsn,
    reachable: Option<Lsn>,
    last_record: Option<Lsn>,
) -> bool {
    if replay >= known {
        return true;
    }
    match (reachable, last_record) {
        (Some(reachable), Some(last)) => reachable >= known && last < known && replay > last,
        _ => false,
    }
}

/// Compares the standby's replay position `replay` with the newest WAL of `dataset` the vault
/// holds durably: the end of the WAL the ledger anchors, or further, the signed WAL the sites
/// serve without a gap after it ([`crate::walend::durable_wal`]: the streamer anchors its tail
/// only every minute, and the commits it acknowledged since are there). `valid` remembers the
/// objects that checked out between calls. `Ok(None)`: the standby holds all of it (or nothing
/// was streamed). Behind it: refused, naming both positions and why, unless
/// `accept_data_loss`, then `Ok(Some(durable end))` for the `promoted` entry to record.
pub fn check(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    (data_dir, replay): (&std::path::Path, Lsn),
    accept_data_loss: bool,
    valid: &mut HashSet<ObjectId>,
) -> Result<Option<Lsn>, PgError> {
    let records = vault.history(dataset).map_err(PgError::Vault)?;
    let anchored = anchored_end(&records);
    // What the sites hold; when they cannot be read at all, the ledger's anchor alone.
    let durable = match crate::walend::durable_wal(vault, dataset, anchored, valid) {
        Ok(d) => d,
        Err(_) => anchored.map(|(timeline, end)| DurableWal {
            timeline,
            reachable: Lsn(0),
            known: (timeline, end),
        }),
    };
    let Some(durable) = durable else {
        return Ok(None);
    };
    let (timeline, known) = durable.known;
    if replay >= known {
        return Ok(None);
    }
    // The last complete record the sites serve, when these keys can read it (a trailing record
    // cut at the durable end cannot be replayed and is not a loss).
    let last = if durable.has_gap() {
        None
    } else {
        last_record(vault, keyring, dataset, timeline, known)
    };
    if replayed_enough(replay, known, Some(durable.reachable), last) {
        return Ok(None);
    }
    if accept_data_loss {
        return Ok(Some(known));
    }
    let why = if !durable.has_gap() {
        let anchor = match anchored {
            Some((_, a)) if a < known => format!(
                "the ledger anchors WAL only to {a}: the streamer anchors its newest WAL every \
                 minute and at each whole segment, and the commits it acknowledged since are in \
                 the signed WAL after it"
            ),
            _ => "the vault's ledger anchors WAL to it".to_string(),
        };
        format!(
            "the sites serve it without a gap ({anchor}), and the standby has not replayed it \
             within the wait: it is still arriving, or the standby cannot fetch it (see its \
             server log)"
        )
    } else if anchored == Some(durable.known) {
        format!(
            "the vault's ledger anchors WAL to {known}, but the sites serve it without a gap only \
             to {}: a site withholds or lost the rest, which the ledger proves was stored",
            durable.reachable
        )
    } else {
        format!(
            "the sites hold signed WAL to {known} (the ledger anchors WAL to {}), but serve it \
             without a gap only to {}: a site withholds or lost the part between",
            anchored.map_or("no point".to_string(), |(_, a)| a.to_string()),
            durable.reachable
        )
    };
    Err(PgError::Vault(embassy_core::Error::Refused {
        kind: if durable.has_gap() {
            embassy_core::ErrorKind::Integrity
        } else {
            embassy_core::ErrorKind::Source
        },
        problem: format!(
            "the standby on {} has replayed {dataset}'s WAL to {replay}, but the vault holds WAL \
             durably to {known} on timeline {timeline} ({} bytes more); {why}. Promoting now \
             would lose those commits, so nothing was promoted: wait until the standby replays \
             them, bring the WAL back to the site that lacks it, or accept the loss explicitly \
             (it is recorded in the ledger)",
            data_dir.display(),
            known.0 - replay.0
        ),
        way_out: embassy_core::error::WayOut::PgPromoteBehind {
            dataset: dataset.to_string(),
            data_dir: data_dir.display().to_string(),
        },
    }))
}

/// The standby in `data_dir` must be a copy of `dataset`'s cluster: the system identifier in
/// its `global/pg_control` equals the one the dataset's newest base backup records (signed in
/// its manifest). Another cluster moved past the anchored WAL (`pg_resetwal`) would otherwise
/// pass the position check and go live as the registry. A dataset with no base backup, or keys
/// that cannot read its manifests (a sealing-only credential), has nothing to compare with.
pub fn same_cluster(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    data_dir: &std::path::Path,
) -> Result<(), PgError> {
    let control_path = data_dir.join("global").join("pg_control");
    let control = std::fs::read(&control_path).map_err(|e| {
        PgError::Restore(format!(
            "cannot read {} to check that the standby is a copy of {dataset}: {e}; nothing was \
             promoted: run promote as the data directory's owner (or root), with --data naming \
             the standby's data directory",
            control_path.display()
        ))
    })?;
    let versions = vault.versions(dataset).map_err(PgError::Vault)?;
    for version in versions.iter().rev() {
        let reader = match embassy_core::engine::reader::VersionReader::open_with(
            vault.site().clone(),
            keyring,
            version,
        ) {
            Ok(r) => r,
            // A sealing-only credential cannot read the manifest that records the identifier:
            // nothing to compare with (docs/design.md says so).
            Err(embassy_core::Error::WrongKey(_)) => return Ok(()),
            Err(e) => return Err(PgError::Vault(e)),
        };
        if let Some(info) =
            crate::base_backup::BaseBackupInfo::from_properties(&reader.manifest.properties)?
        {
            return system_identifier_matches(&control, info.system_identifier, dataset, data_dir);
        }
    }
    Ok(())
}

/// Compares the system identifier at the start of a `pg_control` file with `expected`.
fn system_identifier_matches(
    control: &[u8],
    expected: u64,
    dataset: &str,
    data_dir: &std::path::Path,
) -> Result<(), PgError> {
    let found = control
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes);
    match found {
        Some(id) if id == expected => Ok(()),
        Some(id) => Err(PgError::Restore(format!(
            "the server in {} is not a copy of {dataset}: its system identifier is {id}, the \
             dataset's base backups record {expected}. Nothing was promoted: promote a standby \
             made from this dataset (`embassy standby {dataset} --to DIR`)",
            data_dir.display()
        ))),
        None => Err(PgError::Restore(format!(
            "{}/global/pg_control is too short to be PostgreSQL's: nothing was promoted",
            data_dir.display()
        ))),
    }
}

/// The start of the last complete record of the WAL ending at `end` on `timeline`, when these
/// keys can read it.
fn last_record(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    timeline: u32,
    end: Lsn,
) -> Option<Lsn> {
    let listing = crate::wal::list(vault.site().as_ref(), dataset).ok()?;
    let signers = crate::wal::dataset_signers(vault, dataset).ok()?;
    crate::walend::last_record_before(vault, keyring, &listing, &signers, timeline, end)
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the dataset's own cluster passes; another one, or a cut pg_control, is refused.
    #[test]
    fn only_a_copy_of_the_datasets_cluster_is_promoted() {
        let dir = std::path::Path::new("/srv/standby");
        let mut control = 7_305_000_000_000_000_001u64.to_le_bytes().to_vec();
        control.extend_from_slice(&[0u8; 100]);
        assert!(system_identifier_matches(&control, 7_305_000_000_000_000_001, "reg", dir).is_ok());
        let e = system_identifier_matches(&control, 42, "reg", dir).unwrap_err();
        assert!(e.to_string().contains("not a copy of reg"), "{e}");
        assert!(system_identifier_matches(&control[..5], 42, "reg", dir).is_err());
    }

    #[test]
    fn a_standby_short_of_the_anchored_end_has_not_replayed_enough() {
        let l = |x: u64| Lsn(x);
        // At or past the anchor.
        assert!(replayed_enough(l(100), l(100), None, None));
        assert!(replayed_enough(l(120), l(100), None, None));
        // Short of it, the WAL withheld (the sites serve less than the anchor).
        assert!(!replayed_enough(l(60), l(100), Some(l(60)), Some(l(40))));
        assert!(!replayed_enough(l(60), l(100), None, None));
        // Short of it by the cut record after the last complete one: nothing lost.
        assert!(replayed_enough(l(90), l(100), Some(l(100)), Some(l(80))));
        // A complete record at or after the anchor proves the bytes before it complete.
        assert!(!replayed_enough(l(90), l(100), Some(l(130)), Some(l(110))));
        // Not past the last complete record's start: it was not replayed.
        assert!(!replayed_enough(l(80), l(100), Some(l(100)), Some(l(80))));
    }
}
