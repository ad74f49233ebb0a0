//! Red team 11, break 3: a site that lost (or withholds) the WAL of one segment in the middle of
//! a streamed dataset, keeping the newer pieces, looked fresh to `embassy status` (its newest WAL
//! object checked out), while a restore from it could not replay past the hole and only the next
//! keyless verification said so. Now a look at a site finds WAL the accepted ledger anchors that
//! the site does not hold, and the dataset there is an integrity problem at once. Real
//! PostgreSQL 15, the real program.

use std::time::Duration;

use embassy_testkit::pg::cli::PgCli;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const SEGMENT: u64 = 16 * 1024 * 1024;

fn wal_objects(
    dir: &std::path::Path,
    out: &mut Vec<(String, embassy_core::format::wal_log::LogName)>,
    root: &std::path::Path,
) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            wal_objects(&p, out, root);
        } else {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if let Some(name) = embassy_core::format::wal_log::parse_path(&rel) {
                out.push((rel, name));
            }
        }
    }
}

/// Removes the site's WAL objects that `lose` picks, given each object's name and the number
/// of the newest segment the site holds; how many it removed (at least one).
fn remove_wal_objects(
    site: &std::path::Path,
    lose: impl Fn(&embassy_core::format::wal_log::LogName, u64) -> bool,
) -> usize {
    let mut objects = Vec::new();
    wal_objects(&site.join("wal"), &mut objects, site);
    let newest_segment = objects
        .iter()
        .map(|(_, n)| (n.end - 1) / SEGMENT)
        .max()
        .unwrap();
    let mut removed = 0;
    for (rel, name) in &objects {
        if lose(name, newest_segment) {
            std::fs::remove_file(site.join(rel)).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "no WAL object picked: {objects:?}");
    removed
}

/// `restore registry --latest` on a machine that never saw the vault: its exit code and stderr.
fn latest_restore_afresh(env: &PgCli, folder: &str) -> (Option<i32>, String) {
    std::fs::remove_dir_all(env.path("state")).ok();
    let to = env.postgres_folder(folder);
    let out = env.output(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_site_missing_wal_in_the_middle_is_damaged_in_status_not_fresh() {
    let pg = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-walhole-");
    let streamer = env.stream(&pg, "registry");
    env.base_backup_streamed(&pg.conninfo(), "registry");
    pg.psql("create table acct(id int primary key, balance bigint)");
    for i in 0..4 {
        pg.psql(&format!(
            "insert into acct values ({i}, {i}); select pg_switch_wal()"
        ));
    }
    pg.psql("insert into acct values (100, 100)");
    let end: u64 = {
        let lsn = pg.psql("select pg_current_wal_flush_lsn()");
        embassy_testkit::pg::parse_lsn(lsn.trim())
    };
    wait_until(
        "the stream reaches the server",
        Duration::from_secs(60),
        || env.durable() >= end,
    );
    drop(streamer);
    let status = || env.cmd_as_caller(&["--json", "status"]).output().unwrap();
    let before = status();
    assert!(before.status.success(), "{before:?}");

    // The site loses every WAL object of a segment in the middle (anchored, not the newest).
    remove_wal_objects(&env.site(), |name, newest| {
        name.start / SEGMENT == newest - 2
    });

    let after = status();
    assert_eq!(after.status.code(), Some(3), "{after:?}");
    let json: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    let rows = json["datasets"].as_array().unwrap();
    let row = rows.iter().find(|r| r["dataset"] == "registry").unwrap();
    assert_eq!(row["kind"], "integrity", "{json}");
    let error = row["error"].as_str().unwrap();
    assert!(
        error.contains("cannot be restored whole")
            && error.contains("not stored")
            && error.contains("sync --repair"),
        "{error}"
    );
}

/// Red team 12, break 3: a PostgreSQL restore of the latest state and a standby did not check
/// the site's history against its checkpoints, so a site withholding the newest ledger entries
/// (a rollback) made `restore --latest` return an older state in silence on a machine that
/// never saw the vault, while `status` and `verify` said rollback. Both now refuse.
#[test]
fn a_rolled_back_site_is_refused_by_a_latest_restore_and_a_standby() {
    let pg = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-pgroll-");
    let streamer = env.stream(&pg, "registry");
    pg.psql("create table acct(id int primary key, balance bigint)");
    pg.psql("insert into acct values (1, 1); select pg_switch_wal()");
    env.base_backup_streamed(&pg.conninfo(), "registry");
    pg.psql("insert into acct values (2, 2); select pg_switch_wal()");
    // The second base backup (root key) checkpoints the head it appends.
    env.base_backup_streamed(&pg.conninfo(), "registry");
    drop(streamer);
    let site: std::sync::Arc<dyn embassy_core::site::Site> =
        std::sync::Arc::new(embassy_sites::LocalSite::new(env.site()).unwrap());
    let vault = embassy_core::engine::vault::Vault::open(site).unwrap();
    let history = vault.history("registry").unwrap();
    let second = history
        .iter()
        .filter(|r| {
            matches!(
                r.entry.event,
                embassy_core::history::ledger::Event::VersionAdded { .. }
            )
        })
        .map(|r| r.entry.seq)
        .max()
        .unwrap();
    // The site withholds the second base backup's entry and every later one.
    let ledger = env.site().join("ledger/registry");
    let mut withheld = 0;
    for e in std::fs::read_dir(&ledger).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let seq: u64 = name.split('-').next().unwrap().parse().unwrap();
        if seq >= second {
            std::fs::remove_file(ledger.join(&name)).unwrap();
            withheld += 1;
        }
    }
    assert!(withheld > 0);
    let (code, said) = latest_restore_afresh(&env, "restored");
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("rollback"), "{said}");
    std::fs::remove_dir_all(env.path("state")).ok();
    let standby = env.postgres_folder("standby");
    let out = env.output(&["standby", "registry", "--to", standby.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{said}");
    assert!(said.contains("rollback"), "{said}");
}

/// A site that withholds the newest WAL the ledger anchors (every object of the last segment,
/// the ledger whole): a `--latest` restore pinned recovery to the last record the site served
/// and exited 0, a state older than the vault's newest as the newest (red team 14 #3, for one
/// timeline). Now it refuses, naming the first WAL file the site does not serve and the ledger
/// entry that anchors it; a restore to a point the site serves still works.
#[test]
fn a_site_withholding_the_anchored_tail_gets_no_latest_restore() {
    let pg = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-waltail-");
    let streamer = env.stream(&pg, "registry");
    pg.psql("create table acct(id int primary key, balance bigint)");
    pg.psql("insert into acct values (1, 1); select pg_switch_wal()");
    env.base_backup_streamed(&pg.conninfo(), "registry");
    pg.psql("insert into acct values (2, 2)");
    // Row 2's commit ends before this point; the segment switch record starts at it.
    let served = pg.psql("select pg_current_wal_flush_lsn()");
    // Megabytes of WAL before the switch: PostgreSQL's recovery reads ahead of its target.
    pg.psql(
        "create table filler as select g, repeat('x', 200) f from generate_series(1, 20000) g; \
         select pg_switch_wal()",
    );
    pg.psql("insert into acct values (3, 3)");
    let end = embassy_testkit::pg::parse_lsn(pg.psql("select pg_current_wal_flush_lsn()").trim());
    wait_until(
        "the stream reaches the server",
        Duration::from_secs(60),
        || env.durable() >= end,
    );
    drop(streamer); // anchors its tail in the ledger as it stops

    // The site withholds every WAL object of the newest segment (row 3's commit).
    remove_wal_objects(&env.site(), |name, newest| {
        (name.end - 1) / SEGMENT == newest
    });
    let (code, said) = latest_restore_afresh(&env, "latest");
    assert_eq!(code, Some(3), "restored without row 3: {said}");
    assert!(
        said.contains("lost or hides it") && said.contains("--site"),
        "{said}"
    );

    // A point the site serves whole: restored, with row 2.
    let to = env.postgres_folder("at-served");
    env.run(&[
        "restore",
        "registry",
        "--lsn",
        served.trim(),
        "--to",
        to.to_str().unwrap(),
    ]);
    let restored = embassy_testkit::pg::restored::Restored::start(to);
    restored.wait_open(Duration::from_secs(60));
    assert_eq!(
        restored
            .try_psql("select string_agg(id::text, ',' order by id) from acct")
            .unwrap(),
        "1,2"
    );
}
