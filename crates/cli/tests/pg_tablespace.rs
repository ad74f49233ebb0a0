//! PostgreSQL base backups of a cluster with tablespaces, end to end on a real PostgreSQL 15
//! with the real `embassy` program: two tablespaces outside the data directory, a table in
//! each (one in a database of its own) written to during the backup; the base backup
//! (`embassy pg base-backup`, our own BASE_BACKUP); a restore to new locations with
//! `--tablespace-map`, started and checked (row counts against each writer's own log, and
//! `pg_amcheck` on every database); a second base backup after scattered updates storing about
//! the changed pages only; a restore refused when a tablespace's folder is not empty; and a
//! restore to the tablespaces' original locations once they are free (named with the map: a
//! restore never writes where the backup alone says). And, as root, a hostile backup's
//! locations (a folder root owns, one that does not exist) neither taken nor created.
//!
//! Everything runs as the `postgres` user (the tests run as root). Figures are printed
//! (`cargo test ... -- --nocapture`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use embassy_testkit::pg::cli::PgCli;
use embassy_testkit::pg::restored::Restored;
use embassy_testkit::pg::{PgOptions, PgServer};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// The vault's base backup of `pg` (WAL inside), as `--json` reports it.
fn base_backup(env: &PgCli, pg: &PgServer) -> serde_json::Value {
    let out = env.run(&[
        "--json",
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
    ]);
    serde_json::from_str(&out).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Rows each table starts with (~20 MB of heap and index per table).
const ROWS: u64 = 200_000;
/// Rows each writer transaction adds (and logs once in its database's `batches`).
const BATCH: u64 = 500;

/// Row count of `table` in `db`, and what its writer logged: they agree in a consistent copy.
fn counts(psql: impl Fn(&str, &str) -> String, db: &str, table: &str) -> (u64, u64) {
    let n = psql(db, &format!("SELECT count(*) FROM {table}"));
    let b = psql(db, "SELECT count(*) FROM batches");
    (n.parse().unwrap(), b.parse().unwrap())
}

fn restored_psql(r: &Restored) -> impl Fn(&str, &str) -> String + '_ {
    move |db, sql| {
        let out = r
            .client("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// Starts a restored server, checks both tables against their writers' logs and runs
/// `pg_amcheck` (heap and every B-tree) on every database.
fn check_restored(dir: PathBuf) {
    let restored = Restored::start(dir);
    restored.wait_open(Duration::from_secs(120));
    let psql = restored_psql(&restored);
    for (db, table) in [("postgres", "a"), ("db2", "b")] {
        let (rows, batches) = counts(&psql, db, table);
        assert_eq!(
            rows,
            ROWS + batches * BATCH,
            "{db}.{table}: {rows} rows for {batches} logged batches"
        );
        println!("restored {db}.{table}: {rows} rows ({batches} batches written during backups)");
    }
    let out = restored
        .client("pg_amcheck")
        .args(["--all", "--install-missing", "--heapallindexed"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_amcheck: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn base_backups_of_a_cluster_with_tablespaces_restore_them_where_asked() {
    let pg = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-pgts-");
    let ts1 = pg.root().join("ts1");
    let ts2 = pg.root().join("ts2");
    for ts in [&ts1, &ts2] {
        std::fs::create_dir(ts).unwrap();
        std::os::unix::fs::chown(ts, Some(env.ids.0), Some(env.ids.1)).unwrap();
    }
    pg.psql(&format!("CREATE TABLESPACE ts1 LOCATION '{}'", s(&ts1)));
    pg.psql(&format!("CREATE TABLESPACE ts2 LOCATION '{}'", s(&ts2)));
    pg.psql("CREATE DATABASE db2 TABLESPACE ts2");
    let psql_db = |db: &str, sql: &str| -> String {
        let out = pg
            .tool("psql")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(pg.socket_dir())
            .args(["-p", &pg.port().to_string(), "-U", "postgres", "-d", db])
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let schema = |table: &str, tablespace: &str| {
        format!(
            "CREATE TABLE batches (n serial PRIMARY KEY) {tablespace}; \
             CREATE TABLE {table} (id bigserial PRIMARY KEY, v int, pad text) {tablespace}; \
             INSERT INTO {table} (v, pad) SELECT g, repeat('x', 40) FROM generate_series(1, {ROWS}) g; \
             CREATE INDEX ON {table} (v) {tablespace}"
        )
    };
    psql_db("postgres", &schema("a", "TABLESPACE ts1"));
    psql_db("db2", &schema("b", ""));
    pg.psql("CHECKPOINT");

    // Writers in both databases while the base backup runs.
    let stop = AtomicBool::new(false);
    let first = std::thread::scope(|scope| {
        for (db, table) in [("postgres", "a"), ("db2", "b")] {
            let (stop, psql_db) = (&stop, &psql_db);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    psql_db(
                        db,
                        &format!(
                            "BEGIN; INSERT INTO {table} (v, pad) SELECT g, 'during' \
                             FROM generate_series(1, {BATCH}) g; \
                             INSERT INTO batches DEFAULT VALUES; COMMIT"
                        ),
                    );
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        let first = base_backup(&env, &pg);
        stop.store(true, Ordering::Relaxed);
        first
    });
    let first_stored = first["version"]["new_bytes_stored"].as_u64().unwrap();
    let first_chunks = first["version"]["new_chunks"].as_u64().unwrap();

    // Restore to new locations through the map; the originals are untouched (the primary
    // still runs on them).
    let restores = env.postgres_folder("restores");
    let (new1, new2) = (restores.join("new-ts1"), restores.join("new-ts2"));
    let dir = restores.join("data");
    let out = env.run(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        s(&dir),
        "--tablespace-map",
        &format!("{}={}", s(&ts1), s(&new1)),
        "--tablespace-map",
        &format!("{}={}", s(&ts2), s(&new2)),
    ]);
    assert!(out.contains(&format!("restored to {}", s(&new1))), "{out}");
    let links: Vec<PathBuf> = std::fs::read_dir(dir.join("pg_tblspc"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        links.len() == 2 && links.contains(&new1) && links.contains(&new2),
        "{links:?}"
    );
    assert!(std::fs::read_dir(&new1).unwrap().next().is_some());
    assert!(std::fs::read_dir(&new2).unwrap().next().is_some());
    check_restored(dir.clone());

    // Scattered updates in both tablespaces (200 rows of each table); the second base backup
    // stores about the changed pages only.
    let mut heap_pages = 0u64;
    for (db, table) in [("postgres", "a"), ("db2", "b")] {
        let pages = psql_db(
            db,
            &format!(
                "CREATE TEMP TABLE pick AS SELECT DISTINCT (random() * {ROWS})::int + 1 AS id \
                 FROM generate_series(1, 200); \
                 SELECT count(DISTINCT (ctid::text::point)[0]) FROM {table} \
                 WHERE id IN (SELECT id FROM pick); \
                 UPDATE {table} SET v = v + 1 WHERE id IN (SELECT id FROM pick)"
            ),
        );
        heap_pages += pages.trim().parse::<u64>().unwrap();
    }
    pg.psql("CHECKPOINT");
    let second = base_backup(&env, &pg);
    let second_stored = second["version"]["new_bytes_stored"].as_u64().unwrap();
    let second_chunks = second["version"]["new_chunks"].as_u64().unwrap();
    println!(
        "base backups with two tablespaces: first stored {first_stored} bytes in \
         {first_chunks} chunks; second, after updates on {heap_pages} heap pages, \
         {second_stored} bytes in {second_chunks} chunks ({:.1} % of the first's bytes)",
        100.0 * second_stored as f64 / first_stored as f64
    );
    // Per updated row: its old heap page, a leaf page in each of the two indexes (no HOT
    // update: v is indexed), a share of the pages the new versions fill; plus the WAL inside
    // the version, the visibility maps and the catalog pages of the temporary tables.
    assert!(
        // The writers go on during the backup, so under load more pages change than were
        // counted (2,835 chunks for 379 counted pages seen in a loaded full run); the bytes
        // bound below is the sharp one (page-chunking off stores 60.8 % of the first's bytes).
        second_chunks <= 8 * heap_pages + 1000,
        "second base backup stored {second_chunks} new chunks for {heap_pages} changed heap pages"
    );
    assert!(
        second_stored < first_stored / 3,
        "second base backup stored {second_stored} bytes, the first {first_stored}"
    );

    // A tablespace folder that is not empty is refused, naming it; nothing is written.
    let full = env.postgres_folder("restores/full");
    std::fs::write(full.join("keep.txt"), b"someone's files").unwrap();
    let refused = restores.join("refused");
    let msg = env.fails(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        s(&refused),
        "--tablespace-map",
        &format!("{}={}", s(&ts1), s(&full)),
        "--tablespace-map",
        &format!("{}={}", s(&ts2), s(&restores.join("new-ts2-b"))),
    ]);
    assert!(
        msg.contains(s(&full)) && msg.contains("not empty") && msg.contains("relocate"),
        "{msg}"
    );
    assert!(
        !refused.exists() || std::fs::read_dir(&refused).unwrap().next().is_none(),
        "the refused restore wrote into its data directory"
    );
    assert!(!restores.join("new-ts2-b").exists());
    // Without a map nothing is restored: the refusal names both locations.
    let msg = env.fails(&["restore", "registry", "--latest", "--to", s(&refused)]);
    assert!(msg.contains(s(&ts1)) && msg.contains(s(&ts2)), "{msg}");

    // A standby relocates its tablespaces the same way.
    let (sb1, sb2) = (restores.join("sb-ts1"), restores.join("sb-ts2"));
    env.run(&[
        "standby",
        "registry",
        "--to",
        s(&restores.join("standby")),
        "--tablespace-map",
        &format!("{}={}", s(&ts1), s(&sb1)),
        "--tablespace-map",
        &format!("{}={}", s(&ts2), s(&sb2)),
    ]);
    let links: Vec<PathBuf> = std::fs::read_dir(restores.join("standby/pg_tblspc"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert!(links.contains(&sb1) && links.contains(&sb2), "{links:?}");

    // Once the original locations are free, a restore puts the tablespaces back there.
    pg.stop();
    let moved = pg.root().join("old");
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(&ts1, moved.join("ts1")).unwrap();
    std::fs::rename(&ts2, moved.join("ts2")).unwrap();
    let home = restores.join("home");
    env.run(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        s(&home),
        "--tablespace-map",
        &format!("{}={}", s(&ts1), s(&ts1)),
        "--tablespace-map",
        &format!("{}={}", s(&ts2), s(&ts2)),
    ]);
    let links: Vec<PathBuf> = std::fs::read_dir(home.join("pg_tblspc"))
        .unwrap()
        .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
        .collect();
    assert!(links.contains(&ts1) && links.contains(&ts2), "{links:?}");
    check_restored(home);
}

/// Red team (#5): with a stolen sealing credential, a base backup names tablespace locations,
/// such as /usr/local/sbin (empty, root's, first in root's PATH) or a folder that does not
/// exist (/etc/systemd/system/ssh.service.d); a root restore took over the first (postgres
/// 0700, filled) and created the second for postgres. Here, as root: without a map nothing is
/// written and the refusal names both locations and the flag; a map onto the root-owned folder
/// is refused too (never taken from its owner), and onto a folder below one that does not
/// exist; a new folder, and an empty one postgres owns, are fine and the server reads its rows.
#[test]
fn a_root_restore_never_writes_where_a_hostile_backup_says() {
    let pg = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-pgts-");
    let (owned, absent) = (pg.root().join("sbin"), pg.root().join("ssh.service.d"));
    for ts in [&owned, &absent] {
        std::fs::create_dir(ts).unwrap();
        std::os::unix::fs::chown(ts, Some(env.ids.0), Some(env.ids.1)).unwrap();
    }
    pg.psql(&format!("CREATE TABLESPACE sbin LOCATION '{}'", s(&owned)));
    pg.psql(&format!("CREATE TABLESPACE sshd LOCATION '{}'", s(&absent)));
    pg.psql("CREATE TABLE a (x int) TABLESPACE sbin; INSERT INTO a SELECT generate_series(1, 10)");
    pg.psql("CREATE TABLE b (x int) TABLESPACE sshd; INSERT INTO b SELECT generate_series(1, 7)");
    base_backup(&env, &pg);
    pg.stop();
    // Now one location is root's own empty folder (0755), the other does not exist.
    std::fs::remove_dir_all(&owned).unwrap();
    std::fs::remove_dir_all(&absent).unwrap();
    std::fs::create_dir(&owned).unwrap();
    std::fs::set_permissions(&owned, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let untouched = |why: &str| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&owned).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o7777),
            (0, 0o755),
            "{why}: root's folder was taken"
        );
        assert!(
            std::fs::read_dir(&owned).unwrap().next().is_none(),
            "{why}: root's folder was written"
        );
        assert!(
            !absent.exists(),
            "{why}: a location the backup names was made"
        );
    };
    let restores = env.postgres_folder("restores");
    let fails = |dir: &str, maps: &[(&Path, PathBuf)]| {
        let mut args = vec![
            "restore".to_string(),
            "registry".into(),
            "--latest".into(),
            "--to".into(),
            s(&restores.join(dir)).to_string(),
        ];
        for (old, new) in maps {
            args.push("--tablespace-map".into());
            args.push(format!("{}={}", s(old), s(new)));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = env.cmd_as_caller(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "restore {maps:?} succeeded: {err}");
        untouched(&err);
        assert!(
            !restores.join(dir).exists()
                || std::fs::read_dir(restores.join(dir))
                    .unwrap()
                    .next()
                    .is_none(),
            "a refused restore wrote its data directory"
        );
        err
    };
    let err = fails("a", &[]);
    for location in [&owned, &absent] {
        assert!(
            err.contains(&format!("--tablespace-map {}=NEW-FOLDER", s(location))),
            "{err}"
        );
    }
    assert!(err.contains("nothing was written"), "{err}");
    let new = restores.join("new-sbin");
    let err = fails("b", &[(&owned, owned.clone()), (&absent, new.clone())]);
    assert!(
        err.contains("belongs to uid 0") && err.contains("someone else"),
        "{err}"
    );
    let err = fails(
        "c",
        &[(&owned, restores.join("no/such")), (&absent, new.clone())],
    );
    assert!(err.contains("not an existing folder"), "{err}");
    assert!(!new.exists());

    // A new folder in the operator's folder, and an empty one postgres owns: restored, given
    // to postgres, and the server reads both tables.
    let theirs = env.postgres_folder("restores/sshd");
    let dir = restores.join("d");
    let out = env
        .cmd_as_caller(&[
            "restore",
            "registry",
            "--latest",
            "--to",
            s(&dir),
            "--tablespace-map",
            &format!("{}={}", s(&owned), s(&new)),
            "--tablespace-map",
            &format!("{}={}", s(&absent), s(&theirs)),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    untouched("the restore with a map");
    for folder in [&new, &theirs] {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(folder).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (env.ids.0, 0o700),
            "{folder:?}"
        );
    }
    let restored = Restored::start(dir);
    restored.wait_open(Duration::from_secs(60));
    let psql = restored_psql(&restored);
    assert_eq!(psql("postgres", "SELECT count(*) FROM a"), "10");
    assert_eq!(psql("postgres", "SELECT count(*) FROM b"), "7");
}
