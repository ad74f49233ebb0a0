//! PostgreSQL base backups, point-in-time restore, standby and promotion, end to end on a
//! real PostgreSQL 15 with the real `embassy` program: WAL streamed by `embassy pg stream`
//! under pgbench load, a base backup with `embassy pg base-backup --wal-streamed`, restores
//! to the latest point and to a time in the middle (compared with per-table checksums taken
//! at that moment), a standby that follows the vault, its promotion and a write to it.
//!
//! Most embassy commands and every restored server run as the `postgres` user (PostgreSQL runs
//! `restore_command` as its own user, so a local vault must be readable by it; the key file it
//! uses is a reader credential each restore makes). The tests of the recovery host's defences
//! restore as root holding a root key only root can read, from a backup whose configuration
//! would run code. Timings are printed (`cargo test ... -- --nocapture`).

use embassy_testkit::pg::restored::*;
use embassy_testkit::s3;
use embassy_testkit::wait_until;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::pg::{free_port, PgOptions, PgServer};

use embassy_testkit::cli::PASS;
use embassy_testkit::pg::cli::PgCli;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
/// The folder restores go into: owned by postgres.
fn restore_root(env: &PgCli) -> PathBuf {
    let p = env.path("restores");
    std::fs::create_dir_all(&p).unwrap();
    std::os::unix::fs::chown(&p, Some(env.ids.0), Some(env.ids.1)).unwrap();
    p
}

fn dir_arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn base_backup_streamed_wal_point_in_time_restore_standby_and_promote() {
    let pg = PgServer::start(PgOptions::default());
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let env = PgCli::new(EXE, "embassy-pgr-");
    let _streamer = env.stream(&pg, "registry");
    wait_until(
        "the streamer's first durable WAL",
        Duration::from_secs(30),
        || env.durable() > 0,
    );

    // A base backup while pgbench writes; its WAL comes from the stream.
    let mut load = pg
        .pgbench_command(&["-c", "4", "-j", "2", "-T", "8"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    env.run(&[
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
        "--wal-streamed",
    ]);
    println!(
        "base backup under load: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(load.wait().unwrap().success(), "pgbench failed");
    // More load; the checksums "in the middle" are taken while it runs.
    let mut load = pg
        .pgbench_command(&["-c", "4", "-j", "2", "-T", "8"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (mid_time, mid_sums) = checksums_at_a_moment(&pg);
    assert!(load.wait().unwrap().success(), "pgbench failed");
    // At least one change after the middle, whatever the machine's speed.
    pg.psql("UPDATE pgbench_branches SET bbalance = bbalance + 1");
    let (_, final_sums) = checksums_at_a_moment(&pg);
    assert_ne!(mid_sums, final_sums);
    let end = pg.current_lsn();
    wait_until("WAL to become durable", Duration::from_secs(60), || {
        env.durable() >= end
    });
    let history = env.run(&["history", "registry"]);
    assert!(history.contains("version added"), "{history}");

    let root = restore_root(&env);

    // 1. Restore to the latest point.
    let latest_dir = root.join("latest");
    let t = Instant::now();
    env.run(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        dir_arg(&latest_dir),
    ]);
    let written = t.elapsed();
    let conf = std::fs::read_to_string(latest_dir.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("wal-fetch --partial --prefetch"), "{conf}");
    // wal-fetch's state folder: below the restore's --state-dir when the data directory's owner
    // reaches it there (`state/wal-fetch/latest.wal-fetch-<hash>`), else in the fetch folder.
    let fetch_state = std::fs::read_dir(env.path("state").join("wal-fetch"))
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("latest.wal-fetch-")
        })
        .map(|e| e.path())
        .unwrap_or_else(|| root.join("latest.wal-fetch/state"));
    let fetch_log = fetch_state.join("wal-fetch.log");
    let latest = Restored::start(latest_dir.clone());
    latest.wait_open(Duration::from_secs(120));
    println!(
        "restore --latest: {:.1} s writing the data directory, {:.1} s until it accepts writes",
        written.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    // The replay crossed several complete segments: the restore's fetch helper served them.
    let fetches = std::fs::read_to_string(&fetch_log).unwrap_or_default();
    assert!(fetches.contains("fetch helper started"), "{fetches}");
    assert_eq!(
        latest.try_psql(CHECKSUMS).unwrap(),
        final_sums,
        "latest restore differs"
    );
    latest
        .try_psql("CREATE TABLE after_restore(x int); INSERT INTO after_restore VALUES (1)")
        .unwrap();
    drop(latest);

    // 1b. The same path again once its data directory and fetch folder are deleted (an
    // operator redoing a restore): the earlier restore's wal-fetch state folder is dropped,
    // not a reason to fail ("creating ...: File exists" before).
    std::fs::remove_dir_all(root.join("latest")).unwrap();
    std::fs::remove_dir_all(root.join("latest.wal-fetch")).unwrap();
    env.run(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        dir_arg(&latest_dir),
    ]);
    let again = Restored::start(latest_dir);
    again.wait_open(Duration::from_secs(120));
    assert_eq!(
        again.try_psql(CHECKSUMS).unwrap(),
        final_sums,
        "the second restore to the same path differs"
    );
    drop(again);

    // 2. Restore to the time in the middle of the load.
    let mid_dir = root.join("mid");
    env.run(&[
        "restore",
        "registry",
        "--time",
        &mid_time,
        "--to",
        dir_arg(&mid_dir),
    ]);
    let conf = std::fs::read_to_string(mid_dir.join("postgresql.auto.conf")).unwrap();
    assert!(conf.contains("recovery_target_time"), "{conf}");
    assert!(mid_dir.join("recovery.signal").exists());
    let mid = Restored::start(mid_dir);
    mid.wait_open(Duration::from_secs(120));
    assert_eq!(
        mid.try_psql(CHECKSUMS).unwrap(),
        mid_sums,
        "restore to {mid_time} differs from the checksums taken then; log: {}",
        mid.log()
    );
    drop(mid);

    // 3. A standby follows the vault within a few seconds.
    let standby_dir = root.join("standby");
    env.run(&["standby", "registry", "--to", dir_arg(&standby_dir)]);
    assert!(standby_dir.join("standby.signal").exists());
    let standby = Restored::start(standby_dir.clone());
    wait_until(
        "the standby to accept reads",
        Duration::from_secs(60),
        || standby.try_psql("SELECT 1").is_ok(),
    );
    assert_eq!(standby.try_psql("SELECT pg_is_in_recovery()").unwrap(), "t");
    pg.psql("CREATE TABLE marker(v int); INSERT INTO marker VALUES (1)");
    let written_at = Instant::now();
    wait_until(
        "the standby to see the new row",
        Duration::from_secs(30),
        || {
            standby
                .try_psql("SELECT count(*) FROM marker WHERE v = 1")
                .ok()
                .as_deref()
                == Some("1")
        },
    );
    let lag = written_at.elapsed();
    println!("standby saw a new commit after {:.1} s", lag.as_secs_f64());
    assert!(lag < Duration::from_secs(10), "standby lag {lag:?}");
    let standby_sums = standby.try_psql(CHECKSUMS).unwrap();
    assert_eq!(
        standby_sums,
        pg.psql(CHECKSUMS),
        "standby differs from the source"
    );

    // 4. Promote it; it accepts writes on a new timeline; the ledger records it.
    let t = Instant::now();
    let out = env.run(&["promote", "registry", "--data", dir_arg(&standby_dir)]);
    println!(
        "promotion: {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        out.trim()
    );
    assert_eq!(standby.try_psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    standby.try_psql("INSERT INTO marker VALUES (2)").unwrap();
    assert_eq!(
        standby.try_psql("SELECT count(*) FROM marker").unwrap(),
        "2"
    );
    let timeline = standby
        .try_psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)::text")
        .unwrap();
    assert_ne!(timeline, "00000001", "promotion must start a new timeline");
    let history = env.run(&["history", "registry"]);
    let expected = format!("timeline {}", u32::from_str_radix(&timeline, 16).unwrap());
    assert!(
        history
            .lines()
            .any(|l| l.contains("promoted") && l.contains(&expected)),
        "no promoted entry with {expected}: {history}"
    );
}

/// `embassy pg base-backup` without streaming keeps the WAL inside the version, so it restores
/// alone; a second base backup after scattered updates stores little more than the changed
/// pages (relation files are stored page by page); clear errors for targets no base backup
/// can reach.
#[test]
fn base_backups_alone_restore_and_store_only_changed_pages() {
    let pg = PgServer::start(PgOptions::default());
    pg.pgbench(&["-i", "-s", "8", "-q"]); // pgbench_accounts: 800,000 rows, ~100 MB
    pg.psql("CHECKPOINT");
    let env = PgCli::new(EXE, "embassy-pgr-");
    let msg = env.fails(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        env.path("nothing").to_str().unwrap(),
    ]);
    assert!(
        msg.contains("no PostgreSQL base backup") || msg.contains("no versions"),
        "{msg}"
    );

    // Wrong connection settings: the server's reason and what to check; no version.
    let wrong = format!(
        "host=127.0.0.1 port={} user=embassy password=wrong",
        pg.port()
    );
    let msg = env.fails(&["pg", "base-backup", "registry", "--conninfo", &wrong]);
    assert!(
        msg.contains("password authentication failed")
            && msg.contains("check password= in the connection string"),
        "{msg}"
    );
    let unused = format!("host=127.0.0.1 port={} user=embassy", free_port());
    let msg = env.fails(&["pg", "base-backup", "registry", "--conninfo", &unused]);
    assert!(
        msg.contains("cannot connect to PostgreSQL") && msg.contains("is the server running"),
        "{msg}"
    );
    // A failed base backup left no version: the vault does not hold the dataset at all.
    let msg = env.fails(&["versions", "registry"]);
    assert!(msg.contains("no dataset registry"), "{msg}");

    let before_first = Instant::now();
    let first = env.run(&[
        "--json",
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
    ]);
    println!(
        "first base backup: {:.1} s",
        before_first.elapsed().as_secs_f64()
    );
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["wal_included"], true);
    let first_stored = first["version"]["new_bytes_stored"].as_u64().unwrap();

    // Scattered updates: 2,000 random accounts out of 800,000 (~0.25 %). The table is full
    // (fillfactor 100), so each update also writes its new row version at the table's end and
    // a new index entry: the changed pages are the old rows' pages, a few new pages at the end,
    // and index leaf pages.
    pg.psql(
        "CREATE TABLE pick AS SELECT DISTINCT (random() * 799999)::int + 1 AS aid \
         FROM generate_series(1, 2000)",
    );
    let heap_pages: u64 = pg
        .psql(
            "SELECT count(DISTINCT (ctid::text::point)[0]) FROM pgbench_accounts \
             WHERE aid IN (SELECT aid FROM pick)",
        )
        .parse()
        .unwrap();
    pg.psql(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN (SELECT aid FROM pick)",
    );
    pg.psql("CHECKPOINT");
    let sums = pg.psql(CHECKSUMS);
    let second = env.run(&[
        "--json",
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
    ]);
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    let second_stored = second["version"]["new_bytes_stored"].as_u64().unwrap();
    let second_chunks = second["version"]["new_chunks"].as_u64().unwrap();
    let first_chunks = first["version"]["new_chunks"].as_u64().unwrap();
    println!(
        "base backups: first stored {first_stored} bytes in {first_chunks} chunks; second \
         {second_stored} bytes in {second_chunks} chunks, for {heap_pages} updated heap pages"
    );
    // About the changed pages: the old rows' heap pages, as many index leaf pages, a few new
    // pages, FSM/VM and catalog pages, and the WAL inside the version (a few CDC chunks).
    // Content-defined 2 MiB chunks would store nearly the whole table again.
    assert!(
        second_chunks <= 3 * heap_pages + 200,
        "second base backup stored {second_chunks} new chunks for {heap_pages} changed heap pages"
    );
    assert!(
        second_stored < first_stored / 2,
        "second base backup stored {second_stored} bytes, the first {first_stored}"
    );

    let root = restore_root(&env);
    let dir = root.join("alone");
    let t = Instant::now();
    env.run(&["restore", "registry", "--latest", "--to", dir_arg(&dir)]);
    let restored = Restored::start(dir);
    restored.wait_open(Duration::from_secs(120));
    println!(
        "restore of a base backup alone: {:.1} s until it accepts writes",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(restored.try_psql(CHECKSUMS).unwrap(), sums);
    drop(restored);

    // As root: the data directory is given to postgres with mode 0700, after checking that
    // postgres can run the restore_command (a site only root can read is refused clearly,
    // instead of a recovery that silently stops at the end of the base backup). A key file only
    // root can read is fine: the restore_command gets a credential of its own.
    let root_key = env.path("root-only.key");
    std::fs::copy(env.path("vault.key"), &root_key).unwrap();
    std::os::unix::fs::chown(&root_key, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(
        &root_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let root_site = env.path("root-only-site");
    let st = Command::new("cp")
        .arg("-a")
        .arg(env.path("site"))
        .arg(&root_site)
        .status()
        .unwrap();
    assert!(st.success());
    let st = Command::new("chown")
        .args(["-R", "0:0"])
        .arg(&root_site)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        &root_site,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let as_root = |site: &Path, key: &Path, to: &Path| {
        Command::new(EXE)
            .arg("--site")
            .arg(site)
            .arg("--key-file")
            .arg(key)
            .arg("--passphrase-file")
            .arg(env.path("pass"))
            .arg("--state-dir")
            .arg(env.path("root-state"))
            .args(["--quiet", "restore", "registry", "--latest", "--to"])
            .arg(to)
            .env_remove("EMBASSY_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let refused = as_root(&root_site, &root_key, &root.join("refused"));
    assert!(!refused.status.success());
    let msg = String::from_utf8_lossy(&refused.stderr);
    assert!(
        msg.contains("restore_command would fail")
            && msg.contains(&format!("uid {}", env.ids.0))
            && msg.contains("readable"),
        "{msg}"
    );
    assert!(
        !root.join("refused").join("PG_VERSION").exists(),
        "nothing restored when refused"
    );
    assert!(
        !root.join("refused.wal-fetch").exists(),
        "no credential left behind when refused"
    );
    let by_root = root.join("by-root");
    let out = as_root(&env.path("site"), &root_key, &by_root);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&by_root).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (env.ids.0, 0o700));
    let owner = std::fs::metadata(by_root.join("global/pg_control"))
        .unwrap()
        .uid();
    assert_eq!(owner, env.ids.0, "files belong to postgres");
    let restored = Restored::start(by_root);
    restored.wait_open(Duration::from_secs(120));
    assert_eq!(restored.try_psql(CHECKSUMS).unwrap(), sums);
    drop(restored);

    // A time before the first base backup finished: no base backup can reach it.
    let msg = env.fails(&[
        "restore",
        "registry",
        "--time",
        "2001-01-01T00:00:00Z",
        "--to",
        root.join("x").to_str().unwrap(),
    ]);
    assert!(
        msg.contains("no base backup finished before") && msg.contains("choose a later target"),
        "{msg}"
    );
    // A base backup that relies on streamed WAL, with no stream: refused before writing.
    env.run(&[
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
        "--wal-streamed",
    ]);
    let msg = env.fails(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        root.join("z").to_str().unwrap(),
    ]);
    assert!(
        msg.contains("the vault holds no streamed WAL of it") && msg.contains("--wal-streamed"),
        "{msg}"
    );
    assert!(!root.join("z").join("PG_VERSION").exists());
    let err = env
        .cmd(&[
            "restore",
            "registry",
            "--lsn",
            "nonsense",
            "--to",
            root.join("y").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("is not an LSN"));
}

/// Every file under `dir` (links not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if meta.is_file() {
            out.push(p);
        }
    }
    out
}

/// A backup whose configuration would run code on the recovery host (`archive_command`,
/// `recovery_end_command` and, through an include, `ssl_passphrase_command` reading the key
/// file; `shared_preload_libraries = './evil'`; a recovery target of its own), restored as
/// root holding the root key into a folder whose name has `%`, `\` and `'`: nothing of it
/// runs, each is listed on stderr and in the JSON, and the only key material the server gets
/// is a reader credential of this dataset, which cannot open another one.
#[test]
fn restored_code_gets_only_a_reader_credential_and_settings_that_run_code_are_off() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE t(v int); INSERT INTO t SELECT generate_series(1, 1000)");
    let env = PgCli::new(EXE, "embassy-pgr-");
    let other = env.path("other-src");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "another registry").unwrap();
    std::os::unix::fs::chown(&other, Some(env.ids.0), Some(env.ids.1)).unwrap();
    env.run(&["backup", "other", other.to_str().unwrap()]);

    // The operator's root key and passphrase: only root can read them.
    let root_key = env.path("root-only.key");
    let root_pass = env.path("root-only.pass");
    std::fs::copy(env.path("vault.key"), &root_key).unwrap();
    std::fs::copy(env.path("pass"), &root_pass).unwrap();
    for f in [&root_key, &root_pass] {
        std::os::unix::fs::chown(f, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    // The source's configuration, as an intruder there would leave it (not reloaded there).
    let leak = env.path("leak");
    let steal = |what: &str| {
        format!(
            "cat {} {} {} > {}.{what}; touch {}.{what}",
            env.path("vault.key").display(),
            root_key.display(),
            root_pass.display(),
            leak.display(),
            leak.display()
        )
        .replace('\'', "''")
    };
    pg.psql("ALTER SYSTEM SET archive_mode = 'on'");
    pg.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        steal("archive")
    ));
    pg.psql(&format!(
        "ALTER SYSTEM SET recovery_end_command = '{}'",
        steal("recovery_end")
    ));
    pg.psql("ALTER SYSTEM SET shared_preload_libraries = './evil'");
    let data = pg.data_dir();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    use std::io::Write;
    writeln!(conf, "include 'evil.conf'").unwrap();
    std::fs::write(
        data.join("evil.conf"),
        format!(
            "ssl_passphrase_command = '{}'\nrecovery_target = 'immediate'\n",
            steal("ssl")
        ),
    )
    .unwrap();
    env.run(&[
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
    ]);
    pg.psql("INSERT INTO t VALUES (1001)"); // not in the backup: WAL inside ends before it

    let root = restore_root(&env);
    let dir = root.join("50%f back\\slash 'q'");
    let out = Command::new(EXE)
        .arg("--site")
        .arg(env.path("site"))
        .arg("--key-file")
        .arg(&root_key)
        .arg("--passphrase-file")
        .arg(&root_pass)
        .arg("--state-dir")
        .arg(env.path("root-state"))
        .args([
            "--quiet", "--json", "restore", "registry", "--latest", "--to",
        ])
        .arg(&dir)
        .env_remove("EMBASSY_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    println!("{stderr}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<String> = json["neutralised"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["setting"].as_str().unwrap().to_string())
        .collect();
    for setting in [
        "archive_mode",
        "archive_command",
        "recovery_end_command",
        "shared_preload_libraries",
        "ssl_passphrase_command",
        "recovery_target",
    ] {
        assert!(listed.iter().any(|l| l == setting), "{setting}: {json}");
        assert!(
            stderr.contains("NEUTRALISED restored setting")
                && stderr.contains(&format!(": {setting} = ")),
            "{setting} not listed on stderr: {stderr}"
        );
    }

    // The server starts (a missing './evil' library would stop it), recovers, opens: nothing of
    // the backup's configuration ran, even once WAL is switched and the archiver would run.
    let restored = Restored::start(dir.clone());
    restored.wait_open(Duration::from_secs(120));
    assert_eq!(restored.try_psql("SELECT count(*) FROM t").unwrap(), "1000");
    restored
        .try_psql("INSERT INTO t VALUES (2); SELECT pg_switch_wal()")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for (setting, expected) in [
        ("archive_mode", "off"),
        ("archive_command", "(disabled)"),
        ("shared_preload_libraries", ""),
        ("ssl_passphrase_command", ""),
        ("recovery_end_command", ""),
    ] {
        assert_eq!(
            restored.try_psql(&format!("SHOW {setting}")).unwrap(),
            expected,
            "{setting}"
        );
    }
    let leaked: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("leak"))
        .collect();
    assert!(leaked.is_empty(), "restored code ran: {leaked:?}");
    drop(restored);

    // The key material the server gets: a reader credential in the fetch folder beside the
    // data directory, 0600 and postgres's, with its own passphrase; no trace of the root key.
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    let command = auto
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("restore_command = "))
        .unwrap()
        .to_string();
    let fetch = root.join("50%f back\\slash 'q'.wal-fetch");
    assert!(command.contains("env -i"), "{command}");
    for secret in [
        env.path("vault.key"),
        root_key.clone(),
        env.path("pass"),
        root_pass.clone(),
    ] {
        let needle = secret.to_string_lossy().into_owned();
        assert!(!command.contains(&needle), "{command}");
        // Only in the lines the restore commented out (the backup's own text).
        for f in files_under(&dir) {
            let bytes = std::fs::read(&f).unwrap();
            for line in bytes.split(|b| *b == b'\n') {
                assert!(
                    !line.windows(needle.len()).any(|w| w == needle.as_bytes())
                        || line.starts_with(b"# neutralised by the Data Embassy restore"),
                    "{} names {needle}",
                    f.display()
                );
            }
        }
    }
    let cred = fetch.join("reader.cred");
    let pass = fetch.join("passphrase");
    use std::os::unix::fs::MetadataExt;
    for f in [&cred, &pass] {
        let m = std::fs::metadata(f).unwrap();
        assert_eq!(
            (m.uid(), m.mode() & 0o777),
            (env.ids.0, 0o600),
            "{}",
            f.display()
        );
    }
    let m = std::fs::metadata(&fetch).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (env.ids.0, 0o700));
    let key_file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cred).unwrap()).unwrap();
    assert_eq!(key_file["purpose"], "reader-credential");
    assert_ne!(
        std::fs::read_to_string(&pass).unwrap().trim(),
        PASS,
        "a passphrase of its own"
    );
    // As postgres (what code run by the server could do with it): it reads this dataset and
    // nothing else, and signs nothing.
    let with_cred = |args: &[&str]| {
        Command::new(EXE)
            .arg("--site")
            .arg(env.path("site"))
            .arg("--key-file")
            .arg(&cred)
            .arg("--passphrase-file")
            .arg(&pass)
            .arg("--state-dir")
            .arg(env.path("cred-state"))
            .arg("--quiet")
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .uid(env.ids.0)
            .gid(env.ids.1)
            .output()
            .unwrap()
    };
    let mine = with_cred(&[
        "restore",
        "registry",
        "--path",
        "PG_VERSION",
        "--to",
        dir_arg(&root.join("again")),
    ]);
    assert!(
        mine.status.success(),
        "{}",
        String::from_utf8_lossy(&mine.stderr)
    );
    let theirs = with_cred(&["restore", "other", "--to", dir_arg(&root.join("other"))]);
    assert!(!theirs.status.success());
    let msg = String::from_utf8_lossy(&theirs.stderr);
    assert!(
        msg.contains("does not cover dataset other")
            || msg.contains("no key at hand opens objects of dataset other"),
        "{msg}"
    );
    assert!(!root.join("other").join("secret.txt").exists());
    let sign = with_cred(&["backup", "other", other.to_str().unwrap()]);
    assert!(
        !sign.status.success(),
        "a reader credential signed a version"
    );
}

/// An S3 site's keys, given to the operator's `embassy restore` in its environment only,
/// reach the restore_command in a file of its own (0600, the server's user's), not through
/// the server's environment: the preflight runs the command with no environment and passes,
/// the server started without any S3 variable recovers, and no secret is in the data directory.
#[test]
fn s3_keys_reach_the_restore_command_in_a_file_of_its_own() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE t(v int); INSERT INTO t SELECT generate_series(1, 500)");
    let env = PgCli::new(EXE, "embassy-pgr-");
    let moto = s3::moto();
    let bucket = s3::unique_bucket("pgkeys");
    let cfg = s3::s3_config(&moto.endpoint, &bucket, "vault");
    assert!(embassy_sites::S3Site::new(cfg)
        .unwrap()
        .create_bucket(false)
        .unwrap());
    let site = format!("s3://{bucket}/vault?endpoint={}", moto.endpoint);
    const SECRET: &str = "s3cr3t-only-in-the-operators-environment";
    let as_root = |args: &[&str]| {
        let out = Command::new(EXE)
            .arg("--site")
            .arg(&site)
            .arg("--key-file")
            .arg(env.path("s3.key"))
            .arg("--passphrase-file")
            .arg(env.path("pass"))
            .arg("--state-dir")
            .arg(env.path("root-state"))
            .arg("--quiet")
            .args(args)
            .env_remove("EMBASSY_PASSPHRASE")
            .env_remove("EMBASSY_SITE")
            .env("AWS_ACCESS_KEY_ID", "AKIDPGKEYS")
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_REGION", "us-east-1")
            .env("EMBASSY_S3_RETRIES", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "embassy {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    as_root(&["init"]);
    as_root(&[
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
    ]);
    let root = restore_root(&env);
    let dir = root.join("from-s3");
    as_root(&["restore", "registry", "--latest", "--to", dir_arg(&dir)]);

    let keys = root.join("from-s3.wal-fetch").join("s3-credentials");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&keys).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (env.ids.0, 0o600));
    assert!(std::fs::read_to_string(&keys).unwrap().contains(SECRET));
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("AWS_SHARED_CREDENTIALS_FILE=") && auto.contains("EMBASSY_S3_RETRIES=1"),
        "{auto}"
    );
    for f in files_under(&dir) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the S3 secret",
            f.display()
        );
    }
    let restored = Restored::start(dir);
    restored.wait_open(Duration::from_secs(120));
    assert_eq!(restored.try_psql("SELECT count(*) FROM t").unwrap(), "500");
    assert!(
        !restored.log().contains("no S3 credentials"),
        "{}",
        restored.log()
    );
}

/// Red team (#4): the vault holds batch 2 durably (the streamer's `log_range_added` anchors)
/// but a hostile site withholds those WAL objects; `embassy promote` promoted the standby
/// without batch 2, exited 0 and recorded a position past the durable end, as if nothing were
/// lost. Now it refuses, naming both positions and the ways out, and promotes nothing; with
/// `--accept-data-loss` it promotes, recording where the server really forked and the lost
/// range.
#[test]
fn promote_refuses_a_standby_short_of_the_wal_the_ledger_anchors() {
    let pg = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-pgr-");
    let streamer = env.stream(&pg, "registry");
    let durable_past = |what: &str, lsn: &str| {
        let lsn = lsn.parse::<embassy_postgres::Lsn>().unwrap().0;
        wait_until(what, Duration::from_secs(30), || env.durable() >= lsn);
    };
    pg.psql("CREATE TABLE t (batch int, x int)");
    env.run(&[
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
    ]);
    // Each batch committed, then its segment switched (one psql -c would be one transaction).
    let batch = |sql: &str| {
        pg.psql(sql);
        pg.psql("SELECT pg_switch_wal()");
        pg.psql("SELECT pg_current_wal_lsn()")
    };
    let l1 = batch("INSERT INTO t SELECT 1, g FROM generate_series(1, 1000) g");
    durable_past("batch 1 durable", l1.trim());
    let wal = env.path("site/wal/registry");
    let listing = |dir: &Path| -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out
    };
    let before = listing(&wal);
    let l2 = batch("INSERT INTO t SELECT 2, g FROM generate_series(1, 5000) g");
    durable_past("batch 2 durable", l2.trim());
    drop(streamer); // anchors its tail in the ledger as it stops
                    // The hostile site withholds every WAL object stored since batch 1.
    let withheld = env.path("withheld");
    std::fs::create_dir(&withheld).unwrap();
    for (i, p) in listing(&wal).into_iter().enumerate() {
        if !before.contains(&p) {
            std::fs::rename(&p, withheld.join(i.to_string())).unwrap();
        }
    }

    let standby_dir = restore_root(&env).join("standby");
    env.run(&["standby", "registry", "--to", dir_arg(&standby_dir)]);
    let standby = Restored::start(standby_dir.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.try_psql("SELECT count(*) FROM t").ok().as_deref() != Some("1000") {
        assert!(
            Instant::now() < deadline,
            "the standby did not replay batch 1 ({:?}): {}",
            standby.try_psql("SELECT count(*) FROM t"),
            standby
                .log()
                .lines()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let replay = standby.try_psql("SELECT pg_last_wal_replay_lsn()").unwrap();

    let out = env
        .cmd(&[
            "promote",
            "registry",
            "--data",
            dir_arg(&standby_dir),
            "--timeout",
            "3",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "promoted without batch 2: {err}");
    assert!(
        err.contains(&format!("replayed registry's WAL to {replay}"))
            && err.contains("anchors WAL to")
            && err.contains("nothing was promoted")
            && err.contains("--accept-data-loss"),
        "{err}"
    );
    assert_eq!(standby.try_psql("SELECT pg_is_in_recovery()").unwrap(), "t");

    // Accepting the loss: promoted, and the entry says from where and what was lost.
    let out = env.run(&[
        "--json",
        "promote",
        "registry",
        "--data",
        dir_arg(&standby_dir),
        "--timeout",
        "3",
        "--accept-data-loss",
    ]);
    let done: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lost_to = done["data_lost_to"].as_str().expect("the lost range");
    let parse = |s: &str| s.parse::<embassy_postgres::Lsn>().unwrap();
    assert_eq!(done["lsn"].as_str(), Some(replay.as_str()), "{done}");
    assert!(parse(&replay) < parse(lost_to), "{done}");
    assert_eq!(standby.try_psql("SELECT pg_is_in_recovery()").unwrap(), "f");
    let history = env.run(&["history", "registry"]);
    assert!(
        history.lines().any(|l| l.contains("promoted")
            && l.contains(&format!("from {replay}"))
            && l.contains(&format!(
                "ACCEPTING DATA LOSS: the vault's WAL from {replay} to {lost_to}"
            ))),
        "{history}"
    );
}

/// A server that is not a copy of the dataset's cluster (another `initdb`, in recovery with
/// `standby.signal`, whatever WAL position it shows) is never promoted as the dataset, not even
/// with `--accept-data-loss`: its system identifier differs from the one the dataset's signed
/// base backup records (red team 6: an unrelated cluster moved past the anchored WAL was
/// promoted and recorded as an authoritative takeover).
#[test]
fn promote_refuses_a_server_that_is_not_a_copy_of_the_dataset() {
    let pg = PgServer::start(PgOptions::default());
    let env = PgCli::new(EXE, "embassy-pgr-");
    pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    env.run(&[
        "pg",
        "base-backup",
        "registry",
        "--conninfo",
        &pg.conninfo(),
    ]);
    // Another cluster, in recovery as a standby would be.
    let other = restore_root(&env).join("other");
    let (uid, gid) = env.ids;
    let init = Command::new(embassy_testkit::pg::pg_bindir().join("initdb"))
        .arg("-D")
        .arg(&other)
        .args(["-A", "trust", "-U", "postgres"])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    std::fs::write(other.join("standby.signal"), "").unwrap();
    std::os::unix::fs::chown(other.join("standby.signal"), Some(uid), Some(gid)).unwrap();
    let server = Restored::start(other.clone());
    wait_until(
        "the other cluster to accept reads",
        Duration::from_secs(60),
        || server.try_psql("SELECT 1").is_ok(),
    );

    let out = env.output(&[
        "promote",
        "registry",
        "--data",
        dir_arg(&other),
        "--accept-data-loss",
        "--timeout",
        "3",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "an unrelated cluster was promoted: {stderr}"
    );
    assert!(stderr.contains("is not a copy of registry"), "{stderr}");
    assert_eq!(
        server.try_psql("SELECT pg_is_in_recovery()").unwrap(),
        "t",
        "the server must be left in recovery"
    );
    let history = env.run(&["history", "registry"]);
    assert!(!history.contains("promoted"), "{history}");
}
