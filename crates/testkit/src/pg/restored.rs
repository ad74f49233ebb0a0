//! What the PostgreSQL recovery tests share: pgbench table checksums taken at one moment under
//! load, and a restored data directory started as a server.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{pg_bindir, postgres_uid_gid, PgServer};
use crate::free_port;

/// The pgbench tables.
pub const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

/// The uid and gid of the `postgres` system user.
pub fn postgres_ids() -> (u32, u32) {
    postgres_uid_gid()
}

/// Per-table checksums of the pgbench tables, as one psql query result.
pub const CHECKSUMS: &str = "SELECT string_agg(t || '=' || s, ' ' ORDER BY t) FROM (\
    SELECT 'accounts' t, md5(string_agg(a::text, ',' ORDER BY aid)) s FROM pgbench_accounts a UNION ALL \
    SELECT 'branches', md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b UNION ALL \
    SELECT 'tellers', md5(string_agg(x::text, ',' ORDER BY tid)) FROM pgbench_tellers x UNION ALL \
    SELECT 'history', md5(string_agg(h::text, ',' ORDER BY tid, bid, aid, mtime, delta)) FROM pgbench_history h) q";

/// Checksums of every table at one moment under load, with that moment: writers are held off
/// (SHARE locks) while the time is read and the checksums computed, so every transaction that
/// committed before the time is in them and none after.
pub fn checksums_at_a_moment(pg: &PgServer) -> (String, String) {
    let sql = format!(
        "BEGIN; LOCK TABLE {} IN SHARE MODE; \
         SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'); \
         {CHECKSUMS}; COMMIT;",
        TABLES.join(", ")
    );
    let out = pg.psql(&sql);
    let mut lines = out.lines().filter(|l| !l.is_empty());
    let time = lines.next().unwrap().to_string();
    let sums = lines.next().unwrap().to_string();
    (time, sums)
}

/// Runs SQL as `postgres` on the server an embassy node's agent runs on `data_dir` (its socket
/// in `<data_dir>.run`, TCP port `port`); Err carries psql's stderr.
pub fn node_psql(data_dir: &Path, port: u16, sql: &str) -> Result<String, String> {
    let (uid, gid) = postgres_ids();
    let mut run = data_dir.as_os_str().to_os_string();
    run.push(".run");
    let out = Command::new(pg_bindir().join("psql"))
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&run)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A PostgreSQL server started on a restored data directory.
pub struct Restored {
    data: PathBuf,
    port: u16,
    sock: PathBuf,
}

impl Restored {
    /// A command for a PostgreSQL program, run as the `postgres` user.
    pub fn pg(&self, prog: &str) -> Command {
        let (uid, gid) = postgres_ids();
        let mut c = Command::new(pg_bindir().join(prog));
        c.uid(uid).gid(gid).stdin(Stdio::null());
        c
    }

    /// Starts a server on the restored data directory `data`.
    pub fn start(data: PathBuf) -> Restored {
        Self::start_with(data, &[])
    }

    /// Starts the server with extra environment (inherited by its restore_command).
    pub fn start_with(data: PathBuf, vars: &[(String, String)]) -> Restored {
        let port = free_port();
        let sock = data.parent().unwrap().join(format!("sock-{port}"));
        std::fs::create_dir_all(&sock).unwrap();
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(&sock, Some(uid), Some(gid)).unwrap();
        let r = Restored { data, port, sock };
        let log = r.data.parent().unwrap().join(format!("server-{port}.log"));
        let out = r
            .pg("pg_ctl")
            .arg("-D")
            .arg(&r.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses='127.0.0.1'",
                r.sock.display()
            ))
            .arg("start")
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restored server did not start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        r
    }

    /// A client program (`psql`, `pg_amcheck`) connected to this server as the superuser.
    pub fn client(&self, prog: &str) -> Command {
        let mut c = self.pg(prog);
        c.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", "postgres"]);
        c
    }

    /// Runs SQL as the superuser; Err carries psql's stderr.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let out = self
            .pg("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(
            self.data
                .parent()
                .unwrap()
                .join(format!("server-{}.log", self.port)),
        )
        .unwrap_or_default()
    }

    /// Waits until recovery has ended and the server accepts writes.
    pub fn wait_open(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(v) = self.try_psql("SELECT pg_is_in_recovery()") {
                if v == "f" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "restored server did not finish recovery: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
