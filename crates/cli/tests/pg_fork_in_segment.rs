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

/// Home streams rows 1, 2, 7 and (after F) 3, 4 into the vault with its credential; a thief's
/// standby of home, stopped at F, is promoted (timeline 2), writes rows 66 and 67 and streams
/// them with the same (stolen) credential. With `lie`, the thief first rewrites its timeline
/// history file to name home's acknowledged end as the switch point. Returns home (running),
/// the vault's home and the stolen credential.
fn fork_a_few_records_back(lie: Lie) -> (PgServer, PgCli, std::path::PathBuf) {
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
    if lie != Lie::None {
        let file = thief.pg_wal_dir().join("00000002.history");
        let history = std::fs::read_to_string(&file).unwrap();
        let real = history.split_whitespace().nth(1).unwrap().to_string();
        let lied = match lie {
            Lie::LaterSwitch => history.replacen(
                &real,
                &format!("{:X}/{:X}", acknowledged >> 32, acknowledged & 0xffff_ffff),
                1,
            ),
            // PostgreSQL's sscanf reads `0x` prefixes; the same switch point, spelt otherwise.
            Lie::HexPrefix => {
                history.replacen(&real, &format!("0x{}", real.replace('/', "/0x")), 1)
            }
            // PostgreSQL reads lines of at most 1023 bytes: the real line hidden after a
            // comment that long is a line to it, part of the comment to a whole-line reader.
            _ => format!("#{}{history}", "x".repeat(1022)),
        };
        assert_ne!(history, lied);
        std::fs::write(&file, lied).unwrap();
    }
    thief.psql("insert into acct values (66, 'thief')");
    let thief_stream = env.stream_from(&stolen, &thief.conninfo(), "registry", "thief.log");
    thief.psql("insert into acct values (67, 'thief')");
    let thief_end = flush_lsn(&thief);
    wait_until(
        "the vault holds timeline 2",
        Duration::from_secs(60),
        || env.durable_in("thief.log") >= thief_end,
    );
    drop(thief_stream);
    (home, env, stolen)
}

/// How the thief's history file lies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// It does not.
    None,
    /// It names home's acknowledged end as the switch point.
    LaterSwitch,
    /// It spells the switch point with `0x` prefixes (red team 14).
    HexPrefix,
    /// It hides its line behind a 1,023-byte comment (red team 15).
    LongComment,
}

/// `restore registry --latest` into a new folder: refused as a fork that leaves out
/// acknowledged records, naming the way out, and nothing written.
fn assert_latest_refused(env: &PgCli) {
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
}

#[test]
fn a_fork_a_few_records_back_is_not_followed_by_a_restore_unless_named() {
    let (home, env, stolen) = fork_a_few_records_back(Lie::None);

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
    assert_latest_refused(&env);
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

/// The thief's history file names home's acknowledged end as the switch point, so the records
/// alone say nothing is left out; the new timeline's copy of its parent's bytes before that
/// point differs from the parent's WAL, and the restore is refused all the same.
#[test]
fn a_history_file_naming_a_later_switch_point_does_not_hide_the_fork() {
    let (_home, env, _) = fork_a_few_records_back(Lie::LaterSwitch);
    assert_latest_refused(&env);
    assert_eq!(restore_following(&env, "parent", "1"), "1,2,3,4,7");
}

/// Every WAL object the site folder holds: (path relative to the site, parsed name).
fn wal_objects(site: &std::path::Path) -> Vec<(String, embassy_core::format::wal_log::LogName)> {
    let mut out = Vec::new();
    let mut dirs = vec![site.join("wal")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                let rel = p.strip_prefix(site).unwrap().display().to_string();
                if let Some(name) = embassy_core::format::wal_log::parse_path(&rel) {
                    out.push((rel, name));
                }
            }
        }
    }
    out
}

/// A site that withholds what the judge reads (red team 13): the parent's WAL in the switch
/// segment, which the ledger anchors (the walk would see nothing past the switch point), or
/// the fork's history file (PostgreSQL would stay on timeline 1 and stop at a point pinned on
/// timeline 2), or all of timeline 2. Each way the latest restore is refused, never a shorter
/// state.
#[test]
fn a_site_withholding_the_parents_wal_or_the_forks_history_gets_no_restore() {
    use embassy_core::format::wal_log::LogKind;
    let (_home, env, _) = fork_a_few_records_back(Lie::None);
    let site = env.site();
    let objects = wal_objects(&site);
    let fork_start = objects
        .iter()
        .filter(|(_, n)| n.timeline == 2 && n.kind != LogKind::History)
        .map(|(_, n)| n.start)
        .min()
        .unwrap();
    let hidden = env.path("hidden");
    std::fs::create_dir_all(&hidden).unwrap();
    let withhold = |keep: &dyn Fn(&embassy_core::format::wal_log::LogName) -> bool| {
        let mut moved = Vec::new();
        for (rel, name) in &objects {
            if !keep(name) {
                let to = hidden.join(rel.replace('/', "_"));
                std::fs::rename(site.join(rel), &to).unwrap();
                moved.push((to, site.join(rel)));
            }
        }
        assert!(!moved.is_empty());
        moved
    };
    let give_back = |moved: Vec<(std::path::PathBuf, std::path::PathBuf)>| {
        for (from, to) in moved {
            std::fs::rename(from, to).unwrap();
        }
    };

    // The switch point, as the refusal names it; the site withholds timeline 1's pieces that
    // reach past it (anchored: acknowledged rows 3 and 4).
    let to = env.postgres_folder("restores").join("whole");
    let out = env.output(&["restore", "registry", "--latest", "--to", arg(&to)]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    let switch = said
        .split("forked off timeline 1 at ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("{said}"))
        .parse::<embassy_postgres::Lsn>()
        .unwrap()
        .0;
    assert!(switch > fork_start, "{said}");
    let moved = withhold(&|n| !(n.timeline == 1 && n.kind != LogKind::History && n.end > switch));
    assert_latest_refused(&env);
    give_back(moved);

    let moved = withhold(&|n| !(n.timeline == 2 && n.kind == LogKind::History));
    let to = env.postgres_folder("restores").join("no-history");
    let out = env.output(&["restore", "registry", "--latest", "--to", arg(&to)]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("no history file of that timeline") && said.contains("--timeline 1"),
        "{said}"
    );
    give_back(moved);

    // The site withholds all of timeline 2, which the ledger anchors (red team 14 #3): not a
    // restore of timeline 1 as the newest, but refused, naming what the site hides.
    let moved = withhold(&|n| n.timeline != 2);
    let to = env.postgres_folder("restores").join("no-timeline-2");
    let out = env.output(&["restore", "registry", "--latest", "--to", arg(&to)]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("00000002.history") && said.contains("lost or hides it"),
        "{said}"
    );
    give_back(moved);
    assert_latest_refused(&env);
}

/// The thief spells its switch point with `0x` prefixes, which PostgreSQL reads and a strict
/// parser would pass over (no fork seen), or hides its line behind a comment PostgreSQL reads
/// in two pieces: a history file not written as PostgreSQL writes it is refused (red teams 14
/// and 15).
#[test]
fn a_history_file_spelt_otherwise_than_postgresql_writes_it_is_refused() {
    for lie in [Lie::HexPrefix, Lie::LongComment] {
        refused_as_not_postgresql(lie);
    }
}

fn refused_as_not_postgresql(lie: Lie) {
    let (_home, env, _) = fork_a_few_records_back(lie);
    let to = env.postgres_folder("restores").join("latest");
    let out = env.output(&["restore", "registry", "--latest", "--to", arg(&to)]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(
        said.contains("not written the way PostgreSQL writes it") && said.contains("--timeline 1"),
        "{said}"
    );
    assert_eq!(restore_following(&env, "parent", "1"), "1,2,3,4,7");
}
