//! `embassy pg stream` as a real process over TLS to a real PostgreSQL 15 with `ssl = on` and a
//! test CA: with `sslmode=verify-full` WAL arrives in the vault (and `wal-fetch` gives it back),
//! with a wrong host name the command stops at once with a message naming the problem.

use embassy_testkit::pg::parse_lsn;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::pg::tls::{conninfo, TestPki};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const PASS: &str = "correct horse battery staple";

fn embassy(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(EXE);
    c.arg("--site")
        .arg(dir.join("site"))
        .arg("--key-file")
        .arg(dir.join("vault.key"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--quiet")
        .args(args)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_KEY_FILE")
        .env_remove("EMBASSY_STATE_DIR")
        .env("EMBASSY_PASSPHRASE", PASS)
        .env("HOME", dir)
        .stdin(Stdio::null());
    c
}

fn durable(log: &std::path::Path) -> u64 {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn pg_stream_over_verify_full_tls_stores_wal_and_a_wrong_host_is_refused() {
    let pki = TestPki::generate();
    let pg = pki.start_server();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = embassy(dir, &["init"]).output().unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = format!("sslmode=verify-full sslrootcert={}", pki.ca().display());

    // A wrong host name: the command ends with the reason, it does not retry forever.
    let wrong = conninfo(&pg, "127.0.0.1", "embassy", &ca);
    let out = embassy(
        dir,
        &[
            "pg",
            "stream",
            "registry",
            "--conninfo",
            &wrong,
            "--slot",
            "embassy_wal",
            "--create-slot",
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("not valid for host name \"127.0.0.1\""),
        "{stderr}"
    );

    // verify-full with the name in the certificate: WAL flows into the vault.
    let log = dir.join("durable.log");
    let info = conninfo(&pg, "localhost", "embassy", &ca);
    let mut child = embassy(
        dir,
        &[
            "pg",
            "stream",
            "registry",
            "--conninfo",
            &info,
            "--slot",
            "embassy_wal",
            "--create-slot",
            "--durable-log",
            log.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g");
    let switch = parse_lsn(&pg.psql("SELECT pg_switch_wal()"));
    let end = pg.current_lsn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while durable(&log) < end {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("embassy pg stream exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "WAL did not become durable");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The WAL sender's connection is TLS (pg_hba.conf also rejects the role without it).
    assert_eq!(
        pg.psql(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl"
        ),
        "1"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "pg stream after SIGTERM: {status}");

    // The segment finished by pg_switch_wal comes back from the vault byte for byte.
    let segno = (switch - 1) / (16 * 1024 * 1024);
    let name = format!("00000001{:08X}{:08X}", segno / 256, segno % 256);
    let dest = dir.join(&name);
    let out = embassy(
        dir,
        &["wal-fetch", "registry", &name, dest.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "wal-fetch {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = std::fs::read(pg.pg_wal_dir().join(&name)).unwrap();
    assert!(std::fs::read(&dest).unwrap() == theirs, "{name} differs");
}

/// The value of `dataset`'s cell at `site` in `embassy status --json`.
fn status_cell(dir: &std::path::Path, dataset: &str, site: &str) -> serde_json::Value {
    let out = Command::new(EXE)
        .args(["status", "--config", "embassy.toml", "--json"])
        .current_dir(dir)
        .env_remove("EMBASSY_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    report["datasets"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == dataset))
        .and_then(|d| d["sites"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["site"] == site))
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn the_agent_streams_and_takes_base_backups_over_verify_full_tls() {
    let pki = TestPki::generate();
    let pg = pki.start_server();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("passphrase"), "agent test passphrase\n").unwrap();
    let out = Command::new(EXE)
        .args([
            "--site",
            "sites/a",
            "--passphrase-file",
            "passphrase",
            "init",
        ])
        .current_dir(dir)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_PASSPHRASE")
        .env("EMBASSY_STATE_DIR", dir.join("cli-state"))
        .env("EMBASSY_KEY_FILE", dir.join("vault.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // pg_hba.conf rejects the role on loopback without TLS: streaming and pg_basebackup must
    // both use it.
    let info = conninfo(
        &pg,
        "localhost",
        "embassy",
        &format!("sslmode=verify-full sslrootcert={}", pki.ca().display()),
    );
    std::fs::write(
        dir.join("embassy.toml"),
        format!(
            "[agent]\nstate_dir = \"state\"\nverify_interval = \"never\"\nshutdown_grace = \"10s\"\n\
             [keys]\nfile = \"vault.key\"\npassphrase_file = \"passphrase\"\n\
             [[sites]]\nname = \"a\"\npath = \"sites/a\"\n\
             [[datasets]]\nname = \"registry-db\"\n\
             source = {{ postgres = {{ conninfo = \"{info}\" }} }}\n\
             mode = \"continuous\"\ninterval = \"5s\"\nrpo = \"1min\"\n"
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let mut agent = Command::new(EXE)
        .args(["agent", "--config", "embassy.toml"])
        .current_dir(dir)
        .env_remove("EMBASSY_PASSPHRASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    pg.psql("CREATE TABLE people AS SELECT g AS id FROM generate_series(1, 20000) g");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = status_cell(dir, "registry-db", "a");
        if c["wal_end"].is_string() && c["versions"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        if let Ok(Some(status)) = agent.try_wait() {
            panic!(
                "the agent exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no WAL and base backup over TLS: {c}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every WAL sender (the stream, and a base backup if one runs now) is TLS.
    assert_eq!(
        pg.psql(
            "SELECT count(*) > 0 AND bool_and(s.ssl) \
             FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)"
        ),
        "t",
        "the agent's WAL sender connections are TLS"
    );
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "agent exit {status}: {text}");
    assert!(
        text.contains("registry-db: continuous WAL streaming started"),
        "{text}"
    );
}
