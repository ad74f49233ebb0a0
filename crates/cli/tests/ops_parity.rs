//! The command line and the agent run the same operations (embassy-ops): each test runs one
//! scenario through `embassy` commands and through a real `embassy agent`, and compares what
//! they say. Streamed WAL in verification, the recovery point in status, passphrase files, and
//! a PostgreSQL restore that unlocks the keys once. Real PostgreSQL 15 (`pg_config --bindir`),
//! real processes; commands run as the `postgres` user, which a restore's `restore_command`
//! runs as.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_testkit::pg::restored as pgkit;
use embassy_testkit::pg::{PgOptions, PgServer};
use serde_json::Value;

use embassy_testkit::free_port;
use embassy_testkit::status_page::{show, status_json};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// A vault at `sites/a`, its key file and passphrase file, in a folder owned by `postgres`.
struct Env {
    dir: tempfile::TempDir,
    ids: (u32, u32),
}

impl Env {
    /// A new vault whose passphrase file holds `passphrase` (bytes as written).
    fn new(passphrase: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("embassy-ops-")
            .tempdir()
            .unwrap();
        let ids = pgkit::postgres_ids();
        std::fs::write(dir.path().join("pass"), passphrase).unwrap();
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

    /// `embassy` as the postgres user in the folder, with the vault's site and keys.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.args(["--site", "sites/a", "--key-file", "vault.key"])
            .args(["--state-dir", "cli-state", "--quiet"])
            .args(args)
            .current_dir(self.dir.path())
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

    fn output(&self, args: &[&str]) -> Output {
        let mut full = vec!["--passphrase-file", "pass"];
        full.extend(args);
        self.cmd(&full).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(out.status.success(), "embassy {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend(args);
        let out = self.output(&full);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("embassy {args:?}: {e}: {}", show(&out)))
    }

    /// The agent's configuration: site `a`, the vault's keys, `datasets`; verification at
    /// start; the status page on `port`.
    fn config(&self, port: u16, datasets: &str) {
        let text = format!(
            "[agent]\nstate_dir = \"agent-state\"\nverify_interval = \"1h\"\n\
             [status]\nlisten = \"127.0.0.1:{port}\"\n\
             [keys]\nfile = \"vault.key\"\npassphrase_file = \"pass\"\n\
             [[sites]]\nname = \"a\"\npath = \"sites/a\"\n{datasets}"
        );
        let p = self.path("embassy.toml");
        std::fs::write(&p, text).unwrap();
        std::os::unix::fs::chown(&p, Some(self.ids.0), Some(self.ids.1)).unwrap();
    }

    /// `embassy agent` as the postgres user, its log in `agent.log`.
    fn agent(&self, extra: &[&str]) -> Command {
        let log = std::fs::File::create(self.path("agent.log")).unwrap();
        let mut c = Command::new(EXE);
        c.args(["agent", "--config", "embassy.toml"])
            .args(extra)
            .current_dir(self.dir.path())
            .env_remove("EMBASSY_PASSPHRASE")
            .env("HOME", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .uid(self.ids.0)
            .gid(self.ids.1);
        c
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.path("agent.log")).unwrap_or_default()
    }
}

/// Stops a child process (SIGTERM, then wait) when dropped, also when a test fails.
struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The agent's cell of `dataset` at site `a` in a status document.
fn cell(report: &Value, dataset: &str) -> Value {
    report["datasets"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == dataset))
        .and_then(|d| d["sites"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["site"] == "a"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A PostgreSQL dataset `reg`: a base backup, then (a few seconds later) WAL streamed by
/// `embassy pg stream` under writes, newer than the base backup. The server is stopped at the
/// end, so nothing changes while the front ends are compared. Returns the base backup's
/// recovery point as `embassy versions` shows it, and the server's connection string.
fn postgres_with_streamed_wal(env: &Env, pg: &PgServer) -> (String, String) {
    pg.psql("CREATE TABLE people (id serial PRIMARY KEY, name text)");
    env.run(&["pg", "base-backup", "reg", "--conninfo", &pg.conninfo()]);
    let versions = env.json(&["versions", "reg"]);
    let base_time = versions["versions"][0]["captured_at"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!base_time.is_empty(), "{versions}");
    // The WAL's capture time must be seconds after the base backup's.
    std::thread::sleep(Duration::from_millis(2500));
    let streamer = Stopper(
        env.cmd(&[
            "--passphrase-file",
            "pass",
            "pg",
            "stream",
            "reg",
            "--conninfo",
            &pg.conninfo(),
            "--slot",
            "embassy_reg",
            "--create-slot",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    for i in 0..12 {
        pg.psql(&format!(
            "INSERT INTO people (name) SELECT 'person ' || g FROM generate_series(1, 500) g; -- {i}"
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    let pieces = || wal_pieces(&env.path("sites/a"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while pieces().len() < 3 {
        assert!(Instant::now() < deadline, "no streamed WAL at the site");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    drop(streamer);
    let conninfo = pg.conninfo();
    pg.stop();
    (base_time, conninfo)
}

/// The streamed WAL objects (pieces) of dataset `reg` at a local site, in name order.
fn wal_pieces(site: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![site.join("wal").join("reg")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.parent().and_then(|d| d.file_name()) == Some("p".as_ref()) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn continuous_dataset(conninfo: &str) -> String {
    format!(
        "[[datasets]]\nname = \"reg\"\nsource = {{ postgres = {{ conninfo = \"{conninfo}\" }} }}\n\
         mode = \"continuous\"\ninterval = \"1h\"\nrpo = \"1d\"\n"
    )
}

/// (b) With streamed WAL newer than the last base backup, `status --site`, `status --config`
/// and the agent's /status.json give one recovery point: the WAL's, not the base backup's.
#[test]
fn status_site_status_config_and_the_agent_give_one_recovery_point() {
    let pg = PgServer::start(PgOptions::default());
    let env = Env::new("ops parity passphrase\n");
    let (base_time, conninfo) = postgres_with_streamed_wal(&env, &pg);

    let by_site = env.json(&["status"]);
    let row = by_site["datasets"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["dataset"] == "reg"))
        .cloned()
        .unwrap_or(Value::Null);
    let site_point = row["recovery_point"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !site_point.is_empty() && site_point > base_time,
        "status --site: recovery point {site_point:?}, base backup {base_time}: {by_site}"
    );
    assert!(row["wal_end"].is_string(), "{row}");

    let port = free_port();
    env.config(port, &continuous_dataset(&conninfo));
    let by_config = env.json(&["status", "--config", "embassy.toml"]);
    let config_point = cell(&by_config, "reg")["recovery_point"].clone();

    let agent = Stopper(env.agent(&[]).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(60);
    let served = loop {
        if let Some(r) = status_json(port) {
            if cell(&r, "reg")["recovery_point"].is_string() {
                break r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no recovery point on /status.json; log:\n{}",
            env.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(agent);
    let agent_point = cell(&served, "reg")["recovery_point"].clone();
    assert_eq!(
        config_point.as_str(),
        Some(site_point.as_str()),
        "status --config: {by_config}"
    );
    assert_eq!(
        agent_point.as_str(),
        Some(site_point.as_str()),
        "/status.json: {served}"
    );
}

/// (a) A site that withholds a streamed WAL object: `embassy verify`, `embassy witness` and the
/// agent's scheduled verification all find the gap.
#[test]
fn verify_and_the_agent_s_scheduled_verification_both_check_streamed_wal() {
    let pg = PgServer::start(PgOptions::default());
    let env = Env::new("ops parity passphrase\n");
    let (_, conninfo) = postgres_with_streamed_wal(&env, &pg);
    let pieces = wal_pieces(&env.path("sites/a"));
    let withheld = &pieces[pieces.len() / 2];
    std::fs::remove_file(withheld).unwrap();

    let out = env.output(&["verify"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(said.contains("GAP") || said.contains("PROBLEM"), "{said}");
    // A witness verifies the same way: it cosigns nothing.
    env.run(&["witness-key", "--out", "witness.key"]);
    let out = env.output(&["witness", "--witness-key", "witness.key"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(said.contains("nothing was cosigned"), "{said}");

    // The agent, one cycle: its verification at start, recorded in its state.
    env.config(free_port(), &continuous_dataset(&conninfo));
    let status = env.agent(&["--once"]).status().unwrap();
    let log = env.agent_log();
    assert!(log.contains("verify a: "), "no verification ran: {log}");
    let by_config = env.json(&["status", "--config", "embassy.toml"]);
    let verify = &by_config["sites"][0]["last_verify"];
    assert_eq!(
        verify["ok"],
        Value::Bool(false),
        "the agent's verification missed the withheld WAL (exit {status:?}): {verify}\n{log}"
    );
    assert!(
        verify["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("WAL"),
        "{verify}"
    );
}

/// (c) A passphrase file with a trailing line break and a second line is read the same way by
/// the command line and the agent: whole, the line break at its end dropped.
#[test]
fn a_passphrase_file_of_several_lines_is_read_alike_by_the_cli_and_the_agent() {
    let env = Env::new("first line\r\nsecond line\n");
    // The command line: the passphrase `init` sealed the key with opens it for a backup.
    env.run(&["backup", "notes", "--command", "echo one"]);
    // The agent reads the same file and backs up too.
    env.config(
        free_port(),
        "[[datasets]]\nname = \"notes\"\nsource = { command = \"echo two\" }\n\
         interval = \"1h\"\nrpo = \"1d\"\n",
    );
    let status = env.agent(&["--once"]).status().unwrap();
    assert!(status.success(), "agent --once: {}", env.agent_log());
    let versions = env.json(&["versions", "notes"]);
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(2),
        "{versions}"
    );
    // Only its first line is the wrong passphrase, for both.
    std::fs::write(env.path("pass"), "first line\n").unwrap();
    let out = env.output(&["backup", "notes", "--command", "echo three"]);
    // 12: a wrong passphrase (crates/cli/src/exit.rs).
    assert_eq!(out.status.code(), Some(12), "{}", show(&out));
    let status = env.agent(&["--once"]).status().unwrap();
    assert!(!status.success(), "the agent took a wrong passphrase");
    assert!(
        env.agent_log().to_lowercase().contains("passphrase"),
        "{}",
        env.agent_log()
    );
}

/// A PostgreSQL restore reads the passphrase and unlocks the keys once: its passphrase file is
/// a pipe that counts how often it is opened (`--passphrase-file <(pass show vault)` can be
/// read only once).
#[test]
fn a_postgres_restore_reads_the_passphrase_once() {
    let pg = PgServer::start(PgOptions::default());
    let env = Env::new("ops parity passphrase\n");
    pg.psql("CREATE TABLE people (id serial PRIMARY KEY, name text)");
    env.run(&["pg", "base-backup", "reg", "--conninfo", &pg.conninfo()]);
    pg.stop();

    let fifo = env.path("pass.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    std::os::unix::fs::chown(&fifo, Some(env.ids.0), Some(env.ids.1)).unwrap();
    // The writer serves the passphrase to every reader that opens the pipe, and counts them.
    let opened = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (fifo, opened, done) = (fifo.clone(), opened.clone(), done.clone());
        std::thread::spawn(move || loop {
            // Blocks until a reader opens the pipe.
            let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&fifo) else {
                return;
            };
            if done.load(Ordering::SeqCst) {
                return;
            }
            opened.fetch_add(1, Ordering::SeqCst);
            let _ = f.write_all(b"ops parity passphrase\n");
            drop(f);
            // The reader sees the end of the passphrase only once no writer holds the pipe:
            // wait before serving the next reader, so one open serves exactly one passphrase.
            std::thread::sleep(Duration::from_millis(300));
        })
    };
    let restores = env.path("restores");
    std::fs::create_dir_all(&restores).unwrap();
    std::os::unix::fs::chown(&restores, Some(env.ids.0), Some(env.ids.1)).unwrap();
    let out = env
        .cmd(&[
            "--passphrase-file",
            fifo.to_str().unwrap(),
            "restore",
            "reg",
            "--to",
            restores.join("data").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let reads = opened.load(Ordering::SeqCst);
    // Let the writer go: one last open from here.
    done.store(true, Ordering::SeqCst);
    let _ = std::fs::File::open(&fifo);
    let _ = writer.join();
    assert_eq!(
        reads,
        1,
        "the passphrase was read {reads} times: {}",
        show(&out)
    );
    assert!(out.status.success(), "restore: {}", show(&out));
}
