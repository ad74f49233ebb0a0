//! Garbage collection of WAL pieces (`gc::collect_garbage` on `wal/`): a piece goes only when a
//! segment object covers it that the ledger anchors and whose bytes, header and signature check
//! out; unanchored, tampered or foreign-signed segments protect nothing, and segments, history
//! files and the live tail are never collected; nor is a piece when an object over its segment
//! holds other bytes, or the collector cannot read them to compare. The same on PostgreSQL 15 WAL is
//! `crates/postgres/tests/wal_gc.rs`.

use embassy_testkit::memory::MemorySite;
use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions};
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::wal_log::{self, LogKind, LogSpec};
use embassy_core::history::ledger::{self, Event, Record};
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;

const SEG: u64 = 16 * 1024 * 1024;

struct World {
    site: Arc<MemorySite>,
    vault: Vault,
    root: RootSecret,
    head: Option<Record>,
}

impl World {
    fn new() -> Self {
        let site = Arc::new(MemorySite::default());
        let root = RootSecret::from_bytes(&[7; 32]);
        let vault = Vault::create(site.clone(), &root).unwrap();
        Self {
            site,
            vault,
            root,
            head: None,
        }
    }

    /// Seals and stores a log object signed by `signer_root`'s writer key; returns its path.
    fn put(&self, signer_root: &RootSecret, kind: LogKind, start: u64, end: u64) -> String {
        let keys = self.root.dataset_keys("db", 0);
        let signer = signer_root.writer_signing_key(0);
        let len = if kind == LogKind::History {
            40
        } else {
            end - start
        };
        // WAL at an LSN is the same in every object: the byte at `x` is `x % 251`.
        let payload: Vec<u8> = (start..start + len).map(|x| (x % 251) as u8).collect();
        let spec = LogSpec {
            kind,
            timeline: 1,
            start,
            end,
            prev: None,
            captured_at_ns: 1,
            system_id: 1,
        };
        let (bytes, id) = wal_log::seal(&keys, &signer, &spec, &payload).unwrap();
        let header = wal_log::parse("new", &bytes).unwrap().header;
        let path = wal_log::path(&header, &id);
        self.site.put(&path, &bytes).unwrap();
        path
    }

    fn anchor(&mut self, path: &str) {
        let name = wal_log::parse_path(path).unwrap();
        let signer = self.root.writer_signing_key(0);
        let rec = ledger::append(
            self.site.as_ref(),
            &signer,
            "db",
            self.head.as_ref(),
            Event::LogRangeAdded {
                manifest: name.id,
                timeline: name.timeline,
                start: name.start,
                end: name.end,
                captured_at_ns: 1,
                history: None,
            },
        )
        .unwrap();
        self.head = Some(rec);
    }

    /// A collector signing with the root-derived writer key and reading with the root's reader
    /// keys; its state in a folder per test.
    fn collector(&self) -> gc::Collector {
        let keyring = Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap();
        self.keyless_collector().with_keyring(Arc::new(keyring))
    }

    /// A collector without reader keys.
    fn keyless_collector(&self) -> gc::Collector {
        let dir = std::env::temp_dir().join(format!(
            "embassy-wal-gc-{}-{:p}",
            std::process::id(),
            &self.vault
        ));
        gc::Collector::new(
            self.root.writer_signing_key(0),
            &dir,
            &self.vault.config().vault_id,
        )
    }

    fn exists(&self, path: &str) -> bool {
        self.site.lock().contains_key(path)
    }

    /// Two collections with a one-second grace: condemn, then delete.
    fn collect_twice(&self) -> (gc::GcReport, gc::GcReport) {
        let options = GcOptions::with_grace(1);
        let now = embassy_core::format::config::now_unix_nanos();
        let first = gc::collect_garbage(&self.vault, &self.collector(), &options, now).unwrap();
        let second = gc::collect_garbage(
            &self.vault,
            &self.collector(),
            &options,
            now + 5_000_000_000,
        )
        .unwrap();
        (first, second)
    }
}

#[test]
fn only_pieces_under_an_anchored_verified_segment_are_collected() {
    let mut w = World::new();
    let stranger = RootSecret::from_bytes(&[8; 32]);
    let own = RootSecret::from_bytes(&[7; 32]);
    // Segment 1: anchored and sound: its two pieces go.
    let covered = [
        w.put(&own, LogKind::Piece, SEG, SEG + 100),
        w.put(&own, LogKind::Piece, SEG + 100, 2 * SEG),
    ];
    let good = w.put(&own, LogKind::Segment, SEG, 2 * SEG);
    w.anchor(&good);
    // Segment 2: anchored, but the site altered its bytes.
    let p2 = w.put(&own, LogKind::Piece, 2 * SEG, 2 * SEG + 100);
    let tampered = w.put(&own, LogKind::Segment, 2 * SEG, 3 * SEG);
    w.anchor(&tampered);
    {
        let mut objects = w.site.lock();
        let bytes = objects.get_mut(&tampered).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
    }
    // Segment 3: sound but never anchored.
    let p3 = w.put(&own, LogKind::Piece, 3 * SEG, 3 * SEG + 100);
    let unanchored = w.put(&own, LogKind::Segment, 3 * SEG, 4 * SEG);
    // Segment 4: anchored, but signed by a key that may not sign this dataset.
    let p4 = w.put(&own, LogKind::Piece, 4 * SEG, 4 * SEG + 100);
    let foreign = w.put(&stranger, LogKind::Segment, 4 * SEG, 5 * SEG);
    w.anchor(&foreign);
    // The live tail and a history file.
    let tail = w.put(&own, LogKind::Piece, 5 * SEG, 5 * SEG + 100);
    let history = w.put(&own, LogKind::History, 0, 40);

    let (first, second) = w.collect_twice();
    let mut condemned: Vec<&String> = first.condemned.iter().collect();
    condemned.sort();
    let mut want: Vec<&String> = covered.iter().collect();
    want.sort();
    assert_eq!(condemned, want, "{first:?}");
    assert_eq!(second.deleted.len(), 2, "{second:?}");
    for p in &covered {
        assert!(!w.exists(p), "{p} not collected");
    }
    for p in [
        &good,
        &p2,
        &tampered,
        &p3,
        &unanchored,
        &p4,
        &foreign,
        &tail,
        &history,
    ] {
        assert!(w.exists(p), "{p} was collected");
    }
}

#[test]
fn a_condemned_piece_whose_segment_vanished_is_rescued() {
    let mut w = World::new();
    let own = RootSecret::from_bytes(&[7; 32]);
    let piece = w.put(&own, LogKind::Piece, SEG, SEG + 100);
    let segment = w.put(&own, LogKind::Segment, SEG, 2 * SEG);
    w.anchor(&segment);
    let options = GcOptions::with_grace(1);
    let now = embassy_core::format::config::now_unix_nanos();
    let first = gc::collect_garbage(&w.vault, &w.collector(), &options, now).unwrap();
    assert_eq!(first.condemned, vec![piece.clone()]);
    // The segment disappears between the runs: the piece is the only copy again.
    w.site.delete(&segment).unwrap();
    let second =
        gc::collect_garbage(&w.vault, &w.collector(), &options, now + 5_000_000_000).unwrap();
    assert!(second.deleted.is_empty(), "{second:?}");
    assert_eq!(second.rescued, vec![piece.clone()]);
    assert!(w.exists(&piece));
}

/// Seals `payload` as a log object of timeline 1 from `start`, signed by `signer_root`'s writer.
fn put_bytes(
    w: &World,
    signer_root: &RootSecret,
    kind: LogKind,
    start: u64,
    payload: &[u8],
) -> String {
    let keys = w.root.dataset_keys("db", 0);
    let spec = LogSpec {
        kind,
        timeline: 1,
        start,
        end: start + payload.len() as u64,
        prev: None,
        captured_at_ns: 2,
        system_id: 1,
    };
    let (bytes, id) =
        wal_log::seal(&keys, &signer_root.writer_signing_key(0), &spec, payload).unwrap();
    let header = wal_log::parse("new", &bytes).unwrap().header;
    let path = wal_log::path(&header, &id);
    w.site.put(&path, &bytes).unwrap();
    path
}

/// Red team 17's overlay, for the collector: a valid signer stores and anchors a segment object
/// holding other bytes over anchored pieces. Deleting the pieces would leave only its bytes, so
/// they stay; so do the pieces of a sound segment that another valid object contradicts. A
/// stranger's object over a sound segment is noise and frees the pieces. Without the reader key
/// nothing is compared and no piece goes.
#[test]
fn pieces_stay_while_an_object_over_their_segment_holds_other_bytes() {
    let mut w = World::new();
    let own = RootSecret::from_bytes(&[7; 32]);
    let stranger = RootSecret::from_bytes(&[8; 32]);
    let honest = |start: u64, len: u64| -> Vec<u8> {
        (start..start + len).map(|x| (x % 251) as u8).collect()
    };
    // Segment 1: the pieces, then a segment of other bytes anchored after them.
    let p1 = w.put(&own, LogKind::Piece, SEG, SEG + 100);
    w.anchor(&p1);
    let mut other = honest(SEG, SEG);
    other[50] ^= 1;
    let forged = put_bytes(&w, &own, LogKind::Segment, SEG, &other);
    w.anchor(&forged);
    // Segment 2: a sound segment, and a valid piece over it holding other bytes.
    let p2 = w.put(&own, LogKind::Piece, 2 * SEG, 2 * SEG + 100);
    let good2 = w.put(&own, LogKind::Segment, 2 * SEG, 3 * SEG);
    w.anchor(&good2);
    let mut bent = honest(2 * SEG + 10, 20);
    bent[3] ^= 1;
    let contradicting = put_bytes(&w, &own, LogKind::Piece, 2 * SEG + 10, &bent);
    // Segment 3: a sound segment, and a stranger's piece over it (noise).
    let p3 = w.put(&own, LogKind::Piece, 3 * SEG, 3 * SEG + 100);
    let good3 = w.put(&own, LogKind::Segment, 3 * SEG, 4 * SEG);
    w.anchor(&good3);
    let noise = put_bytes(&w, &stranger, LogKind::Piece, 3 * SEG + 10, &bent);

    // Without the reader key: nothing compared, nothing condemned.
    let options = GcOptions::with_grace(1);
    let now = embassy_core::format::config::now_unix_nanos();
    let keyless = gc::collect_garbage(&w.vault, &w.keyless_collector(), &options, now).unwrap();
    assert!(
        !keyless.condemned.iter().any(|p| p.starts_with("wal/")),
        "{keyless:?}"
    );

    let (first, _) = w.collect_twice();
    let condemned: Vec<&String> = first
        .condemned
        .iter()
        .filter(|p| p.starts_with("wal/"))
        .collect();
    // The stranger's piece lies inside the sound segment 3 too: noise, it goes with p3.
    let mut want = vec![&p3, &noise];
    want.sort();
    let mut got = condemned.clone();
    got.sort();
    assert_eq!(got, want, "{first:?}");
    for p in [&p1, &forged, &p2, &good2, &contradicting, &good3] {
        assert!(w.exists(p), "{p} was collected");
    }
}
