//! A site failing in the middle of a WAL replay stops recovery; it never ends it early. Real
//! processes: PostgreSQL 15, `embassy pg stream`, a moto S3 server killed with SIGKILL while a
//! server restored `--latest` from it alone replays, then started again and refilled with
//! `embassy sync`; and `embassy wal-fetch`'s exit statuses (1 only for a file the vault proves
//! absent, above 125 for a site that fails or a file the ledger says was stored).
//!
//! Every embassy command and every restored server runs as the `postgres` user, as in
//! pg_recovery.rs.

use embassy_testkit::pg::restored::*;
use embassy_testkit::wait_until;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::moto::MotoServer;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::s3;

use embassy_testkit::cli::postgres_home;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
/// `wal-fetch`'s exit status that makes PostgreSQL abort recovery.
const STOP_RECOVERY: i32 = 200;

/// A vault on a local site `a` (and S3 sites on a moto server of the test's own), key file and
/// passphrase file in a folder owned by `postgres`.
struct Env {
    dir: tempfile::TempDir,
    ids: (u32, u32),
    /// The S3 settings every embassy run (and PostgreSQL's restore_command) needs.
    vars: Vec<(String, String)>,
}

impl Env {
    fn new() -> Self {
        let (dir, ids) = postgres_home("embassy-pgreplay-");
        let vars = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("EMBASSY_S3_TIMEOUT", "2"),
            ("EMBASSY_S3_CONNECT_TIMEOUT", "2"),
            ("EMBASSY_S3_RETRIES", "0"),
            ("EMBASSY_WAL_FETCH_RETRY_SECONDS", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = Env { dir, ids, vars };
        env.run(&["--site", &env.site_a(), "init"]);
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn site_a(&self) -> String {
        self.path("a").display().to_string()
    }

    /// An embassy command as the postgres user (give `--site` in `args`).
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(EXE);
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
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .uid(self.ids.0)
            .gid(self.ids.1);
        c
    }

    fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
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

    /// `embassy pg stream` into site `a`.
    fn stream(&self, pg: &PgServer) -> Child {
        let log = self.path("durable.log");
        self.cmd(&[
            "--site",
            &self.site_a(),
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
        .expect("embassy runs")
    }

    /// Creates a fresh bucket on `server` and copies the vault of site `a` into it.
    fn seed_s3(&self, server: &MotoServer, bucket: &str) -> String {
        let cfg = s3::s3_config(&server.endpoint, bucket, "vault");
        assert!(embassy_sites::S3Site::new(cfg)
            .unwrap()
            .create_bucket(false)
            .unwrap());
        let s3 = format!("s3://{bucket}/vault?endpoint={}", server.endpoint);
        self.run(&["sync", "--seed", "--from", &self.site_a(), "--to", &s3]);
        s3
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

fn restore_root(env: &Env) -> PathBuf {
    let p = env.path("restores");
    std::fs::create_dir_all(&p).unwrap();
    std::os::unix::fs::chown(&p, Some(env.ids.0), Some(env.ids.1)).unwrap();
    p
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

fn running(data: &Path) -> bool {
    data.join("postmaster.pid").exists()
}

/// The replay of a `--latest` restore from an S3 site alone loses its site mid-way (moto killed
/// after the first segments came from it): PostgreSQL stops with the site named in its log and
/// never opens for writes. With the site back (a new moto refilled by `embassy sync`), starting
/// the server again finishes recovery with every acknowledged commit.
#[test]
fn s3_site_killed_mid_replay_stops_recovery_and_it_resumes_with_all_acknowledged_data() {
    let t0 = Instant::now();
    let pg = PgServer::start(PgOptions::default());
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let env = Env::new();
    let streamer = Stopper(env.stream(&pg));
    wait_until(
        "the streamer's first durable WAL",
        Duration::from_secs(30),
        || env.durable() > 0,
    );
    env.run(&[
        "--site",
        &env.site_a(),
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
        "--wal-streamed",
    ]);
    // Tens of segments of WAL after the base backup: a bigger pgbench, then some updates.
    pg.pgbench(&["-i", "-s", "16", "-q"]);
    pg.pgbench(&["-c", "2", "-j", "2", "-t", "300"]);
    let end = pg.current_lsn();
    wait_until("WAL to become durable", Duration::from_secs(300), || {
        env.durable() >= end
    });
    let acknowledged = pg.psql(CHECKSUMS);
    drop(streamer);
    let segments = end / SEGMENT;
    println!(
        "{segments} WAL segments streamed in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(segments >= 12, "only {segments} segments of WAL");

    let moto = MotoServer::start();
    let port = moto.port;
    let bucket = s3::unique_bucket("replay");
    let s3 = env.seed_s3(&moto, &bucket);

    // Restore the latest point from the S3 site alone: recovery is pinned to the last record.
    let data = restore_root(&env).join("latest");
    let said = env.run(&[
        "--site",
        &s3,
        "restore",
        "registry",
        "--latest",
        "--to",
        data.to_str().unwrap(),
    ]);
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("recovery_target_lsn"), "{conf}");
    // The operator is told where recovery stops, not only the configuration file.
    assert!(
        said.contains("the last WAL record durable in the vault"),
        "{said}"
    );
    let server = Restored::start_with(data.clone(), &env.vars);
    wait_until(
        "the replay to fetch its first segments",
        Duration::from_secs(120),
        || count(&server.log(), "restored log file") >= 2,
    );
    assert!(
        !server.log().contains("ready to accept connections"),
        "the replay finished before the site was killed: make more WAL"
    );
    moto.signal(libc::SIGKILL);
    let killed = Instant::now();
    wait_until(
        "PostgreSQL to stop (or open) after the site died",
        Duration::from_secs(180),
        || !running(&data) || server.log().contains("ready to accept connections"),
    );
    let log = server.log();
    println!(
        "server stopped {:.1} s after the kill, {} segments restored before",
        killed.elapsed().as_secs_f64(),
        count(&log, "restored log file")
    );
    assert!(
        !log.contains("ready to accept connections") && !log.contains("selected new timeline"),
        "the server opened for writes after its site died: {log}"
    );
    assert!(
        log.contains(&format!("exit code {STOP_RECOVERY}")) && log.contains(&bucket),
        "the log does not say recovery stopped on the site: {log}"
    );
    drop(server);
    drop(moto);

    // The site comes back (a new, empty moto on the same port, refilled from site a): the
    // server started again resumes recovery and opens with every acknowledged commit.
    let moto = MotoServer::start_on(port);
    let s3_again = env.seed_s3(&moto, &bucket);
    assert_eq!(s3_again, s3);
    let server = Restored::start_with(data.clone(), &env.vars);
    server.wait_open(Duration::from_secs(300));
    assert_eq!(
        server.try_psql(CHECKSUMS).unwrap(),
        acknowledged,
        "the recovered server lacks acknowledged data; log: {}",
        server.log()
    );
    println!("whole test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// `embassy wal-fetch` exits 1 (quietly) only for a file the vault proves absent; a site that
/// cannot be reached, or a segment the ledger anchors that the site no longer lists, exits above
/// 125 with the site named; a following standby (standby.signal) is told 1 and asks again.
#[test]
fn wal_fetch_exits_1_only_for_proven_absence() {
    let pg = PgServer::start(PgOptions::default());
    let env = Env::new();
    let streamer = Stopper(env.stream(&pg));
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    pg.psql("SELECT pg_switch_wal()");
    pg.psql("CREATE TABLE after_switch(x int)");
    // Several pieces in the newest segment (the streamer seals at most every 200 ms).
    for i in 0..4 {
        std::thread::sleep(Duration::from_millis(400));
        pg.psql(&format!("INSERT INTO after_switch VALUES ({i})"));
    }
    let end = pg.current_lsn();
    wait_until("WAL to become durable", Duration::from_secs(120), || {
        env.durable() >= end
    });
    // The streamer keeps running: the newest segment's pieces are the live, not yet anchored
    // tail (anchored every 60 s, and when a segment completes or the streamer stops).
    let a = env.site_a();
    let dest = env.path("fetched");
    let fetch = |site: &str, file: &str, cwd: &Path| {
        let out = env
            .cmd(&["--site", site, "wal-fetch", "registry", file])
            .arg(&dest)
            .current_dir(cwd)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let here = env.path("");
    // A segment the vault holds (the one switched away from), one past its end, a history
    // file of no timeline.
    let segno = end / SEGMENT - 1;
    let first = segment_name(segno);
    let (code, err) = fetch(&a, &first, &here);
    assert_eq!(code, 0, "{first}: {err}");
    let past = segment_name(end / SEGMENT + 2);
    assert_eq!(fetch(&a, &past, &here), (1, String::new()));
    assert_eq!(fetch(&a, "00000002.history", &here), (1, String::new()));

    // A site nobody answers at: not proof of anything.
    let dead = format!(
        "s3://nobody/vault?endpoint=http://127.0.0.1:{}",
        embassy_testkit::free_port()
    );
    // Its vault id is pinned to a's at first contact; a fresh state folder for it.
    let out = Command::new(EXE)
        .args(["--key-file"])
        .arg(env.path("vault.key"))
        .arg("--passphrase-file")
        .arg(env.path("pass"))
        .arg("--state-dir")
        .arg(env.path("dead-state"))
        .args(["--quiet", "--site", &dead, "wal-fetch", "registry", &past])
        .arg(&dest)
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .env_remove("EMBASSY_PASSPHRASE")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(STOP_RECOVERY), "{err}");
    assert!(
        err.contains(&dead) && err.contains("recovery is stopped"),
        "{err}"
    );

    // The site loses a segment the ledger anchors: not absence either.
    let lost = &first;
    let wal_dir = Path::new(&a).join("wal");
    let mut removed = 0;
    for f in walk(&wal_dir) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        // Pieces and the segment object of that segment start with its first LSN digits.
        let start = format!("{:016x}", segno * SEGMENT);
        if name.starts_with(&start[..10]) && f.to_string_lossy().contains("/00000001/") {
            std::fs::remove_file(&f).unwrap();
            removed += 1;
        }
    }
    assert!(
        removed > 0,
        "no WAL object of {lost} found under {}",
        wal_dir.display()
    );
    let (code, err) = fetch(&a, lost, &here);
    assert_eq!(code, STOP_RECOVERY, "{err}");
    assert!(err.contains("ledger entry") && err.contains(&a), "{err}");
    // A following standby is told "not yet" and asks again.
    let standby = env.path("standby-dir");
    std::fs::create_dir_all(&standby).unwrap();
    std::fs::write(standby.join("standby.signal"), "").unwrap();
    std::os::unix::fs::chown(&standby, Some(env.ids.0), Some(env.ids.1)).unwrap();
    let (code, err) = fetch(&a, lost, &standby);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("asks again"), "{err}");
    // Unless it is being promoted: then it must not end short.
    std::fs::write(standby.join("promote.signal"), "").unwrap();
    assert_eq!(fetch(&a, lost, &standby).0, STOP_RECOVERY);

    // A damaged piece in the middle of the newest segment: never served as a shorter partial
    // segment (PostgreSQL would take its end for the end of the WAL).
    let newest = end / SEGMENT;
    let start = format!("{:016x}", newest * SEGMENT);
    let mut pieces: Vec<PathBuf> = walk(&wal_dir)
        .into_iter()
        .filter(|f| {
            f.to_string_lossy().contains("/00000001/p/")
                && f.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&start[..10])
        })
        .collect();
    pieces.sort();
    assert!(
        pieces.len() >= 3,
        "pieces of the newest segment: {pieces:?}"
    );
    let fetch_newest = || {
        let out = env
            .cmd(&["--site", &a, "wal-fetch", "--partial", "registry"])
            .arg(segment_name(newest))
            .arg(&dest)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(fetch_newest().0, Some(0));
    // The site cannot read one (a site failure, not a damaged object), unanchored near the end.
    let unreadable = &pieces[pieces.len() - 2];
    let mode = |m: u32| {
        std::fs::set_permissions(unreadable, std::os::unix::fs::PermissionsExt::from_mode(m))
            .unwrap()
    };
    mode(0o000);
    let (code, err) = fetch_newest();
    mode(0o644);
    assert_eq!(code, Some(STOP_RECOVERY), "{err}");
    assert!(err.contains(&a), "{err}");
    // A damaged one with valid WAL after it.
    let damaged = &pieces[1];
    let mut bytes = std::fs::read(damaged).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(damaged, bytes).unwrap();
    let (code, err) = fetch_newest();
    assert_eq!(code, Some(STOP_RECOVERY), "{err}");
    assert!(err.contains("missing or damaged"), "{err}");
    drop(streamer);
}

const SEGMENT: u64 = 16 << 20;

/// The WAL file name of segment `segno` on timeline 1.
fn segment_name(segno: u64) -> String {
    format!("00000001{:08X}{:08X}", segno / 256, segno % 256)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
