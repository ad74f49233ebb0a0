//! Catching up a site that missed writes (it was down, or it lost its vault): the one entry
//! point the agent (after each look at the sites) and `embassy sync --pending` both call. The
//! algorithm itself, draining a site's queue of missed writes in write order, lives in
//! `embassy_sites::queue`; a full comparison is `embassy_core::engine::sync`. No keys are
//! needed: only whole, content-named objects are copied.

use std::path::Path;

use embassy_core::progress::Progress;
use embassy_core::Result;
use embassy_sites::queue::DrainReport;
use serde::Serialize;

/// What catching one site up from another did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CatchUpReport {
    /// The site caught up.
    pub site: String,
    /// The site copied from.
    pub from: String,
    /// Writes queued for the site before (0: its queue was empty).
    pub pending_before: usize,
    /// Objects copied from its queue of missed writes.
    pub queue_copied: u64,
    /// Whether a full comparison with the other site was made (the queue did not settle
    /// everything, or was empty while the site was behind).
    pub full_sync: bool,
    /// Objects copied in all.
    pub copied: u64,
    /// Bytes copied in all.
    pub bytes: u64,
    /// Objects the site already held.
    pub present: u64,
    /// What could not be copied, one line each (empty: the site is caught up).
    pub problems: Vec<String>,
}

impl CatchUpReport {
    /// True when the site now holds everything the other site holds.
    pub fn is_complete(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Catches the site at `to` up from the site at `from`: first by its queue of missed writes
/// under `state_dir` (the writes it was not there for, copied in write order), then, unless
/// that settled everything, by a full comparison that copies whatever `from` holds and `to`
/// lacks. `sites` are every site of the vault (`from` and `to` among them or not): the queue is
/// drained from all of them but `to`, down ones included, since a write this machine
/// acknowledged may sit at one of them only; a queued object none of them holds is dropped
/// only when every one of them could be asked (else it stays queued: [`drain_from_some`]).
/// Objects that could not be copied are listed in the report's problems (the queue keeps
/// them for the next attempt). `Err` only when a site cannot be opened or the queue cannot be
/// read or written.
///
/// [`drain_from_some`]: embassy_sites::queue::drain_from_some
pub fn catch_up(
    state_dir: &Path,
    from: &str,
    to: &str,
    sites: &[String],
    progress: &dyn Progress,
) -> Result<CatchUpReport> {
    let from_site = embassy_sites::open(from)?;
    let to_site = embassy_sites::open(to)?;
    let mut report = CatchUpReport {
        site: to.to_string(),
        from: from.to_string(),
        ..CatchUpReport::default()
    };
    let queue = embassy_sites::queue::site_queue(state_dir, to, Some(&to_site))?;
    if queue.pending()?.is_empty() {
        return full_sync(&from_site, &to_site, report, progress);
    }
    // `from` first (the most complete site), then the others; a site that cannot be opened
    // leaves the sources incomplete.
    let mut sources = vec![from_site.clone()];
    let mut every_other_site = !sites.is_empty();
    for location in sites {
        match embassy_sites::open(location) {
            Ok(site) => {
                let known = [to_site.location(), from_site.location()];
                if !known.contains(&site.location()) {
                    sources.push(site);
                }
            }
            Err(_) => every_other_site = false,
        }
    }
    let drain = |progress: &dyn Progress| {
        if every_other_site {
            embassy_sites::queue::drain(&queue, to_site.as_ref(), &sources, progress)
        } else {
            embassy_sites::queue::drain_from_some(&queue, to_site.as_ref(), &sources, progress)
        }
    };
    let drained = drain(progress)?;
    report.pending_before = drained.pending_before;
    report.queue_copied = drained.copied;
    report.copied = drained.copied;
    report.bytes = drained.bytes;
    report.present = drained.present;
    report.full_sync = drained.full_sync;
    if drained.remaining == 0 && drained.problems.is_empty() {
        return Ok(report);
    }
    let mut report = full_sync(&from_site, &to_site, report, progress)?;
    // What the comparison brought settles its queue records; what is left is still lacking
    // (held by a site that is down, say), and the catch-up is not complete.
    let again = drain(progress)?;
    if again.remaining > 0 {
        report.problems.push(format!(
            "{} object(s) still queued for this site: {}",
            again.remaining,
            if again.problems.is_empty() {
                "a full comparison with every site is still owed".to_string()
            } else {
                again.problems.join("; ")
            }
        ));
    }
    Ok(report)
}

/// The full comparison of [`catch_up`]: copies whatever `from` holds and `to` lacks.
fn full_sync(
    from: &std::sync::Arc<dyn embassy_core::site::Site>,
    to: &std::sync::Arc<dyn embassy_core::site::Site>,
    mut report: CatchUpReport,
    progress: &dyn Progress,
) -> Result<CatchUpReport> {
    let synced = embassy_core::engine::sync::sync(from.as_ref(), to.as_ref(), false, progress)?;
    report.full_sync = true;
    report.copied += synced.copied;
    report.bytes += synced.bytes;
    report.present += synced.present;
    report.problems = synced.problems;
    Ok(report)
}

/// Catches up every site of `locations` whose queue under `state_dir` holds anything, each
/// from the others (`embassy sync --pending`): one report per site that had writes queued.
pub fn catch_up_pending(
    state_dir: &Path,
    locations: &[String],
    progress: &dyn Progress,
) -> Result<Vec<DrainReport>> {
    embassy_sites::drain_all(state_dir, locations, progress)
}

/// What a site's catch-up queue under a state folder says it still lacks: writes it missed
/// while it was down (or unwritable) that were acknowledged at the other sites. A site with
/// writes queued is *behind*, not damaged: it serves an older history than this machine may
/// have verified elsewhere, and the next drain (`catch_up_pending`, the agent's catch-up)
/// clears it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Behind {
    /// Objects queued for the site.
    pub queued_objects: usize,
    /// Why a full comparison with the other sites is needed, if one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_sync: Option<String>,
    /// The objects queued for the site (what explains WAL it lacks:
    /// `verify::set_aside_queued_wal`).
    #[serde(skip)]
    pub queued: Vec<String>,
}

/// Whether the queue under `state_dir` holds writes for the site at `location` (dead writers'
/// sessions are turned into full-comparison records first, as `status` does): `None` when it
/// holds nothing.
pub fn behind(state_dir: &Path, location: &str) -> Result<Option<Behind>> {
    let depths = embassy_sites::queue::depths(state_dir, &[location.to_string()])?;
    Ok(depths
        .into_iter()
        .next()
        .filter(|(_, p)| !p.is_empty())
        .map(|(_, p)| Behind {
            queued_objects: p.paths.len(),
            full_sync: p.full_sync.first().cloned(),
            queued: p.paths,
        }))
}

/// Whether a site that has writes queued (see [`behind`]) merely lags: `vault` is the site
/// opened with the heads this machine remembers and what its queue holds
/// ([`crate::open::open_vault`]); every dataset's history must either reach the remembered
/// head or lack only entries the queue holds (the one rule, `StateStore::check_history`).
/// `false` when a history was rolled back, forked or deleted: the site is then verified
/// against the remembered heads, which reports it as damaged, never as behind.
pub fn lag_is_excused(vault: &embassy_core::engine::vault::Vault) -> bool {
    let Ok(datasets) = vault.datasets() else {
        return false;
    };
    let missing = vault
        .state()
        .is_some_and(|s| !s.missing_datasets(&datasets).is_empty());
    !missing
        && datasets
            .iter()
            .all(|d| vault.history(d).err().is_none_or(|e| !e.is_integrity()))
}

/// The vault to verify at a site that may have writes queued (`behind`, see [`behind`]): read
/// as it stands, without the remembered heads, only when the queue holds every entry it lacks
/// ([`lag_is_excused`]: it is behind, not damaged); otherwise `vault` itself, read against the
/// remembered heads, so that a site rolled back to an old copy of itself is reported damaged
/// even while some other write waits for it. Returns the vault and whether it is behind.
pub fn as_it_stands(
    vault: embassy_core::engine::vault::Vault,
    behind: Option<Behind>,
) -> Result<(embassy_core::engine::vault::Vault, Option<Behind>)> {
    match behind {
        Some(b) if lag_is_excused(&vault) => Ok((
            embassy_core::engine::vault::Vault::open(vault.site().clone())?,
            Some(b),
        )),
        _ => Ok((vault, None)),
    }
}
