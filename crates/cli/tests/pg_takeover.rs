//! Taking over a registry at the embassy and giving it back, end to end on a real PostgreSQL 15
//! with the real `embassy` program as the `postgres` user. Home's commits wait for the streamer
//! (synchronous replication to `embassy pg stream`): a commit is acknowledged once its WAL is
//! durable in the vault, so "no acknowledged commit lost" is checked row by row.
//!
//! - promote's window: the streamer anchors its tail in the ledger only every minute (and at
//!   each whole segment), so acknowledged WAL newer than the last anchor is durable at the
//!   sites but not in the ledger; a standby that cannot reach it must not be promoted.

use std::path::{Path, PathBuf};
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

/// `embassy pg stream DATASET` from the server at `conninfo` as the synchronous standby, logging
/// durable positions to `log` in the home (SIGTERM when dropped; `.0.kill()` for SIGKILL).
fn stream(env: &PgCli, conninfo: &str, dataset: &str, log: &str) -> Stopper {
    stream_with(env, &env.path("vault.key"), conninfo, dataset, log)
}

/// The same, signed with the key file `key`.
fn stream_with(env: &PgCli, key: &Path, conninfo: &str, dataset: &str, log: &str) -> Stopper {
    let conninfo = format!("{conninfo} application_name={SYNC_NAME}");
    env.stream_from(key, &conninfo, dataset, log)
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
    let mut streamer = stream(&env, &pg.conninfo(), "registry", "durable.log");
    env.base_backup_streamed(&pg.conninfo(), "registry");
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
    // With the root key the WAL it names was compared with the copy the server made of it in
    // its new timeline's first segment (none is named when they differ).
    assert_eq!(done["replayed_wal"]["timeline"], 1, "{done}");
    assert_eq!(count(&standby, "SELECT count(*) FROM acked"), "2");
    standby.try_psql("INSERT INTO acked VALUES (3)").unwrap();
}

/// The TCP port of the server running on `data` (postmaster.pid, line 4).
fn port_of(data: &std::path::Path) -> String {
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    pid.lines().nth(3).unwrap().trim().to_string()
}

/// Inserts rows `from..=to` tagged `site` into `acked`, one commit each; every commit returns
/// only once its WAL is durable in the vault (the server waits for the streamer).
fn commit_rows(psql: &dyn Fn(&str) -> Result<String, String>, site: &str, from: u32, to: u32) {
    for n in from..=to {
        psql(&format!("INSERT INTO acked VALUES ({n}, '{site}')"))
            .unwrap_or_else(|e| panic!("commit {n} at {site}: {e}"));
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// A home whose vault pins one approver and needs one approval per takeover: the home, the
/// approver's key file, and the folder holding it.
fn env_with_an_approver(prefix: &str) -> (PgCli, PathBuf, tempfile::TempDir) {
    let keys = tempfile::tempdir().unwrap();
    let pass = embassy_testkit::cli::passphrase_file(keys.path());
    let approver = keys.path().join("official.key");
    let out = std::process::Command::new(EXE)
        .arg("--passphrase-file")
        .arg(&pass)
        .args(["approver-key", "--out"])
        .arg(&approver)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let public = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("public key: ").map(|k| k.trim().to_string()))
        .unwrap();
    let env = PgCli::with_init(
        EXE,
        prefix,
        &["--approver", &public, "--promotion-approvals", "1"],
    );
    (env, approver, keys)
}

/// A sealing credential of `registry` labelled `label`: its file and public key.
fn issue(env: &PgCli, label: &str) -> (PathBuf, String) {
    env.issue_sealing("registry", label)
}

/// `embassy approve --promote HOST --promoter PROMOTER registry` by `approver`.
fn approve_takeover(env: &PgCli, approver: &Path, host: &str, promoter: &str) {
    let out = env
        .cmd_as_caller(&[
            "approve",
            "--approver-key",
            arg(approver),
            "--promote",
            host,
            "--promoter",
            promoter,
            "registry",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "approve: {out:?}");
}

/// `embassy --json promote registry --data DIR` with the credential `key`: its JSON answer.
fn promote_json(env: &PgCli, key: &Path, dir: &Path) -> serde_json::Value {
    let out = env
        .cmd_with_key(
            key,
            &[
                "--json",
                "promote",
                "registry",
                "--data",
                arg(dir),
                "--timeout",
                "60",
            ],
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "promote: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Issue 17, "the way back": home is lost and the embassy takes over (approved, recorded); the
/// embassy's promoted server streams its new timeline into the vault with `embassy pg stream`,
/// its commits acknowledged once durable; then a planned switchover home: writes stop at the
/// embassy (a fast shutdown sends and flushes all its WAL to the streamer), home restores a
/// standby from the vault that follows the embassy's timeline, the promotion back is approved
/// and recorded, home streams again, and the embassy's data directory returns to standby and
/// follows home. Every acknowledged commit of both sites is at home, and every step is in the
/// ledger.
#[test]
fn failback_home_after_a_takeover_loses_no_acknowledged_commit() {
    let (env, approver, _keys) = env_with_an_approver("embassy-failback-");
    let host = hostname();
    // The embassy's credential (approvals name the key that promotes); home comes back with a
    // new one, issued after the takeover fenced the writers of before.
    let (embassy_key, embassy_public) = issue(&env, "embassy");
    let approve = |promoter: &str| approve_takeover(&env, &approver, &host, promoter);

    // Home streams; its commits are acknowledged once durable in the vault.
    let home = PgServer::start(PgOptions::default());
    commits_wait_for_the_streamer(&home);
    let home_streamer = stream(&env, &home.conninfo(), "registry", "durable.log");
    env.base_backup_streamed(&home.conninfo(), "registry");
    home.psql("CREATE TABLE acked (n int PRIMARY KEY, site text NOT NULL)");
    let (embassy, embassy_dir) = start_standby(&env, "registry", "embassy");
    commit_rows(&|sql| home.try_psql(sql), "home", 1, 50);

    // Takeover: home is lost; two officials' worth of approval (one here), then promote.
    drop(home_streamer);
    home.kill9();
    approve(&embassy_public);
    let promote = |key: &Path, dir: &Path| promote_json(&env, key, dir);
    let done = promote(&embassy_key, &embassy_dir);
    assert_eq!(done["authoritative"], true, "{done}");
    assert_eq!(done["timeline"], 2, "{done}");
    assert_eq!(done["approvals"], 1, "{done}");
    assert!(done["data_lost_to"].is_null(), "{done}");
    // The entry anchors the WAL of timeline 1 the promoted server replayed last.
    assert_eq!(done["replayed_wal"]["timeline"], 1, "{done}");
    assert_eq!(count(&embassy, "SELECT count(*) FROM acked"), "50");

    // The live registry is protected too: `embassy pg stream` against the promoted server
    // resumes after home's WAL and streams timeline 2; its commits wait for it.
    let embassy_conninfo = format!(
        "host=127.0.0.1 port={} user=embassy password={} dbname=postgres",
        port_of(&embassy_dir),
        embassy_testkit::pg::REPL_PASSWORD
    );
    embassy
        .try_psql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{SYNC_NAME}'"
        ))
        .unwrap();
    embassy.try_psql("SELECT pg_reload_conf()").unwrap();
    // A hostile site plants names of history files for timelines 2 and 3 (red team 9: the
    // streamer took any listed name for its stored history file and never stored the real one).
    let planted = [plant_history(&env, 2), plant_history(&env, 3)];
    let embassy_streamer = stream_with(
        &env,
        &embassy_key,
        &embassy_conninfo,
        "registry",
        "embassy-durable.log",
    );
    commit_rows(&|sql| embassy.try_psql(sql), "embassy", 51, 100);

    // The switchover: writes stop at the embassy. A fast shutdown waits until the streamer has
    // flushed all of its WAL (the shutdown checkpoint included), then the streamer stops.
    let stopped = embassy
        .pg("pg_ctl")
        .arg("-D")
        .arg(&embassy_dir)
        .args(["-m", "fast", "-w", "stop"])
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    drop(embassy_streamer);
    drop(embassy);

    // Home restores a standby from the vault; it follows timeline 2 to its end.
    let (home_again, home_dir) = start_standby(&env, "registry", "home");
    wait_until(
        "home's standby to replay the embassy's commits",
        Duration::from_secs(120),
        || count(&home_again, "SELECT count(*) FROM acked") == "100",
    );
    // The promotion back: approved anew (an approval serves one takeover), recorded.
    let (home_key, home_public) = issue(&env, "home-again");
    approve(&home_public);
    let back = promote(&home_key, &home_dir);
    assert_eq!(back["timeline"], 3, "{back}");
    assert_eq!(back["approvals"], 1, "{back}");
    assert!(back["data_lost_to"].is_null(), "{back}");
    assert_eq!(back["authoritative"], true, "{back}");
    assert_eq!(back["replayed_wal"]["timeline"], 2, "{back}");

    // Home streams again, its commits acknowledged once durable.
    home_again
        .try_psql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{SYNC_NAME}'"
        ))
        .unwrap();
    home_again.try_psql("SELECT pg_reload_conf()").unwrap();
    let home_conninfo = format!(
        "host=127.0.0.1 port={} user=embassy password={} dbname=postgres",
        port_of(&home_dir),
        embassy_testkit::pg::REPL_PASSWORD
    );
    let _home_streamer = stream_with(
        &env,
        &home_key,
        &home_conninfo,
        "registry",
        "home-durable.log",
    );
    commit_rows(&|sql| home_again.try_psql(sql), "home", 101, 120);

    // The embassy returns to standby: its data directory, with standby.signal again (its
    // restore_command is still the vault's), follows home's timeline 3.
    std::fs::write(embassy_dir.join("standby.signal"), "").unwrap();
    std::os::unix::fs::chown(
        embassy_dir.join("standby.signal"),
        Some(env.ids.0),
        Some(env.ids.1),
    )
    .unwrap();
    let embassy = Restored::start(embassy_dir.clone());
    wait_until(
        "the embassy's standby to follow home",
        Duration::from_secs(120),
        || count(&embassy, "SELECT count(*) FROM acked") == "120",
    );
    assert_eq!(embassy.try_psql("SELECT pg_is_in_recovery()").unwrap(), "t");

    // No acknowledged commit lost: 1-50 and 101-120 at home, 51-100 at the embassy.
    assert_eq!(
        home_again
            .try_psql(
                "SELECT count(*), min(n), max(n), count(DISTINCT n), \
                 count(*) FILTER (WHERE site = 'embassy') FROM acked"
            )
            .unwrap(),
        "120|1|120|120|50"
    );
    // Every step in the ledger: the takeover and the way back, both approved, and WAL
    // anchored on the three timelines.
    let history = env.run(&["history", "registry"]);
    let promoted: Vec<&str> = history.lines().filter(|l| l.contains("promoted")).collect();
    assert_eq!(promoted.len(), 2, "{history}");
    assert!(
        promoted[0].contains("timeline 2") && promoted[0].contains(arg(&embassy_dir)),
        "{history}"
    );
    assert!(
        promoted[1].contains("timeline 3") && promoted[1].contains(arg(&home_dir)),
        "{history}"
    );
    for timeline in 1..=3 {
        wait_until(
            &format!("WAL of timeline {timeline} anchored"),
            Duration::from_secs(60),
            || {
                env.run(&["history", "registry"])
                    .contains(&format!("log range added: timeline {timeline},"))
            },
        );
    }

    // Red team 9: the way back fenced the embassy's credential, which had stored timeline 2's
    // history file; unanchored, it turned to noise, verify said OK and a restore from the vault
    // failed ("could not restore file 00000002.history"). The streamer's first anchor on a
    // timeline names its history file: it stays valid. Only the planted names are noise, and
    // the vault alone restores every commit across the three timelines.
    assert_wal_verifies_with_only_this_noise(&env, &planted);
    let restored_dir = env.postgres_folder("restores").join("latest");
    env.run(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        arg(&restored_dir),
    ]);
    let restored = Restored::start(restored_dir);
    wait_until(
        "the vault's restore to replay the three timelines",
        Duration::from_secs(120),
        || count(&restored, "SELECT count(*) FROM acked") == "120",
    );
}

/// `embassy pg verify-wal registry` (keyless) passes, and what it calls noise is exactly the
/// objects at `paths`.
fn assert_wal_verifies_with_only_this_noise(env: &PgCli, paths: &[String]) {
    let out = env
        .cmd(&["--json", "pg", "verify-wal", "registry"])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(out.status.success(), "{report}");
    let noise: Vec<&str> = report["noise"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    assert_eq!(noise.len(), paths.len(), "{report}");
    for path in paths {
        assert!(noise.iter().any(|n| n.contains(path.as_str())), "{report}");
    }
}

/// Plants junk named like a history file of `timeline` at the site (its name carries its
/// true hash); returns its path.
fn plant_history(env: &PgCli, timeline: u32) -> String {
    let junk = format!("not the history of timeline {timeline}").into_bytes();
    let id = embassy_core::id::ObjectId::of(&junk);
    let path = format!(
        "wal/registry/{timeline:08x}/h/{:016x}-{:016x}-{id}",
        0,
        junk.len()
    );
    let file = env.site().join(&path);
    let mut dir = env.site();
    for part in std::path::Path::new(&path).parent().unwrap().components() {
        dir = dir.join(part);
        if !dir.exists() {
            std::fs::create_dir(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(env.ids.0), Some(env.ids.1)).unwrap();
        }
    }
    std::fs::write(&file, junk).unwrap();
    path
}

/// Red team 8: after an approved takeover fences home's credential, a thief holding it signed
/// other WAL for the old timeline below the switch point (where the fence used to accept any
/// object of a fenced key) and put it at the site: `verify` passed and `wal-fetch` served the
/// forged segment, so a fresh restore returned the thief's rows. Now the `promoted` entry
/// anchors the WAL the promoted server replayed, and a fenced key's WAL is valid only where an
/// anchor covers it: the forged whole segment and the forged piece below the switch point are
/// noise to the keyless check, `wal-fetch` serves home's bytes, and home's own unanchored tail
/// (replayed by the embassy) stays valid.
#[test]
fn a_fenced_credential_cannot_add_wal_below_the_switch_point() {
    use embassy_core::format::wal_log::{LogKind, LogSpec};
    use embassy_core::keys::keyfile::KeyFile;
    use embassy_core::keys::Credential;
    use embassy_postgres::lsn::SEGMENT_SIZE;

    let (env, approver, _keys) = env_with_an_approver("embassy-fence-wal-");
    let host = hostname();
    let (home_key, _) = issue(&env, "home");
    let (embassy_key, embassy_public) = issue(&env, "embassy");

    // Home streams with its sealing credential; a whole segment, then an unanchored tail.
    let home = PgServer::start(PgOptions::default());
    commits_wait_for_the_streamer(&home);
    let home_streamer = stream_with(&env, &home_key, &home.conninfo(), "registry", "durable.log");
    env.base_backup_streamed(&home.conninfo(), "registry");
    home.psql("CREATE TABLE acked (n int PRIMARY KEY, site text NOT NULL)");
    let (embassy, embassy_dir) = start_standby(&env, "registry", "embassy");
    commit_rows(&|sql| home.try_psql(sql), "home", 1, 20);
    home.psql("SELECT pg_switch_wal()");
    commit_rows(&|sql| home.try_psql(sql), "home", 21, 40);
    wait_until(
        "the standby to replay home's commits",
        Duration::from_secs(60),
        || count(&embassy, "SELECT count(*) FROM acked") == "40",
    );
    drop(home_streamer);
    home.kill9();

    // The approved takeover anchors the WAL of timeline 1 that the embassy replayed last.
    approve_takeover(&env, &approver, &host, &embassy_public);
    let done = promote_json(&env, &embassy_key, &embassy_dir);
    assert_eq!(done["authoritative"], true, "{done}");
    let switch = lsn(done["lsn"].as_str().unwrap());
    let replayed = &done["replayed_wal"];
    assert_eq!(replayed["timeline"], 1, "{done}");
    assert!(
        lsn(replayed["start"].as_str().unwrap()) < switch
            && switch <= lsn(replayed["end"].as_str().unwrap()),
        "{done}"
    );

    // The whole segment before the switch point's, as the vault serves it.
    let segno = (switch - 1) / SEGMENT_SIZE - 1;
    let name = embassy_postgres::lsn::segment_file_name(1, segno);
    let fetch = |to: &str| {
        let dest = env.path(to);
        env.run(&["wal-fetch", "registry", &name, arg(&dest)]);
        std::fs::read(&dest).unwrap()
    };
    let genuine = fetch("genuine");
    assert_eq!(genuine.len() as u64, SEGMENT_SIZE);

    // The thief: home's fenced credential signs a different whole segment there and a piece
    // from the switch point's segment start up to the switch point.
    let pass = std::fs::read_to_string(env.path("pass")).unwrap();
    let payload = KeyFile::load(&home_key)
        .unwrap()
        .open_payload(pass.trim().as_bytes(), &home_key)
        .unwrap();
    let credential = Credential::from_bytes(&payload).unwrap();
    let signer = credential.signing_key().unwrap();
    let keys = credential.dataset_keys_at("registry", 0).unwrap();
    let site = embassy_sites::LocalSite::new(env.site()).unwrap();
    let forge = |kind, start: u64, bytes: &[u8]| {
        let spec = LogSpec {
            kind,
            timeline: 1,
            start,
            end: start + bytes.len() as u64,
            prev: None,
            captured_at_ns: i64::MAX / 2,
            system_id: 0,
        };
        embassy_postgres::wal::put(&site, &keys, &signer, &spec, bytes)
            .unwrap()
            .1
    };
    let mut forged_segment = genuine.clone();
    forged_segment[SEGMENT_SIZE as usize / 2] ^= 0xff;
    let tail_start = (switch - 1) / SEGMENT_SIZE * SEGMENT_SIZE;
    let forged = [
        forge(LogKind::Segment, segno * SEGMENT_SIZE, &forged_segment),
        forge(
            LogKind::Piece,
            tail_start,
            &vec![7u8; (switch - tail_start) as usize],
        ),
    ];

    // Keyless: both forged objects are noise, nothing of home's is, and nothing is missing.
    assert_wal_verifies_with_only_this_noise(&env, &forged);
    // wal-fetch serves home's segment, not the thief's.
    assert!(
        fetch("served") == genuine,
        "wal-fetch served other bytes than home's"
    );
}
