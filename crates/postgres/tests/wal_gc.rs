//! Garbage collection of streamed WAL on a real PostgreSQL 15: pieces that anchored segment
//! objects cover are condemned and then deleted, every segment still wal-fetches byte-identical
//! to the server's pg_wal, keyless verification still passes, the live tail is untouched, and a
//! site that deletes a live segment object is caught.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embassy_core::engine::gc::{collect_garbage, GcOptions};
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::history::ledger::Event;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_postgres::fetch::{self, FetchOptions, Fetched};
use embassy_postgres::lsn::{segment_file_name, Lsn};
use embassy_postgres::replication::ConnConfig;
use embassy_postgres::stream::{StreamConfig, StreamProgress, WalStreamer};
use embassy_postgres::wal;
use embassy_sites::local::LocalSite;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::wait_until;

const DATASET: &str = "registry";

fn keyring(vault: &Vault, root: &[u8; 32]) -> Keyring {
    Keyring::from_root(RootSecret::from_bytes(root), vault.config()).unwrap()
}

fn wal_bytes(vault: &Vault) -> u64 {
    vault
        .site()
        .list(&format!("wal/{DATASET}/"))
        .unwrap()
        .iter()
        .map(|i| i.size)
        .sum()
}

/// Segments anchored by a `LogRangeAdded` entry: (timeline, start, end).
fn anchored_segments(vault: &Vault, listing: &wal::WalListing) -> Vec<(u32, u64, u64)> {
    let anchors: BTreeSet<_> = vault
        .history(DATASET)
        .unwrap()
        .iter()
        .filter_map(|r| match &r.entry.event {
            Event::LogRangeAdded { manifest, .. } => Some(*manifest),
            _ => None,
        })
        .collect();
    listing
        .segments
        .iter()
        .filter(|s| anchors.contains(&s.name.id))
        .map(|s| (s.name.timeline, s.name.start, s.name.end))
        .collect()
}

fn fetch_identical(pg: &PgServer, vault: &Vault, keyring: &Keyring, segno: u64) {
    let out = tempfile::tempdir().unwrap();
    let name = segment_file_name(1, segno);
    let dest = out.path().join(&name);
    let got = fetch::fetch(
        vault,
        keyring,
        DATASET,
        &name,
        &dest,
        &FetchOptions::default(),
    )
    .unwrap();
    assert_eq!(got, Fetched::Complete, "{name} is missing after gc");
    let ours = std::fs::read(&dest).unwrap();
    let theirs = std::fs::read(pg.pg_wal_dir().join(&name)).unwrap();
    assert!(ours == theirs, "{name}: bytes differ from pg_wal after gc");
}

#[test]
fn gc_removes_pieces_covered_by_anchored_segments_and_keeps_wal_whole() {
    let started = Instant::now();
    let pg = PgServer::start(PgOptions {
        extra_conf: vec!["wal_keep_size = '4GB'".into()],
        ..PgOptions::default()
    });
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let root = *root.expose();
    let mut cfg = StreamConfig::new(
        DATASET,
        ConnConfig::parse(&pg.conninfo()).unwrap(),
        "gc_wal",
    );
    cfg.create_slot = true;
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Mutex::new(StreamProgress::default()));
    let handle = {
        let (vault, cfg, stop, progress) =
            (vault.clone(), cfg.clone(), stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let keyring = keyring(&vault, &root);
            WalStreamer::run_with_progress(&cfg, &vault, &keyring, &stop, progress)
        })
    };
    let durable = || progress.lock().unwrap().durable.0;
    wait_until("the streamer to start", Duration::from_secs(30), || {
        durable() > 0
    });
    let first_segno = Lsn(durable()).segment_no();
    pg.pgbench(&["-c", "2", "-j", "2", "-T", "2"]);
    pg.psql(
        "CREATE TABLE bulk AS SELECT g, repeat(md5(g::text), 6) AS filler \
         FROM generate_series(1, 150000) g",
    );
    pg.psql("SELECT pg_switch_wal()");
    // A little more WAL after the switch: the live tail, in pieces of a partial segment.
    pg.psql("CREATE TABLE tail AS SELECT g FROM generate_series(1, 1000) g");
    let end = pg.current_lsn();
    wait_until("WAL to become durable", Duration::from_secs(60), || {
        durable() >= end
    });
    let site = vault.site().as_ref();
    let keyring = keyring(&vault, &root);
    // Compaction and anchoring run in the background: wait for every complete segment.
    let last_complete = Lsn(end).segment_no();
    wait_until("segments to be anchored", Duration::from_secs(30), || {
        let l = wal::list(site, DATASET).unwrap();
        let anchored = anchored_segments(&vault, &l);
        (first_segno + 1..last_complete).all(|n| {
            anchored
                .iter()
                .any(|&(_, s, _)| s == n * embassy_postgres::lsn::SEGMENT_SIZE)
        })
    });

    let before = wal::list(site, DATASET).unwrap();
    let anchored = anchored_segments(&vault, &before);
    assert!(
        anchored.len() >= 3,
        "only {} segments compacted",
        anchored.len()
    );
    let newest_segment_end = anchored.iter().map(|&(_, _, e)| e).max().unwrap();
    let covered: Vec<&wal::WalObject> = before
        .pieces
        .iter()
        .filter(|p| {
            anchored
                .iter()
                .any(|&(tl, s, e)| tl == p.name.timeline && s <= p.name.start && p.name.end <= e)
        })
        .collect();
    let tail: Vec<&wal::WalObject> = before
        .pieces
        .iter()
        .filter(|p| p.name.start >= newest_segment_end)
        .collect();
    assert!(covered.len() > 10, "{} covered pieces", covered.len());
    assert!(
        !tail.is_empty(),
        "no live tail pieces beyond the newest segment"
    );
    let bytes_before = wal_bytes(&vault);

    // Two runs with a tiny grace: the first condemns, the second deletes. The streamer is
    // still running.
    let options = GcOptions::with_grace(1);
    let gc_state = tempfile::tempdir().unwrap();
    // With the reader keys: pieces go only once their segment's objects are compared.
    let collector = embassy_core::engine::gc::Collector::new(
        RootSecret::from_bytes(&root).writer_signing_key(0),
        gc_state.path(),
        &vault.config().vault_id,
    )
    .with_keyring(Arc::new(crate::keyring(&vault, &root)));
    let first = collect_garbage(
        &vault,
        &collector,
        &options,
        embassy_core::format::config::now_unix_nanos(),
    )
    .unwrap();
    let condemned_wal: Vec<&String> = first
        .condemned
        .iter()
        .filter(|p| p.starts_with("wal/"))
        .collect();
    assert_eq!(condemned_wal.len(), covered.len(), "{first:?}");
    for p in &covered {
        assert!(site.get(&p.path).is_ok(), "deleted before the grace period");
    }
    std::thread::sleep(Duration::from_millis(1200));
    let second = collect_garbage(
        &vault,
        &collector,
        &options,
        embassy_core::format::config::now_unix_nanos(),
    )
    .unwrap();
    assert!(second.skipped.is_empty(), "{:?}", second.skipped);
    let bytes_after = wal_bytes(&vault);
    eprintln!(
        "wal bytes before gc {bytes_before}, after {bytes_after}; {} pieces deleted ({} bytes)",
        second.deleted.len(),
        second.deleted_bytes
    );

    let after = wal::list(site, DATASET).unwrap();
    let left: BTreeSet<&str> = after.pieces.iter().map(|p| p.path.as_str()).collect();
    for p in &covered {
        assert!(!left.contains(p.path.as_str()), "{} not collected", p.path);
    }
    for p in &tail {
        assert!(
            left.contains(p.path.as_str()),
            "live tail {} touched",
            p.path
        );
    }
    assert_eq!(
        after.segments.len(),
        before.segments.len(),
        "a segment was deleted"
    );
    assert_eq!(after.histories.len(), before.histories.len());
    assert!(bytes_after < bytes_before);

    // Every complete segment still fetches byte-identical, verification passes.
    for segno in first_segno..last_complete {
        fetch_identical(&pg, &vault, &keyring, segno);
    }
    let report = wal::verify(&vault, DATASET).unwrap();
    assert!(
        report.is_ok(),
        "verify after gc: {:?} {:?}",
        report.problems,
        report.gaps
    );

    // More WAL after collection streams on from where it was.
    pg.psql("INSERT INTO tail SELECT g FROM generate_series(1, 1000) g");
    let end2 = pg.current_lsn();
    wait_until(
        "more WAL to become durable",
        Duration::from_secs(30),
        || durable() >= end2,
    );
    stop.store(true, Ordering::Relaxed);
    handle.join().unwrap().unwrap();
    let report = wal::verify(&vault, DATASET).unwrap();
    assert!(
        report.is_ok(),
        "verify after more WAL: {:?} {:?}",
        report.problems,
        report.gaps
    );

    // A site that deletes a live segment object is caught: its anchor names a missing object
    // and nothing covers its range any more.
    let victim = after
        .segments
        .iter()
        .find(|s| s.name.start == (first_segno + 2) * embassy_postgres::lsn::SEGMENT_SIZE)
        .expect("a compacted segment to delete");
    site.delete(&victim.path).unwrap();
    let report = wal::verify(&vault, DATASET).unwrap();
    assert!(!report.is_ok(), "deleting live WAL went unnoticed");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains(&victim.name.id.short()) && p.contains("not stored")),
        "{:?}",
        report.problems
    );
    assert!(!report.gaps.is_empty(), "no gap reported");
    // And gc does not delete anything more because of it.
    let third = collect_garbage(
        &vault,
        &collector,
        &options,
        embassy_core::format::config::now_unix_nanos(),
    )
    .unwrap();
    assert!(
        third.condemned.iter().all(|p| !p.starts_with("wal/")),
        "{:?}",
        third.condemned
    );
    eprintln!("wal gc test took {:?}", started.elapsed());
}
