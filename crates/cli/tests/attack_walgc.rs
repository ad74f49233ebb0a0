//! Attack 5 of issue 12: revoking the WAL streamer's key must not invalidate the WAL it
//! streamed. The documented rotation (docs/keys.md: issue credential B, switch the streamer to
//! B, revoke A) runs end to end on a real PostgreSQL 15 with the real `embassy` program; the
//! vault verifies, a point-in-time restore to a moment streamed by A and a `--latest` restore
//! both come back with the same table checksums, and WAL pieces forged with A's key after its
//! revocation are noise that no reader uses.
//!
//! Every embassy command runs as the `postgres` user, like `restore_command` does.

#[path = "../../postgres/tests/support/mod.rs"]
mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_core::keyfile::KeyFile;
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::site::Site;
use embassy_core::vault::Vault;
use embassy_core::wal_log::{self, LogKind, LogSpec};
use embassy_postgres::wal;
use support::{free_port, pg_bindir, PgOptions, PgServer};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const PASS: &str = "correct horse battery staple";
const SEGMENT: u64 = 16 * 1024 * 1024;
const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let o = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "a `postgres` system user is needed (install postgresql-15)"
        );
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// A vault, the root key file and a passphrase file in a folder owned by `postgres`.
struct Env {
    dir: tempfile::TempDir,
    ids: (u32, u32),
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("embassy-walgc-")
            .tempdir()
            .unwrap();
        let ids = postgres_ids();
        std::fs::write(dir.path().join("pass"), PASS).unwrap();
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", ids.0, ids.1))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(st.success());
        let env = Env { dir, ids };
        env.run(&["init"]);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An embassy command as the postgres user, with key file `key`.
    fn cmd_with(&self, key: &str, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.arg("--site")
            .arg(self.path("site"))
            .arg("--key-file")
            .arg(self.path(key))
            .arg("--passphrase-file")
            .arg(self.path("pass"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--quiet")
            .args(args)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_KEY_FILE")
            .env_remove("EMBASSY_STATE_DIR")
            .env_remove("EMBASSY_PASSPHRASE")
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .uid(self.ids.0)
            .gid(self.ids.1);
        c
    }

    /// Runs a command with the root key file; it must succeed. Returns stdout.
    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd_with("vault.key", args).output().unwrap();
        assert!(
            out.status.success(),
            "embassy {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn durable(&self) -> u64 {
        std::fs::read_to_string(self.path("durable.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    /// `embassy pg stream` with the credential in `key`.
    fn stream(&self, pg: &PgServer, key: &str) -> Stopper {
        let log = self.path("durable.log");
        let child = self
            .cmd_with(
                key,
                &[
                    "pg",
                    "stream",
                    "registry",
                    "--conninfo",
                    &pg.conninfo(),
                    "--slot",
                    "embassy_wal",
                    "--create-slot",
                    "--durable-log",
                    log.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("embassy runs");
        Stopper(Some(child))
    }

    /// Issues a sealing credential for `registry` into `file`; returns its signing key (hex).
    fn issue_sealing(&self, label: &str, file: &str) -> String {
        let out = self.run(&[
            "--json",
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            "registry",
            "--label",
            label,
            "--out",
            self.path(file).to_str().unwrap(),
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["signer"].as_str().unwrap().to_string()
    }

    /// The vault, opened in this process on the same folder.
    fn vault(&self) -> Vault {
        let site: Arc<dyn Site> =
            Arc::new(embassy_sites::LocalSite::new(self.path("site")).unwrap());
        Vault::open(site).unwrap()
    }

    fn root(&self) -> RootSecret {
        let path = self.path("vault.key");
        KeyFile::load(&path)
            .unwrap()
            .open(PASS.as_bytes(), &path)
            .unwrap()
    }

    fn credential(&self, file: &str) -> Credential {
        let path = self.path(file);
        let payload = KeyFile::load(&path)
            .unwrap()
            .open_payload(PASS.as_bytes(), &path)
            .unwrap();
        Credential::from_bytes(&payload).unwrap()
    }
}

/// Stops a child process (SIGTERM, then wait) when dropped or asked, also when a test fails.
struct Stopper(Option<Child>);

impl Stopper {
    fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per-table checksums of the pgbench tables, as one psql query result.
const CHECKSUMS: &str = "SELECT string_agg(t || '=' || s, ' ' ORDER BY t) FROM (\
    SELECT 'accounts' t, md5(string_agg(a::text, ',' ORDER BY aid)) s FROM pgbench_accounts a UNION ALL \
    SELECT 'branches', md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b UNION ALL \
    SELECT 'tellers', md5(string_agg(x::text, ',' ORDER BY tid)) FROM pgbench_tellers x UNION ALL \
    SELECT 'history', md5(string_agg(h::text, ',' ORDER BY tid, bid, aid, mtime, delta)) FROM pgbench_history h) q";

/// Checksums of every table at one moment under load, with that moment (writers held off by
/// SHARE locks while the time is read and the checksums computed).
fn checksums_at_a_moment(pg: &PgServer) -> (String, String) {
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

/// A PostgreSQL server started on a restored data directory.
struct Restored {
    data: PathBuf,
    port: u16,
    sock: PathBuf,
}

impl Restored {
    fn pg(&self, prog: &str) -> Command {
        let (uid, gid) = postgres_ids();
        let mut c = Command::new(pg_bindir().join(prog));
        c.uid(uid).gid(gid).stdin(Stdio::null());
        c
    }

    fn start(data: PathBuf) -> Restored {
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

    fn try_psql(&self, sql: &str) -> Result<String, String> {
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

    fn log(&self) -> String {
        std::fs::read_to_string(
            self.data
                .parent()
                .unwrap()
                .join(format!("server-{}.log", self.port)),
        )
        .unwrap_or_default()
    }

    /// Waits until recovery has ended and the server accepts writes.
    fn wait_open(&self, timeout: Duration) {
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

fn dir_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs pgbench for `secs` seconds in the background.
fn load(pg: &PgServer, secs: u32) -> Child {
    pg.pgbench_command(&["-c", "4", "-j", "2", "-T", &secs.to_string()])
        .spawn()
        .unwrap()
}

#[test]
fn wal_streamer_rotation_keeps_past_wal_valid() {
    let pg = PgServer::start(PgOptions::default());
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let env = Env::new();

    // Credential A streams, under load; a base backup takes its WAL from the stream.
    let a_hex = env.issue_sealing("stream-a", "a.cred");
    let mut streamer = env.stream(&pg, "a.cred");
    wait_until("A's first durable WAL", Duration::from_secs(30), || {
        env.durable() > 0
    });
    let mut l = load(&pg, 6);
    std::thread::sleep(Duration::from_secs(1));
    env.run(&[
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
        "--wal-streamed",
    ]);
    assert!(l.wait().unwrap().success(), "pgbench failed");
    let mut l = load(&pg, 6);
    std::thread::sleep(Duration::from_secs(2));
    // A moment streamed by A: the point-in-time restore target.
    let (a_time, a_sums) = checksums_at_a_moment(&pg);
    assert!(l.wait().unwrap().success(), "pgbench failed");
    pg.psql("UPDATE pgbench_branches SET bbalance = bbalance + 1");
    let end = pg.current_lsn();
    wait_until("A's WAL to become durable", Duration::from_secs(60), || {
        env.durable() >= end
    });

    // The documented rotation: issue B, switch the streamer to B, revoke A.
    let _b_hex = env.issue_sealing("stream-b", "b.cred");
    streamer.stop();
    let mut streamer = env.stream(&pg, "b.cred");
    pg.psql("UPDATE pgbench_tellers SET tbalance = tbalance + 1");
    let switched = pg.current_lsn();
    wait_until("B's first durable WAL", Duration::from_secs(60), || {
        env.durable() >= switched
    });
    // B's streamer may append an anchor at the same moment: a revocation that loses that race
    // is simply run again.
    let revoke = [
        "keys",
        "revoke",
        "--signer",
        &a_hex,
        "--dataset",
        "registry",
        "--reason",
        "rotated",
    ];
    let mut tries = 0;
    loop {
        let out = env.cmd_with("vault.key", &revoke).output().unwrap();
        if out.status.success() {
            break;
        }
        tries += 1;
        assert!(
            tries < 5,
            "revoke failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // More writes, streamed by B.
    let mut l = load(&pg, 4);
    assert!(l.wait().unwrap().success(), "pgbench failed");
    pg.psql("UPDATE pgbench_branches SET bbalance = bbalance + 1");
    let (_, final_sums) = checksums_at_a_moment(&pg);
    assert_ne!(a_sums, final_sums);
    let end = pg.current_lsn();
    wait_until("B's WAL to become durable", Duration::from_secs(60), || {
        env.durable() >= end
    });
    streamer.stop();

    // The thief with A's key, after the revocation: a piece that would reach furthest in the
    // newest segment (garbage from its start), and one that extends the live tail.
    let vault = env.vault();
    let a = env.credential("a.cred").signing_key().unwrap();
    let a_pub: String = a
        .verifying_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(a_pub, a_hex);
    let keys = env.root().dataset_keys("registry", 0);
    let listing = wal::list(vault.site().as_ref(), "registry").unwrap();
    let newest = listing.newest().unwrap().clone();
    let seg_start = newest.name.start / SEGMENT * SEGMENT;
    let mut forged = Vec::new();
    for (start, end, prev) in [
        (
            seg_start,
            (newest.name.end + 8192).min(seg_start + SEGMENT),
            None,
        ),
        (
            newest.name.end,
            newest.name.end + 4096,
            Some(newest.name.id),
        ),
    ] {
        let spec = LogSpec {
            kind: LogKind::Piece,
            timeline: newest.name.timeline,
            start,
            end,
            prev,
            captured_at_ns: embassy_core::config::now_unix_nanos(),
            system_id: 0,
        };
        let payload = vec![0xA5u8; (end - start) as usize];
        let (_, path) = wal::put(vault.site().as_ref(), &keys, &a, &spec, &payload).unwrap();
        forged.push(path);
    }
    // Readers refuse them: A is revoked and no accepted entry anchors them.
    let signers = wal::dataset_signers(&vault, "registry").unwrap();
    let listing = wal::list(vault.site().as_ref(), "registry").unwrap();
    for path in &forged {
        let obj = listing.pieces.iter().find(|o| &o.path == path).unwrap();
        let err = wal::read_checked(vault.site().as_ref(), obj, &signers).unwrap_err();
        assert!(err.to_string().contains("not an active signer"), "{err}");
    }
    // A's honest pieces and segments are valid: the ledger anchored them while A was active.
    let a_key = a.verifying_key().to_bytes();
    let mut a_objects = 0;
    for obj in listing.pieces.iter().chain(&listing.segments) {
        if forged.contains(&obj.path) {
            continue;
        }
        let bytes = vault.site().get(&obj.path).unwrap();
        let h = wal_log::parse(&obj.path, &bytes).unwrap().header;
        if h.signer == a_key {
            a_objects += 1;
            wal::read_checked(vault.site().as_ref(), obj, &signers).unwrap_or_else(|e| {
                panic!("A's WAL {} refused after A's revocation: {e}", obj.path)
            });
        }
    }
    assert!(a_objects > 0, "A streamed nothing?");
    let report = wal::verify(&vault, "registry").unwrap();
    assert!(
        report.is_ok(),
        "problems {:?} gaps {:?}",
        report.problems,
        report.gaps
    );
    for path in &forged {
        assert!(
            report.noise.iter().any(|n| n.contains(path.as_str())),
            "{path} not reported as noise: {:?}",
            report.noise
        );
    }

    // `embassy verify` passes (the forged pieces are noise, named by path).
    let out = env.run(&["verify"]);
    for path in &forged {
        assert!(out.contains(path.as_str()), "{out}");
    }

    let root = env.path("restores");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(env.ids.0), Some(env.ids.1)).unwrap();

    // Point-in-time restore to the moment A streamed.
    let mid_dir = root.join("a-time");
    env.run(&[
        "restore",
        "registry",
        "--time",
        &a_time,
        "--to",
        dir_arg(&mid_dir),
    ]);
    let mid = Restored::start(mid_dir);
    mid.wait_open(Duration::from_secs(120));
    assert_eq!(
        mid.try_psql(CHECKSUMS).unwrap(),
        a_sums,
        "restore to {a_time} (streamed by the revoked A) differs; log: {}",
        mid.log()
    );
    drop(mid);

    // The latest point: A's WAL, then B's, and none of the forgeries.
    let latest_dir = root.join("latest");
    env.run(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        dir_arg(&latest_dir),
    ]);
    let latest = Restored::start(latest_dir);
    latest.wait_open(Duration::from_secs(120));
    assert_eq!(
        latest.try_psql(CHECKSUMS).unwrap(),
        final_sums,
        "latest restore differs; log: {}",
        latest.log()
    );
}
