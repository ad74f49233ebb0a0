//! `embassy pg stream` as a real process on a real PostgreSQL 15 under pgbench load: killed
//! with SIGKILL and restarted, no WAL gap (every segment fetched with `embassy wal-fetch` is
//! byte-identical to the server's pg_wal), and the slot never ran ahead of what was durable.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::pg::{parse_lsn, PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const PASS: &str = "correct horse battery staple";
const SEGMENT: u64 = 16 * 1024 * 1024;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = env.cmd(&["init"]).output().unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new(EXE);
        c.arg("--site")
            .arg(d.join("site"))
            .arg("--key-file")
            .arg(d.join("vault.key"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .arg("--quiet")
            .args(args)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_KEY_FILE")
            .env_remove("EMBASSY_STATE_DIR")
            .env("EMBASSY_PASSPHRASE", PASS)
            .env("HOME", d)
            .stdin(Stdio::null());
        c
    }

    fn durable_log(&self) -> PathBuf {
        self.dir.path().join("durable.log")
    }

    fn stream(&self, pg: &PgServer) -> Child {
        let log = self.durable_log();
        self.cmd(&[
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
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("embassy runs")
    }

    /// The newest durable position the streamer logged.
    fn durable(&self) -> u64 {
        std::fs::read_to_string(self.durable_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }
}

fn slot_restart_lsn(pg: &PgServer) -> u64 {
    parse_lsn(
        &pg.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'embassy_wal'"),
    )
}

fn segment_name(segno: u64) -> String {
    format!("00000001{:08X}{:08X}", segno / 256, segno % 256)
}

fn fetch_identical(env: &Env, pg: &PgServer, segno: u64, out: &Path) {
    let name = segment_name(segno);
    let dest = out.join(&name);
    let o = env
        .cmd(&["wal-fetch", "registry", &name, dest.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "wal-fetch {name} (a gap?): {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ours = std::fs::read(&dest).unwrap();
    let theirs = std::fs::read(pg.pg_wal_dir().join(&name)).unwrap();
    assert!(ours == theirs, "{name} differs from the server's pg_wal");
}

#[test]
fn pg_stream_killed_with_sigkill_under_load_resumes_without_gap() {
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["wal_keep_size = '4GB'".into()],
        ..PgOptions::default()
    });
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let env = Env::new();
    let mut streamer = env.stream(&pg);
    wait_until("the first durable WAL", Duration::from_secs(30), || {
        env.durable() > 0
    });
    let first_segno = (env.durable() - 1) / SEGMENT;
    let mut load = pg
        .pgbench_command(&["-c", "4", "-j", "2", "-T", "14"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    // Crash the streamer under load.
    streamer.kill().unwrap();
    streamer.wait().unwrap();
    let durable_at_kill = env.durable();
    let slot_at_kill = slot_restart_lsn(&pg);
    assert!(
        slot_at_kill <= durable_at_kill,
        "the slot was told {slot_at_kill:X} but only {durable_at_kill:X} was durable"
    );
    // While it is down the server keeps producing WAL, and the slot keeps it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(pg.current_lsn() > durable_at_kill, "load kept writing WAL");
    assert_eq!(
        slot_restart_lsn(&pg),
        slot_at_kill,
        "the slot held its position"
    );
    let mut streamer = env.stream(&pg);
    assert!(load.wait().unwrap().success(), "pgbench ran");
    // A bulk load too, so several segments are written however busy the machine is.
    pg.psql(
        "CREATE TABLE bulk AS SELECT g, repeat(md5(g::text), 6) AS filler \
         FROM generate_series(1, 200000) g",
    );
    pg.psql("SELECT pg_switch_wal()");
    let end = pg.current_lsn();
    wait_until(
        "catch-up after the restart",
        Duration::from_secs(60),
        || env.durable() >= end,
    );
    wait_until("the slot to follow", Duration::from_secs(30), || {
        slot_restart_lsn(&pg) >= end
    });
    // A clean stop with SIGTERM.
    let pid = streamer.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = streamer.wait().unwrap();
    assert!(
        status.success(),
        "SIGTERM stops the streamer cleanly: {status:?}"
    );

    let out = tempfile::tempdir().unwrap();
    let last = end / SEGMENT;
    assert!(last - first_segno >= 3, "several segments streamed");
    for segno in first_segno..last {
        fetch_identical(&env, &pg, segno, out.path());
    }
    // Keyless verification of names, signatures, chain, anchors and coverage.
    let o = env.cmd(&["pg", "verify-wal", "registry"]).output().unwrap();
    assert!(
        o.status.success(),
        "verify-wal: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let o = env
        .cmd(&[
            "--json",
            "pg",
            "wal-status",
            "registry",
            "--conninfo",
            &pg.conninfo(),
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "wal-status: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sites"][0]["timeline"], 1);
    assert!(v["lag_bytes"].as_u64().is_some(), "{v}");
    // Not there yet: exit 1, quietly.
    let o = env
        .cmd(&[
            "wal-fetch",
            "registry",
            &segment_name(last + 100),
            out.path().join("x").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        o.stderr.is_empty(),
        "quiet: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // `embassy verify` checks the streamed WAL too ...
    let o = env.cmd(&["--json", "verify"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert!(o.status.success() && v["ok"] == true, "verify: {v}");
    assert!(
        v["wal"]["registry"]["objects_ok"].as_u64().unwrap_or(0) > 0,
        "verify reports the WAL: {v}"
    );
    // ... so a site that deletes a segment object fails the vault's verification (exit 3).
    let segments = env.dir.path().join("site/wal/registry");
    let victim = walk(&segments)
        .into_iter()
        .find(|p| p.parent().and_then(|d| d.file_name()) == Some(std::ffi::OsStr::new("s")))
        .expect("a segment object");
    std::fs::remove_file(&victim).unwrap();
    let o = env.cmd(&["verify"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(3),
        "verify after deleting {victim:?}: {text}"
    );
    assert!(text.contains("GAP") || text.contains("PROBLEM"), "{text}");
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A warm standby fed only by `embassy wal-fetch --partial` as its restore_command follows the
/// primary within seconds: PostgreSQL accepts the zero-padded newest segment, stops at its end,
/// and asks for the same segment again later, getting more of it each time.
#[test]
fn standby_follows_through_wal_fetch_of_partial_segments() {
    let primary = PgServer::start(PgOptions::default());
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let env = Env::new();
    let mut streamer = env.stream(&primary);
    wait_until("the first durable WAL", Duration::from_secs(30), || {
        env.durable() > 0
    });
    // A base backup without WAL: the standby gets every byte of WAL from the vault.
    let standby = PgServer::base_backup_of(&primary, &["-X", "none"]);
    // restore_command runs as the server's user: let it read the vault and keep its own state.
    let d = env.dir.path();
    let pass = d.join("passphrase");
    std::fs::write(&pass, PASS).unwrap();
    std::fs::create_dir_all(d.join("pgstate")).unwrap();
    Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(d)
        .status()
        .unwrap();
    let restore = format!(
        "{EXE} --site {} --key-file {} --passphrase-file {} --state-dir {} --quiet wal-fetch registry --partial %f %p",
        d.join("site").display(),
        d.join("vault.key").display(),
        pass.display(),
        d.join("pgstate").display()
    );
    standby.append_conf(&format!(
        "restore_command = '{restore}'\nhot_standby = on\nwal_retrieve_retry_interval = '1s'\n"
    ));
    standby.touch("standby.signal");
    standby.start_server();
    for round in 1..=3 {
        primary.psql(&format!(
            "CREATE TABLE IF NOT EXISTS marker (round int); INSERT INTO marker VALUES ({round})"
        ));
        let t = Instant::now();
        wait_until(
            &format!("the standby to replay round {round}"),
            Duration::from_secs(30),
            || {
                standby
                    .try_psql(&format!(
                        "SELECT count(*) FROM marker WHERE round = {round}"
                    ))
                    .is_ok_and(|n| n == "1")
            },
        );
        println!(
            "round {round}: standby caught up in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    streamer.kill().unwrap();
    streamer.wait().unwrap();
}
