//! Timeline switches: the streamer follows a standby that is promoted (timeline 1 ends, 2
//! begins), stores the history file, and continues on the new timeline without a gap. Every
//! segment and the history file fetched from the vault are byte-identical to the servers' own.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_postgres::fetch::{self, FetchOptions, Fetched};
use embassy_postgres::lsn::{segment_file_name, Lsn};
use embassy_postgres::replication::ConnConfig;
use embassy_postgres::stream::{StreamConfig, StreamProgress, WalStreamer};
use embassy_sites::local::LocalSite;
use embassy_testkit::pg::{parse_lsn, PgOptions, PgServer};
use embassy_testkit::wait_until;

fn fetch_eq(vault: &Vault, keyring: &Keyring, name: &str, oracle: &std::path::Path) {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join(name);
    let got = fetch::fetch(
        vault,
        keyring,
        "registry",
        name,
        &dest,
        &FetchOptions::default(),
    )
    .unwrap();
    assert_eq!(got, Fetched::Complete, "{name} missing from the vault");
    let ours = std::fs::read(&dest).unwrap();
    let theirs = std::fs::read(oracle.join(name)).unwrap();
    assert!(ours == theirs, "{name} differs from the server's copy");
}

#[test]
fn streamer_follows_a_promotion_onto_the_new_timeline_without_gap() {
    let primary = PgServer::start(PgOptions {
        extra_conf: vec!["wal_keep_size = '4GB'".into()],
        ..PgOptions::default()
    });
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let standby = PgServer::replica_of(&primary);
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let root = *root.expose();
    // Stream from the standby (cascading replication, with a slot on the standby).
    let mut cfg = StreamConfig::new(
        "registry",
        ConnConfig::parse(&standby.conninfo()).unwrap(),
        "embassy_wal",
    );
    cfg.create_slot = true;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Mutex::new(StreamProgress::default()));
    let handle = {
        let (vault, cfg, stop, progress) =
            (vault.clone(), cfg.clone(), stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let keyring =
                Keyring::from_root(RootSecret::from_bytes(&root), vault.config()).unwrap();
            WalStreamer::run_with_progress(&cfg, &vault, &keyring, &stop, progress)
        })
    };
    let durable = || progress.lock().unwrap().durable.0;
    wait_until("the streamer to start", Duration::from_secs(30), || {
        durable() > 0
    });
    let first_segno = Lsn(durable()).segment_no();
    primary.pgbench(&["-c", "2", "-j", "2", "-T", "4"]);
    primary.psql("SELECT pg_switch_wal()");
    let primary_end = primary.current_lsn();
    wait_until("timeline 1 to be durable", Duration::from_secs(60), || {
        durable() >= primary_end
    });

    standby.promote();
    standby.pgbench(&["-c", "2", "-j", "2", "-T", "3"]);
    standby.psql("SELECT pg_switch_wal()");
    let end = standby.current_lsn();
    wait_until("timeline 2 to be durable", Duration::from_secs(60), || {
        let p = progress.lock().unwrap();
        p.timeline == 2 && p.durable.0 >= end
    });
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    let keyring = Keyring::from_root(RootSecret::from_bytes(&root), vault.config()).unwrap();
    // The history file, and where timeline 1 ended.
    fetch_eq(&vault, &keyring, "00000002.history", &standby.pg_wal_dir());
    let history = std::fs::read_to_string(standby.pg_wal_dir().join("00000002.history")).unwrap();
    let switch = parse_lsn(history.split('\t').nth(1).unwrap());
    // Timeline 1 up to the switch (the primary keeps writing timeline 1 files: the oracle).
    for segno in first_segno..Lsn(switch).segment_no() {
        fetch_eq(
            &vault,
            &keyring,
            &segment_file_name(1, segno),
            &primary.pg_wal_dir(),
        );
    }
    // Timeline 2 from the segment of the switch point on (the promoted standby's files).
    let tl2: Vec<u64> = (Lsn(switch).segment_no()..Lsn(end).segment_no()).collect();
    assert!(!tl2.is_empty());
    for segno in tl2 {
        fetch_eq(
            &vault,
            &keyring,
            &segment_file_name(2, segno),
            &standby.pg_wal_dir(),
        );
    }
    let report = embassy_postgres::wal::verify(&vault, "registry").unwrap();
    assert!(report.is_ok(), "{:?} {:?}", report.problems, report.gaps);
}

/// Issue 17, more locations: the vault holds more of timeline 1 than the promoted server's
/// history has (home's last WAL ended mid-record after a crash, or the standby stopped short of
/// it), so timeline 2 forks before the vault's end of timeline 1. The streamer pointed at the
/// promoted server resumed at the vault's end on timeline 1, which the server refuses for good
/// ("requested starting point ... is not in this server's history"): the new timeline never
/// reached the vault. Now it goes on at the switch point on timeline 2, without a gap.
#[test]
fn streamer_resumes_at_the_fork_when_the_vault_holds_more_of_the_old_timeline() {
    let primary = PgServer::start(PgOptions {
        extra_conf: vec!["wal_keep_size = '4GB'".into()],
        ..PgOptions::default()
    });
    primary.psql("CREATE TABLE t (n int)");
    let standby = PgServer::replica_of(&primary);
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let root = *root.expose();
    let stream = |conninfo: &str| {
        let mut cfg = StreamConfig::new(
            "registry",
            ConnConfig::parse(conninfo).unwrap(),
            "embassy_wal",
        );
        cfg.create_slot = true;
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Mutex::new(StreamProgress::default()));
        let handle = {
            let (vault, stop, progress) = (vault.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || {
                let keyring =
                    Keyring::from_root(RootSecret::from_bytes(&root), vault.config()).unwrap();
                WalStreamer::run_with_progress(&cfg, &vault, &keyring, &stop, progress)
            })
        };
        (stop, progress, handle)
    };
    // Home streams into the vault; its standby follows it, then stops receiving.
    let (stop, progress, handle) = stream(&primary.conninfo());
    primary.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let replayed = primary.current_lsn();
    wait_until("the standby to replay", Duration::from_secs(30), || {
        parse_lsn(&standby.psql("SELECT pg_last_wal_replay_lsn()")) >= replayed
    });
    standby.stop();
    // Home writes on; the vault holds it, the standby never sees it.
    primary.psql("INSERT INTO t SELECT generate_series(1, 1000)");
    let home_end = primary.current_lsn();
    wait_until("home's WAL durable", Duration::from_secs(60), || {
        progress.lock().unwrap().durable.0 >= home_end
    });
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
    drop(primary);

    // The standby is promoted where it stopped: timeline 2 forks before the vault's end.
    std::fs::OpenOptions::new()
        .append(true)
        .open(standby.data_dir().join("postgresql.auto.conf"))
        .and_then(|mut f| f.write_all(b"\nprimary_conninfo = ''\n"))
        .unwrap();
    standby.start_server();
    standby.promote();
    let history = std::fs::read_to_string(standby.pg_wal_dir().join("00000002.history")).unwrap();
    let switch = parse_lsn(history.split('\t').nth(1).unwrap());
    assert!(switch < home_end, "no fork: {switch:X} >= {home_end:X}");

    let (stop, progress, handle) = stream(&standby.conninfo());
    standby.psql("INSERT INTO t SELECT generate_series(1, 500)");
    standby.psql("SELECT pg_switch_wal()");
    let end = standby.current_lsn();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = progress.lock().unwrap().clone();
        if p.timeline == 2 && p.durable.0 >= end {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timeline 2 never became durable: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();

    let keyring = Keyring::from_root(RootSecret::from_bytes(&root), vault.config()).unwrap();
    fetch_eq(&vault, &keyring, "00000002.history", &standby.pg_wal_dir());
    for segno in Lsn(switch).segment_no()..Lsn(end).segment_no() {
        fetch_eq(
            &vault,
            &keyring,
            &segment_file_name(2, segno),
            &standby.pg_wal_dir(),
        );
    }
    let report = embassy_postgres::wal::verify(&vault, "registry").unwrap();
    assert!(report.is_ok(), "{:?} {:?}", report.problems, report.gaps);
}
