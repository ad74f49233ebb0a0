//! Defects of issue 16 found while recovering a PostgreSQL registry as a disaster would have
//! it, each tested with the real `embassy` program on a real PostgreSQL 15:
//!
//! - `promote` records its entry at every site of the vault this machine knows, queues it for
//!   a site that does not answer, and a site that merely lags is called lagging (with the way
//!   to catch it up), never rolled back;
//! - a root restore given `--state-dir` keeps the state of its `restore_command` there, not in
//!   a folder beside the data directory (under the postgres user's home);
//! - `restore --latest` falls back to the newest witnessed base backup that reaches the target
//!   when the newest one is not witnessed yet.
//!
//! Commands run as the `postgres` user unless said otherwise (PostgreSQL runs `restore_command`
//! as its own user).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use embassy_testkit::cli::postgres_home;
use embassy_testkit::pg::restored::Restored;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// A vault at one or more site folders, its key file and passphrase, in a folder owned by
/// `postgres`.
struct Env {
    dir: tempfile::TempDir,
    ids: (u32, u32),
}

impl Env {
    /// A vault at the sites named (folders below the home), made with `embassy init`.
    fn new(sites: &[&str]) -> Self {
        Self::with_init(sites, |_| Vec::new())
    }

    /// The same, `init` given the extra arguments `extra` makes (it may run commands first).
    fn with_init(sites: &[&str], extra: impl FnOnce(&Env) -> Vec<String>) -> Self {
        let (dir, ids) = postgres_home("embassy-pgd-");
        let env = Env { dir, ids };
        let extra = extra(&env);
        let mut args = vec!["init"];
        args.extend(extra.iter().map(String::as_str));
        let out = env.at(sites, &args).output().unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An embassy command at these sites, as the postgres user.
    fn at(&self, sites: &[&str], args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        for site in sites {
            c.arg("--site").arg(self.path(site));
        }
        c.arg("--key-file")
            .arg(self.path("vault.key"))
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

    /// Runs a command that must succeed; returns its stdout.
    fn run(&self, sites: &[&str], args: &[&str]) -> String {
        let out = self.at(sites, args).output().unwrap();
        assert!(
            out.status.success(),
            "embassy {args:?} at {sites:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn output(&self, sites: &[&str], args: &[&str]) -> Output {
        self.at(sites, args).output().unwrap()
    }

    fn durable(&self) -> u64 {
        std::fs::read_to_string(self.path("durable.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    /// `embassy pg stream` of `pg` into dataset `registry` at these sites.
    fn stream(&self, sites: &[&str], pg: &PgServer) -> Stopper {
        let log = self.path("durable.log");
        Stopper(
            self.at(
                sites,
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
            .expect("embassy runs"),
        )
    }

    /// The folder restores go into: owned by postgres.
    fn restore_root(&self) -> PathBuf {
        let p = self.path("restores");
        std::fs::create_dir_all(&p).unwrap();
        std::os::unix::fs::chown(&p, Some(self.ids.0), Some(self.ids.1)).unwrap();
        p
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A vault at sites a, b and c. The standby is written and promoted through site a alone
/// (recovery from one site), while c is unreachable: the promotion's entry reaches a and b at
/// once and is queued for c. Afterwards b serves it, c is called lagging (exit 1, the way to
/// catch it up named; not "rolled back", exit 3), and `sync --pending` brings c level.
#[test]
fn promote_reaches_every_site_and_queues_the_rest() {
    let pg = PgServer::start(PgOptions::default());
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let all = ["a", "b", "c"];
    let env = Env::new(&all);
    {
        let _streamer = env.stream(&all, &pg);
        wait_until(
            "the streamer's first durable WAL",
            Duration::from_secs(30),
            || env.durable() > 0,
        );
        env.run(
            &all,
            &[
                "pg",
                "base-backup",
                "registry",
                "--conninfo",
                &pg.conninfo(),
                "--wal-streamed",
            ],
        );
        pg.psql("CREATE TABLE marker(v int); INSERT INTO marker VALUES (1)");
        let end = pg.current_lsn();
        wait_until("WAL to become durable", Duration::from_secs(60), || {
            env.durable() >= end
        });
    }

    let standby_dir = env.restore_root().join("standby");
    env.run(&["a"], &["standby", "registry", "--to", arg(&standby_dir)]);
    let standby = Restored::start(standby_dir.clone());
    wait_until(
        "the standby to see the marker",
        Duration::from_secs(60),
        || {
            standby
                .try_psql("SELECT count(*) FROM marker")
                .ok()
                .as_deref()
                == Some("1")
        },
    );

    // Site c cannot be reached (its disk is gone) while the standby is promoted through a.
    let c = env.path("c");
    let away = env.path("c-away");
    std::fs::rename(&c, &away).unwrap();
    let out = env.output(
        &["a"],
        &["--json", "promote", "registry", "--data", arg(&standby_dir)],
    );
    assert!(out.status.success(), "promote: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let queued = json["queued"].as_array().unwrap();
    assert_eq!(queued.len(), 1, "{json}");
    assert!(queued[0].as_str().unwrap().ends_with("/c"), "{json}");
    assert_eq!(json["sites"].as_array().unwrap().len(), 2, "{json}");
    assert_eq!(standby.try_psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    std::fs::rename(&away, &c).unwrap();

    // Site b holds the entry already.
    let history = env.run(&["b"], &["history", "registry"]);
    assert!(history.contains("promoted"), "{history}");
    // Site c lags: said so, with the way to catch it up; not an integrity problem.
    let out = env.output(&["c"], &["history", "registry"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lags"), "{stderr}");
    assert!(stderr.contains("embassy sync --pending"), "{stderr}");
    assert!(!stderr.contains("rolled back"), "{stderr}");
    // Caught up, it serves the entry.
    env.run(&["a", "c"], &["sync", "--pending"]);
    let history = env.run(&["c"], &["history", "registry"]);
    assert!(history.contains("promoted"), "{history}");
}

/// A restore run as root with `--state-dir` keeps the state of its `restore_command`
/// (`wal-fetch`'s site pins, verified heads, locks) below that folder, not in the fetch folder
/// beside the data directory.
#[test]
fn a_root_restore_keeps_the_fetch_state_under_the_state_dir_given() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE t(v int); INSERT INTO t SELECT generate_series(1, 1000)");
    let env = Env::new(&["site"]);
    env.run(
        &["site"],
        &[
            "pg",
            "base-backup",
            "registry",
            "--conninfo",
            &pg.conninfo(),
        ],
    );
    let state = env.path("root-state");
    let dir = env.restore_root().join("main");
    let out = Command::new(EXE)
        .arg("--site")
        .arg(env.path("site"))
        .arg("--key-file")
        .arg(env.path("vault.key"))
        .arg("--passphrase-file")
        .arg(env.path("pass"))
        .args(["--quiet", "restore", "registry", "--latest", "--to"])
        .arg(&dir)
        .env("EMBASSY_STATE_DIR", &state)
        .env_remove("EMBASSY_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    let fetch_state = state.join("wal-fetch");
    assert!(conf.contains(arg(&fetch_state)), "{conf}");
    assert!(
        !env.path("restores/main.wal-fetch/state").exists(),
        "state kept in the fetch folder"
    );
    // The restore_command's check (run as postgres) pinned the site in that state folder.
    let pins: Vec<PathBuf> = std::fs::read_dir(&fetch_state)
        .unwrap()
        .map(|e| e.unwrap().path().join("site-pins.json"))
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(
        pins.len(),
        1,
        "no site pins under {}",
        fetch_state.display()
    );
    // The restored server replays through it.
    let restored = Restored::start(dir);
    restored.wait_open(Duration::from_secs(120));
    assert_eq!(restored.try_psql("SELECT count(*) FROM t").unwrap(), "1000");
}

/// Under a witness quorum, `restore --latest` whose newest base backup is not witnessed yet
/// starts from the newest witnessed one (the streamed WAL gets it to the same point), and says
/// so; it does not refuse.
#[test]
fn latest_restore_falls_back_to_the_newest_witnessed_base_backup() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE t(v int); INSERT INTO t SELECT generate_series(1, 1000)");
    let env = Env::with_init(&["site"], |env| {
        let key = env.path("witness.key");
        let out = env.output(&[], &["--json", "witness-key", "--out", arg(&key)]);
        assert!(out.status.success(), "witness-key: {}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let public = json["public_key"].as_str().unwrap().to_string();
        vec![
            "--witness".into(),
            public,
            "--witness-quorum".into(),
            "1".into(),
        ]
    });
    let site = ["site"];
    let _streamer = env.stream(&site, &pg);
    wait_until(
        "the streamer's first durable WAL",
        Duration::from_secs(30),
        || env.durable() > 0,
    );
    let base_backup = || {
        env.run(
            &site,
            &[
                "pg",
                "base-backup",
                "registry",
                "--conninfo",
                &pg.conninfo(),
                "--wal-streamed",
            ],
        )
    };
    base_backup();
    pg.psql("INSERT INTO t SELECT generate_series(1001, 2000)");
    let key = env.path("witness.key");
    env.run(&site, &["witness", "--witness-key", arg(&key)]);
    // A newer base backup, not witnessed, and more WAL after it.
    base_backup();
    pg.psql("INSERT INTO t SELECT generate_series(2001, 3000)");
    let end = pg.current_lsn();
    wait_until("WAL to become durable", Duration::from_secs(60), || {
        env.durable() >= end
    });

    let dir = env.restore_root().join("latest");
    let out = env.output(
        &site,
        &[
            "--json",
            "restore",
            "registry",
            "--latest",
            "--to",
            arg(&dir),
        ],
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "restore --latest refused: {stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["version"]["version"], 1, "{json}");
    assert_eq!(json["fell_back"]["skipped_version"], 2, "{json}");
    assert!(
        stderr.contains("version 2 of registry is not witnessed yet")
            && stderr.contains("--unwitnessed"),
        "{stderr}"
    );
    // It reaches the same point: every row, the last ones after the unwitnessed backup too.
    let restored = Restored::start(dir);
    restored.wait_open(Duration::from_secs(120));
    assert_eq!(restored.try_psql("SELECT count(*) FROM t").unwrap(), "3000");
}
