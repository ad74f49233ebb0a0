//! Attack 5 of issue 12: revoking the WAL streamer's key must not invalidate the WAL it
//! streamed. The documented rotation (docs/keys.md: issue credential B, switch the streamer to
//! B, revoke A) runs end to end on a real PostgreSQL 15 with the real `embassy` program; the
//! vault verifies, a point-in-time restore to a moment streamed by A and a `--latest` restore
//! both come back with the same table checksums, and WAL pieces forged with A's key after its
//! revocation are noise that no reader uses.
//!
//! Every embassy command runs as the `postgres` user, like `restore_command` does.

use embassy_testkit::pg::restored::*;
use embassy_testkit::wait_until;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use embassy_core::engine::vault::Vault;
use embassy_core::format::wal_log::{self, LogKind, LogSpec};
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::site::Site;
use embassy_postgres::wal;
use embassy_testkit::pg::{PgOptions, PgServer};

use embassy_testkit::cli::{postgres_home, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const SEGMENT: u64 = 16 * 1024 * 1024;

/// A vault, the root key file and a passphrase file in a folder owned by `postgres`.
struct Env {
    dir: tempfile::TempDir,
    ids: (u32, u32),
}

impl Env {
    fn new() -> Self {
        let (dir, ids) = postgres_home("embassy-walgc-");
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
            captured_at_ns: embassy_core::format::config::now_unix_nanos(),
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
