//! The long-running agent: runs every periodic dataset on its schedule (with retries and
//! backoff), catches lagging sites up, verifies every site without keys on its own interval,
//! keeps freshness, raises and clears RPO alarms, serves status, metrics and the dashboard,
//! reloads its configuration on SIGHUP and shuts down cleanly on SIGTERM/SIGINT.
//!
//! Shutdown: no new run starts; in-flight runs get `shutdown_grace` to finish; then their
//! writes are refused ([`crate::run::CancellableSite`]), so they end without recording a
//! version (never a partial one) and the next run reuses what they stored.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embassy_core::vault::Keyring;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::alarms;
use crate::config::{Config, Mode};
use crate::run;
use crate::state::AgentState;
use crate::status::{self, SiteSnapshot};

/// Writes one log line on stderr: UTC time, then the message.
pub fn log(message: impl AsRef<str>) {
    let now = embassy_core::time::utc(embassy_core::config::now_unix_nanos());
    // Messages carry text from sites and writers: no control characters reach the log.
    eprintln!("{now} {}", embassy_core::text::escape(message.as_ref()));
}

/// Flags the signal handlers set (the CLI registers them with `signal-hook`; tests set them).
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// SIGTERM / SIGINT: shut down.
    pub stop: Arc<AtomicBool>,
    /// SIGHUP: reload the configuration.
    pub reload: Arc<AtomicBool>,
}

impl Control {
    /// Registers SIGTERM, SIGINT (stop) and SIGHUP (reload). A second SIGTERM or SIGINT while
    /// stopping exits at once (status 1): runs in flight are cut, and since a version exists only
    /// once its ledger entry is written, none is left partial.
    pub fn from_signals() -> Result<Control, String> {
        let c = Control::default();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // Registered first, so it sees the flag as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(sig, 1, c.stop.clone())
                .map_err(|e| format!("cannot install the handler of signal {sig}: {e}"))?;
            signal_hook::flag::register(sig, c.stop.clone())
                .map_err(|e| format!("cannot install the handler of signal {sig}: {e}"))?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, c.reload.clone())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        Ok(c)
    }
}

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// One cycle: every periodic dataset once, a verification when configured, then exit.
    pub once: bool,
}

/// What the HTTP server and `status` read.
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub config: Mutex<Arc<Config>>,
    /// The agent's state.
    pub state: Mutex<AgentState>,
    /// The last reading of every site.
    pub snapshots: Mutex<Vec<SiteSnapshot>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Calls `view` with a consistent copy of config, site readings and state, and the time now.
    /// The locks are held only while copying, one at a time, so a slow render never blocks the agent.
    fn view<R>(&self, view: fn(&Config, &[SiteSnapshot], &AgentState, i64) -> R) -> R {
        let config = lock(&self.config).clone();
        let snaps = lock(&self.snapshots).clone();
        let state = lock(&self.state).clone();
        view(
            &config,
            &snaps,
            &state,
            embassy_core::config::now_unix_nanos(),
        )
    }
    /// The status document now.
    pub fn report(&self) -> serde_json::Value {
        self.view(status::report)
    }
    /// Prometheus metrics now.
    pub fn metrics(&self) -> String {
        self.view(status::metrics)
    }
    /// The dashboard now.
    pub fn dashboard(&self) -> String {
        self.view(crate::dashboard::render)
    }
}

enum Done {
    Backup {
        dataset: String,
        started: i64,
        elapsed: Duration,
        result: Result<run::RunOutcome, String>,
    },
    CatchUp {
        site: String,
        result: Result<u64, String>,
    },
    Verify {
        results: Vec<(String, bool, String)>,
    },
    Stream {
        dataset: String,
        result: Result<(), String>,
    },
    Gc {
        result: Result<String, String>,
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

fn now_s() -> i64 {
    embassy_core::config::now_unix()
}

/// The agent's failure to start or to keep going.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is not usable.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Something needed to start is missing or broken.
    #[error("{0}")]
    Start(String),
    /// Some runs of a `--once` cycle failed.
    #[error("{0}")]
    Failed(String),
}

/// The bearer token the status page asks for (`[status] token_file`), held zeroized.
#[derive(Clone)]
pub struct StatusToken(Arc<Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for StatusToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusToken(..)")
    }
}

/// Shortest token accepted: a guessable token is no protection.
const MIN_TOKEN_LEN: usize = 16;

impl StatusToken {
    /// Reads the first line of `path`: at least 16 characters.
    pub fn read(path: &Path) -> Result<StatusToken, String> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            format!(
                "the status token file {} cannot be read: {e}\n  (create it with `openssl rand -hex 32 > {}`)",
                path.display(),
                path.display()
            )
        })?);
        let line = text.lines().next().unwrap_or_default().trim();
        if line.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the status token in {} is shorter than {MIN_TOKEN_LEN} characters: write a long random one (`openssl rand -hex 32 > {}`)",
                path.display(),
                path.display()
            ));
        }
        Ok(StatusToken(Arc::new(Zeroizing::new(
            line.as_bytes().to_vec(),
        ))))
    }

    /// True when `given` is the token (compared in constant time).
    pub fn matches(&self, given: &[u8]) -> bool {
        bool::from(given.ct_eq(self.0.as_slice()))
    }

    /// True when the request carries the token: `Authorization: Bearer TOKEN`, or HTTP Basic
    /// with the token as password (what a browser sends after asking for it).
    fn admits(&self, request: &tiny_http::Request) -> bool {
        request
            .headers()
            .iter()
            .filter(|h| h.field.equiv("Authorization"))
            .any(|h| {
                let value = h.value.as_str().trim();
                let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
                if scheme.eq_ignore_ascii_case("bearer") {
                    self.matches(rest.trim().as_bytes())
                } else if scheme.eq_ignore_ascii_case("basic") {
                    use base64::Engine as _;
                    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim())
                    else {
                        return false;
                    };
                    let decoded = Zeroizing::new(decoded);
                    let password = decoded
                        .iter()
                        .position(|&b| b == b':')
                        .map_or(&decoded[..0], |i| &decoded[i + 1..]);
                    self.matches(password)
                } else {
                    false
                }
            })
    }
}

/// Serves `/`, `/status.json`, `/metrics` from `shared` on `listen` until `stop` is set. With a
/// token, every request without it is answered 401.
pub fn serve(
    listen: &str,
    token: Option<StatusToken>,
    shared: Arc<Shared>,
) -> Result<(Arc<tiny_http::Server>, JoinHandle<()>), String> {
    let server = Arc::new(
        tiny_http::Server::http(listen)
            .map_err(|e| format!("cannot listen on {listen} for the status page: {e}"))?,
    );
    let s = server.clone();
    let handle = std::thread::Builder::new()
        .name("embassy-http".into())
        .spawn(move || {
            for request in s.incoming_requests() {
                let url = request.url().split('?').next().unwrap_or("/").to_string();
                let admitted = token.as_ref().is_none_or(|t| t.admits(&request));
                let (body, ctype, code) = match url.as_str() {
                    _ if !admitted => (
                        "this status page needs its token: send `Authorization: Bearer TOKEN`\n"
                            .to_string(),
                        "text/plain",
                        401,
                    ),
                    "/" | "/index.html" => (shared.dashboard(), "text/html; charset=utf-8", 200),
                    "/status.json" => (format!("{}\n", shared.report()), "application/json", 200),
                    "/metrics" => (shared.metrics(), "text/plain; version=0.0.4", 200),
                    _ => ("not found\n".to_string(), "text/plain", 404),
                };
                let mut response = tiny_http::Response::from_string(body).with_status_code(code);
                let mut headers = vec![("Content-Type", ctype), ("Cache-Control", "no-store")];
                if !admitted {
                    headers.push(("WWW-Authenticate", "Bearer realm=\"Data Embassy\""));
                    headers.push(("WWW-Authenticate", "Basic realm=\"Data Embassy\""));
                }
                for (name, value) in headers {
                    if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                    {
                        response.add_header(h);
                    }
                }
                let _ = request.respond(response);
            }
        })
        .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
    Ok((server, handle))
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
    verifying: Option<JoinHandle<()>>,
    streams: HashMap<String, Streamer>,
    looking: Option<JoinHandle<()>>,
    collecting: Option<JoinHandle<()>>,
    next_gc: Option<Instant>,
    next_verify: Option<Instant>,
    last_refresh: Option<Instant>,
    refresh_now: bool,
    once_pending: Vec<String>,
    once_failed: Vec<String>,
    http: Option<(Arc<tiny_http::Server>, JoinHandle<()>)>,
}

/// Reads the config, opens the vault and the keys, and runs until stopped (or one cycle with
/// `--once`).
pub fn run(config_path: &Path, options: Options, control: Control) -> Result<(), AgentError> {
    let config = Arc::new(Config::load(config_path)?);
    for w in &config.warnings {
        log(format!("warning: {w}"));
    }
    let _lock = lock_state_dir(&config.agent.state_dir).map_err(AgentError::Start)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let vault = run::open_vault(&config, &cancel).map_err(|e| {
        AgentError::Start(format!(
            "cannot open the vault at the configured sites: {e}\n  (create it with `embassy init --site {}`)",
            config.locations().join(" --site ")
        ))
    })?;
    let keyring = Arc::new(run::unlock(&config.keys, &vault).map_err(AgentError::Start)?);
    let mut state = AgentState::load(&config.agent.state_dir).map_err(AgentError::Start)?;
    let now = now_s();
    for d in &config.datasets {
        state
            .datasets
            .entry(d.name.clone())
            .or_insert_with(|| crate::state::DatasetState {
                first_seen: now,
                ..Default::default()
            });
    }
    log(format!(
        "agent started: vault {}, {} datasets, {} sites ({}), state in {}",
        vault.config().vault_id,
        config.datasets.len(),
        config.sites.len(),
        config
            .sites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        config.agent.state_dir.display()
    ));
    let shared = Arc::new(Shared {
        config: Mutex::new(config.clone()),
        state: Mutex::new(state),
        snapshots: Mutex::new(Vec::new()),
    });
    let http = match &config.status.listen {
        Some(listen) if !options.once => {
            let token = match &config.status.token_file {
                Some(f) => Some(StatusToken::read(f).map_err(AgentError::Start)?),
                None => None,
            };
            let guarded = if token.is_some() {
                ", token required"
            } else {
                ""
            };
            let h = serve(listen, token, shared.clone()).map_err(AgentError::Start)?;
            log(format!(
                "dashboard at http://{listen}/ (also /status.json and /metrics{guarded})"
            ));
            Some(h)
        }
        _ => None,
    };
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
        verifying: None,
        streams: HashMap::new(),
        looking: None,
        collecting: None,
        next_gc: None,
        last_refresh: None,
        refresh_now: true,
        once_failed: Vec::new(),
        http,
    };
    agent.next_gc = agent.config.agent.gc_interval.map(|i| Instant::now() + i);
    agent.main_loop(&options, &control);
    agent.shutdown();
    if options.once && !agent.once_failed.is_empty() {
        return Err(AgentError::Failed(format!(
            "{} of the cycle's runs failed: {}",
            agent.once_failed.len(),
            agent.once_failed.join(", ")
        )));
    }
    Ok(())
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
            }
            if let Some(at) = self.next_verify {
                let allowed = !options.once
                    || (!verified_once && self.once_pending.is_empty() && self.running.is_empty());
                if allowed && self.verifying.is_none() && Instant::now() >= at {
                    self.start_verify();
                    verified_once = true;
                }
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
                    "configuration reloaded from {}: {} datasets, {} sites",
                    path.display(),
                    new.datasets.len(),
                    new.sites.len()
                ));
                let new = Arc::new(new);
                *lock(&self.shared.config) = new.clone();
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

    fn start_due_runs(&mut self) {
        let now = now_s();
        let candidates: Vec<(String, Mode)> = self
            .config
            .datasets
            .iter()
            .map(|d| (d.name.clone(), d.mode.clone()))
            .collect();
        for (name, mode) in candidates {
            if self.running.len() >= self.config.agent.max_parallel {
                break;
            }
            if self.running.contains_key(&name) || !self.due(&name, &mode, now) {
                continue;
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

    fn start_verify(&mut self) {
        let sites: Vec<(String, String)> = self
            .config
            .sites
            .iter()
            .map(|s| (s.name.clone(), s.location.clone()))
            .collect();
        let tx = self.tx.clone();
        log(format!(
            "keyless verification of {} sites started",
            sites.len()
        ));
        if let Ok(h) = std::thread::Builder::new()
            .name("verify".into())
            .spawn(move || {
                let results = sites
                    .into_iter()
                    .map(|(name, location)| {
                        let (ok, summary) = run::verify_site(&location);
                        (name, ok, summary)
                    })
                    .collect();
                let _ = tx.send(Done::Verify { results });
            })
        {
            self.verifying = Some(h);
        }
        self.next_verify = self
            .config
            .agent
            .verify_interval
            .map(|i| Instant::now() + i);
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
                    self.refresh_now = true;
                }
                Done::CatchUp { site, result } => {
                    if let Some(h) = self.catching_up.remove(&site) {
                        let _ = h.join();
                    }
                    match result {
                        Ok(n) => log(format!("site {site} caught up: {n} objects copied")),
                        Err(e) => log(format!("site {site} could not be caught up yet: {e}")),
                    }
                    self.refresh_now = true;
                }
                Done::Gc { result } => {
                    if let Some(h) = self.collecting.take() {
                        let _ = h.join();
                    }
                    match result {
                        Ok(summary) => log(format!("garbage collection: {summary}")),
                        Err(e) => log(format!("garbage collection failed: {e}")),
                    }
                    self.refresh_now = true;
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
                            ds.last_error = Some(e.clone());
                            ds.last_error_at = Some(now);
                            drop(st);
                            log(format!(
                                "{dataset}: WAL streaming failed, restart in {}: {e}",
                                crate::schedule::format_duration(backoff)
                            ));
                        }
                    }
                    self.persist();
                    self.refresh_now = true;
                }
                Done::Verify { results } => {
                    if let Some(h) = self.verifying.take() {
                        let _ = h.join();
                    }
                    let now = now_s();
                    let mut st = lock(&self.shared.state);
                    for (site, ok, summary) in results {
                        log(format!(
                            "verify {site}: {} ({summary})",
                            if ok { "OK" } else { "FAILED" }
                        ));
                        st.verify.insert(
                            site,
                            crate::state::VerifyState {
                                at: now,
                                ok,
                                summary,
                            },
                        );
                    }
                    drop(st);
                    self.persist();
                }
            }
        }
    }

    fn finish_backup(
        &mut self,
        dataset: &str,
        started: i64,
        elapsed: Duration,
        result: Result<run::RunOutcome, String>,
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
                    "{dataset}: version {} stored in {:.1}s: {} files, {} bytes ({} new)",
                    out.number,
                    elapsed.as_secs_f64(),
                    out.files,
                    out.bytes,
                    out.new_bytes
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
                ds.last_error = Some(e.clone());
                ds.last_error_at = Some(now);
                let failures = ds.consecutive_failures;
                drop(st);
                if self.cancel.load(Ordering::SeqCst) {
                    log(format!("{dataset}: run abandoned for shutdown, no version recorded (the next run reuses what it stored): {e}"));
                } else {
                    log(format!(
                        "{dataset}: backup failed (attempt {failures}), retry in {}: {e}",
                        crate::schedule::format_duration(backoff)
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

    fn refresh_interval(&self) -> Duration {
        let smallest = self
            .config
            .datasets
            .iter()
            .map(|d| d.rpo / 4)
            .min()
            .unwrap_or(Duration::from_secs(10));
        smallest.clamp(Duration::from_secs(1), Duration::from_secs(15))
    }

    /// Spacing of lag history points: a quarter of the smallest RPO, 1 s to 2 min, so the 720
    /// points kept span about a day for RPOs of 8 minutes or more.
    fn history_spacing(&self) -> i64 {
        let smallest = self
            .config
            .datasets
            .iter()
            .map(|d| d.rpo / 4)
            .min()
            .unwrap_or(Duration::from_secs(120));
        smallest
            .clamp(Duration::from_secs(1), Duration::from_secs(120))
            .as_secs() as i64
    }

    fn maybe_refresh(&mut self) {
        let due = self.refresh_now
            || self
                .last_refresh
                .is_none_or(|t| t.elapsed() >= self.refresh_interval());
        if due {
            self.refresh();
        }
    }

    /// Starts a look at every site on a worker thread (reading sites and delivering alarms can
    /// take a while; the scheduler and the signals must not wait for it). Its result arrives as
    /// [`Done::Looked`] and is applied by [`Agent::apply_look`].
    fn refresh(&mut self) {
        if self.looking.is_some() {
            return;
        }
        self.refresh_now = false;
        self.last_refresh = Some(Instant::now());
        let config = self.config.clone();
        let ends = self.server_ends();
        let state = lock(&self.shared.state).clone();
        let tx = self.tx.clone();
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("look".into())
            .spawn(move || {
                let snaps = status::snapshot_all(&config, &ends);
                // Published before any alarm goes out: whoever an alarm sends to the dashboard
                // sees what raised it.
                *lock(&shared.snapshots) = snaps.clone();
                let now_ns = embassy_core::config::now_unix_nanos();
                let rows = status::rows(&config, &snaps, &state, now_ns);
                let mut delivered = Vec::new();
                for n in alarms::evaluate(&rows, &state, now_ns / 1_000_000_000) {
                    let label = if n.event == "raised" {
                        "ALARM"
                    } else {
                        "cleared"
                    };
                    log(format!("{label}: {}", n.message));
                    match alarms::deliver(&config, &n) {
                        Ok(()) => {
                            // Recorded at once, so /status.json lists it as soon as it is out.
                            alarms::mark_delivered(&mut lock(&shared.state), &n);
                            delivered.push(n);
                        }
                        Err(e) => log(format!("alarm could not be delivered (will retry): {e}")),
                    }
                }
                let _ = tx.send(Done::Looked {
                    snaps,
                    delivered,
                    now_ns,
                });
            });
        match spawned {
            Ok(h) => self.looking = Some(h),
            Err(e) => log(format!("cannot start a look at the sites: {e}")),
        }
    }

    /// Starts a look and waits for it to be applied.
    fn refresh_blocking(&mut self) {
        self.refresh();
        while self.looking.is_some() {
            self.reap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Records lag history and delivered alarms, publishes the snapshots, persists the state and
    /// catches up lagging sites.
    fn apply_look(
        &mut self,
        snaps: Vec<SiteSnapshot>,
        delivered: Vec<alarms::Notice>,
        now_ns: i64,
    ) {
        let now = now_ns / 1_000_000_000;
        let spacing = self.history_spacing();
        {
            let mut state = lock(&self.shared.state);
            let rows = status::rows(&self.config, &snaps, &state, now_ns);
            for row in &rows {
                for c in &row.cells {
                    state.record_lag(
                        &format!("{}@{}", row.name, c.site),
                        now,
                        c.lag_seconds.unwrap_or(-1.0),
                        spacing,
                    );
                }
            }
            for snap in &snaps {
                for (dataset, f) in &snap.datasets {
                    if let (None, Some(c)) = (&f.error, f.captured_ns) {
                        let seen = state
                            .seen
                            .entry(format!("{dataset}@{}", snap.name))
                            .or_insert(c);
                        *seen = (*seen).max(c);
                    }
                }
            }
            // Delivered alarms were recorded by the look itself.
            let _ = &delivered;
        }
        self.persist();
        self.catch_up_lagging(&snaps);
    }

    fn catch_up_lagging(&mut self, snaps: &[SiteSnapshot]) {
        if self.cancel.load(Ordering::SeqCst) {
            return;
        }
        // The most complete readable site: the one holding the most ledger entries.
        let best = snaps
            .iter()
            .filter(|s| s.error.is_none() && s.datasets.values().all(|f| f.error.is_none()))
            .max_by_key(|s| s.datasets.values().map(|f| f.versions).sum::<u64>());
        let Some(best) = best else { return };
        for s in snaps {
            if s.name == best.name || self.catching_up.contains_key(&s.name) {
                continue;
            }
            let behind = best.datasets.iter().any(|(d, f)| {
                s.datasets.get(d).is_none_or(|mine| {
                    mine.error.is_some() || mine.newest_version < f.newest_version
                })
            });
            // A site that cannot be opened at all may still be empty (catch up) or down (the
            // attempt fails and is retried at the next look).
            if !behind {
                continue;
            }
            let state_dir = self.config.agent.state_dir.clone();
            let (from, to, site, tx) = (
                best.location.clone(),
                s.location.clone(),
                s.name.clone(),
                self.tx.clone(),
            );
            if let Ok(h) = std::thread::Builder::new()
                .name(format!("catch-up-{site}"))
                .spawn({
                    let site = site.clone();
                    move || {
                        let result = run::catch_up(&state_dir, &from, &to);
                        let _ = tx.send(Done::CatchUp { site, result });
                    }
                })
            {
                self.catching_up.insert(site, h);
            }
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

/// Takes the agent's lock on its state folder (`agent.lock`, holding the pid): two agents on one
/// state folder would overwrite each other's alarms and history. Released when the file closes.
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create state folder {}: {e}", dir.display()))?;
    let path = dir.join("agent.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor we own, for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(format!(
            "another embassy agent (pid {}) runs with state folder {}: stop it first, or give this one its own [agent] state_dir",
            pid.trim(),
            dir.display()
        ));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}

/// The status document for a configuration, read now from every site and the agent's state
/// folder: what `embassy status --config FILE --json` prints (the agent serves the same).
pub fn status_now(config: &Config) -> Result<serde_json::Value, String> {
    let state = AgentState::load(&config.agent.state_dir)?;
    let mut ends = BTreeMap::new();
    for d in config
        .datasets
        .iter()
        .filter(|d| matches!(d.mode, Mode::Continuous(_)))
    {
        if let crate::config::Source::Postgres { conninfo, .. } = &d.source {
            let end = embassy_postgres::replication::ConnConfig::parse(conninfo)
                .and_then(|c| embassy_postgres::status::server_lsn(&c));
            if let Ok(end) = end {
                ends.insert(d.name.clone(), end.0);
            }
        }
    }
    let snaps = status::snapshot_all(config, &ends);
    Ok(status::report(
        config,
        &snaps,
        &state,
        embassy_core::config::now_unix_nanos(),
    ))
}
