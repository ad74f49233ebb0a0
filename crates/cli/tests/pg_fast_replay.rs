//! Fast replay: a restored PostgreSQL 15 replaying many WAL segments gets them from one
//! long-lived fetch helper (one vault unlock for the whole replay) through a private spool that
//! is gone when recovery ends; the helper killed with SIGKILL mid-replay changes nothing but
//! speed; a segment tampered at the site is never spooled or served.
//!
//! Real processes: PostgreSQL 15 (the source and the restored server), `embassy pg stream`,
//! `embassy restore`, and the `restore_command` PostgreSQL runs. Everything runs as the
//! `postgres` user, as in pg_replay.rs.

use embassy_testkit::pg::restored::*;
use embassy_testkit::wait_until;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::cli::postgres_home;
use embassy_testkit::pg::{PgOptions, PgServer};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const SEGMENT: u64 = 16 << 20;
/// Segments switched after the base backup (each a separate WAL file to replay).
const SWITCHES: u32 = 70;
/// The rows and their sum that the replay must bring back.
const COUNT: &str = "SELECT count(*) || ' ' || coalesce(sum(x), 0) FROM replayed";

/// A vault on local site `a` with WAL streamed from a server that wrote [`SWITCHES`]
/// segments after the base backup.
struct Env {
    dir: tempfile::TempDir,
    ids: (u32, u32),
    vars: Vec<(String, String)>,
    /// [`COUNT`] on the source after the last segment.
    expected: String,
    /// The last WAL position written on the source.
    end: u64,
}

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn site(&self) -> String {
        self.path("a").display().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
        c.arg("--key-file")
            .arg(self.path("vault.key"))
            .arg("--passphrase-file")
            .arg(self.path("pass"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--quiet")
            .arg("--site")
            .arg(self.site())
            .args(args)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_KEY_FILE")
            .env_remove("EMBASSY_STATE_DIR")
            .env_remove("EMBASSY_PASSPHRASE")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .uid(self.ids.0)
            .gid(self.ids.1);
        c
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
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

    /// The vault, a base backup, then [`SWITCHES`] segments of WAL, all durable.
    fn new(prefix: &str) -> (Env, PgServer) {
        let (dir, ids) = postgres_home(prefix);
        let vars = [
            ("EMBASSY_WAL_FETCH_RETRY_SECONDS", "3"),
            ("EMBASSY_WAL_FETCH_IDLE_SECONDS", "20"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut env = Env {
            dir,
            ids,
            vars,
            expected: String::new(),
            end: 0,
        };
        env.run(&["init"]);
        let pg = PgServer::start(PgOptions::default());
        pg.psql("CREATE TABLE replayed(x int)");
        let log = env.path("durable.log");
        let streamer = Stopper(
            env.cmd(&[
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
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
        );
        wait_until("the first durable WAL", Duration::from_secs(60), || {
            env.durable() > 0
        });
        env.run(&[
            "pg",
            "base-backup",
            "registry",
            "--conninfo",
            &pg.conninfo(),
            "--wal-streamed",
        ]);
        // Each switch ends a segment: that many WAL files for the restore to replay.
        pg.psql(&format!(
            "DO $$ BEGIN FOR i IN 1..{SWITCHES} LOOP \
             INSERT INTO replayed SELECT i * 1000 + g FROM generate_series(1, 100) g; \
             PERFORM pg_switch_wal(); END LOOP; END $$"
        ));
        pg.psql("INSERT INTO replayed VALUES (7)");
        env.end = pg.current_lsn();
        env.expected = pg.psql(COUNT).trim().to_string();
        wait_until("WAL to become durable", Duration::from_secs(600), || {
            env.durable() >= env.end
        });
        drop(streamer);
        (env, pg)
    }

    /// `embassy restore --latest` into a new data directory; returns it.
    fn restore(&self) -> PathBuf {
        let root = self.path("restores");
        std::fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(self.ids.0), Some(self.ids.1)).unwrap();
        let data = root.join("data");
        self.run(&[
            "restore",
            "registry",
            "--latest",
            "--to",
            data.to_str().unwrap(),
        ]);
        data
    }
}

/// Stops a child process (SIGTERM, then wait) when dropped.
struct Stopper(Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// The restore's state folder (in its fetch folder beside the data directory).
/// The state folder of the restore's `wal-fetch`: below the `--state-dir` the restore was given
/// (`state/wal-fetch/<name>.wal-fetch-<hash>`: the tests' restores run as the data directory's
/// owner, who reaches it), else in the fetch folder beside the data directory.
fn state_of(data: &Path) -> PathBuf {
    let mut name = data.file_name().unwrap().to_os_string();
    name.push(".wal-fetch");
    // The environment's folder holds `state/` and `restores/<data>`.
    let below = data
        .ancestors()
        .nth(2)
        .unwrap()
        .join("state")
        .join("wal-fetch");
    let prefix = format!("{}-", name.to_string_lossy());
    std::fs::read_dir(&below)
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .unwrap_or_else(|| data.parent().unwrap().join(name).join("state"))
}

fn fetch_log(data: &Path) -> String {
    std::fs::read_to_string(state_of(data).join("wal-fetch.log")).unwrap_or_default()
}

fn helper_pids(log: &str) -> Vec<i32> {
    log.lines()
        .filter(|l| l.contains("fetch helper started"))
        .filter_map(|l| l.split(" pid ").nth(1)?.split(' ').next()?.parse().ok())
        .collect()
}

fn restored_segments(log: &str) -> usize {
    log.matches("restored log file").count()
}

/// Asserts the spool (if there now) is private: the folder 0700, every file 0600, and
/// returns how many segments it holds.
fn check_spool_private(spool: &Path) -> usize {
    let Ok(meta) = std::fs::symlink_metadata(spool) else {
        return 0;
    };
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o777, 0o700, "spool folder mode");
    let mut segments = 0;
    for e in std::fs::read_dir(spool).into_iter().flatten().flatten() {
        let Ok(m) = e.metadata() else { continue };
        assert_eq!(
            m.permissions().mode() & 0o077,
            0,
            "{} is readable by others",
            e.path().display()
        );
        let name = e.file_name().to_string_lossy().into_owned();
        if name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
            segments += 1;
        }
    }
    segments
}

/// A restore replaying 70+ segments: one helper, one vault unlock for all but a handful of
/// files (history files and the last, partial segment are fetched directly), the same rows as
/// the source; the spool is private while there and removed when recovery ends.
#[test]
fn replay_of_many_segments_goes_through_one_helper_and_its_spool_is_removed() {
    let t0 = Instant::now();
    let (env, _pg) = Env::new("embassy-fastreplay-");
    let data = env.restore();
    let spool = state_of(&data).join("replay-spool");
    let server = Restored::start_with(data.clone(), &env.vars);
    let replay = Instant::now();
    let mut seen_spooled = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while server.try_psql("SELECT pg_is_in_recovery()").as_deref() != Ok("f") {
        seen_spooled = seen_spooled.max(check_spool_private(&spool));
        assert!(
            Instant::now() < deadline,
            "recovery did not end: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = replay.elapsed().as_secs_f64();
    assert_eq!(server.try_psql(COUNT).unwrap(), env.expected);
    let log = server.log();
    let segments = restored_segments(&log);
    assert!(segments as u32 >= SWITCHES, "{segments} restored: {log}");
    println!(
        "{segments} segments replayed in {seconds:.1} s ({:.1} MB/s); whole test {:.1} s",
        segments as f64 * 16.0 / seconds,
        t0.elapsed().as_secs_f64()
    );
    wait_until(
        "the helper to remove its spool",
        Duration::from_secs(30),
        || !spool.exists(),
    );
    let fetches = fetch_log(&data);
    assert_eq!(helper_pids(&fetches).len(), 1, "{fetches}");
    let unlocks = fetches.matches("vault unlocked").count();
    assert!(
        unlocks <= 8,
        "{unlocks} vault unlocks for {segments} segments: {fetches}"
    );
    assert!(fetches.contains("the restore is over"), "{fetches}");
    assert!(seen_spooled > 0, "never saw a spooled segment");
    // The data directory holds nothing of the spool.
    assert!(!data.join("pg_wal").join("embassy_prefetch").exists());
}

/// The helper killed with SIGKILL while the replay is paused half-way: the spool it filled is
/// private; the replay then completes (a new helper, or direct fetches) with the same rows.
#[test]
fn helper_killed_mid_replay_and_the_replay_still_completes() {
    let (env, _pg) = Env::new("embassy-fastreplay-kill-");
    let data = env.restore();
    let spool = state_of(&data).join("replay-spool");
    let server = Restored::start_with(data.clone(), &env.vars);
    wait_until("a few segments replayed", Duration::from_secs(300), || {
        restored_segments(&server.log()) >= 6
    });
    // Hot standby: replay pauses between records while we look and kill.
    wait_until("the paused replay", Duration::from_secs(60), || {
        server.try_psql("SELECT pg_wal_replay_pause()").is_ok()
    });
    let before = restored_segments(&server.log());
    assert!(
        (before as u32) < SWITCHES,
        "the replay finished before it could be paused"
    );
    wait_until(
        "the helper to fill the spool",
        Duration::from_secs(120),
        || check_spool_private(&spool) >= 4,
    );
    let pids = helper_pids(&fetch_log(&data));
    assert_eq!(pids.len(), 1, "{}", fetch_log(&data));
    // SAFETY: signalling the helper process the log names.
    assert_eq!(unsafe { libc::kill(pids[0], libc::SIGKILL) }, 0);
    server.try_psql("SELECT pg_wal_replay_resume()").unwrap();
    server.wait_open(Duration::from_secs(600));
    assert_eq!(server.try_psql(COUNT).unwrap(), env.expected);
    let log = server.log();
    assert!(restored_segments(&log) as u32 >= SWITCHES, "{log}");
    let fetches = fetch_log(&data);
    // A new helper took over (started by the next wal-fetch) and removed the spool at the end.
    assert!(helper_pids(&fetches).len() >= 2, "{fetches}");
    wait_until("the spool to be removed", Duration::from_secs(30), || {
        !spool.exists()
    });
}

/// One segment's WAL objects damaged at the site: the helper declines it (never spooled),
/// the direct fetch refuses it, and PostgreSQL stops recovery there instead of opening.
#[test]
fn segment_tampered_at_the_site_is_never_spooled_or_served() {
    let (env, _pg) = Env::new("embassy-fastreplay-tamper-");
    // A segment in the middle of the switched ones.
    let last = env.end / SEGMENT;
    let segno = last - u64::from(SWITCHES) / 2;
    let name = format!("00000001{:08X}{:08X}", segno / 256, segno % 256);
    let start = format!("{:016x}", segno * SEGMENT);
    let mut damaged = 0;
    for f in walk(&env.path("a").join("wal")) {
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        if file.starts_with(&start[..10]) && f.to_string_lossy().contains("/00000001/") {
            let mut bytes = std::fs::read(&f).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
            std::fs::write(&f, bytes).unwrap();
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no WAL object of {name} found");
    let data = env.restore();
    let spool = state_of(&data).join("replay-spool");
    let server = Restored::start_with(data.clone(), &env.vars);
    let deadline = Instant::now() + Duration::from_secs(600);
    while data.join("postmaster.pid").exists() {
        assert!(
            !spool.join(&name).exists(),
            "the tampered segment was spooled"
        );
        check_spool_private(&spool);
        assert!(Instant::now() < deadline, "the server kept running");
        std::thread::sleep(Duration::from_millis(10));
    }
    let log = server.log();
    assert!(
        !log.contains("ready to accept connections"),
        "the server opened past a tampered segment: {log}"
    );
    assert!(
        log.contains("exit code 200"),
        "recovery did not stop on the fetch: {log}"
    );
    assert!(
        !log.contains(&format!("restored log file \"{name}\"")),
        "{log}"
    );
    let fetches = fetch_log(&data);
    assert!(
        fetches.contains(&format!("declined {name}")),
        "the helper did not decline {name}: {fetches}"
    );
    // Replay got that far through the helper.
    assert!(restored_segments(&log) >= 10, "{log}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
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
