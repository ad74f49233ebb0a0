//! Red team 12, break 2 (and red team 11, break 1, which it narrows): home's stolen but still
//! valid sealing credential forks a registry's history a few records back, inside the segment
//! where the vault's WAL ends. The thief keeps a streaming standby of home, stops it, home
//! commits rows 3 and 4 (streamed: acknowledged), then the thief promotes its standby and streams
//! the new timeline with the stolen credential. The keyless checks judge whole segments and do
//! not see it; a restore of the latest state followed timeline 2 and returned the thief's rows
//! without 3 and 4. Now a restore (and a standby) reads the fork's switch point and the parent's
//! records, refuses to follow a timeline that leaves out acknowledged records with no takeover
//! that decided it, and names the way out: `--timeline 1` (every acknowledged row) or
//! `--timeline 2` (the fork, knowingly). Real PostgreSQL 15, the real program.

use std::time::Duration;

use embassy_testkit::pg::cli::{arg, PgCli};
use embassy_testkit::pg::restored::Restored;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// The newest durable position a streamer logged to `log` in the home.
fn durable(env: &PgCli, log: &str) -> u64 {
    std::fs::read_to_string(env.path(log))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

fn flush_lsn(pg: &PgServer) -> u64 {
    embassy_testkit::pg::parse_lsn(pg.psql("select pg_current_wal_flush_lsn()").trim())
}

fn rows(server: &Restored) -> String {
    server
        .try_psql("select string_agg(id::text, ',' order by id) from acct")
        .unwrap()
}

/// Restores the latest state of `registry` following `timeline` into a new folder `name`,
/// starts it and returns its rows once it accepts writes.
fn restore_following(env: &PgCli, name: &str, timeline: &str) -> String {
    let to = env.postgres_folder("restores").join(name);
    env.run(&[
        "restore",
        "registry",
        "--latest",
        "--timeline",
        timeline,
        "--to",
        arg(&to),
    ]);
    let restored = Restored::start(to);
    restored.wait_open(Duration::from_secs(120));
    rows(&restored)
}

#[test]
fn a_fork_a_few_records_back_is_not_followed_by_a_restore_unless_named() {
    let home = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-forkseg-");
    let (stolen, _) = env.issue_sealing("registry", "home-host");
    let home_stream = env.stream_from(&stolen, &home.conninfo(), "registry", "durable.log");
    env.base_backup_streamed(&home.conninfo(), "registry");
    home.psql("create table acct(id int primary key, owner text)");
    home.psql("insert into acct values (1, 'alice'), (2, 'bob')");

    // The thief's streaming standby of home catches up, then stops (point F).
    let thief = PgServer::replica_of(&home);
    home.psql("select pg_switch_wal()");
    home.psql("insert into acct values (7, 'before F')");
    let at_f = flush_lsn(&home);
    wait_until(
        "the thief's standby replays F",
        Duration::from_secs(60),
        || {
            thief
                .try_psql("select pg_last_wal_replay_lsn()")
                .is_ok_and(|l| embassy_testkit::pg::parse_lsn(l.trim()) >= at_f)
        },
    );
    thief.stop();

    // Home commits rows 3 and 4 in the same segment; the vault holds them (acknowledged).
    home.psql("insert into acct values (3, 'carol')");
    home.psql("insert into acct values (4, 'dave')");
    let acknowledged = flush_lsn(&home);
    assert_eq!(
        (at_f - 1) / (16 << 20),
        (acknowledged - 1) / (16 << 20),
        "the test wants the fork inside the last segment"
    );
    wait_until(
        "the vault holds rows 3 and 4",
        Duration::from_secs(60),
        || env.durable() >= acknowledged,
    );
    drop(home_stream);

    // The thief promotes its standby (timeline 2 from F), writes, streams with the credential.
    std::fs::write(
        thief.data_dir().join("postgresql.auto.conf"),
        "# primary_conninfo removed by the thief\n",
    )
    .unwrap();
    thief.start_server();
    thief.promote();
    thief.psql("insert into acct values (66, 'thief')");
    let thief_stream = env.stream_from(&stolen, &thief.conninfo(), "registry", "thief.log");
    thief.psql("insert into acct values (67, 'thief')");
    let thief_end = flush_lsn(&thief);
    wait_until(
        "the vault holds timeline 2",
        Duration::from_secs(60),
        || durable(&env, "thief.log") >= thief_end,
    );
    drop(thief_stream);

    // Home's streamer starts again (the credential is not revoked yet): it resumes on home's
    // timeline, not on the thief's (which is not in home's history), and row 5 is acknowledged.
    let home_stream = env.stream_from(&stolen, &home.conninfo(), "registry", "durable.log");
    home.psql("insert into acct values (5, 'erin')");
    let acknowledged = flush_lsn(&home);
    wait_until(
        "home's streamer goes on after the fork",
        Duration::from_secs(60),
        || env.durable() >= acknowledged,
    );
    drop(home_stream);

    // Keyless verification cannot see a fork inside the segment (format.md §9b); a restore can.
    let to = env.postgres_folder("restores").join("latest");
    let out = env.output(&["restore", "registry", "--latest", "--to", arg(&to)]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("timeline 2 forked off timeline 1")
            && said.contains("leaves out those acknowledged records")
            && said.contains("--timeline 1"),
        "{said}"
    );
    assert!(
        std::fs::read_dir(&to).map_or(true, |mut d| d.next().is_none()),
        "a refused restore left files in {}",
        to.display()
    );
    let standby = env.postgres_folder("restores").join("standby");
    let out = env.output(&["standby", "registry", "--to", arg(&standby)]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("timeline 2 forked off timeline 1"), "{said}");

    // The way out: name the timeline.
    assert_eq!(restore_following(&env, "parent", "1"), "1,2,3,4,5,7");
    assert_eq!(restore_following(&env, "fork", "2"), "1,2,7,66,67");
    let out = env.output(&[
        "restore",
        "registry",
        "--latest",
        "--timeline",
        "5",
        "--to",
        arg(&env.postgres_folder("restores").join("none")),
    ]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && said.contains("has no timeline 5"),
        "{said}"
    );
}
