//! Test harness: a real PostgreSQL 15 cluster in a temporary directory.
//!
//! `PgServer::start(PgOptions::default())` runs `initdb` (as the `postgres` user when the tests run
//! as root, because initdb refuses root), configures WAL for replication, creates
//! roles, listens on a free loopback TCP port and on a Unix socket in the temp dir, and starts the
//! server with `pg_ctl`. Dropping it stops the server (immediate mode) and removes the directory.
//!
//! Roles created:
//! - `postgres`: superuser, trust over the Unix socket (and in `replication` over the socket);
//! - `embassy` / `REPL_PASSWORD`: LOGIN REPLICATION, SCRAM-SHA-256 over TCP;
//! - `embassy_md5` / `REPL_PASSWORD`: LOGIN REPLICATION, md5-stored password, md5 over TCP;
//! - `plain` / `REPL_PASSWORD`: LOGIN without REPLICATION (for the privilege error).
//!
//! A missing PostgreSQL installation makes the test fail loudly (never skip).
//!
//! [`restored`] starts a server on a data directory a restore wrote; [`tls`] a server with TLS.

pub mod cli;
pub mod restored;
pub mod tls;

pub use crate::free_port;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Password of the test replication roles.
pub const REPL_PASSWORD: &str = "s3cret-embassy";

/// Knobs of a test cluster.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// `wal_level` (replica, logical, minimal).
    pub wal_level: String,
    /// `max_wal_senders` (0 disables replication connections).
    pub max_wal_senders: u32,
    /// Extra lines appended to postgresql.conf.
    pub extra_conf: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_level: "replica".into(),
            max_wal_senders: 10,
            extra_conf: Vec::new(),
        }
    }
}

/// A running (or stopped) PostgreSQL 15 test cluster.
pub struct PgServer {
    dir: tempfile::TempDir,
    port: u16,
    bindir: PathBuf,
    as_postgres: bool,
}

/// The directory of the PostgreSQL 15 binaries; panics with a clear message when absent.
pub fn pg_bindir() -> PathBuf {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()));
    let candidates = [
        from_config,
        Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.join("initdb").exists() && c.join("pg_ctl").exists() {
            return c;
        }
    }
    panic!(
        "PostgreSQL 15 server binaries (initdb, pg_ctl) not found: install them with \
         scripts/install-test-deps (apt-get install postgresql-15)"
    );
}

/// The uid and gid of the `postgres` system user (the tests run the server as it when root).
pub fn postgres_uid_gid() -> (u32, u32) {
    let out = |flag: &str| -> u32 {
        let o = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            o.status.success(),
            "the tests run as root and need a `postgres` system user to run initdb: \
             install postgresql-15 (scripts/install-test-deps)"
        );
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (out("-u"), out("-g"))
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("run chown");
    assert!(st.success(), "chown {} failed", path.display());
}

impl PgServer {
    /// initdb + configure + start a cluster with `opts`.
    pub fn start(opts: PgOptions) -> PgServer {
        let srv = PgServer::init(opts);
        srv.start_server();
        srv.setup_roles();
        srv
    }

    /// initdb + configure, without starting (the caller calls `start_server`).
    pub fn init(opts: PgOptions) -> PgServer {
        let bindir = pg_bindir();
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("embassy-pg-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("sock")).expect("socket dir");
        if as_postgres {
            let (uid, gid) = postgres_uid_gid();
            chown(dir.path(), uid, gid);
        }
        let port = free_port();
        let srv = PgServer {
            dir,
            port,
            bindir,
            as_postgres,
        };
        let data = srv.data_dir();
        let out = srv
            .pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut conf = format!(
            "\n# embassy test harness\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{}'\nwal_level = {}\nmax_wal_senders = {}\n\
             max_replication_slots = 10\nfsync = off\nwal_keep_size = 0\n\
             password_encryption = 'scram-sha-256'\n",
            srv.socket_dir().display(),
            opts.wal_level,
            opts.max_wal_senders
        );
        if opts.wal_level == "minimal" {
            conf.push_str("archive_mode = off\n");
        }
        for l in &opts.extra_conf {
            conf.push_str(l);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        // md5 for the md5 role first (pg_hba is first match), SCRAM for the rest over TCP.
        let hba = "local all all trust\nlocal replication all trust\n\
                   host all embassy_md5 127.0.0.1/32 md5\nhost replication embassy_md5 127.0.0.1/32 md5\n\
                   host all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        if srv.as_postgres {
            let (uid, gid) = postgres_uid_gid();
            chown(&data.join("pg_hba.conf"), uid, gid);
        }
        srv
    }

    /// A streaming standby of `primary` (pg_basebackup -R over the primary's Unix socket), on
    /// its own port and socket, started. Promote it with `promote`.
    pub fn replica_of(primary: &PgServer) -> PgServer {
        let srv = PgServer::copy_of(primary, "embassy-pg-replica-", &["-R", "-X", "stream"]);
        append(
            &srv.data_dir().join("postgresql.conf"),
            &format!(
                "\n# replica\nport = {}\nunix_socket_directories = '{}'\nhot_standby = on\n",
                srv.port,
                srv.socket_dir().display()
            ),
        );
        srv.start_server();
        srv
    }

    /// A copy of `primary` made by `pg_basebackup` with `args` (for example `["-X", "none"]`),
    /// on its own port and socket, NOT started: add settings with `append_conf`, then
    /// `start_server`.
    pub fn base_backup_of(primary: &PgServer, args: &[&str]) -> PgServer {
        let srv = PgServer::copy_of(primary, "embassy-pg-copy-", args);
        srv.append_conf(&format!(
            "port = {}\nunix_socket_directories = '{}'\n",
            srv.port,
            srv.socket_dir().display()
        ));
        srv
    }

    /// `pg_basebackup -c fast -U postgres <args>` of `primary` over its Unix socket into a new
    /// temporary directory (named `prefix`...) with its own port and socket folder; not configured
    /// for that port yet, not started.
    fn copy_of(primary: &PgServer, prefix: &str, args: &[&str]) -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("sock")).expect("socket dir");
        if primary.as_postgres {
            let (uid, gid) = postgres_uid_gid();
            chown(dir.path(), uid, gid);
        }
        let srv = PgServer {
            dir,
            port: free_port(),
            bindir: primary.bindir.clone(),
            as_postgres: primary.as_postgres,
        };
        let out = srv
            .pg_command("pg_basebackup")
            .arg("-D")
            .arg(srv.data_dir())
            .args(["-c", "fast", "-U", "postgres"])
            .args(args)
            .arg("-h")
            .arg(primary.socket_dir())
            .arg("-p")
            .arg(primary.port.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run pg_basebackup");
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        srv
    }

    /// Appends lines to postgresql.conf.
    pub fn append_conf(&self, text: &str) {
        append(
            &self.data_dir().join("postgresql.conf"),
            &format!("\n{text}\n"),
        );
    }

    /// Creates an (empty) file in the data directory, owned by the server's user
    /// (`standby.signal`, `recovery.signal`).
    pub fn touch(&self, name: &str) {
        let path = self.data_dir().join(name);
        std::fs::write(&path, b"").expect("write signal file");
        if self.as_postgres {
            let (uid, gid) = postgres_uid_gid();
            chown(&path, uid, gid);
        }
    }

    /// Promotes a standby (a new timeline starts) and waits until it accepts writes.
    pub fn promote(&self) {
        let out = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "promote"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl promote");
        assert!(
            out.status.success(),
            "pg_ctl promote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("SELECT pg_is_in_recovery()") != "f" {
            assert!(
                Instant::now() < deadline,
                "the standby did not leave recovery"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pg_command(&self, prog: &str) -> Command {
        let path = self.bindir.join(prog);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// `pg_ctl start`, waiting (up to 60 s) until the server accepts connections.
    fn pg_ctl_start(&self) -> Output {
        self.pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl start")
    }

    /// Start the server and wait until it accepts connections.
    pub fn start_server(&self) {
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Try to start the server; return the server log on failure (for misconfiguration tests).
    pub fn try_start_server(&self) -> Result<(), String> {
        let out = self.pg_ctl_start();
        if out.status.success() {
            Ok(())
        } else {
            Err(self.log())
        }
    }

    /// Creates the test roles (see the module doc); `start` does this.
    pub fn setup_roles(&self) {
        self.psql(&format!(
            "CREATE ROLE embassy LOGIN REPLICATION PASSWORD '{p}';\
             SET password_encryption = 'md5';\
             CREATE ROLE embassy_md5 LOGIN REPLICATION PASSWORD '{p}';\
             RESET password_encryption;\
             CREATE ROLE plain LOGIN PASSWORD '{p}';",
            p = REPL_PASSWORD
        ));
    }

    /// Stop the server (fast mode, waits).
    pub fn stop(&self) {
        let _ = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "stop"])
            .stdin(Stdio::null())
            .output();
    }

    /// The postmaster's pid (from postmaster.pid), if running.
    pub fn pid(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// Kill the postmaster with SIGKILL (a crash), and wait for the port to close.
    pub fn kill9(&self) {
        if let Some(pid) = self.pid() {
            // The whole server crashes: the postmaster and its children (a lone dead postmaster
            // would leave backends holding shared memory, and a restart would refuse).
            let children = children_of(pid);
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            for c in &children {
                let _ = Command::new("kill").args(["-9", &c.to_string()]).status();
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline
                && std::iter::once(pid)
                    .chain(children.iter().copied())
                    .any(alive)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            // This machine's init may not reap orphans: a zombie postmaster keeps its pid "in
            // use" and a restart would refuse the stale postmaster.pid. The process is dead, so
            // remove the lock file like an administrator would after a crash.
            if !alive(pid) {
                let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
                let sock = self.socket_dir().join(format!(".s.PGSQL.{}", self.port));
                let _ = std::fs::remove_file(sock.with_extension(format!("{}.lock", self.port)));
                let _ = std::fs::remove_file(&sock);
            }
        }
    }

    /// Run SQL as the superuser over the Unix socket; returns trimmed unaligned output. Panics
    /// (with psql's message) on error.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.try_psql(sql);
        match out {
            Ok(s) => s,
            Err(e) => panic!("psql failed for {sql:?}: {e}"),
        }
    }

    /// Run SQL as the superuser; Err carries psql's stderr.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self
            .pg_command("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// Run pgbench against the `postgres` database with `args` (e.g. `["-i", "-s", "1"]`).
    pub fn pgbench(&self, args: &[&str]) -> Output {
        let out = self.pgbench_command(args).output().expect("run pgbench");
        assert!(
            out.status.success(),
            "pgbench {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A pgbench command (not started), for running in the background.
    pub fn pgbench_command(&self, args: &[&str]) -> Command {
        let mut c = self.pg_command("pgbench");
        c.arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// A command for any PostgreSQL client binary (run as `postgres` when we are root).
    pub fn tool(&self, prog: &str) -> Command {
        self.pg_command(prog)
    }

    /// TCP port of the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temp root (owned by `postgres` when run as root).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's own `pg_wal` directory (the oracle for byte-identical WAL).
    pub fn pg_wal_dir(&self) -> PathBuf {
        self.data_dir().join("pg_wal")
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Conninfo for `user` with `password` over loopback TCP.
    pub fn conninfo_tcp(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=postgres",
            self.port
        )
    }

    /// Conninfo for the replication role `embassy` over TCP with SCRAM.
    pub fn conninfo(&self) -> String {
        self.conninfo_tcp("embassy", REPL_PASSWORD)
    }

    /// Conninfo for the superuser over the Unix socket (trust).
    pub fn conninfo_socket(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir().display(),
            self.port
        )
    }

    /// `pg_current_wal_lsn()` as a number.
    pub fn current_lsn(&self) -> u64 {
        parse_lsn(&self.psql("SELECT pg_current_wal_lsn()"))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.pid().is_some() {
            let _ = self
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "immediate", "-w", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Parse PostgreSQL's `X/Y` LSN text.
pub fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).expect("lsn hi") << 32)
        | u64::from_str_radix(lo, 16).expect("lsn lo")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

/// Pids whose parent is `pid` (from /proc).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) {
                // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|s| s.parse::<i32>().ok());
                if ppid == Some(pid) {
                    out.push(child);
                }
            }
        }
    }
    out
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
