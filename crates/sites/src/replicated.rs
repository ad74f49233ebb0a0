//! Several sites as one: every write goes to all of them in parallel and succeeds once
//! `min_sites` hold the object durably; reads fall back from a site that lacks an object, or
//! holds a damaged copy, to the next (when no site holds a good copy, the first damaged one is
//! returned, as one site would return it, for the caller to judge by its hash). Sites that
//! missed writes are reported as lagging, to be caught up with `embassy sync` (every site stays
//! complete on its own, invariant 8).
//!
//! Opened with a state folder ([`ReplicatedSite::with_queue`]), a write that one site missed while
//! `min_sites` held is recorded in that site's catch-up queue before it is acknowledged
//! ([`crate::queue`]), and a site that failed with a retryable error (after its own retries) is
//! down for the rest of the run: it is asked nothing more, its writes are queued for it at once,
//! so a dead site costs one timeout per run instead of one per object.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::queue::{self, Session, SiteQueue};

use embassy_core::format::layout;
use embassy_core::format::spool::HashingSink;
use embassy_core::site::{ObjectInfo, ObjectSink, ObjectSource, Put, Site, SiteError};

/// How long a write waits for the slower sites once `min_sites` hold the object: a site still
/// writing then (one that stopped answering mid-write) is down for the rest of the run and the
/// object is queued for it. The default S3 I/O timeout, so a frozen site costs one timeout.
pub const WRITE_GRACE: Duration = Duration::from_secs(60);

/// The first write stage of what names ledger entries (entries, checkpoints, cosignatures; see
/// [`embassy_core::engine::sync::write_stage`]): held back from a site still catching up.
const ENTRY_STAGE: u8 = 6;

/// A vault kept at several sites at once.
#[derive(Debug)]
pub struct ReplicatedSite {
    sites: Vec<Arc<dyn Site>>,
    min_sites: usize,
    location: String,
    lagging: Mutex<Vec<(String, String)>>,
    /// Per site: down for the rest of the run (a retryable failure after the site's own retries).
    down: Mutex<Vec<bool>>,
    queues: Option<Queues>,
}

/// The catch-up queues of the sites, and this process's writer session.
#[derive(Debug)]
struct Queues {
    state_dir: PathBuf,
    per_site: Vec<SiteQueue>,
    session: Mutex<Option<Session>>,
}

impl ReplicatedSite {
    /// Writes to all `sites`; a write succeeds once `min_sites` of them hold it.
    pub fn new(sites: Vec<Arc<dyn Site>>, min_sites: usize) -> Result<Self, SiteError> {
        let location = sites
            .iter()
            .map(|s| s.location())
            .collect::<Vec<_>>()
            .join(" + ");
        if sites.is_empty() || min_sites == 0 || min_sites > sites.len() {
            return Err(SiteError::Permanent {
                site: location,
                operation: "open",
                path: String::new(),
                message: format!(
                    "--min-sites {min_sites} does not fit {} sites: give 1 to {}",
                    sites.len(),
                    sites.len()
                ),
            });
        }
        let n = sites.len();
        Ok(Self {
            sites,
            min_sites,
            location,
            lagging: Mutex::new(Vec::new()),
            down: Mutex::new(vec![false; n]),
            queues: None,
        })
    }

    /// Keeps a catch-up queue per site under `state_dir` (see [`crate::queue`]): a write a site
    /// misses while `min_sites` hold it is recorded there before it is acknowledged.
    pub fn with_queue(mut self, state_dir: &Path) -> Result<Self, SiteError> {
        let per_site = self
            .sites
            .iter()
            .map(|s| SiteQueue::open(state_dir, s.location()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.queue_error("", e))?;
        self.queues = Some(Queues {
            state_dir: state_dir.to_path_buf(),
            per_site,
            session: Mutex::new(None),
        });
        Ok(self)
    }

    /// The state folder holding the queues, if any.
    pub fn queue_dir(&self) -> Option<&Path> {
        self.queues.as_ref().map(|q| q.state_dir.as_path())
    }

    /// Records that `site` needs a full comparison with the others (it holds no vault yet, say).
    /// Without queues, nothing.
    pub fn queue_full_sync(&self, site: &str, why: &str) -> Result<(), SiteError> {
        let Some(q) = &self.queues else { return Ok(()) };
        for (s, queue) in self.sites.iter().zip(&q.per_site) {
            if s.location() == site {
                queue
                    .record_full_sync(why)
                    .map_err(|e| self.queue_error("", e))?;
            }
        }
        Ok(())
    }

    /// Catches up every site whose queue holds anything, each from the others
    /// ([`queue::drain`]). Without queues, nothing.
    pub fn drain_queues(
        &self,
        progress: &dyn embassy_core::progress::Progress,
    ) -> embassy_core::Result<Vec<queue::DrainReport>> {
        let Some(q) = &self.queues else {
            return Ok(Vec::new());
        };
        queue::recover_sessions(&q.state_dir)?;
        let mut reports = Vec::new();
        for (i, target) in self.sites.iter().enumerate() {
            if q.per_site[i].pending()?.is_empty() {
                continue;
            }
            let sources: Vec<Arc<dyn Site>> = self
                .sites
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s.clone())
                .collect();
            reports.push(queue::drain(
                &q.per_site[i],
                target.as_ref(),
                &sources,
                progress,
            )?);
        }
        Ok(reports)
    }

    fn queue_error(&self, path: &str, e: embassy_core::Error) -> SiteError {
        SiteError::Permanent {
            site: self.location.clone(),
            operation: "queue",
            path: path.to_string(),
            message: format!(
                "cannot record a missed write in the catch-up queue, so the write is not \
                 acknowledged: {e}"
            ),
        }
    }

    /// The sites.
    pub fn sites(&self) -> &[Arc<dyn Site>] {
        &self.sites
    }

    /// Records a site as behind before any write (unreachable or empty when opened).
    pub fn mark_lagging(&self, site: &str, why: String) {
        self.lagging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((site.to_string(), why));
    }

    /// Records a retryable failure of `site` outside a write (unreachable when opened): it is
    /// down for the rest of the run (left out of writes, listings and reads).
    pub fn mark_down(&self, site: &str) {
        if let Some(i) = self.sites.iter().position(|s| s.location() == site) {
            self.note_failure(i);
        }
    }

    /// Which sites are left out now: the down ones (none when leaving them out would leave
    /// fewer than `needed` sites; a down S3 site then fails at once anyway, see its breaker).
    fn left_out(&self, needed: usize) -> Vec<bool> {
        let mut skip: Vec<bool> = self.down.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if self.sites.len() - skip.iter().filter(|s| **s).count() < needed {
            skip.iter_mut().for_each(|s| *s = false);
        }
        skip
    }

    fn note_failure(&self, i: usize) {
        self.down.lock().unwrap_or_else(|p| p.into_inner())[i] = true;
    }

    /// Writes to every site not skipped, each in its own thread. Waits for all, except that
    /// once `min_sites` hold the object a site still writing [`WRITE_GRACE`] later is given up
    /// on for this write (its thread finishes on its own) and reported as a retryable failure,
    /// so that a site that stopped answering mid-write costs at most that long.
    fn put_each(
        &self,
        path: &str,
        shared: Arc<dyn ObjectSource>,
        skip: &[bool],
    ) -> Vec<Result<Put, SiteError>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut results: Vec<Option<Result<Put, SiteError>>> = Vec::new();
        for (i, site) in self.sites.iter().enumerate() {
            if skip[i] {
                results.push(Some(Err(SiteError::Retryable {
                    site: site.location().to_string(),
                    operation: "put",
                    path: path.to_string(),
                    message: "left out: the site is down for the rest of this run (an earlier \
                              request failed)"
                        .into(),
                })));
                continue;
            }
            results.push(None);
            let (site, tx, source, path) =
                (site.clone(), tx.clone(), shared.clone(), path.to_string());
            std::thread::spawn(move || {
                let _ = tx.send((i, site.put_from(&path, source)));
            });
        }
        drop(tx);
        let mut enough_since: Option<Instant> = None;
        while results.iter().any(Option::is_none) {
            let stored = results.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
            let next = if stored >= self.min_sites {
                let since = *enough_since.get_or_insert_with(Instant::now);
                rx.recv_timeout(WRITE_GRACE.saturating_sub(since.elapsed()))
                    .ok()
            } else {
                rx.recv().ok()
            };
            match next {
                Some((i, result)) => results[i] = Some(result),
                None => break,
            }
        }
        let gave_up = enough_since.is_some();
        results
            .into_iter()
            .zip(&self.sites)
            .map(|(result, site)| {
                result.unwrap_or_else(|| {
                    Err(if gave_up {
                        SiteError::Retryable {
                            site: site.location().to_string(),
                            operation: "put",
                            path: path.to_string(),
                            message: format!(
                                "still writing {} s after {} other site(s) held it: left out \
                                 of the rest of this run",
                                WRITE_GRACE.as_secs(),
                                self.min_sites
                            ),
                        }
                    } else {
                        SiteError::Permanent {
                            site: site.location().to_string(),
                            operation: "put",
                            path: path.to_string(),
                            message: "the site's writer panicked".into(),
                        }
                    })
                })
            })
            .collect()
    }

    /// Which sites must not be given `path` now: for a ledger entry, a checkpoint or a
    /// cosignature (what names entries), a site whose catch-up queue still holds anything. Such
    /// a site is first caught up here, its queue drained from the other sites in write order;
    /// only a site that still lacks something after that is left out (and `path` queued for it
    /// with the rest). A site holding an entry without the entries and objects before it would
    /// be judged damaged by `verify`; a site holding a prefix of the vault is only behind.
    /// Data objects (packs, indexes, manifests) go everywhere at once: alone they are harmless.
    ///
    /// Also returns, per site, the other entry a drain here brought to the place of the ledger
    /// entry `path`: the writer read its history without it (from the sites up in this run;
    /// the drain copies from down sites too), and the site must not get a second entry there.
    fn behind_before_entry(&self, path: &str, down: &[bool]) -> (Vec<bool>, Vec<Option<String>>) {
        let mut behind = vec![false; self.sites.len()];
        let mut forked = vec![None; self.sites.len()];
        let Some(q) = &self.queues else {
            return (behind, forked);
        };
        if embassy_core::engine::sync::write_stage(path) < ENTRY_STAGE {
            return (behind, forked);
        }
        // A writer that died mid-write (another process, or this one before a restart) may
        // have left an entry at some sites only, unqueued for the rest: its session becomes a
        // full comparison first, so the sites it wrote to are caught up before this entry lands
        // after a hole (seed 1796593640037832259 kill 7: a restarted agent's next entry reached
        // a site lacking the one its killed run was writing). If that cannot be done, every
        // site may be behind: each is left out and the path queued.
        if queue::recover_sessions(&q.state_dir).is_err() {
            return (down.iter().map(|d| !d).collect(), forked);
        }
        for (i, target) in self.sites.iter().enumerate() {
            if down[i] {
                continue;
            }
            // A queue that cannot be read: the site may be behind; left out, the write queued.
            match q.per_site[i].pending() {
                Ok(p) if p.is_empty() => continue,
                Ok(_) => {}
                Err(_) => {
                    behind[i] = true;
                    continue;
                }
            }
            // Every other site, the down ones too: down for writes is not down for reads, and
            // a site left out may be the only holder of what the queue names (drained from the
            // sites up only, a queued entry was "nowhere" and dropped, and the next entry
            // landed without it). One that cannot be read leaves the path queued.
            let sources: Vec<Arc<dyn Site>> = self
                .sites
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s.clone())
                .collect();
            let copied = match queue::drain(
                &q.per_site[i],
                target.as_ref(),
                &sources,
                &embassy_core::progress::Silent,
            ) {
                Ok(report) => {
                    behind[i] = report.remaining > 0 || !report.problems.is_empty();
                    report.copied > 0
                }
                Err(_) => {
                    behind[i] = true;
                    false
                }
            };
            // The drain may have brought an entry at this one's place, held by a site down for
            // this run (whose ledger the writer did not list): a second entry there would fork
            // the history at this site (crash campaign seed 1796595018723602712 kill 50).
            if copied && !behind[i] && layout::parse_ledger_path(path).is_some() {
                forked[i] = match embassy_core::engine::sync::fork_at(target.as_ref(), path) {
                    Ok(other) => other,
                    Err(e) => Some(format!("(its entries could not be listed: {e})")),
                };
            }
        }
        (behind, forked)
    }

    fn first_ok<T>(
        &self,
        mut op: impl FnMut(usize, &dyn Site) -> Result<T, SiteError>,
        path: &str,
    ) -> Result<T, SiteError> {
        let mut last = None;
        // Down sites are not asked while another site is up.
        let down = self.left_out(1);
        for i in (0..self.sites.len()).filter(|i| !down[*i]) {
            match op(i, self.sites[i].as_ref()) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    if matches!(e, SiteError::Retryable { .. }) {
                        self.note_failure(i);
                    }
                    last = Some(e)
                }
            }
        }
        Err(last.unwrap_or_else(|| SiteError::NotFound {
            site: self.location.clone(),
            path: path.to_string(),
        }))
    }
}

impl Site for ReplicatedSite {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.put_from(path, Arc::new(bytes.to_vec()))
    }

    fn put_from(&self, path: &str, source: Arc<dyn ObjectSource>) -> Result<Put, SiteError> {
        if let Some(q) = &self.queues {
            let mut session = q.session.lock().unwrap_or_else(|p| p.into_inner());
            if session.is_none() {
                let locations: Vec<String> = self
                    .sites
                    .iter()
                    .map(|s| s.location().to_string())
                    .collect();
                *session = Some(
                    Session::begin(&q.state_dir, &locations)
                        .map_err(|e| self.queue_error(path, e))?,
                );
            }
        }
        // Down sites are left out, as long as the others can meet min_sites.
        let down = self.left_out(self.min_sites);
        // And, for a ledger entry or what names one, sites still behind on their queue.
        let (behind, forked) = self.behind_before_entry(path, &down);
        let skip: Vec<bool> = (0..self.sites.len())
            .map(|i| down[i] || behind[i] || forked[i].is_some())
            .collect();
        // A ledger entry is named in the session before it goes out, with the sites it goes to:
        // should this process die mid-write, it may sit at some of them only, and the sites
        // without it are behind until those have been asked (a site down then may hold the only
        // copy: no other writer's entry may take its place meanwhile).
        let named = layout::parse_ledger_path(path).is_some();
        if let (Some(q), true) = (&self.queues, named) {
            let holders: Vec<&str> = (0..self.sites.len())
                .filter(|i| !skip[*i])
                .map(|i| self.sites[i].location())
                .collect();
            let mut session = q.session.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(session) = session.as_mut() {
                session
                    .intend(path, &holders)
                    .map_err(|e| self.queue_error(path, e))?;
            }
        }
        let mut results = self.put_each(path, source, &skip);
        for (i, result) in results.iter_mut().enumerate() {
            if let (Some(other), false) = (&forked[i], down[i]) {
                *result = Err(SiteError::Permanent {
                    site: self.sites[i].location().to_string(),
                    operation: "put",
                    path: path.to_string(),
                    message: format!(
                        "left out: the site holds another entry at this sequence number                          ({other}), which the writer did not see (a site down for this run                          held it); the history must be read again before appending"
                    ),
                });
            } else if behind[i] && !down[i] {
                *result = Err(SiteError::Retryable {
                    site: self.sites[i].location().to_string(),
                    operation: "put",
                    path: path.to_string(),
                    message: "left out: the site still lacks writes queued for it, and a \
                              ledger entry may reach a site only after everything before it \
                              (queued for its catch-up)"
                        .into(),
                });
            }
        }
        let mut stored = 0;
        let mut created = false;
        let mut failures = Vec::new();
        let mut failed_at = Vec::new();
        for (i, (site, result)) in self.sites.iter().zip(results).enumerate() {
            match result {
                Ok(put) => {
                    stored += 1;
                    created |= put == Put::Created;
                    self.down.lock().unwrap_or_else(|p| p.into_inner())[i] = false;
                }
                Err(e) => {
                    if matches!(e, SiteError::Retryable { .. }) && !skip[i] {
                        self.note_failure(i);
                    }
                    failed_at.push(i);
                    failures.push((site.location().to_string(), e));
                }
            }
        }
        if !failures.is_empty() {
            // The first failure of each site says why it fell behind; later ones only repeat it
            // ("left out: the site is down for the rest of this run").
            let mut lagging = self.lagging.lock().unwrap_or_else(|p| p.into_inner());
            for (site, e) in &failures {
                if !lagging.iter().any(|(s, _)| s == site) {
                    lagging.push((site.clone(), e.to_string()));
                }
            }
        }
        // Some site holds it: the others must catch up, recorded before the write counts.
        if stored > 0 {
            if let Some(q) = &self.queues {
                // Never a competing entry for a site that holds another at its place.
                for i in failed_at.into_iter().filter(|i| forked[*i].is_none()) {
                    q.per_site[i]
                        .record_missing(path)
                        .map_err(|e| self.queue_error(path, e))?;
                }
            }
        }
        // The entry is where it went, or queued for the sites it missed: settled.
        if let (Some(q), true) = (&self.queues, named) {
            let mut session = q.session.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(session) = session.as_mut() {
                session.settle().map_err(|e| self.queue_error(path, e))?;
            }
        }
        if stored >= self.min_sites {
            return Ok(if created {
                Put::Created
            } else {
                Put::AlreadyExisted
            });
        }
        let all_retryable = failures
            .iter()
            .all(|(_, e)| matches!(e, SiteError::Retryable { .. }));
        let message = format!(
            "stored at {stored} of {} sites, {} required: {}",
            self.sites.len(),
            self.min_sites,
            failures
                .iter()
                .map(|(s, e)| format!("{s}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        Err(if all_retryable {
            SiteError::Retryable {
                site: self.location.clone(),
                operation: "put",
                path: path.to_string(),
                message,
            }
        } else {
            SiteError::Permanent {
                site: self.location.clone(),
                operation: "put",
                path: path.to_string(),
                message,
            }
        })
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        let mut bytes = Vec::new();
        self.get_to(path, &mut bytes)?;
        Ok(bytes)
    }

    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        let restart = |sink: &mut dyn ObjectSink| {
            sink.restart()
                .map_err(|e| embassy_core::site::sink_error(&self.location, path, e))
        };
        let Some(expected) = layout::id_in_path(path) else {
            return self.first_ok(
                |_, site| {
                    restart(sink)?;
                    site.get_to(path, sink)
                },
                path,
            );
        };
        // The first intact copy, checked as it streams. When no site holds one, the first
        // damaged copy is returned as one site would return it: the caller judges it by its
        // hash exactly as on one site (noise when nothing accepted needs it, damage when
        // something does), whether the other sites lack the object or hold damaged copies too.
        let mut damaged: Option<usize> = None;
        let mut unreachable: Option<SiteError> = None;
        let intact = self.first_ok(
            |i, site| {
                restart(sink)?;
                let mut hashing = HashingSink::new(sink);
                let n = site.get_to(path, &mut hashing).inspect_err(|e| {
                    if let SiteError::Retryable {
                        site,
                        operation,
                        path,
                        message,
                    } = e
                    {
                        unreachable.get_or_insert_with(|| SiteError::Retryable {
                            site: site.clone(),
                            operation,
                            path: path.clone(),
                            message: message.clone(),
                        });
                    }
                })?;
                if hashing.id() == expected {
                    return Ok(n);
                }
                damaged.get_or_insert(i);
                // A damaged copy: try the next site.
                Err(SiteError::Permanent {
                    site: site.location().to_string(),
                    operation: "get",
                    path: path.to_string(),
                    message: "the copy here is damaged (bytes do not hash to its name)".into(),
                })
            },
            path,
        );
        // A site that could not be asked may hold the intact copy: say so rather than hand
        // back a damaged one, so that a site down is never reported as damage.
        match (intact, damaged, unreachable) {
            (Err(_), Some(_), Some(down)) => Err(down),
            (Err(_), Some(first_damaged), None) => {
                // Sites left out of this run (down) were not asked: one of them may hold it.
                let left_out = self.left_out(1);
                match left_out.iter().position(|out| *out) {
                    Some(i) => Err(SiteError::Retryable {
                        site: self.sites[i].location().to_string(),
                        operation: "get",
                        path: path.to_string(),
                        message: "the site is down for this run and the other copies are \
                                  damaged: bring it back, then read again"
                            .into(),
                    }),
                    None => {
                        restart(sink)?;
                        self.sites[first_damaged].get_to(path, sink)
                    }
                }
            }
            (result, _, _) => result,
        }
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.first_ok(|_, site| site.get_range(path, offset, len), path)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        // The union: an object any site holds can be read through the fallback.
        let mut all = std::collections::BTreeMap::new();
        let mut answered = 0;
        let mut last = None;
        let skip = self.left_out(1);
        for (i, site) in self.sites.iter().enumerate() {
            if skip[i] {
                continue;
            }
            match site.list(prefix) {
                Ok(infos) => {
                    answered += 1;
                    for i in infos {
                        all.entry(i.path.clone()).or_insert(i);
                    }
                }
                Err(e) => {
                    if matches!(e, SiteError::Retryable { .. }) {
                        self.note_failure(i);
                    }
                    last = Some(e)
                }
            }
        }
        if answered == 0 {
            return Err(last.unwrap_or_else(|| SiteError::NotFound {
                site: self.location.clone(),
                path: prefix.to_string(),
            }));
        }
        Ok(all.into_values().collect())
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        // Every site is asked, even after one failed: a delete is idempotent, and a site that
        // answers is not left holding what the others dropped (a withdrawn ledger entry).
        let mut first = None;
        for site in &self.sites {
            if let Err(e) = site.delete(path) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn members(&self) -> Vec<Arc<dyn Site>> {
        self.sites.clone()
    }

    fn lagging(&self) -> Vec<(String, String)> {
        self.lagging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embassy_core::id::ObjectId;

    /// A site that never answers.
    #[derive(Debug)]
    struct Down;

    impl Site for Down {
        fn location(&self) -> &str {
            "down"
        }
        fn put(&self, path: &str, _: &[u8]) -> Result<Put, SiteError> {
            Err(self.retryable("put", path))
        }
        fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
            Err(self.retryable("get", path))
        }
        fn get_range(&self, path: &str, _: u64, _: u64) -> Result<Vec<u8>, SiteError> {
            Err(self.retryable("get", path))
        }
        fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
            Err(self.retryable("list", prefix))
        }
        fn delete(&self, path: &str) -> Result<(), SiteError> {
            Err(self.retryable("delete", path))
        }
    }

    impl Down {
        fn retryable(&self, operation: &'static str, path: &str) -> SiteError {
            SiteError::Retryable {
                site: "down".into(),
                operation,
                path: path.into(),
                message: "connection refused".into(),
            }
        }
    }

    /// A damaged copy at one site is handed back to be judged (noise or damage) only when
    /// every other site answered: a site that is down may hold the intact copy, and a site
    /// down must never be reported as damage.
    #[test]
    fn a_damaged_copy_is_not_judged_while_a_site_that_may_hold_it_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let local: Arc<dyn Site> = Arc::new(crate::LocalSite::new(dir.path()).unwrap());
        let path = layout::ledger_entry("ds", 2, &ObjectId::of(b"the intact entry"));
        local.put(&path, b"garbage").unwrap();
        let both = ReplicatedSite::new(vec![local.clone(), Arc::new(Down)], 1).unwrap();
        let e = both.get(&path).unwrap_err();
        assert!(matches!(e, SiteError::Retryable { .. }), "{e}");
        // Asked again, the down site is left out of the run: still not a verdict.
        let e = both.get(&path).unwrap_err();
        assert!(matches!(e, SiteError::Retryable { .. }), "{e}");
        // Every site answered: the damaged copy goes to the caller's hash check.
        let alone = ReplicatedSite::new(vec![local], 1).unwrap();
        assert_eq!(alone.get(&path).unwrap(), b"garbage");
    }
}
