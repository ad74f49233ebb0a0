//! The scheduler: the agent's loop. It starts every dataset's runs when due (retrying with
//! backoff), keeps WAL streamers running, verifies sites and collects garbage on their
//! intervals, reaps what worker threads report, reloads on SIGHUP and shuts down within the
//! grace period. Looking at the sites (freshness, alarms, catch-up) is in [`look`].

mod drill;
mod groups;
mod look;
mod verify;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embassy_core::engine::vault::Keyring;
use embassy_core::ErrorKind;

use crate::alarms;
use crate::config::{Config, Mode};
use crate::control::Control;
use crate::error::RunError;
use crate::http::{lock, Shared};
use crate::log::{log, now_s};
use crate::options::Options;
use crate::run;
use crate::status::SiteSnapshot;

enum Done {
    Backup {
        dataset: String,
        started: i64,
        elapsed: Duration,
        result: Result<run::RunOutcome, RunError>,
    },
    CatchUp {
        site: String,
        result: Result<embassy_ops::catchup::CatchUpReport, RunError>,
    },
    Verify {
        results: Vec<(String, Result<String, RunError>)>,
    },
    Stream {
        dataset: String,
        result: Result<(), RunError>,
    },
    Gc {
        result: Result<String, RunError>,
    },
    Drill {
        dataset: String,
        elapsed: Duration,
        result: Result<embassy_ops::drill::DrillReport, RunError>,
    },
    GroupPoint {
        group: String,
        result: Result<embassy_ops::group::PointTaken, RunError>,
    },
    Looked {
        snaps: Vec<SiteSnapshot>,
        delivered: Vec<alarms::Notice>,
        now_ns: i64,
    },
}

/// A running WAL streamer of a continuous dataset.
struct Streamer {
    handle: JoinHandle<()>,
    stop: Arc<AtomicBool>,
    progress: Arc<Mutex<embassy_postgres::stream::StreamProgress>>,
}

struct Agent {
    config: Arc<Config>,
    shared: Arc<Shared>,
    keyring: Arc<Keyring>,
    cancel: Arc<AtomicBool>,
    tx: Sender<Done>,
    rx: Receiver<Done>,
    running: HashMap<String, JoinHandle<()>>,
    catching_up: HashMap<String, JoinHandle<()>>,
    /// Restore drills running, by dataset.
    drilling: HashMap<String, JoinHandle<()>>,
    verifying: Option<JoinHandle<()>>,
    /// Sites caught up since their last keyless verification failed: verified again as soon
    /// as no verification is running, so a failure that the catch-up mended does not stay on
    /// the dashboard until the next scheduled verification.
    reverify: BTreeSet<String>,
    /// Sites verified again since the last scheduled verification.
    reverified: BTreeSet<String>,
    streams: HashMap<String, Streamer>,
    looking: Option<JoinHandle<()>>,
    collecting: Option<JoinHandle<()>>,
    next_gc: Option<Instant>,
    next_verify: Option<Instant>,
    last_refresh: Option<Instant>,
    refresh_now: bool,
    /// A look is wanted after a run's end: at most every few seconds (see `event_look_gap`).
    refresh_soon: bool,
    once_pending: Vec<String>,
    once_failed: Vec<String>,
    http: Option<(Arc<tiny_http::Server>, JoinHandle<()>)>,
    /// Consistency groups' points on their intervals.
    group_points: groups::GroupPoints,
    /// The embassy node's standbys (`[[standbys]]`).
    node: Option<crate::node::Node>,
}

/// Runs the scheduler until stopped (or one cycle with `--once`), then shuts down: returns the
/// datasets whose runs failed.
pub(crate) fn schedule(
    config: Arc<Config>,
    shared: Arc<Shared>,
    keyring: Arc<Keyring>,
    cancel: Arc<AtomicBool>,
    http: Option<(Arc<tiny_http::Server>, JoinHandle<()>)>,
    options: &Options,
    control: &Control,
) -> Vec<String> {
    let (tx, rx) = channel();
    let mut agent = Agent {
        once_pending: if options.once {
            config
                .datasets
                .iter()
                .filter(|d| matches!(d.mode, Mode::Periodic(_) | Mode::Continuous(Some(_))))
                .map(|d| d.name.clone())
                .collect()
        } else {
            Vec::new()
        },
        next_verify: config.agent.verify_interval.map(|_| Instant::now()),
        config,
        shared,
        keyring,
        cancel,
        tx,
        rx,
        running: HashMap::new(),
        catching_up: HashMap::new(),
        drilling: HashMap::new(),
        verifying: None,
        reverify: BTreeSet::new(),
        reverified: BTreeSet::new(),
        streams: HashMap::new(),
        looking: None,
        collecting: None,
        next_gc: None,
        last_refresh: None,
        refresh_now: true,
        refresh_soon: false,
        once_failed: Vec::new(),
        http,
        group_points: groups::GroupPoints::default(),
        node: None,
    };
    if !options.once {
        // Started with no standbys too: a reload may add some.
        agent.node = Some(crate::node::Node::start(
            &agent.config,
            &agent.shared,
            &agent.keyring,
        ));
    }
    agent.next_gc = agent.config.agent.gc_interval.map(|i| Instant::now() + i);
    agent.main_loop(options, control);
    agent.shutdown();
    agent.once_failed
}

impl Agent {
    fn main_loop(&mut self, options: &Options, control: &Control) {
        let mut verified_once = !options.once || self.config.agent.verify_interval.is_none();
        loop {
            if control.stop.load(Ordering::SeqCst) {
                log("stop requested: no new runs start");
                return;
            }
            if control.reload.swap(false, Ordering::SeqCst) {
                self.reload();
            }
            self.reap();
            if options.once {
                self.start_once_runs();
            } else {
                self.start_due_runs();
            }
            if !options.once {
                self.continuous();
                self.start_due_drills();
                self.tick_group_points();
            }
            if let Some(at) = self.next_verify {
                let allowed = !options.once
                    || (!verified_once && self.once_pending.is_empty() && self.running.is_empty());
                if allowed && self.verifying.is_none() && Instant::now() >= at {
                    self.start_verify();
                    verified_once = true;
                }
            }
            if self.verifying.is_none() && !self.reverify.is_empty() {
                self.start_reverify();
            }
            if !options.once && self.collecting.is_none() {
                if let Some(at) = self.next_gc {
                    if Instant::now() >= at {
                        self.start_gc();
                    }
                }
            }
            self.maybe_refresh();
            if options.once
                && self.once_pending.is_empty()
                && self.running.is_empty()
                && self.verifying.is_none()
                && self.catching_up.is_empty()
                && verified_once
            {
                self.refresh_blocking();
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn reload(&mut self) {
        let path = self.config.path.clone();
        match Config::load(&path) {
            Ok(new) => {
                if new.keys != self.config.keys
                    || new.sites != self.config.sites
                    || new.agent.min_sites != self.config.agent.min_sites
                {
                    match run::open_vault(&new, &self.cancel)
                        .and_then(|v| run::unlock(&new.keys, &v))
                    {
                        Ok(k) => self.keyring = Arc::new(k),
                        Err(e) => {
                            log(format!(
                                "reload of {} refused, keeping the running configuration: {e}",
                                path.display()
                            ));
                            return;
                        }
                    }
                }
                for w in &new.warnings {
                    log(format!("warning: {w}"));
                }
                if new.status != self.config.status {
                    log("the [status] settings (listen, token_file) take effect at the next start");
                }
                let now = now_s();
                {
                    let mut st = lock(&self.shared.state);
                    for d in &new.datasets {
                        st.datasets.entry(d.name.clone()).or_insert_with(|| {
                            crate::state::DatasetState {
                                first_seen: now,
                                ..Default::default()
                            }
                        });
                    }
                }
                if new.agent.gc_interval != self.config.agent.gc_interval {
                    self.next_gc = new.agent.gc_interval.map(|i| Instant::now() + i);
                }
                if new.agent.verify_interval != self.config.agent.verify_interval {
                    self.next_verify = new.agent.verify_interval.map(|_| Instant::now());
                }
                log(format!(
                    "configuration reloaded from {}: {} datasets, {} sites, {} standbys",
                    path.display(),
                    new.datasets.len(),
                    new.sites.len(),
                    new.standbys.len()
                ));
                let new = Arc::new(new);
                *lock(&self.shared.config) = new.clone();
                if let Some(node) = &mut self.node {
                    node.reload(&new, &self.keyring);
                }
                self.config = new;
                self.refresh_now = true;
            }
            Err(e) => log(format!(
                "reload refused, keeping the running configuration; {} has problems:\n{e}",
                path.display()
            )),
        }
    }

    fn due(&self, name: &str, mode: &Mode, now: i64) -> bool {
        let (Mode::Periodic(schedule) | Mode::Continuous(Some(schedule))) = mode else {
            return false;
        };
        let st = lock(&self.shared.state);
        let Some(ds) = st.datasets.get(name) else {
            return true;
        };
        if ds.consecutive_failures > 0 {
            return ds.next_retry.is_none_or(|t| now >= t);
        }
        match (ds.last_success, ds.last_start) {
            (None, _) => true,
            (Some(_), start) => now >= schedule.next_run(start.unwrap_or(now), start),
        }
    }

    /// Starts the due runs, up to `max_parallel`, the dataset whose last run started longest
    /// ago (or that never ran) first: in configuration order, a dataset whose run outlasts its
    /// interval is due again each time a slot frees and kept every later dataset waiting for
    /// ever (the crash campaign's PostgreSQL base backup never started behind two 1 s datasets).
    fn start_due_runs(&mut self) {
        let now = now_s();
        let mut candidates: Vec<(Option<i64>, String)> = self
            .config
            .datasets
            .iter()
            .filter(|d| !self.running.contains_key(&d.name) && self.due(&d.name, &d.mode, now))
            .map(|d| {
                let st = lock(&self.shared.state);
                let last_start = st.datasets.get(&d.name).and_then(|ds| ds.last_start);
                (last_start, d.name.clone())
            })
            .collect();
        // Stable: equal starts keep the configuration's order (None, never started, first).
        candidates.sort_by_key(|(last_start, _)| *last_start);
        for (_, name) in candidates {
            if self.running.len() >= self.config.agent.max_parallel {
                break;
            }
            self.start_backup(&name);
        }
    }

    fn start_once_runs(&mut self) {
        while self.running.len() < self.config.agent.max_parallel && !self.once_pending.is_empty() {
            let name = self.once_pending.remove(0);
            self.start_backup(&name);
        }
    }

    fn start_backup(&mut self, name: &str) {
        let started = now_s();
        {
            let mut st = lock(&self.shared.state);
            let ds = st.datasets.entry(name.to_string()).or_default();
            ds.last_start = Some(started);
            ds.runs += 1;
        }
        let (config, keyring, cancel, tx) = (
            self.config.clone(),
            self.keyring.clone(),
            self.cancel.clone(),
            self.tx.clone(),
        );
        let dataset = name.to_string();
        log(format!(
            "{dataset}: backup started ({})",
            config
                .dataset(name)
                .map(|d| d.source.describe())
                .unwrap_or_default()
        ));
        let handle = std::thread::Builder::new()
            .name(format!("backup-{dataset}"))
            .spawn(move || {
                let t = Instant::now();
                let result = run::backup_dataset(&config, &keyring, &dataset, &cancel);
                let _ = tx.send(Done::Backup {
                    dataset,
                    started,
                    elapsed: t.elapsed(),
                    result,
                });
            });
        match handle {
            Ok(h) => {
                self.running.insert(name.to_string(), h);
            }
            Err(e) => log(format!("{name}: cannot start a worker thread: {e}")),
        }
    }

    /// Keeps a WAL streamer running for every continuous dataset (restarted with backoff when
    /// it stops on an error), and stops those of datasets no longer configured.
    fn continuous(&mut self) {
        let wanted: Vec<String> = self
            .config
            .datasets
            .iter()
            .filter(|d| matches!(d.mode, Mode::Continuous(_)))
            .map(|d| d.name.clone())
            .collect();
        for (name, s) in &self.streams {
            if !wanted.contains(name) {
                s.stop.store(true, Ordering::SeqCst);
            }
        }
        let now = now_s();
        for name in wanted {
            if self.streams.contains_key(&name) {
                continue;
            }
            let retry_due = {
                let st = lock(&self.shared.state);
                st.datasets
                    .get(&name)
                    .and_then(|d| d.next_retry)
                    .is_none_or(|t| now >= t)
            };
            if !retry_due {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let progress = Arc::new(Mutex::new(Default::default()));
            let (config, keyring, cancel, tx) = (
                self.config.clone(),
                self.keyring.clone(),
                self.cancel.clone(),
                self.tx.clone(),
            );
            let (dataset, thread_stop, thread_progress) =
                (name.clone(), stop.clone(), progress.clone());
            {
                let mut st = lock(&self.shared.state);
                let ds = st.datasets.entry(name.clone()).or_default();
                ds.last_start = Some(now);
                ds.runs += 1;
            }
            log(format!("{name}: continuous WAL streaming started"));
            match std::thread::Builder::new()
                .name(format!("stream-{name}"))
                .spawn(move || {
                    let result = run::stream_dataset(
                        &config,
                        &keyring,
                        &dataset,
                        &thread_stop,
                        &cancel,
                        thread_progress,
                    );
                    let _ = tx.send(Done::Stream { dataset, result });
                }) {
                Ok(handle) => {
                    self.streams.insert(
                        name,
                        Streamer {
                            handle,
                            stop,
                            progress,
                        },
                    );
                }
                Err(e) => log(format!("{name}: cannot start the streamer thread: {e}")),
            }
        }
    }

    /// The server's end of WAL per continuous dataset whose streamer runs without error.
    fn server_ends(&self) -> BTreeMap<String, u64> {
        self.streams
            .iter()
            .filter_map(|(name, s)| {
                let p = lock(&s.progress);
                (p.last_error.is_none() && p.server_end.0 > 0)
                    .then(|| (name.clone(), p.server_end.0))
            })
            .collect()
    }

    fn start_gc(&mut self) {
        let (config, cancel, tx) = (self.config.clone(), self.cancel.clone(), self.tx.clone());
        let keyring = self.keyring.clone();
        let grace = self.config.agent.gc_grace;
        log("garbage collection started");
        if let Ok(h) = std::thread::Builder::new()
            .name("gc".into())
            .spawn(move || {
                let result = run::collect_garbage(&config, &keyring, &cancel, grace);
                let _ = tx.send(Done::Gc { result });
            })
        {
            self.collecting = Some(h);
        }
        self.next_gc = self.config.agent.gc_interval.map(|i| Instant::now() + i);
    }

    fn reap(&mut self) {
        while let Ok(done) = self.rx.try_recv() {
            match done {
                Done::Backup {
                    dataset,
                    started,
                    elapsed,
                    result,
                } => {
                    if let Some(h) = self.running.remove(&dataset) {
                        let _ = h.join();
                    }
                    self.finish_backup(&dataset, started, elapsed, result);
                    self.refresh_soon = true;
                }
                Done::CatchUp { site, result } => self.finish_catch_up(site, result),
                Done::Gc { result } => {
                    if let Some(h) = self.collecting.take() {
                        let _ = h.join();
                    }
                    match result {
                        Ok(summary) => log(format!("garbage collection: {summary}")),
                        Err(e) => {
                            log(format!("garbage collection failed: [{}] {e}", e.kind()));
                            // Damage found by collection is not located by site: every site's
                            // keyless verification runs at once, and the damaged ones show as
                            // integrity on the dashboard, in /status.json, /metrics and alarms.
                            // An outage shows where the site is read, as any other.
                            if e.kind() == ErrorKind::Integrity {
                                self.reverify
                                    .extend(self.config.sites.iter().map(|s| s.name.clone()));
                            }
                        }
                    }
                    self.refresh_soon = true;
                }
                Done::Looked {
                    snaps,
                    delivered,
                    now_ns,
                } => {
                    if let Some(h) = self.looking.take() {
                        let _ = h.join();
                    }
                    self.apply_look(snaps, delivered, now_ns);
                }
                Done::Stream { dataset, result } => {
                    if let Some(s) = self.streams.remove(&dataset) {
                        let _ = s.handle.join();
                    }
                    let now = now_s();
                    let mut st = lock(&self.shared.state);
                    let ds = st.datasets.entry(dataset.clone()).or_default();
                    match result {
                        Ok(()) => {
                            ds.consecutive_failures = 0;
                            ds.next_retry = None;
                            drop(st);
                            log(format!("{dataset}: WAL streaming stopped"));
                        }
                        Err(e) => {
                            ds.errors += 1;
                            ds.consecutive_failures += 1;
                            let backoff = self
                                .config
                                .agent
                                .retry_initial
                                .saturating_mul(1u32 << (ds.consecutive_failures - 1).min(16))
                                .min(self.config.agent.retry_max);
                            ds.next_retry = Some(now + backoff.as_secs().max(1) as i64);
                            ds.last_error = Some(e.to_string());
                            ds.last_error_kind = Some(e.kind());
                            ds.last_error_at = Some(now);
                            drop(st);
                            log(format!(
                                "{dataset}: WAL streaming failed, restart in {}: [{}] {e}",
                                crate::schedule::format_duration(backoff),
                                e.kind()
                            ));
                        }
                    }
                    self.persist();
                    self.refresh_now = true;
                }
                Done::Verify { results } => self.finish_verify(results),
                Done::Drill {
                    dataset,
                    elapsed,
                    result,
                } => self.finish_drill(dataset, elapsed, result),
                Done::GroupPoint { group, result } => self.finish_group_point(group, result),
            }
        }
    }

    fn finish_backup(
        &mut self,
        dataset: &str,
        started: i64,
        elapsed: Duration,
        result: Result<run::RunOutcome, RunError>,
    ) {
        let now = now_s();
        let cfg = self.config.clone();
        let mut st = lock(&self.shared.state);
        let ds = st.datasets.entry(dataset.to_string()).or_default();
        match result {
            Ok(out) => {
                ds.last_success = Some(now);
                ds.last_version = Some(out.number);
                ds.last_duration_seconds = Some(elapsed.as_secs_f64());
                ds.consecutive_failures = 0;
                ds.next_retry = None;
                drop(st);
                log(format!(
                    "{dataset}: version {} stored in {:.1}s: {}, {} ({} new)",
                    out.number,
                    elapsed.as_secs_f64(),
                    embassy_core::text::count(out.files, "file", "files"),
                    embassy_core::text::size(out.bytes),
                    embassy_core::text::size(out.new_bytes)
                ));
                for w in &out.warnings {
                    log(format!("{dataset}: warning: {w}"));
                }
                match &out.pruned {
                    Ok(seqs) if !seqs.is_empty() => log(format!(
                        "{dataset}: retention deleted versions {} (one signed ledger entry; garbage collection removes their objects)",
                        seqs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
                    )),
                    Ok(_) => {}
                    Err(e) => log(format!("{dataset}: warning: retention not applied: {e}")),
                }
                let _ = started;
            }
            Err(e) => {
                ds.errors += 1;
                ds.consecutive_failures += 1;
                let backoff = cfg
                    .agent
                    .retry_initial
                    .saturating_mul(1u32 << (ds.consecutive_failures - 1).min(16))
                    .min(cfg.agent.retry_max);
                ds.next_retry = Some(now + backoff.as_secs().max(1) as i64);
                ds.last_error = Some(e.to_string());
                ds.last_error_kind = Some(e.kind());
                ds.last_error_at = Some(now);
                let failures = ds.consecutive_failures;
                drop(st);
                if self.cancel.load(Ordering::SeqCst) {
                    log(format!("{dataset}: run abandoned for shutdown, no version recorded (the next run reuses what it stored): {e}"));
                } else {
                    log(format!(
                        "{dataset}: backup failed (attempt {failures}), retry in {}: [{}] {e}",
                        crate::schedule::format_duration(backoff),
                        e.kind()
                    ));
                }
                self.once_failed.push(dataset.to_string());
            }
        }
        self.persist();
    }

    fn persist(&self) {
        let st = lock(&self.shared.state).clone();
        if let Err(e) = st.store(&self.config.agent.state_dir) {
            log(format!("warning: {e}"));
        }
    }

    /// Reaps finished work every 50 ms while `busy` holds, until `until` (or for good).
    fn reap_while(&mut self, busy: fn(&Agent) -> bool, until: Option<Instant>) {
        while busy(self) && until.is_none_or(|u| Instant::now() < u) {
            self.reap();
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn shutdown(&mut self) {
        self.group_points.finish();
        if let Some(mut node) = self.node.take() {
            node.stop();
        }
        if !self.streams.is_empty() {
            // Streamers seal what they hold, report it durable and return.
            for s in self.streams.values() {
                s.stop.store(true, Ordering::SeqCst);
            }
            let until = Instant::now() + self.config.agent.shutdown_grace + Duration::from_secs(5);
            self.reap_while(|a| !a.streams.is_empty(), Some(until));
            if !self.streams.is_empty() {
                log("streamers did not stop in time: abandoning their unsealed WAL (the slot keeps it for the next start)");
                self.cancel.store(true, Ordering::SeqCst);
                self.reap_while(|a| !a.streams.is_empty(), None);
            }
        }
        if !self.running.is_empty() {
            let grace = self.config.agent.shutdown_grace;
            log(format!(
                "waiting up to {} for {} in-flight runs ({})",
                crate::schedule::format_duration(grace),
                self.running.len(),
                self.running.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
            self.reap_while(|a| !a.running.is_empty(), Some(Instant::now() + grace));
            if !self.running.is_empty() {
                log("grace period over: abandoning in-flight runs (their versions are not recorded)");
                self.cancel.store(true, Ordering::SeqCst);
            }
            self.reap_while(|a| !a.running.is_empty(), None);
        }
        self.cancel.store(true, Ordering::SeqCst);
        let brief = |secs| Some(Instant::now() + Duration::from_secs(secs));
        // Catch-ups copy whole objects in format order and may be cut anywhere; wait briefly.
        self.reap_while(|a| !a.catching_up.is_empty(), brief(5));
        // A collection in flight ends at its next write (refused); deletions are idempotent.
        self.reap_while(|a| a.collecting.is_some(), brief(15));
        // A look in flight may be delivering an alarm: let it, briefly, so it is recorded.
        self.reap_while(|a| a.looking.is_some(), brief(15));
        self.persist();
        if let Some((server, handle)) = self.http.take() {
            server.unblock();
            let _ = handle.join();
        }
        log("agent stopped");
    }
}
