//! Timeline switches: the streamer follows a standby that is promoted (timeline 1 ends, 2
//! begins), stores the history file, and continues on the new timeline without a gap. Every
//! segment and the history file fetched from the vault are byte-identical to the servers' own.

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
