//! The restore drill of a PostgreSQL dataset, with real PostgreSQL 15 and the real `embassy`:
//! WAL streamed by `embassy pg stream` while writers commit rows, a base backup, then
//! `embassy drill` restores the newest base backup into a scratch folder, replays to the newest
//! durable WAL, starts PostgreSQL there (free port, socket in the scratch folder, no TCP),
//! measures RTO and RPO, runs pg_amcheck, counts rows and runs the SQL checks, and records the
//! result in the signed ledger; the live server beside it is untouched and the scratch folder
//! is gone afterwards. Run as root, the restored server runs as `postgres`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use embassy_testkit::pg::cli::{arg, PgCli};
use embassy_testkit::pg::{alive, PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// Rows each writer transaction commits.
const BATCH: u64 = 50;

/// What identifies the live server's listening: its start time, port and socket file.
fn live_identity(pg: &PgServer) -> (String, u16, u64) {
    let started = pg
        .psql("SELECT pg_postmaster_start_time()")
        .trim()
        .to_string();
    let socket = pg.socket_dir().join(format!(".s.PGSQL.{}", pg.port()));
    let ino = std::fs::metadata(&socket)
        .unwrap_or_else(|e| panic!("the live server's socket {}: {e}", socket.display()))
        .ino();
    (started, pg.port(), ino)
}

/// Names left in the scratch folder.
fn left_in(scratch: &Path) -> Vec<String> {
    std::fs::read_dir(scratch)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn drill_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn rows_of(drill: &serde_json::Value, table: &str) -> Option<u64> {
    drill["tables"].as_array()?.iter().find_map(|t| {
        (t["database"] == "postgres" && t["table"] == table).then(|| t["rows"].as_u64())?
    })
}

#[test]
fn a_postgres_drill_replays_to_the_newest_durable_point_checks_and_records_the_result() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE persons (id bigserial PRIMARY KEY, n int NOT NULL)");
    let env = PgCli::new(EXE, "embassy-pgdrill-");
    let _streamer = env.stream(&pg, "registry");
    wait_until("the first durable WAL", Duration::from_secs(60), || {
        env.durable() > 0
    });

    // Writers commit batches of rows, counting what committed, before, during and after the
    // base backup.
    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let insert = format!("INSERT INTO persons (n) SELECT g FROM generate_series(1, {BATCH}) g");
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if pg.try_psql(&insert).is_ok() {
                        committed.fetch_add(BATCH, Ordering::SeqCst);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(2));
        env.run(&[
            "pg",
            "base-backup",
            "registry",
            "--conninfo",
            &pg.conninfo(),
            "--wal-streamed",
        ]);
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let committed = committed.load(Ordering::SeqCst);
    assert!(committed > 0, "the writers committed nothing");
    // Every committed row durable in the vault.
    let end = pg.current_lsn();
    wait_until("the writers' WAL durable", Duration::from_secs(60), || {
        env.durable() >= end
    });
    let live_before = live_identity(&pg);

    // The drill, as the postgres user: passes, the rows are the committed ones.
    let scratch = env.postgres_folder("scratch");
    let out = env.output(&[
        "drill",
        "registry",
        "--scratch",
        arg(&scratch),
        "--json",
        "--check",
        "select count(*) > 0 from persons",
    ]);
    let json = drill_json(&out);
    let drill = &json["drills"][0];
    assert!(
        out.status.success() && drill["passed"] == true,
        "the drill failed: {json:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(drill["kind"], "postgres");
    assert_eq!(
        rows_of(drill, "public.persons"),
        Some(committed),
        "the drill counted other rows than the writers committed: {drill:#}"
    );
    let names: Vec<&str> = drill["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for wanted in [
        "restore",
        "open",
        "pg_amcheck",
        "rows",
        "sql:select count(*) > 0 from persons",
    ] {
        assert!(names.contains(&wanted), "no {wanted} check: {names:?}");
    }
    let (rto, rpo) = (
        drill["rto_ms"].as_u64().unwrap(),
        drill["rpo_ms"].as_u64().unwrap(),
    );
    println!("drill: RTO {rto} ms, RPO {rpo} ms, {committed} rows");
    assert!(rto > 0 && rto < 180_000, "implausible RTO {rto} ms");
    assert!(rpo < 5_000, "everything was durable, yet RPO {rpo} ms");
    let lsn = drill["lsn"].as_str().expect("the LSN reached");
    let reached = embassy_testkit::pg::parse_lsn(lsn);
    assert!(
        reached >= end,
        "replayed to {lsn}, short of the writers' end"
    );
    assert!(
        drill["recorded_seq"].as_u64().is_some(),
        "not recorded: {drill:#}"
    );
    assert_eq!(
        left_in(&scratch),
        Vec::<String>::new(),
        "scratch left behind"
    );
    assert_eq!(
        live_identity(&pg),
        live_before,
        "the live server was touched"
    );

    // A drill killed while its server runs (a check that sleeps holds it there) leaves its
    // scratch folder and an orphaned server: the next drill stops that server and removes it.
    let mut killed = env
        .cmd(&[
            "drill",
            "registry",
            "--scratch",
            arg(&scratch),
            "--no-record",
            "--check",
            "select pg_sleep(60) is not null",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut orphan = 0;
    wait_until(
        "the drill's server running",
        Duration::from_secs(120),
        || {
            orphan = left_in(&scratch)
                .iter()
                .filter_map(|d| {
                    std::fs::read_to_string(scratch.join(d).join("data/postmaster.pid")).ok()
                })
                .find_map(|t| t.lines().next()?.trim().parse::<i32>().ok())
                .unwrap_or(0);
            orphan > 0
        },
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(killed.id() as i32, libc::SIGKILL) };
    killed.wait().unwrap();
    assert!(alive(orphan), "the killed drill's server is not running");
    assert_eq!(left_in(&scratch).len(), 1, "no leftover scratch folder");

    // Run as root, with a check that returns false: the server runs as postgres, the drill
    // fails (exit 3) and is recorded as failed.
    let out = env
        .cmd_as_caller(&[
            "drill",
            "registry",
            "--scratch",
            arg(&scratch),
            "--json",
            "--check",
            "select count(*) > 1000000000 from persons",
        ])
        .output()
        .unwrap();
    let json = drill_json(&out);
    let drill = &json["drills"][0];
    assert_eq!(out.status.code(), Some(3), "{json:#}");
    assert_eq!(drill["passed"], false);
    let sql = drill["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sql:select count(*) > 1000000000 from persons")
        .expect("the SQL check ran");
    assert_eq!(sql["passed"], false, "{sql}");
    for c in drill["checks"].as_array().unwrap() {
        if c["name"] != sql["name"] {
            assert_eq!(c["passed"], true, "as root: {c}");
        }
    }
    assert!(
        drill["recorded_seq"].as_u64().is_some(),
        "not recorded: {drill:#}"
    );
    assert_eq!(
        left_in(&scratch),
        Vec::<String>::new(),
        "scratch left behind"
    );
    assert!(!alive(orphan), "the killed drill's server still runs");
    assert_eq!(
        live_identity(&pg),
        live_before,
        "the live server was touched"
    );

    // Read back without keys: the newest drill failed.
    let out = env
        .cmd_as_caller(&["drill", "--report", "--json"])
        .output()
        .unwrap();
    let report = drill_json(&out);
    let last = report["drills"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["dataset"] == "registry")
        .expect("a recorded drill");
    assert_eq!(last["passed"], false, "{last:#}");
    assert!(last["lsn"].as_u64().is_some(), "{last:#}");
}
