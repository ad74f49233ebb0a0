//! Copying a vault from one site to another without keys: seeding a new embassy, catching up a
//! site that was down, repairing damaged objects (invariant 8).
//!
//! Objects are copied in the write order of the format (packs, indexes, manifests, ledger
//! entries, checkpoints, cosignatures; the configuration first), so the target never holds an
//! object whose references are missing. Every object's bytes are checked against its name on
//! arrival; a source object that fails the check is not copied and is reported. Objects stream
//! through a spool (a temporary file, [`crate::format::spool`]) while they are hashed, so a copy holds a
//! fixed buffer in memory whatever the object's size, and the target is sent only checked bytes.

use std::collections::HashMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::layout;
use crate::format::spool::{HashSink, Spool};
use crate::progress::Progress;
use crate::site::{Put, Site, SiteError};

/// What a sync did.
#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    /// Objects copied.
    pub copied: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Objects the target already held.
    pub present: u64,
    /// Damaged objects at the target replaced by good copies (with `repair`).
    pub repaired: u64,
    /// Problems: damaged source objects, failed writes.
    pub problems: Vec<String>,
}

/// The order objects are written in, by path prefix: packs, indexes, manifests and any other data
/// object (log segments, ...) before the ledger entries that reference them, then checkpoints and
/// their cosignatures. Copying in this order (sync, the per-site catch-up queue) never leaves a
/// site holding an entry whose objects are missing.
pub fn write_stage(path: &str) -> u8 {
    match path.split('/').next().unwrap_or_default() {
        "config.sig" => 0,
        "config" => 1,
        "packs" => 2,
        "index" => 3,
        "manifests" => 4,
        "ledger" => 6,
        "checkpoints" => 7,
        "cosignatures" => 8,
        // Data objects of kinds this version does not name: before the ledger, to be safe.
        _ => 5,
    }
}

fn stage(path: &str) -> u8 {
    write_stage(path)
}

/// The write stage of ledger entries.
const LEDGER_STAGE: u8 = 6;

/// The dataset folder of a ledger path (`ledger/<dataset>/...`).
fn ledger_dataset(path: &str) -> &str {
    path.split('/').nth(1).unwrap_or_default()
}

/// What copying one object did.
enum Copied {
    Present,
    Created(u64),
    Repaired(u64),
}

/// Copies the object at `path` from `from` to `to` (`at_target`: `to` lists it), its bytes
/// checked against its name on the way; with `repair`, a copy at the target proven damaged is
/// replaced. `Err`: what went wrong, one line naming the object.
fn copy_one(
    from: &dyn Site,
    to: &dyn Site,
    repair: bool,
    at_target: bool,
    path: &str,
) -> std::result::Result<Copied, String> {
    let Some(id) = layout::id_in_path(path) else {
        return Err(format!("{path}: not named by its hash; not copied"));
    };
    let damaged_at_target = if at_target {
        if !repair {
            return Ok(Copied::Present);
        }
        // Hashed as it streams: the target's copy is never held whole. Only a copy proven
        // damaged (its bytes do not hash to its name) is replaced: a copy that cannot be read
        // now (the site busy or down) may be intact, and deleting it before a write that may
        // fail too would lose it.
        match HashSink::read_from(to, path) {
            Ok(copy) if copy.id() == id => return Ok(Copied::Present),
            Ok(_) => true,
            Err(SiteError::NotFound { .. }) => false,
            Err(e) => {
                return Err(format!(
                    "{path}: cannot be read at the target to check it ({e}); left as it is, \
                     not repaired: run the repair again once the site answers"
                ))
            }
        }
    } else {
        false
    };
    // Spooled to local disk and hashed on the way: memory per copy is a fixed buffer, and only
    // bytes that hash to the object's name are ever sent to the target.
    let spool = match Spool::fetch(from, path, &id) {
        Ok(Ok(spool)) => spool,
        Ok(Err(_damaged)) => {
            return Err(format!(
                "{path}: damaged at the source {} (bytes do not hash to its name); not copied",
                from.location()
            ))
        }
        Err(e) => return Err(format!("{path}: cannot be read at the source: {e}")),
    };
    let size = spool.len();
    if damaged_at_target {
        if let Err(e) = to.delete(path) {
            return Err(format!(
                "{path}: damaged at the target and cannot be removed: {e}"
            ));
        }
    }
    match to.put_from(path, spool.into_source()) {
        Ok(Put::Created) if damaged_at_target => Ok(Copied::Repaired(size)),
        Ok(Put::Created) => Ok(Copied::Created(size)),
        Ok(Put::AlreadyExisted) => Ok(Copied::Present),
        Err(e) => Err(format!(
            "{path}: cannot be written to {}: {e}",
            to.location()
        )),
    }
}

/// Copies to `to` every object of the vault at `from` that `to` lacks. With `repair`, also
/// reads every object `to` holds and replaces those whose bytes do not match their names.
/// A target that holds no vault is refused ([`Error::SiteWithoutVault`]): a missing folder or
/// an empty disk or bucket is far more often a mount that failed or a mistyped path than a new
/// site, and filling it could fill a root filesystem. Seeding a new site is [`seed`].
pub fn sync(
    from: &dyn Site,
    to: &dyn Site,
    repair: bool,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    copy(from, to, repair, false, progress)
}

/// [`sync`] that may also seed `to`: a target holding no vault gets the vault's configuration
/// first, then every object. Only for a caller that was explicitly asked to create the site
/// (`embassy sync --seed`).
pub fn seed(
    from: &dyn Site,
    to: &dyn Site,
    repair: bool,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    copy(from, to, repair, true, progress)
}

/// The entry `to` holds at the same place in the same ledger as the ledger entry `path`, when
/// it is another entry: copying `path` there would fork that history (two entries at one
/// sequence number), which a catch-up never does. `None` for objects that are not ledger
/// entries and for entries whose place is free or already theirs.
pub fn fork_at(to: &dyn Site, path: &str) -> std::result::Result<Option<String>, SiteError> {
    let Some((dataset, seq, _)) = layout::parse_ledger_path(path) else {
        return Ok(None);
    };
    let place = format!("{}{seq:016}-", layout::ledger_prefix(&dataset));
    Ok(to
        .list(&place)?
        .into_iter()
        .map(|i| i.path)
        .find(|p| p != path))
}

/// The problem line for a ledger entry `path` not copied because the target holds `other` at
/// its place (see [`fork_at`]).
pub fn fork_refusal(to: &dyn Site, path: &str, other: &str) -> String {
    format!(
        "{path}: not copied: site {} holds another entry at its place ({other}); copying it \
         would fork that history. The site's history differs from the others' (rolled back and \
         written over, or forged): verify each site and compare them before repairing by hand",
        to.location()
    )
}

fn copy(
    from: &dyn Site,
    to: &dyn Site,
    repair: bool,
    seed: bool,
    progress: &dyn Progress,
) -> Result<SyncReport> {
    let config = crate::format::config::VaultConfig::load(from)?;
    let source_config = from.get(layout::CONFIG)?;
    match to.get(layout::CONFIG) {
        Ok(existing) if existing != source_config => {
            return Err(Error::invalid(format!(
                "site {} holds another vault than {} (vault {}): refusing to mix them",
                to.location(),
                from.location(),
                config.vault_id
            )))
        }
        Ok(_) => {}
        Err(SiteError::NotFound { .. }) if !seed => {
            return Err(Error::SiteWithoutVault {
                sites: vec![to.location().to_string()],
                holding: vec![from.location().to_string()],
            })
        }
        Err(SiteError::NotFound { .. }) => {
            // Signature first, so the configuration never appears unsigned.
            let signature = from.get(layout::CONFIG_SIGNATURE)?;
            to.put(layout::CONFIG_SIGNATURE, &signature)?;
            to.put(layout::CONFIG, &source_config)?;
        }
        Err(e) => return Err(e.into()),
    }
    let target: HashMap<String, u64> = to.list("")?.into_iter().map(|i| (i.path, i.size)).collect();
    let mut wanted: Vec<_> = from
        .list("")?
        .into_iter()
        .filter(|i| !matches!(i.path.as_str(), layout::CONFIG | layout::CONFIG_SIGNATURE))
        .collect();
    // Ledger entries their own signer withdrew (a writer that lost a race, format 6) are
    // noise at the source: never copied, so they make no fork at the target. Judged like every
    // reader judges them, by loading the source's history, but only of a dataset with an entry
    // to copy at a sequence number that has withdrawals (withdrawals are never collected: a
    // dataset that ever had one would otherwise have its whole ledger read at every sync).
    let mut withdrawn: std::collections::HashSet<String> = std::collections::HashSet::new();
    let withdrawn_at: std::collections::HashSet<(&str, u64)> = wanted
        .iter()
        .filter_map(|i| i.path.strip_prefix(crate::history::withdrawal::WITHDRAWALS))
        .filter_map(|rest| {
            let (dataset, name) = rest.split_once('/')?;
            Some((dataset, name.split_once('-')?.0.parse().ok()?))
        })
        .collect();
    let with_withdrawals: std::collections::BTreeSet<String> = wanted
        .iter()
        .filter(|i| !target.contains_key(&i.path))
        .filter_map(|i| layout::parse_ledger_path(&i.path))
        .filter(|(dataset, seq, _)| withdrawn_at.contains(&(dataset.as_str(), *seq)))
        .filter(|(dataset, _, _)| layout::check_dataset_name(dataset).is_ok())
        .map(|(dataset, _, _)| dataset)
        .collect();
    for dataset in &with_withdrawals {
        let history = crate::history::load(from, &config, dataset, None)?;
        withdrawn.extend(
            history
                .withdrawn
                .iter()
                .map(|r| layout::ledger_entry(dataset, r.entry.seq, &r.id)),
        );
    }
    wanted.retain(|i| !withdrawn.contains(&i.path));
    wanted.sort_by(|a, b| (stage(&a.path), &a.path).cmp(&(stage(&b.path), &b.path)));
    progress.set_total(wanted.iter().map(|i| i.size).sum());
    let report = std::sync::Mutex::new(SyncReport::default());
    let copy = |info: &crate::site::ObjectInfo| -> bool {
        progress.add(info.size);
        if !target.contains_key(&info.path) {
            match fork_at(to, &info.path) {
                Ok(None) => {}
                Ok(Some(other)) => {
                    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                    r.problems.push(fork_refusal(to, &info.path, &other));
                    return false;
                }
                Err(e) => {
                    let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                    r.problems.push(format!("{}: {e}", info.path));
                    return false;
                }
            }
        }
        let outcome = copy_one(
            from,
            to,
            repair,
            target.contains_key(&info.path),
            &info.path,
        );
        let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Ok(Copied::Present) => r.present += 1,
            Ok(Copied::Created(size)) => {
                r.copied += 1;
                r.bytes += size;
            }
            Ok(Copied::Repaired(size)) => {
                r.repaired += 1;
                r.bytes += size;
            }
            Err(problem) => {
                r.problems.push(problem);
                return false;
            }
        }
        true
    };
    // Stage by stage, each stage in parallel. Ledger entries go in order, dataset by dataset
    // (datasets in parallel), each dataset stopping at its first entry that could not be
    // copied; and nothing that names entries is copied while anything before it is missing. A
    // sync cut anywhere (killed, a site gone mid-way) leaves the target holding a prefix of the
    // vault: behind, never an entry without what comes before it, which verify calls damage.
    let mut start = 0;
    let mut failed = false;
    while start < wanted.len() {
        let current = stage(&wanted[start].path);
        let end = wanted[start..]
            .iter()
            .position(|i| stage(&i.path) != current)
            .map_or(wanted.len(), |n| start + n);
        let batch = &wanted[start..end];
        start = end;
        if failed && current >= LEDGER_STAGE {
            let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
            r.problems.push(format!(
                "{} objects of {}/ not copied yet: they name objects that could not be copied \
                 (above); the next sync copies them once those are",
                batch.len(),
                batch[0].path.split('/').next().unwrap_or_default()
            ));
            continue;
        }
        let ok = if current == LEDGER_STAGE {
            let mut by_dataset: Vec<&[crate::site::ObjectInfo]> = Vec::new();
            let mut i = 0;
            while i < batch.len() {
                let dataset = ledger_dataset(&batch[i].path);
                let n = batch[i..]
                    .iter()
                    .position(|o| ledger_dataset(&o.path) != dataset)
                    .unwrap_or(batch.len() - i);
                by_dataset.push(&batch[i..i + n]);
                i += n;
            }
            by_dataset
                .par_iter()
                .map(|entries| entries.iter().all(&copy))
                .collect::<Vec<bool>>()
                .into_iter()
                .all(|ok| ok)
        } else {
            batch
                .par_iter()
                .with_max_len(1)
                .map(&copy)
                .collect::<Vec<bool>>()
                .into_iter()
                .all(|ok| ok)
        };
        failed |= !ok;
    }
    let mut report = report.into_inner().unwrap_or_else(|p| p.into_inner());
    report.problems.sort();
    Ok(report)
}
