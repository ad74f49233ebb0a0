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
//! - a standby whose replay went past where the vault's newest timeline forked off its own (a
//!   promotion short of what it had replayed: PostgreSQL can never follow that timeline, and
//!   what it serves past the fork was discarded) is `diverged`: an alarm naming the fork
//!   point, then it is rebuilt (from a base backup on the new timeline's history). Its lag is
//!   measured along the vault's newest timeline, never by positions of different timelines;
//! - the vault's newest WAL is that of the newest object that checks out (signed by a signer
//!   of the dataset), never a name alone: a hostile site's junk named like later WAL moves
//!   neither the lag nor the alarms;
//! - a rebuild stops the server (and verifies it stopped: never a removal under a running
//!   server), removes the data directory and its fetch folder and makes them again from the
//!   newest base backup.
//!
//! A server the node did not start (left running by an agent killed with SIGKILL, or by one
//! that stopped: a stopping agent leaves its standbys' servers running, so the registry stays
//! readable across an agent restart) is recognised from its `postmaster.pid`
//! ([`postmaster::look`]) and adopted: measured, started again if it stops, never a second
//! server on the same data directory. A reload (SIGHUP) adds, removes and restarts standbys
//! ([`Node::reload`]).
//!
//! Each step is logged and kept in the agent's state ([`StandbyState`]): the dashboard,
//! `/status.json`, `/metrics` and the alarms read it from there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use embassy_core::engine::vault::{Keyring, Vault};

use crate::config::{Config, StandbyConfig};
use crate::http::{lock, Shared};
use crate::log::{log, now_s};
use crate::state::StandbyState;
use embassy_postgres::status::Standing;

mod postmaster;
mod server;
use postmaster::PidFile;
pub use server::run_folder;
use server::Server;

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

/// How long a diverged standby waits for its alarm to go out before it is rebuilt anyway.
pub const DIVERGED_HOLD: Duration = Duration::from_secs(30);

/// How long a stopping server gets for its fast shutdown before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// A keeper's orders: keep running, or end leaving its server running (the agent stops), or
/// end stopping its server (its standby was removed, or changed and started anew).
const RUN: u8 = 0;
const LEAVE: u8 = 1;
const REMOVE: u8 = 2;
const RESTART: u8 = 3;

/// What every keeper reads afresh (a reload replaces it): the configuration and the keys.
struct Context {
    config: Arc<Config>,
    keyring: Arc<Keyring>,
}

/// A keeper thread and its standby's settings.
struct Running {
    standby: StandbyConfig,
    handle: JoinHandle<()>,
    orders: Arc<AtomicU8>,
}

/// The running embassy node: one keeper thread per standby.
pub(crate) struct Node {
    shared: Arc<Shared>,
    context: Arc<Mutex<Context>>,
    keepers: BTreeMap<String, Running>,
    /// Keepers told to end (removed or changed standbys), by dataset: a new keeper of the same
    /// dataset waits for them, the agent's stop too.
    ending: Vec<(String, JoinHandle<()>)>,
}

/// True when `a` and `b` run the same server (the same data directory, port and owner): only
/// then may a changed standby keep its server (the lag alarm is read afresh).
fn same_server(a: &StandbyConfig, b: &StandbyConfig) -> bool {
    a.data_dir == b.data_dir && a.port == b.port && a.owner == b.owner
}

impl Node {
    /// Starts a keeper thread for every standby of `config` (none: nothing runs until a
    /// reload adds one).
    pub(crate) fn start(
        config: &Arc<Config>,
        shared: &Arc<Shared>,
        keyring: &Arc<Keyring>,
    ) -> Node {
        let mut node = Node {
            shared: shared.clone(),
            context: Arc::new(Mutex::new(Context {
                config: config.clone(),
                keyring: keyring.clone(),
            })),
            keepers: BTreeMap::new(),
            ending: Vec::new(),
        };
        for s in &config.standbys {
            node.spawn(s);
        }
        node
    }

    fn spawn(&mut self, s: &StandbyConfig) {
        let orders = Arc::new(AtomicU8::new(RUN));
        let mut after = Vec::new();
        let mut i = 0;
        while i < self.ending.len() {
            if self.ending[i].0 == s.dataset {
                after.push(self.ending.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        let keeper = Keeper {
            context: self.context.clone(),
            standby: s.clone(),
            shared: self.shared.clone(),
            orders: orders.clone(),
        };
        match std::thread::Builder::new()
            .name(format!("standby {}", s.dataset))
            .spawn(move || {
                for h in after {
                    let _ = h.join();
                }
                keeper.run()
            }) {
            Ok(handle) => {
                self.keepers.insert(
                    s.dataset.clone(),
                    Running {
                        standby: s.clone(),
                        handle,
                        orders,
                    },
                );
            }
            Err(e) => log(format!(
                "standby of {}: cannot start its keeper: {e}",
                s.dataset
            )),
        }
    }

    /// Applies a reloaded configuration: a standby no longer configured ends and stops its
    /// server (its data directory stays); one whose data directory, port or owner changed is
    /// stopped and started anew; a new one starts. The others keep running, with the new
    /// configuration and keys.
    pub(crate) fn reload(&mut self, config: &Arc<Config>, keyring: &Arc<Keyring>) {
        {
            let mut c = lock(&self.context);
            c.config = config.clone();
            c.keyring = keyring.clone();
        }
        // Keepers that ended are done with (their threads returned).
        self.ending.retain(|(_, h)| !h.is_finished());
        let wanted: BTreeMap<&str, &StandbyConfig> = config
            .standbys
            .iter()
            .map(|s| (s.dataset.as_str(), s))
            .collect();
        let names: Vec<String> = self.keepers.keys().cloned().collect();
        for name in names {
            let order = match wanted.get(name.as_str()) {
                None => REMOVE,
                Some(new) => match self.keepers.get_mut(&name) {
                    Some(r) if same_server(&r.standby, new) => {
                        r.standby = (*new).clone();
                        continue;
                    }
                    _ => RESTART,
                },
            };
            let Some(r) = self.keepers.remove(&name) else {
                continue;
            };
            if order == REMOVE {
                log(format!(
                    "standby of {name}: no longer configured: stopping its server (its data \
                     directory {} stays)",
                    r.standby.data_dir.display()
                ));
            } else {
                log(format!(
                    "standby of {name}: its data directory, port or owner changed: stopping \
                     its server to start it anew"
                ));
            }
            r.orders.store(order, Ordering::SeqCst);
            self.ending.push((name, r.handle));
        }
        for s in &config.standbys {
            if !self.keepers.contains_key(&s.dataset) {
                self.spawn(s);
            }
        }
    }

    /// Ends every keeper, leaving the standbys' servers running (the next agent adopts them),
    /// and waits for them and for servers still stopping.
    pub(crate) fn stop(&mut self) {
        for r in self.keepers.values() {
            r.orders.store(LEAVE, Ordering::SeqCst);
        }
        for (_, r) in std::mem::take(&mut self.keepers) {
            let _ = r.handle.join();
        }
        for (_, h) in self.ending.drain(..) {
            let _ = h.join();
        }
    }
}

struct Keeper {
    context: Arc<Mutex<Context>>,
    standby: StandbyConfig,
    shared: Arc<Shared>,
    orders: Arc<AtomicU8>,
}

/// What the keeper remembers between ticks.
#[derive(Default)]
struct Watch {
    server: Option<Server>,
    quick_exits: u32,
    /// The replay position and since when it has not moved while behind the vault.
    stalled: Option<(String, Instant)>,
    /// The newest checked WAL in the vault (never a name alone: a hostile site's object named
    /// like later WAL is noise), and the objects judged so far.
    vault_wal: Option<embassy_postgres::status::SiteWal>,
    checked: embassy_postgres::status::CheckedWal,
    /// The vault's newest timeline (past 1) and its history file's content (None: none that
    /// checks out), read once per timeline.
    lineage: Option<(u32, Option<String>)>,
    /// Rebuilds that failed in a row, and when the next may be tried.
    rebuild_failures: u32,
    next_rebuild: Option<Instant>,
    /// The configuration the vault was opened with (opened anew when a reload changes sites).
    opened_with: Option<Arc<Config>>,
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

    fn config(&self) -> Arc<Config> {
        lock(&self.context).config.clone()
    }

    fn keyring(&self) -> Arc<Keyring> {
        lock(&self.context).keyring.clone()
    }

    fn orders(&self) -> u8 {
        self.orders.load(Ordering::SeqCst)
    }

    fn run(self) {
        let mut w = Watch::default();
        let mut vault = None;
        self.phase("starting");
        let keyring = self.keyring();
        if !keyring.can_read(self.name()) {
            log(format!(
                "standby of {}: warning: the configured key file cannot read dataset {0}: it \
                 cannot be made or rebuilt from the vault until [keys] names a reader credential \
                 of {0} (or the root key file)",
                self.name()
            ));
        }
        while self.orders() == RUN {
            self.tick(&mut vault, &mut w);
            let until = Instant::now() + TICK;
            while Instant::now() < until && self.orders() == RUN {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let orders = self.orders();
        if orders == LEAVE {
            if let Some(server) = &w.server {
                log(format!(
                    "standby of {}: its server (pid {}) keeps running; the next agent adopts it",
                    self.name(),
                    server.pid
                ));
            }
            return;
        }
        match self.stop_all(&mut w) {
            Ok(()) => log(format!("standby of {}: server stopped", self.name())),
            Err(e) => log(format!(
                "standby of {}: its server may still run: {e}",
                self.name()
            )),
        }
        if orders == REMOVE {
            lock(&self.shared.state).standbys.remove(self.name());
        }
    }

    /// Stops the server the keeper runs and any other found running on the data directory,
    /// and verifies they stopped.
    fn stop_all(&self, w: &mut Watch) -> Result<(), String> {
        let dir = &self.standby.data_dir;
        if let Some(server) = w.server.take() {
            server::stop(server, dir)?;
        }
        match postmaster::look(dir) {
            PidFile::Live { pid, .. } => postmaster::stop(dir, pid, STOP_LIMIT),
            PidFile::Unsure { why, .. } => Err(format!(
                "a process may still be its server ({why}); stop it (pg_ctl stop -D {})",
                dir.display()
            )),
            PidFile::Absent | PidFile::Stale { .. } | PidFile::Unreaped { .. } => Ok(()),
        }
    }

    fn owner(&self) -> Result<Option<(u32, u32)>, String> {
        embassy_ops::pgrestore::owner(self.standby.owner.as_deref()).map_err(|e| e.to_string())
    }

    fn tick(&self, vault: &mut Option<Vault>, w: &mut Watch) {
        let config = self.config();
        if w.opened_with
            .as_ref()
            .is_some_and(|c| c.sites != config.sites || c.agent.min_sites != config.agent.min_sites)
        {
            // A reload changed the sites: the vault is opened anew.
            *vault = None;
        }
        if vault.is_none() {
            let cancel = Arc::new(AtomicBool::new(false));
            match crate::run::open_vault(&config, &cancel) {
                Ok(v) => {
                    *vault = Some(v);
                    w.opened_with = Some(config.clone());
                }
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
            if let Some(status) = server.ended(dir) {
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
        if w.server.is_none() && !self.adopt_or_clear(w) {
            return;
        }
        if w.server.is_none() {
            let restart = lock(&self.shared.state)
                .standbys
                .get(self.name())
                .is_some_and(|s| s.phase == "down");
            match server::start(&self.standby) {
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

    /// Before a server is started: adopts the data directory's postmaster when one runs (true:
    /// go on), stops it when it listens on another port than the configured one, removes a
    /// stale `postmaster.pid`. False when a process that may be its server cannot be told
    /// apart from one: nothing is started (never a second server) nor rebuilt.
    fn adopt_or_clear(&self, w: &mut Watch) -> bool {
        let dir = &self.standby.data_dir;
        match postmaster::look(dir) {
            PidFile::Absent => true,
            PidFile::Live { pid, port } if port == Some(self.standby.port) => {
                log(format!(
                    "standby of {}: adopted its server already running on port {} (pid {pid}, \
                     left by an earlier agent or started by hand)",
                    self.name(),
                    self.standby.port
                ));
                w.server = Some(Server {
                    pid,
                    child: None,
                    started: Instant::now(),
                });
                w.stalled = None;
                self.update(|s| s.last_error = None);
                self.phase("starting");
                true
            }
            PidFile::Live { pid, port } => {
                log(format!(
                    "standby of {}: its server (pid {pid}) listens on port {}, not the \
                     configured {}: stopping it to start it on {}",
                    self.name(),
                    port.map_or_else(|| "?".to_string(), |p| p.to_string()),
                    self.standby.port,
                    self.standby.port
                ));
                match postmaster::stop(dir, pid, STOP_LIMIT) {
                    Ok(()) => true,
                    Err(e) => {
                        self.down(e);
                        false
                    }
                }
            }
            PidFile::Unreaped { pid } => {
                self.down(format!(
                    "its server (pid {pid}) has ended but is not reaped yet by its parent \
                     process; PostgreSQL cannot start before: waiting"
                ));
                false
            }
            PidFile::Stale {
                pid,
                why,
                in_the_way,
            } => {
                // A killed server's backends go on for a moment, holding its shared memory: a
                // server started now would stop at once, and such stops must not count towards
                // a rebuild. Nothing is started until they ended.
                let working = postmaster::working_in(dir);
                if !working.is_empty() {
                    self.down(format!(
                        "its postmaster.pid is stale ({why}) but processes {working:?} of its \
                         old server still work in its data directory: waiting for them to end"
                    ));
                    return false;
                }
                if !in_the_way {
                    // Killed: PostgreSQL replaces its pid file itself (after its own checks).
                    return true;
                }
                // PostgreSQL would refuse to start while the process the file names exists:
                // the file goes, and so does the socket's lock file naming the same process.
                self.remove_socket_lock(pid);
                log(format!(
                    "standby of {}: its postmaster.pid is stale ({why}): removed",
                    self.name()
                ));
                match std::fs::remove_file(dir.join("postmaster.pid")) {
                    Ok(()) => true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                    Err(e) => {
                        self.down(format!("cannot remove its stale postmaster.pid: {e}"));
                        false
                    }
                }
            }
            PidFile::Unsure { why, .. } => {
                self.down(format!(
                    "{why}: it is neither adopted nor started nor rebuilt; stop that process \
                     (pg_ctl stop -D {}) or check it",
                    dir.display()
                ));
                false
            }
        }
    }

    /// Whether the node may remove the existing folder `dir` to make the standby again: only an
    /// empty folder, a standby's data directory (`PG_VERSION` with `standby.signal` or
    /// `recovery.signal`), or the folder this node was making (`marker` names it). Anything
    /// else (a mistyped `data_dir` naming a site's folder, the configuration's folder, `.`)
    /// is never removed.
    fn may_remove(&self, dir: &std::path::Path, marker: &std::path::Path) -> Result<(), String> {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .next()
            .is_none();
        let a_standby = dir.join("PG_VERSION").is_file()
            && (dir.join("standby.signal").is_file() || dir.join("recovery.signal").is_file());
        let ours = std::fs::read(marker)
            .ok()
            .is_some_and(|m| m == dir.as_os_str().as_encoded_bytes());
        if empty || a_standby || ours {
            return Ok(());
        }
        Err(format!(
            "{} holds files that are not a PostgreSQL standby's data directory and that this \
             node did not put there: it is never removed; correct data_dir in [[standbys]] \
             (a folder of its own, absent or empty), or move that folder away",
            dir.display()
        ))
    }

    /// Removes the lock file of the server's socket in its run folder when it names `pid`
    /// (a process that is not the server any more).
    fn remove_socket_lock(&self, pid: i32) {
        let lock_file = server::run_folder(&self.standby.data_dir)
            .join(format!(".s.PGSQL.{}.lock", self.standby.port));
        let names_it = std::fs::read_to_string(&lock_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            == Some(pid);
        if names_it {
            if let Err(e) = std::fs::remove_file(&lock_file) {
                log(format!(
                    "standby of {}: cannot remove the stale {}: {e}",
                    self.name(),
                    lock_file.display()
                ));
            }
        }
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

    /// Asks the standby and the vault where they are; rebuilds a standby whose replay stalled
    /// or went past where the vault's newest timeline forked off its own.
    fn measure(&self, vault: &Vault, w: &mut Watch) {
        // Its replay, and its timeline as far as PostgreSQL tells: at least that of its last
        // restartpoint and minimum recovery point; at most that of the WAL file it replays from
        // (the names of the segments it restored into pg_wal carry their timeline).
        let row = embassy_postgres::standby::sql(
            &self.standby.data_dir,
            None,
            "SELECT pg_is_in_recovery(), coalesce(pg_last_wal_replay_lsn()::text, ''), \
             coalesce(extract(epoch FROM pg_last_xact_replay_timestamp())::text, ''), \
             greatest((SELECT timeline_id FROM pg_control_checkpoint()), \
                      (SELECT min_recovery_end_timeline FROM pg_control_recovery()), 1), \
             coalesce((SELECT string_agg(name, ' ') FROM pg_ls_waldir() \
                       WHERE name ~ '^[0-9A-F]{24}$'), '')",
        );
        // The vault is listed after the standby was asked, so the lag is never understated.
        // What went wrong looking (shown on its row, with what it leaves unknown).
        let mut trouble = None;
        match w.checked.newest("vault", vault, self.name()) {
            Ok(found) => w.vault_wal = found,
            Err(e) => trouble = Some(format!("listing the vault's WAL: {e}")),
        }
        // The newest timeline's history, read once per timeline (timeline 1 has none), and
        // again at each look while the vault holds none that checks out.
        let tl = w.vault_wal.as_ref().map_or(1, |v| v.timeline);
        let known = w
            .lineage
            .as_ref()
            .is_some_and(|(t, h)| *t == tl && h.is_some());
        if tl > 1 && !known {
            match w.checked.history(vault, &self.keyring(), self.name(), tl) {
                Ok(h) => w.lineage = Some((tl, h)),
                Err(e) => {
                    trouble = Some(format!("reading timeline {tl}'s history in the vault: {e}"))
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
        if cols.len() != 5 {
            return;
        }
        if cols[0] != "t" {
            self.promoted();
            return;
        }
        let replay: Option<embassy_postgres::Lsn> = cols[1].parse().ok();
        let replay_ts: Option<f64> = cols[2].parse().ok();
        let lowest: u32 = cols[3].parse().unwrap_or(1);
        let replay_tl =
            replay.and_then(|r| embassy_postgres::status::replay_timeline(r, cols[4].split(' ')));
        let target = replay_tl.unwrap_or(lowest).max(lowest);
        let vault_wal = w.vault_wal.clone();
        let standing = match (&vault_wal, replay) {
            (Some(v), Some(r)) => {
                let history = w
                    .lineage
                    .as_ref()
                    .filter(|(tl, _)| *tl == v.timeline)
                    .and_then(|(_, h)| h.as_deref());
                match embassy_postgres::status::standing(
                    lowest, target, r, v.timeline, v.durable, history,
                ) {
                    // Never rebuilt on a guess: its timeline must be known.
                    Standing::Diverged { .. } if replay_tl.is_none() => {
                        Some(Standing::Unknown(format!(
                            "its timeline is not known (no WAL file of its replay position {r} \
                             in pg_wal) and the vault's newest timeline {} may have left it",
                            v.timeline
                        )))
                    }
                    judged => Some(judged),
                }
            }
            _ => None,
        };
        let mut unknown = None;
        let lag_bytes = match &standing {
            Some(Standing::Follows { lag_bytes }) => Some(*lag_bytes),
            Some(Standing::Diverged { timeline, fork }) => {
                let v = vault_wal.as_ref().map_or(0, |v| v.timeline);
                let r = replay.map(|l| l.to_string()).unwrap_or_default();
                let why = match fork {
                    Some(fork) => format!(
                        "diverged: it replayed timeline {timeline} to {r}, past {fork} where the \
                         vault's newest timeline {v} forked off it (a promotion short of what it \
                         had replayed): PostgreSQL can never follow timeline {v}, and what it \
                         serves past {fork} was discarded"
                    ),
                    None => format!(
                        "diverged: its timeline {timeline} is not in the history of the vault's \
                         newest timeline {v}: PostgreSQL can never follow it"
                    ),
                };
                let first = lock(&self.shared.state)
                    .standbys
                    .get(self.name())
                    .is_none_or(|s| s.phase != "diverged");
                if first {
                    log(format!("standby of {}: {why}", self.name()));
                }
                self.update(|s| {
                    s.checked_at = Some(now);
                    s.replay_lsn = replay.map(|l| l.to_string());
                    s.vault_lsn = vault_wal.as_ref().map(|v| v.durable.to_string());
                    s.timeline = Some(*timeline);
                    s.vault_timeline = vault_wal.as_ref().map(|v| v.timeline);
                    s.last_replay_at = replay_ts;
                    s.last_error = Some(why.clone());
                });
                self.phase("diverged");
                w.stalled = None;
                // Rebuilt once its alarm went out (people learn that it served what the
                // promotion discarded), or after DIVERGED_HOLD if the alarm cannot be delivered.
                // Held since it entered the phase (reset by a rebuild or by following again).
                let (since, alarmed) = {
                    let st = lock(&self.shared.state);
                    let key = format!("{}@{}", self.name(), crate::alarms::STANDBY_SITE);
                    (
                        st.standbys.get(self.name()).map_or(now, |s| s.since),
                        st.alarms.contains_key(&key),
                    )
                };
                if alarmed || now - since >= DIVERGED_HOLD.as_secs() as i64 {
                    self.rebuild(vault, w, &why);
                }
                return;
            }
            Some(Standing::Unknown(why)) => {
                unknown = Some(why.clone());
                None
            }
            None => None,
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
            s.timeline = Some(target);
            s.vault_timeline = vault_wal.as_ref().map(|v| v.timeline);
            s.last_error = match (unknown, trouble) {
                (Some(why), Some(cause)) => Some(format!("{why} ({cause})")),
                (why, cause) => why.or(cause),
            };
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
                let limit = self
                    .config()
                    .standbys
                    .iter()
                    .find(|s| s.dataset == self.standby.dataset)
                    .map_or_else(|| stall_limit(&self.standby), stall_limit);
                if since.elapsed() >= limit {
                    let why = format!(
                        "replay stood still at {pos} for {} s while the vault holds WAL to {}",
                        since.elapsed().as_secs(),
                        vault_wal.map(|v| v.durable.to_string()).unwrap_or_default()
                    );
                    self.rebuild(vault, w, &why);
                }
            }
            _ => w.stalled = Some((pos, Instant::now())),
        }
    }

    /// A server that left recovery (`embassy promote`): the live registry now. It is kept
    /// running (started again if it stops) and never rebuilt; not an alarm.
    fn promoted(&self) {
        let first = lock(&self.shared.state)
            .standbys
            .get(self.name())
            .is_none_or(|s| s.phase != "promoted");
        if first {
            log(format!(
                "standby of {}: its server was promoted: it runs as the live registry, and the \
                 node keeps it running and never rebuilds it",
                self.name()
            ));
        }
        self.update(|s| {
            s.last_error = None;
            s.checked_at = Some(now_s());
        });
        self.phase("promoted");
    }

    /// Makes the data directory again from the newest base backup (removing what is there).
    fn rebuild(&self, vault: &Vault, w: &mut Watch, why: &str) {
        if w.next_rebuild.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let dir = &self.standby.data_dir;
        // Never a promoted server's data directory (no standby.signal or recovery.signal
        // left): it holds the live registry, perhaps writes not yet in the vault.
        if dir.join("PG_VERSION").exists()
            && !dir.join("standby.signal").exists()
            && !dir.join("recovery.signal").exists()
        {
            self.down(format!(
                "not rebuilt ({why}): its data directory is no longer a standby's (it was \
                 promoted), so it may hold the only copy of recent writes; make it a standby \
                 again or take it out of [[standbys]] (docs/operations.md)"
            ));
            return;
        }
        // Never under a running server: stopped first, verified stopped.
        if let Err(e) = self.stop_all(w) {
            self.down(format!("not rebuilt ({why}): {e}"));
            return;
        }
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
        // The last look before the removal: no server may run on it.
        match postmaster::look(dir) {
            PidFile::Live { pid, .. } => {
                return Err(format!(
                    "a server (pid {pid}) runs on {} again; it is not removed under it",
                    dir.display()
                ))
            }
            PidFile::Unsure { why, .. } => return Err(why),
            PidFile::Absent | PidFile::Stale { .. } | PidFile::Unreaped { .. } => {}
        }
        let working = postmaster::working_in(dir);
        if !working.is_empty() {
            return Err(format!(
                "processes {working:?} of its old server still work in {}; it is not removed \
                 under them",
                dir.display()
            ));
        }
        let config = self.config();
        let keyring = self.keyring();
        let marker = config
            .agent
            .state_dir
            .join(format!("standby-{}.making", self.name()));
        if dir.exists() {
            self.may_remove(dir, &marker)?;
            std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        // Remembered until the next make: a data directory left incomplete by an agent killed
        // while making it is the node's own, and may be removed.
        let _ = std::fs::create_dir_all(&config.agent.state_dir);
        std::fs::write(&marker, dir.as_os_str().as_encoded_bytes())
            .map_err(|e| format!("writing {}: {e}", marker.display()))?;
        embassy_ops::pgrestore::FetchFolder::remove_beside(dir).map_err(|e| e.to_string())?;
        let fetch = embassy_ops::pgrestore::FetchSetup::this_program(
            config.locations(),
            Some(config.agent.min_sites),
            Some(config.agent.state_dir.clone()),
        )
        .map_err(|e| e.to_string())?;
        embassy_ops::pgrestore::standby(
            vault,
            &keyring,
            self.name(),
            dir,
            owner,
            &[],
            None,
            &fetch,
            &embassy_core::progress::Silent,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
}
