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
    wanted.sort_by(|a, b| (stage(&a.path), &a.path).cmp(&(stage(&b.path), &b.path)));
    progress.set_total(wanted.iter().map(|i| i.size).sum());
    let report = std::sync::Mutex::new(SyncReport::default());
    let note =
        |f: &dyn Fn(&mut SyncReport)| f(&mut report.lock().unwrap_or_else(|p| p.into_inner()));
    // Stage by stage, each stage in parallel.
    let mut start = 0;
    while start < wanted.len() {
        let current = stage(&wanted[start].path);
        let end = wanted[start..]
            .iter()
            .position(|i| stage(&i.path) != current)
            .map_or(wanted.len(), |n| start + n);
        wanted[start..end].par_iter().for_each(|info| {
            progress.add(info.size);
            let Some(id) = layout::id_in_path(&info.path) else {
                return note(&|r| {
                    r.problems
                        .push(format!("{}: not named by its hash; not copied", info.path))
                });
            };
            let damaged_at_target = if target.contains_key(&info.path) {
                if !repair {
                    return note(&|r| r.present += 1);
                }
                // Hashed as it streams: the target's copy is never held whole. Only a copy
                // proven damaged (its bytes do not hash to its name) is replaced: a copy that
                // cannot be read now (the site busy or down) may be intact, and deleting it
                // before a write that may fail too would lose it.
                match HashSink::read_from(to, &info.path) {
                    Ok(copy) if copy.id() == id => return note(&|r| r.present += 1),
                    Ok(_) => true,
                    Err(SiteError::NotFound { .. }) => false,
                    Err(e) => {
                        return note(&|r| {
                            r.problems.push(format!(
                                "{}: cannot be read at the target to check it ({e}); left as \
                                 it is, not repaired: run the repair again once the site answers",
                                info.path
                            ))
                        })
                    }
                }
            } else {
                false
            };
            // Spooled to local disk and hashed on the way: memory per copy is a fixed buffer,
            // and only bytes that hash to the object's name are ever sent to the target.
            let spool = match Spool::fetch(from, &info.path, &id) {
                Ok(Ok(spool)) => spool,
                Ok(Err(_damaged)) => {
                    return note(&|r| {
                        r.problems.push(format!(
                            "{}: damaged at the source {} (bytes do not hash to its name); not copied",
                            info.path,
                            from.location()
                        ))
                    })
                }
                Err(e) => {
                    return note(&|r| {
                        r.problems
                            .push(format!("{}: cannot be read at the source: {e}", info.path))
                    })
                }
            };
            let size = spool.len();
            if damaged_at_target {
                if let Err(e) = to.delete(&info.path) {
                    return note(&|r| {
                        r.problems.push(format!(
                            "{}: damaged at the target and cannot be removed: {e}",
                            info.path
                        ))
                    });
                }
            }
            let source = spool.into_source();
            match to.put_from(&info.path, source.clone()) {
                Ok(Put::Created) => note(&|r| {
                    if damaged_at_target {
                        r.repaired += 1;
                    } else {
                        r.copied += 1;
                    }
                    r.bytes += size;
                }),
                Ok(Put::AlreadyExisted) => note(&|r| r.present += 1),
                Err(e) => note(&|r| {
                    r.problems.push(format!(
                        "{}: cannot be written to {}: {e}",
                        info.path,
                        to.location()
                    ))
                }),
            }
        });
        start = end;
    }
    let mut report = report.into_inner().unwrap_or_else(|p| p.into_inner());
    report.problems.sort();
    Ok(report)
}
