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
    let site = env.site();
    let mut objects = Vec::new();
    wal_objects(&site.join("wal"), &mut objects, &site);
    let newest_segment = objects
        .iter()
        .map(|(_, n)| (n.end - 1) / SEGMENT)
        .max()
        .unwrap();
    let hole = newest_segment - 2;
    let mut lost = 0;
    for (rel, name) in &objects {
        if name.start / SEGMENT == hole {
            std::fs::remove_file(site.join(rel)).unwrap();
            lost += 1;
        }
    }
    assert!(lost > 0, "no WAL object in segment {hole}: {objects:?}");

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
