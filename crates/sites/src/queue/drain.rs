//! Draining a site's catch-up queue: the catch-up algorithm over the queue records of
//! [`super`]. Each queued path the site lacks is copied from a site that holds it, in write
//! order, through a spool hashed on arrival; a full comparison copies everything the others hold.

use super::*;

/// What draining one site's queue did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DrainReport {
    /// The site caught up.
    pub site: String,
    /// Queue depth before.
    pub pending_before: usize,
    /// Whether a full comparison with the other sites was made (a dead writer, a site that lost
    /// its vault, a damaged queue record).
    pub full_sync: bool,
    /// Objects copied to the site.
    pub copied: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Queued objects the site already held.
    pub present: u64,
    /// Queued objects no site holds (writes that were never acknowledged): dropped.
    pub nowhere: u64,
    /// Queue depth after (0: caught up).
    pub remaining: usize,
    /// What went wrong (the queue keeps those entries for the next drain).
    pub problems: Vec<String>,
    /// True when the site holds no vault while the others do (refused, not filled): a site
    /// without a vault, not damage.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub no_vault: bool,
}

/// Whether `site` holds `path` (without reading it).
fn holds(site: &dyn Site, path: &str) -> std::result::Result<bool, SiteError> {
    match site.get_range(path, 0, 0) {
        Ok(_) => Ok(true),
        Err(SiteError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The first write stage of what names ledger entries (entries, checkpoints, cosignatures).
const ENTRY_STAGE: u8 = 6;

enum Fetched {
    Spooled(Box<Spool>),
    Nowhere,
    Failed(String),
}

/// Reads `path` from the first source whose copy checks (bytes hash to the object's name),
/// into a spool: the object is never held whole in memory.
fn fetch(sources: &[Arc<dyn Site>], path: &str) -> Fetched {
    let expected = layout::id_in_path(path);
    let mut failures = Vec::new();
    for s in sources {
        match Spool::read_from(s.as_ref(), path) {
            Ok(spool) => match expected {
                Some(id) if spool.id() != id => failures.push(format!(
                    "{}: damaged copy (bytes do not hash to its name)",
                    s.location()
                )),
                _ => return Fetched::Spooled(Box::new(spool)),
            },
            Err(FetchError::Site(SiteError::NotFound { .. })) => {}
            Err(e) => failures.push(e.to_string()),
        }
    }
    if failures.is_empty() {
        Fetched::Nowhere
    } else {
        Fetched::Failed(failures.join("; "))
    }
}

/// Catches `target` up from `sources` (the other sites of the vault) by its queue: every queued
/// object it lacks is copied from a source whose copy checks, in write order (packs, indexes,
/// manifests and other data objects, then ledger entries, then checkpoints), a later stage only
/// once every earlier one arrived. A full comparison (`embassy_core::engine::sync`) is made instead when
/// the queue asks for one or the target no longer holds the vault's configuration; a target that
/// holds no vault at all (a site that lost everything, a folder moved away, a disk not mounted)
/// is refused there and never filled: it is seeded on request only (`sync::seed`). Entries that
/// could not be settled stay queued. Returns `Err` only when the queue itself cannot be read or written.
///
/// `sources` must be every other site of the vault (down ones too: down for writes is not down
/// for reads): a queued object none of them holds was never acknowledged, and is dropped. A
/// caller that asks only some of them uses [`drain_from_some`].
pub fn drain(
    queue: &SiteQueue,
    target: &dyn Site,
    sources: &[Arc<dyn Site>],
    progress: &dyn Progress,
) -> Result<DrainReport> {
    drain_with(queue, target, sources, true, progress)
}

/// [`drain`] from only some of the other sites of the vault (a catch-up from one site, a site
/// that could not be opened left out): a queued object the sources asked do not hold stays
/// queued, since a site not asked may hold the only copy, and so does a full comparison asked
/// for. Dropping it would forget that the target lacks something this machine acknowledged
/// (crash campaign seed 1796630629705382569 kill 18: a checkpoint stored at a down S3 site only
/// was dropped from a folder's queue by a catch-up from the other folder, and `verify` then
/// called the lagging folder rolled back).
pub fn drain_from_some(
    queue: &SiteQueue,
    target: &dyn Site,
    sources: &[Arc<dyn Site>],
    progress: &dyn Progress,
) -> Result<DrainReport> {
    drain_with(queue, target, sources, false, progress)
}

fn drain_with(
    queue: &SiteQueue,
    target: &dyn Site,
    sources: &[Arc<dyn Site>],
    every_other_site: bool,
    progress: &dyn Progress,
) -> Result<DrainReport> {
    let Some(_drain_lock) = queue.drain_lock()? else {
        let depth = queue.pending()?.depth();
        return Ok(DrainReport {
            site: queue.site().to_string(),
            pending_before: depth,
            remaining: depth,
            problems: vec!["another drain of this site is running".into()],
            ..DrainReport::default()
        });
    };
    let pending = queue.pending()?;
    let mut report = DrainReport {
        site: queue.site().to_string(),
        pending_before: pending.depth(),
        ..DrainReport::default()
    };
    if pending.is_empty() {
        return Ok(report);
    }
    if sources.is_empty() {
        report
            .problems
            .push("no other site to copy from: give every site of the vault".into());
        report.remaining = pending.depth();
        return Ok(report);
    }
    let lost_vault = match target.get(layout::CONFIG) {
        Ok(_) => false,
        Err(SiteError::NotFound { .. }) => true,
        Err(e) => {
            report.problems.push(format!("still unreachable: {e}"));
            report.remaining = pending.depth();
            return Ok(report);
        }
    };
    if !pending.full_sync.is_empty() || lost_vault {
        report.full_sync = true;
        let from = ReplicatedSite::new(sources.to_vec(), 1)?;
        match embassy_core::engine::sync::sync(&from, target, false, progress) {
            Ok(r) => {
                report.copied = r.copied;
                report.bytes = r.bytes;
                report.present = r.present;
                report.problems = r.problems;
            }
            Err(e) => {
                report.no_vault =
                    matches!(e, Error::NoVault { .. } | Error::SiteWithoutVault { .. });
                report.problems.push(e.to_string());
            }
        }
        if !report.problems.is_empty() {
            report.remaining = pending.depth();
            return Ok(report);
        }
        // The comparison read the sources that answered: a source down for it may be the only
        // holder of a queued object (a write only it took, a dead writer's entry). The queued
        // paths are settled one by one below, and the comparison itself stays asked for while
        // a dead writer's entry is unsettled: the objects it names may be at that source only.
    }

    let mut paths: Vec<(usize, &String)> = pending.paths.iter().enumerate().collect();
    paths.sort_by_key(|(i, p)| (write_stage(p), *i));
    let mut keep: Vec<String> = Vec::new();
    let mut blocked_stage: Option<u8> = None;
    for (_, path) in paths {
        let stage = write_stage(path);
        // Ledger entries (and what names them) in write order too: one that could not be
        // copied holds back every later one, so the site keeps a prefix of each history.
        if blocked_stage.is_some_and(|b| stage > b || (stage == b && stage >= ENTRY_STAGE)) {
            keep.push(path.clone());
            continue;
        }
        // Not at the sites asked: dropped only when they are all the sites that may hold it.
        let nowhere = |report: &mut DrainReport| {
            if every_other_site {
                report.nowhere += 1;
                Ok(())
            } else {
                Err(format!(
                    "{path}: not held by the site(s) asked ({}); a site not asked may hold the \
                     only copy, so it stays queued for a catch-up from every site",
                    sources
                        .iter()
                        .map(|s| s.location())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        };
        let outcome: std::result::Result<(), String> = match holds(target, path) {
            Ok(true) => {
                report.present += 1;
                Ok(())
            }
            Err(e) => Err(format!("{path}: {e}")),
            Ok(false) => match embassy_core::engine::sync::fork_at(target, path) {
                Err(e) => Err(format!("{path}: {e}")),
                // An entry none of the sites that can hold it holds (a dead writer's that never
                // landed, a racing writer's it withdrew): nothing to copy, whoever took its place.
                Ok(Some(_))
                    if matches!(
                        fetch(&holders_of(&pending, path, sources), path),
                        Fetched::Nowhere
                    ) =>
                {
                    nowhere(&mut report)
                }
                Ok(Some(other)) => Err(embassy_core::engine::sync::fork_refusal(
                    target, path, &other,
                )),
                Ok(None) => match fetch(&holders_of(&pending, path, sources), path) {
                    Fetched::Nowhere => nowhere(&mut report),
                    Fetched::Failed(why) => Err(format!("{path}: no good copy to read: {why}")),
                    Fetched::Spooled(spool) => {
                        let size = spool.len();
                        progress.add(size);
                        let source = spool.into_source();
                        match target.put_from(path, source.clone()) {
                            Ok(Put::Created) => {
                                report.copied += 1;
                                report.bytes += size;
                                Ok(())
                            }
                            Ok(Put::AlreadyExisted) => {
                                report.present += 1;
                                Ok(())
                            }
                            Err(e) => Err(format!("{path}: {e}")),
                        }
                    }
                },
            },
        };
        if let Err(problem) = outcome {
            report.problems.push(problem);
            keep.push(path.clone());
            blocked_stage.get_or_insert(stage);
        }
    }
    // A full comparison with only some sites leaves what only the others hold: still asked for.
    let keep_full = report.full_sync
        && (!every_other_site || keep.iter().any(|p| pending.in_flight.contains_key(p)));
    queue.resolve(&pending, &keep, keep_full)?;
    report.remaining = keep.len() + usize::from(keep_full);
    Ok(report)
}

/// The sources that may hold `path`: for a dead writer's entry ([`Record::InFlight`]) only those
/// it was sent to (a site it skipped, down for its run, cannot hold it, and need not answer);
/// for any other object every source.
fn holders_of(pending: &Pending, path: &str, sources: &[Arc<dyn Site>]) -> Vec<Arc<dyn Site>> {
    match pending.in_flight.get(path) {
        Some(holders) => sources
            .iter()
            .filter(|s| holders.contains(&holder_key(s.location())))
            .cloned()
            .collect(),
        None => sources.to_vec(),
    }
}

/// Catches up every site of `locations` whose queue under `state_dir` holds anything, each from
/// the others: first turns dead writers' sessions into full-sync records ([`recover_sessions`]).
/// The entry point for a periodic caller (the agent) and `embassy sync --pending`. A site that
/// cannot be opened is reported in its [`DrainReport::problems`], and its queue kept.
pub fn drain_all(
    state_dir: &Path,
    locations: &[String],
    progress: &dyn Progress,
) -> Result<Vec<DrainReport>> {
    recover_sessions(state_dir)?;
    let mut opened: Vec<std::result::Result<Arc<dyn Site>, String>> = Vec::new();
    for l in locations {
        opened.push(crate::open(l).map_err(|e| e.to_string()));
    }
    let mut reports = Vec::new();
    for (i, location) in locations.iter().enumerate() {
        let queue = site_queue(state_dir, location, opened[i].as_ref().ok())?;
        let pending = queue.pending()?;
        if pending.is_empty() {
            continue;
        }
        let target = match &opened[i] {
            Ok(t) => t.clone(),
            Err(e) => {
                reports.push(DrainReport {
                    site: location.clone(),
                    pending_before: pending.depth(),
                    remaining: pending.depth(),
                    problems: vec![format!("cannot open the site: {e}")],
                    ..DrainReport::default()
                });
                continue;
            }
        };
        let others = opened.iter().enumerate().filter(|(j, _)| *j != i);
        let sources: Vec<Arc<dyn Site>> = others
            .clone()
            .filter_map(|(_, s)| s.as_ref().ok().cloned())
            .collect();
        // A site that could not be opened may hold the only copy of a queued object.
        let every_other_site = others.clone().all(|(_, s)| s.is_ok());
        reports.push(drain_with(
            &queue,
            target.as_ref(),
            &sources,
            every_other_site,
            progress,
        )?);
    }
    Ok(reports)
}
