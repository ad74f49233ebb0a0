//! Taking over a registry at the embassy and giving it back, end to end on a real PostgreSQL 15
//! with the real `embassy` program as the `postgres` user. Home's commits wait for the streamer
//! (synchronous replication to `embassy pg stream`): a commit is acknowledged once its WAL is
//! durable in the vault, so "no acknowledged commit lost" is checked row by row.
//!
//! - promote's window: the streamer anchors its tail in the ledger only every minute (and at
//!   each whole segment), so acknowledged WAL newer than the last anchor is durable at the
//!   sites but not in the ledger; a standby that cannot reach it must not be promoted.

use std::process::Stdio;
use std::time::Duration;

use embassy_testkit::pg::cli::{arg, PgCli, Stopper};
use embassy_testkit::pg::restored::Restored;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
/// The streamer's application name: PostgreSQL's synchronous standby.
const SYNC_NAME: &str = "embassy_stream";

/// Makes `pg`'s commits wait for the streamer named [`SYNC_NAME`].
fn commits_wait_for_the_streamer(pg: &PgServer) {
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{SYNC_NAME}'"
    ));
    pg.psql("SELECT pg_reload_conf()");
}

/// `embassy pg stream DATASET` from `pg` as the synchronous standby, logging durable positions
/// to `durable.log` (SIGTERM when dropped; `.0.kill()` for SIGKILL).
fn stream(env: &PgCli, pg: &PgServer, dataset: &str) -> Stopper {
    let conninfo = format!("{} application_name={SYNC_NAME}", pg.conninfo());
    let log = env.path("durable.log");
    Stopper(
        env.cmd(&[
            "pg",
            "stream",
            dataset,
            "--conninfo",
            &conninfo,
            "--slot",
            "embassy_wal",
            "--create-slot",
            "--durable-log",
            arg(&log),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("embassy runs"),
    )
}

fn lsn(s: &str) -> u64 {
    s.trim()
        .parse::<embassy_postgres::Lsn>()
        .unwrap_or_else(|e| panic!("{s:?} is not an LSN: {e}"))
        .0
}

/// The end of the newest WAL the ledger of `dataset` anchors (`log range added` entries).
fn anchored_end(env: &PgCli, dataset: &str) -> u64 {
    env.run(&["history", dataset])
        .lines()
        .filter_map(|l| {
            let range = l.split("log range added: ").nth(1)?;
            let end = range.split("..").nth(1)?;
            u64::from_str_radix(end.trim(), 16).ok()
        })
        .max()
        .unwrap_or(0)
}

/// A standby of `dataset` made by `embassy standby`, started, following the vault.
fn start_standby(env: &PgCli, dataset: &str, name: &str) -> (Restored, std::path::PathBuf) {
    let dir = env.postgres_folder("restores").join(name);
    env.run(&["standby", dataset, "--to", arg(&dir)]);
    let standby = Restored::start(dir.clone());
    wait_until(
        "the standby to accept reads",
        Duration::from_secs(60),
        || standby.try_psql("SELECT 1").is_ok(),
    );
    (standby, dir)
}

fn count(server: &Restored, sql: &str) -> String {
    server.try_psql(sql).unwrap_or_else(|e| e)
}

/// Red team (issue 16/17): promote compared the standby only with the WAL the ledger anchors.
/// The streamer anchors its tail every minute, so a commit acknowledged (durable in the vault)
/// after the last anchor was not known to promote: a standby that could not fetch it was
/// promoted, exit 0, and the acknowledged commit was gone. Here home streams under load, the
/// load stops at a whole (anchored) segment, the standby replays a first commit and then can
/// no longer fetch WAL, a second commit is acknowledged, the streamer is killed before it
/// anchors it, and home is lost. Promote refuses, naming the durable end beyond the anchor;
/// once the standby fetches again, promote waits for it and the second commit is there.
#[test]
fn promote_refuses_a_standby_short_of_durable_wal_newer_than_the_last_anchor() {
    let pg = PgServer::start(PgOptions::default());
    commits_wait_for_the_streamer(&pg);
    let env = PgCli::new(EXE, "embassy-takeover-");
    let mut streamer = stream(&env, &pg, "registry");
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
    // A standby follows the vault from the start.
    let (standby, standby_dir) = start_standby(&env, "registry", "standby");
    // Under load: pgbench's initialisation (whole segments) and its transactions.
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    pg.pgbench(&["-c", "4", "-T", "4"]);
    pg.psql("CREATE TABLE acked (n int PRIMARY KEY)");
    // The load stops at a whole segment, which the streamer compacts and anchors at once.
    let switched = lsn(&pg.psql("SELECT pg_switch_wal()"));
    wait_until(
        "the ledger to anchor the segment",
        Duration::from_secs(60),
        || anchored_end(&env, "registry") >= switched,
    );
    // Commit 1 is acknowledged and replayed by the standby.
    pg.psql("INSERT INTO acked VALUES (1)");
    wait_until(
        "the standby to replay commit 1",
        Duration::from_secs(60),
        || count(&standby, "SELECT count(*) FROM acked") == "1",
    );
    // Then it can no longer fetch WAL (its restore_command fails).
    let fetch = standby.try_psql("SHOW restore_command").unwrap();
    standby
        .try_psql("ALTER SYSTEM SET restore_command = 'false'")
        .unwrap();
    standby.try_psql("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let replayed = standby.try_psql("SELECT pg_last_wal_replay_lsn()").unwrap();
    // Commit 2 is acknowledged: durable in the vault. The streamer dies before it anchors it,
    // and home is lost.
    let before = lsn(&pg.psql("SELECT pg_current_wal_lsn()"));
    pg.psql("INSERT INTO acked VALUES (2)");
    streamer.0.kill().unwrap();
    drop(streamer);
    pg.kill9();
    assert!(
        env.durable() > before,
        "commit 2 (after {before:X}) is not durable (durable to {:X})",
        env.durable()
    );
    let anchored = anchored_end(&env, "registry");
    assert!(
        anchored <= lsn(&replayed),
        "the setup did not open the window: the ledger anchors WAL to {anchored:X}, past the \
         standby's {replayed}"
    );
    assert_eq!(count(&standby, "SELECT count(*) FROM acked"), "1");

    let out = env
        .cmd(&[
            "promote",
            "registry",
            "--data",
            arg(&standby_dir),
            "--timeout",
            "3",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "promoted without acknowledged commit 2: {err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.contains(&format!("replayed registry's WAL to {replayed}"))
            && err.contains("the ledger anchors WAL only to")
            && err.contains("cannot fetch it")
            && err.contains("nothing was promoted")
            && err.contains("--accept-data-loss"),
        "{err}"
    );
    assert_eq!(standby.try_psql("SELECT pg_is_in_recovery()").unwrap(), "t");

    // The way out: the standby fetches again; promote waits until it has replayed commit 2.
    standby
        .try_psql(&format!(
            "ALTER SYSTEM SET restore_command = '{}'",
            fetch.replace('\'', "''")
        ))
        .unwrap();
    standby.try_psql("SELECT pg_reload_conf()").unwrap();
    let out = env.run(&[
        "--json",
        "promote",
        "registry",
        "--data",
        arg(&standby_dir),
        "--timeout",
        "60",
    ]);
    let done: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(done["data_lost_to"].is_null(), "{done}");
    assert!(lsn(done["lsn"].as_str().unwrap()) > before, "{done}");
    assert_eq!(count(&standby, "SELECT count(*) FROM acked"), "2");
    standby.try_psql("INSERT INTO acked VALUES (3)").unwrap();
}
