//! The embassy node: for each `[[standbys]]` of the configuration, a hot standby of a PostgreSQL
//! dataset that follows the vault. One thread per standby makes its data directory from the
//! newest base backup when it is absent (`embassy_ops::pgrestore::standby`, as `embassy
//! standby` does: its `restore_command` fetches WAL, the newest partial file included, with a
//! reader credential of that dataset alone), runs PostgreSQL on it as the data directory's
//! owner with `hot_standby = on` (read-only queries on its port), measures its lag behind the
//! newest durable WAL in the vault every [`TICK`], and keeps it up:
//!
//! - a server that stopped (crashed, killed) is started again; one that stops again within
//!   [`QUICK_EXIT`] of its start [`QUICK_EXITS`] times in a row is rebuilt;
//! - a standby whose replay does not move while the vault holds WAL it has not replayed (a
//!   missing segment, a timeline it cannot follow) for [`stall_limit`] is rebuilt;
//! - a rebuild stops the server, removes the data directory and its fetch folder and makes
//!   them again from the newest base backup.
//!
//! Each step is logged and kept in the agent's state ([`StandbyState`]): the dashboard,
//! `/status.json`, `/metrics` and the alarms read it from there.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embassy_core::engine::vault::{Keyring, Vault};

use crate::config::{Config, StandbyConfig};
use crate::http::{lock, Shared};
use crate::log::{log, now_s};
use crate::state::StandbyState;

/// How often each standby is looked at.
pub const TICK: Duration = Duration::from_secs(1);

/// A server that stops within this long after its start stopped "at once".
pub const QUICK_EXIT: Duration = Duration::from_secs(30);

/// Stops at once in a row before the standby is rebuilt instead of started again.
pub const QUICK_EXITS: u32 = 3;

/// The first wait after a rebuild failed; it doubles with each failure in a row, up to
/// [`REBUILD_RETRY_MAX`].
pub const REBUILD_RETRY: Duration = Duration::from_secs(5);

/// The longest wait between rebuild attempts.
pub const REBUILD_RETRY_MAX: Duration = Duration::from_secs(300);

/// How long replay may stand still while the vault holds WAL it has not replayed before the
/// standby is rebuilt: twice its lag alarm, at least a minute.
pub fn stall_limit(s: &StandbyConfig) -> Duration {
    (s.lag_alarm * 2).max(Duration::from_secs(60))
}

/// The running embassy node: one thread per standby.
pub(crate) struct Node {
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Node {
    /// Starts a keeper thread for every standby of `config` (none: nothing runs).
    pub(crate) fn start(
        config: &Arc<Config>,
        shared: &Arc<Shared>,
        keyring: &Arc<Keyring>,
    ) -> Node {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for s in &config.standbys {
            let keeper = Keeper {
                config: config.clone(),
                standby: s.clone(),
                shared: shared.clone(),
                keyring: keyring.clone(),
                stop: stop.clone(),
            };
            match std::thread::Builder::new()
                .name(format!("standby {}", s.dataset))
                .spawn(move || keeper.run())
            {
                Ok(h) => threads.push(h),
                Err(e) => log(format!(
                    "standby of {}: cannot start its keeper: {e}",
                    s.dataset
                )),
            }
        }
        Node { threads, stop }
    }

    /// Stops every standby's server (fast shutdown) and waits for the keepers.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

/// Where the standby's server puts its socket and log: `<data dir>.run`, beside the data
/// directory (never inside it: a rebuild removes the data directory).
pub fn run_folder(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_os_string();
    name.push(".run");
    PathBuf::from(name)
}

struct Keeper {
    config: Arc<Config>,
    standby: StandbyConfig,
    shared: Arc<Shared>,
    keyring: Arc<Keyring>,
    stop: Arc<AtomicBool>,
}

/// The server the keeper started.
struct Server {
    child: Child,
    started: Instant,
}

/// What the keeper remembers between ticks.
#[derive(Default)]
struct Watch {
    server: Option<Server>,
    quick_exits: u32,
    /// The replay position and since when it has not moved while behind the vault.
    stalled: Option<(String, Instant)>,
    last_vault_look: Option<Instant>,
    vault_wal: Option<embassy_postgres::status::SiteWal>,
    /// Rebuilds that failed in a row, and when the next may be tried.
    rebuild_failures: u32,
    next_rebuild: Option<Instant>,
}

impl Keeper {
    fn name(&self) -> &str {
        &self.standby.dataset
    }

    fn update(&self, f: impl FnOnce(&mut StandbyState)) {
        let mut st = lock(&self.shared.state);
        let s = st.standbys.entry(self.standby.dataset.clone()).or_default();
        f(s);
    }

    fn phase(&self, phase: &str) {
        let now = now_s();
        self.update(|s| {
            if s.phase != phase {
                s.phase = phase.to_string();
                s.since = now;
            }
            if phase != "following" {
                // Not measured while it does not follow: no figure rather than an old one.
                s.lag_seconds = None;
                s.lag_bytes = None;
            }
        });
    }

    fn run(self) {
        let mut w = Watch::default();
        let mut vault = None;
        self.phase("starting");
        while !self.stop.load(Ordering::SeqCst) {
            self.tick(&mut vault, &mut w);
            let until = Instant::now() + TICK;
            while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if let Some(server) = w.server.take() {
            stop_server(server);
            log(format!("standby of {}: server stopped", self.name()));
        }
    }

    fn owner(&self) -> Result<Option<(u32, u32)>, String> {
        embassy_ops::pgrestore::owner(self.standby.owner.as_deref()).map_err(|e| e.to_string())
    }

    fn tick(&self, vault: &mut Option<Vault>, w: &mut Watch) {
        if vault.is_none() {
            let cancel = Arc::new(AtomicBool::new(false));
            match crate::run::open_vault(&self.config, &cancel) {
                Ok(v) => *vault = Some(v),
                Err(e) => {
                    self.down(format!("cannot open the vault: {e}"));
                    return;
                }
            }
        }
        let Some(vault) = vault.as_ref() else {
            return;
        };
        let dir = &self.standby.data_dir;
        if !dir.join("PG_VERSION").exists() {
            if let Some(server) = w.server.take() {
                stop_server(server);
            }
            let why = if dir.exists() {
                "its data directory is incomplete"
            } else {
                "its data directory is absent"
            };
            self.rebuild(vault, w, why);
            return;
        }
        // The server: reaped when it stopped, started when it does not run.
        if let Some(server) = w.server.as_mut() {
            if let Ok(Some(status)) = server.child.try_wait() {
                let quick = server.started.elapsed() < QUICK_EXIT;
                w.server = None;
                w.quick_exits = if quick { w.quick_exits + 1 } else { 0 };
                let msg = format!("its server stopped ({status})");
                log(format!("standby of {}: {msg}", self.name()));
                self.update(|s| s.last_error = Some(msg.clone()));
                self.phase("down");
                if w.quick_exits >= QUICK_EXITS {
                    let why = format!(
                        "its server stopped {} times within {} s of its start",
                        w.quick_exits,
                        QUICK_EXIT.as_secs()
                    );
                    self.rebuild(vault, w, &why);
                    return;
                }
            }
        }
        if w.server.is_none() {
            let restart = lock(&self.shared.state)
                .standbys
                .get(self.name())
                .is_some_and(|s| s.phase == "down");
            match self.start_server() {
                Ok(server) => {
                    w.server = Some(server);
                    w.stalled = None;
                    if restart {
                        self.update(|s| s.restarts = s.restarts.saturating_add(1));
                        log(format!(
                            "standby of {}: server started again on port {}",
                            self.name(),
                            self.standby.port
                        ));
                    } else {
                        log(format!(
                            "standby of {}: server started on port {} ({})",
                            self.name(),
                            self.standby.port,
                            dir.display()
                        ));
                    }
                    self.phase("starting");
                }
                Err(e) => {
                    w.quick_exits += 1;
                    self.down(e);
                    if w.quick_exits >= QUICK_EXITS {
                        self.rebuild(vault, w, "its server does not start");
                    }
                }
            }
            return;
        }
        self.measure(vault, w);
    }

    fn down(&self, why: String) {
        let first = lock(&self.shared.state)
            .standbys
            .get(self.name())
            .is_none_or(|s| s.last_error.as_deref() != Some(&why));
        if first {
            log(format!("standby of {}: down: {why}", self.name()));
        }
        self.update(|s| s.last_error = Some(why));
        self.phase("down");
    }

    /// Asks the standby and the vault where they are; rebuilds a standby whose replay stalled.
    fn measure(&self, vault: &Vault, w: &mut Watch) {
        let row = embassy_postgres::standby::sql(
            &self.standby.data_dir,
            None,
            "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, ''), \
             coalesce(extract(epoch FROM pg_last_xact_replay_timestamp())::text, '')",
        );
        // The vault is listed after the standby was asked, so the lag is never understated.
        if w.last_vault_look.is_none_or(|t| t.elapsed() >= TICK) {
            w.last_vault_look = Some(Instant::now());
            match embassy_postgres::status::site_wal("vault", vault.site().as_ref(), self.name()) {
                Ok(found) => w.vault_wal = found,
                Err(e) => {
                    self.update(|s| s.last_error = Some(format!("listing the vault's WAL: {e}")))
                }
            }
        }
        let now = now_s();
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                // Not yet consistent (hot standby opens once it is), or shutting down.
                self.update(|s| {
                    s.checked_at = Some(now);
                    s.last_error = Some(e.to_string());
                });
                return;
            }
        };
        let cols: Vec<&str> = row.split('|').collect();
        if cols.len() != 3 {
            return;
        }
        if cols[0] != "t" {
            self.down(
                "its server is not in recovery: it was promoted; the node leaves it alone".into(),
            );
            return;
        }
        let replay: Option<embassy_postgres::Lsn> = cols[1].parse().ok();
        let replay_ts: Option<f64> = cols[2].parse().ok();
        let vault_wal = w.vault_wal.clone();
        let lag_bytes = match (&vault_wal, replay) {
            (Some(v), Some(r)) => Some(v.durable.0.saturating_sub(r.0)),
            _ => None,
        };
        let lag_seconds = match (lag_bytes, &vault_wal, replay_ts) {
            (Some(0), _, _) => Some(0.0),
            (Some(_), Some(v), Some(ts)) if v.captured_at_ns > 0 => {
                Some((v.captured_at_ns as f64 / 1e9 - ts).max(0.0))
            }
            (Some(_), Some(v), None) if v.captured_at_ns > 0 => {
                // Nothing replayed since it started: behind by at least the time since then.
                let since = lock(&self.shared.state)
                    .standbys
                    .get(self.name())
                    .map_or(now, |s| s.since);
                Some((now - since).max(0) as f64)
            }
            _ => None,
        };
        self.update(|s| {
            s.checked_at = Some(now);
            s.replay_lsn = replay.map(|l| l.to_string());
            s.vault_lsn = vault_wal.as_ref().map(|v| v.durable.to_string());
            s.lag_bytes = lag_bytes;
            s.lag_seconds = lag_seconds;
            s.last_replay_at = replay_ts;
            s.last_error = None;
        });
        self.phase("following");
        w.quick_exits = 0;
        // Stalled: behind the vault and not moving.
        let pos = cols[1].to_string();
        if lag_bytes.unwrap_or(0) == 0 {
            w.stalled = None;
            return;
        }
        match &w.stalled {
            Some((at, since)) if *at == pos => {
                if since.elapsed() >= stall_limit(&self.standby) {
                    let why = format!(
                        "replay stood still at {pos} for {} s while the vault holds WAL to {}",
                        since.elapsed().as_secs(),
                        vault_wal.map(|v| v.durable.to_string()).unwrap_or_default()
                    );
                    if let Some(server) = w.server.take() {
                        stop_server(server);
                    }
                    self.rebuild(vault, w, &why);
                }
            }
            _ => w.stalled = Some((pos, Instant::now())),
        }
    }

    /// Makes the data directory again from the newest base backup (removing what is there).
    fn rebuild(&self, vault: &Vault, w: &mut Watch, why: &str) {
        if w.next_rebuild.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let dir = &self.standby.data_dir;
        let first = !dir.exists()
            && lock(&self.shared.state)
                .standbys
                .get(self.name())
                .is_none_or(|s| s.rebuilds == 0 && s.restarts == 0 && s.replay_lsn.is_none());
        log(format!(
            "standby of {}: {} from the newest base backup: {why}",
            self.name(),
            if first {
                "creating it"
            } else {
                "rebuilding it"
            }
        ));
        self.phase(if first { "creating" } else { "rebuilding" });
        w.stalled = None;
        w.quick_exits = 0;
        let started = Instant::now();
        match self.make(vault) {
            Ok(()) => {
                let now = now_s();
                log(format!(
                    "standby of {}: {} {} in {:.1} s",
                    self.name(),
                    if first { "created" } else { "rebuilt" },
                    dir.display(),
                    started.elapsed().as_secs_f64()
                ));
                self.update(|s| {
                    if !first {
                        s.rebuilds = s.rebuilds.saturating_add(1);
                        s.last_rebuild_at = Some(now);
                        s.last_rebuild_reason = Some(why.to_string());
                    }
                    s.last_error = None;
                });
                w.rebuild_failures = 0;
                w.next_rebuild = None;
                self.phase("starting");
            }
            Err(e) => {
                w.rebuild_failures = w.rebuild_failures.saturating_add(1);
                let wait = REBUILD_RETRY
                    .saturating_mul(1 << w.rebuild_failures.min(6).saturating_sub(1))
                    .min(REBUILD_RETRY_MAX);
                w.next_rebuild = Some(Instant::now() + wait);
                self.down(format!(
                    "cannot make it from the newest base backup (tried again in {} s): {e}",
                    wait.as_secs()
                ));
            }
        }
    }

    fn make(&self, vault: &Vault) -> Result<(), String> {
        let dir = &self.standby.data_dir;
        let owner = self.owner()?;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        embassy_ops::pgrestore::FetchFolder::remove_beside(dir).map_err(|e| e.to_string())?;
        let fetch = embassy_ops::pgrestore::FetchSetup::this_program(
            self.config.locations(),
            Some(self.config.agent.min_sites),
            Some(self.config.agent.state_dir.clone()),
        )
        .map_err(|e| e.to_string())?;
        embassy_ops::pgrestore::standby(
            vault,
            &self.keyring,
            self.name(),
            dir,
            owner,
            &[],
            &fetch,
            &embassy_core::progress::Silent,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Starts PostgreSQL on the data directory as its owner: `hot_standby = on`, listening on
    /// localhost at the configured port and on a socket in the run folder.
    fn start_server(&self) -> Result<Server, String> {
        let dir = &self.standby.data_dir;
        let meta = std::fs::metadata(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let run = run_folder(dir);
        if !run.exists() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&run)
                .map_err(|e| format!("creating {}: {e}", run.display()))?;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&run, Some(meta.uid()), Some(meta.gid())).map_err(|e| {
                format!(
                    "handing {} to the data directory's owner: {e}",
                    run.display()
                )
            })?;
        }
        // A postmaster.pid left by a server that was killed: PostgreSQL checks it itself (it
        // refuses to start while that process lives).
        let log_path = run.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        if root {
            let _ = std::os::unix::fs::chown(&log_path, Some(meta.uid()), Some(meta.gid()));
        }
        let err_file = log_file
            .try_clone()
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let postgres = embassy_postgres::base_backup::pg_program("postgres");
        let mut cmd = Command::new(&postgres);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .arg("-D")
            .arg(dir)
            .args(["-p", &self.standby.port.to_string()])
            .args(["-c", "hot_standby=on", "-c", "listen_addresses=localhost"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", run.display()))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .process_group(0);
        if root {
            cmd.uid(meta.uid()).gid(meta.gid());
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", postgres.display()))?;
        Ok(Server {
            child,
            started: Instant::now(),
        })
    }
}

/// Stops a server: fast shutdown (SIGINT), SIGKILL after 30 s.
fn stop_server(mut server: Server) {
    let pid = server.child.id() as libc::pid_t;
    // SAFETY: kill has no memory preconditions; the pid is our child's, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if let Ok(Some(_)) = server.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.child.kill();
    let _ = server.child.wait();
}
