//! WAL retention against a real vault (local folder site), without a server: base backups that
//! record their WAL start, streamed WAL of several segments anchored by the ledger, retention,
//! and garbage collection in its two phases. WAL below the oldest kept base backup's segment is
//! condemned and then deleted, the rest stays; `verify` reports nothing missing below the
//! cut-off and a gap above it; `wal-fetch` below the cut-off says retention collected it. And
//! the attacker's cases: a stolen sealing credential's forged base backups (a high start, an
//! old date, another timeline) and its deletion of the oldest kept base backup raise nothing;
//! a vault of format 3 collects nothing by the cut-off.

use std::io::Cursor;
use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions};
use embassy_core::engine::prune;
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::engine::writer::BackupSession;
use embassy_core::format::config::{now_unix_nanos, VaultConfig};
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::format::wal_log::{LogKind, LogSpec};
use embassy_core::history::ledger::{self, Event, Right, WalStart};
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_postgres::fetch::{self, FetchOptions};
use embassy_postgres::lsn::segment_file_name;
use embassy_postgres::{wal, PgError};
use embassy_sites::LocalSite;

const DS: &str = "registry";
const SEG: u64 = 16 * 1024 * 1024;

struct World {
    dir: tempfile::TempDir,
    vault: Vault,
    root: RootSecret,
    /// The newest WAL object (the chain's `prev`).
    prev: Option<ObjectId>,
    /// The WAL position streamed so far.
    end: u64,
}

impl World {
    fn new(format_version: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
        let root = RootSecret::generate();
        let mut config = VaultConfig::new(&root);
        config.min_age_secs = 0;
        config.format_version = format_version;
        config.create(site.as_ref(), &root).unwrap();
        let vault = Vault::open(site).unwrap();
        Self {
            dir,
            vault,
            root,
            prev: None,
            end: SEG,
        }
    }

    fn keyring(&self) -> Keyring {
        Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap()
    }

    fn head(&self) -> Option<ledger::Record> {
        self.vault.history(DS).unwrap().last().cloned()
    }

    /// Streams `segments` whole segments of WAL (one piece each, anchored).
    fn stream(&mut self, segments: u64) {
        let keyring = self.keyring();
        let keys = keyring.dataset_at(DS, 0).unwrap();
        let signer = keyring.signer().unwrap();
        for _ in 0..segments {
            let spec = LogSpec {
                kind: LogKind::Piece,
                timeline: 1,
                start: self.end,
                end: self.end + SEG,
                prev: self.prev,
                captured_at_ns: now_unix_nanos(),
                system_id: 7,
            };
            let payload = vec![(self.end / SEG) as u8; SEG as usize];
            let (id, _) =
                wal::put(self.vault.site().as_ref(), &keys, &signer, &spec, &payload).unwrap();
            ledger::append(
                self.vault.site().as_ref(),
                &signer,
                DS,
                self.head().as_ref(),
                Event::LogRangeAdded {
                    manifest: id,
                    timeline: 1,
                    start: self.end,
                    end: self.end + SEG,
                    captured_at_ns: now_unix_nanos(),
                    history: None,
                },
            )
            .unwrap();
            self.prev = Some(id);
            self.end += SEG;
        }
    }

    /// A base backup starting 8 KiB into the current segment (a small stream as its data).
    fn base_backup(&self) -> u64 {
        let keyring = self.keyring();
        let mut session = BackupSession::begin(&self.vault, &keyring, DS).unwrap();
        let start = self.end - SEG + 8192;
        session.set_wal_start(WalStart {
            timeline: 1,
            lsn: start,
        });
        let data = format!("data directory at {start}");
        let (content, length) = session
            .store_reader(Cursor::new(data.into_bytes()), &Silent)
            .unwrap_or_else(|_| panic!("stored"));
        let node = Node {
            name: b"data".to_vec(),
            kind: NodeKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            size: length,
            content,
            subtree: None,
            target: None,
        };
        let root = session
            .store_blob(BlobKind::Tree, Tree { nodes: vec![node] }.encode())
            .unwrap();
        session
            .finish(
                VersionKind::Tree,
                root,
                vec!["test".into()],
                VersionStats::default(),
            )
            .unwrap();
        start
    }

    fn prune(&self, keep_last: u32) {
        prune::apply_retention(
            &self.vault,
            &self.keyring(),
            DS,
            &RetentionPolicy {
                keep_last,
                ..Default::default()
            },
            now_unix_nanos(),
        )
        .unwrap();
    }

    /// Garbage collection twice, the grace period (1 s) apart: condemn, then delete.
    fn gc(&self) -> gc::GcReport {
        let collector = gc::Collector::new(
            self.root.writer_signing_key(0),
            &self.dir.path().join("gc-state"),
            &self.vault.config().vault_id,
        );
        let options = GcOptions::with_grace(1);
        gc::collect_garbage(&self.vault, &collector, &options, now_unix_nanos()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        gc::collect_garbage(&self.vault, &collector, &options, now_unix_nanos()).unwrap()
    }

    /// The start positions of the stored WAL objects.
    fn stored(&self) -> Vec<u64> {
        let listing = wal::list(self.vault.site().as_ref(), DS).unwrap();
        let mut out: Vec<u64> = listing
            .pieces
            .iter()
            .chain(&listing.segments)
            .map(|o| o.name.start)
            .collect();
        out.sort();
        out
    }

    /// A sealing credential the root issued (add versions, stream WAL; no delete).
    fn sealing_key(&self) -> ed25519_dalek::SigningKey {
        let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
        ledger::append(
            self.vault.site().as_ref(),
            &self.root.root_signing_key(),
            DS,
            self.head().as_ref(),
            Event::SignerAdded {
                key: key.verifying_key().to_bytes(),
                role: "thief".into(),
                rights: Right::sealing(false),
            },
        )
        .unwrap();
        key
    }

    fn fetch(&self, segno: u64) -> Result<fetch::Fetched, PgError> {
        let dest = self.dir.path().join("fetched");
        fetch::fetch(
            &self.vault,
            &self.keyring(),
            DS,
            &segment_file_name(1, segno),
            &dest,
            &FetchOptions::default(),
        )
    }
}

/// Three cycles of (stream 2 segments, base backup); keep 2.
fn cycles(w: &mut World) -> Vec<u64> {
    let mut starts = Vec::new();
    for _ in 0..3 {
        w.stream(2);
        starts.push(w.base_backup());
    }
    w.stream(1);
    starts
}

#[test]
fn wal_below_the_oldest_kept_base_backup_is_collected_and_the_rest_stays() {
    let mut w = World::new(4);
    let starts = cycles(&mut w);
    assert_eq!(w.stored().len(), 7);
    // Before retention deletes anything, the first base backup keeps everything from its
    // segment on; the segment streamed before it restores nothing.
    let report = w.gc();
    let wal_deleted = |r: &gc::GcReport| r.deleted.iter().filter(|p| p.starts_with("wal/")).count();
    assert_eq!(wal_deleted(&report), 1, "{:?}", report.deleted);
    assert_eq!(
        w.stored().first().copied(),
        Some(starts[0] - starts[0] % SEG)
    );
    w.prune(2);
    let report = w.gc();
    let cutoff = starts[1] - starts[1] % SEG;
    assert_eq!(wal_deleted(&report), 2, "{:?}", report.deleted);
    assert!(w.stored().iter().all(|s| *s >= cutoff), "{:?}", w.stored());
    assert_eq!(w.stored().len(), 4);

    // verify: nothing missing below the cut-off, the chain's collected start is not a problem.
    let v = wal::verify(&w.vault, DS).unwrap();
    assert!(v.is_ok(), "{:?} {:?}", v.problems, v.gaps);
    assert_eq!(v.cutoff.lsn, cutoff);
    // wal-fetch below the cut-off: collected by retention, not lost.
    let e = w.fetch(1).unwrap_err();
    assert!(matches!(e, PgError::WalCollected { .. }), "{e}");
    assert!(e.to_string().contains("collected by WAL retention"), "{e}");
    // At the cut-off, the WAL is served.
    assert_eq!(w.fetch(cutoff / SEG).unwrap(), fetch::Fetched::Complete);

    // A segment above the cut-off that the site lost is still a gap / damage.
    let lost = w
        .vault
        .site()
        .list(&format!("wal/{DS}/"))
        .unwrap()
        .into_iter()
        .find(|i| i.path.contains(&format!("/p/{:016x}-", cutoff + SEG)))
        .unwrap();
    w.vault.site().delete(&lost.path).unwrap();
    let v = wal::verify(&w.vault, DS).unwrap();
    assert!(
        !v.is_ok(),
        "a lost segment above the cut-off went unreported"
    );
    let e = w.fetch(cutoff / SEG + 1).unwrap_err();
    assert!(matches!(e, PgError::WalLost { .. }), "{e}");
}

#[test]
fn a_stolen_sealing_credential_cannot_raise_the_cut_off() {
    let mut w = World::new(4);
    let starts = cycles(&mut w);
    w.prune(2);
    let thief = w.sealing_key();
    // Forged base backups: far ahead on a timeline of their own, one dated before the others,
    // each naming a real manifest (so that they are versions gc follows like any other).
    let manifest = w
        .vault
        .history(DS)
        .unwrap()
        .iter()
        .rev()
        .find_map(|r| match &r.entry.event {
            Event::VersionAdded { manifest, .. } => Some(*manifest),
            _ => None,
        })
        .unwrap();
    for (timeline, lsn, captured_at_ns) in [(9, 100 * SEG, 1), (1, 200 * SEG, now_unix_nanos())] {
        ledger::append(
            w.vault.site().as_ref(),
            &thief,
            DS,
            w.head().as_ref(),
            Event::VersionAdded {
                manifest,
                kind: VersionKind::Tree,
                captured_at_ns,
                stats: VersionStats::default(),
                wal_start: Some(WalStart { timeline, lsn }),
            },
        )
        .unwrap();
    }
    // A deletion of both real kept base backups, signed by the thief (no delete right): noise.
    let real: Vec<u64> = w
        .vault
        .history(DS)
        .unwrap()
        .iter()
        .filter(|r| r.entry.signer != thief.verifying_key().to_bytes())
        .filter(|r| matches!(r.entry.event, Event::VersionAdded { .. }))
        .map(|r| r.entry.seq)
        .collect();
    let _ = ledger::append(
        w.vault.site().as_ref(),
        &thief,
        DS,
        w.head().as_ref(),
        Event::VersionsDeleted {
            seqs: real,
            reason: "forged".into(),
            policy: None,
            as_of_ns: None,
            approvals: Vec::new(),
        },
    );
    let history = w.vault.history(DS).unwrap();
    // Without the `delete` right it is at most a no-op (refused): it deletes nothing.
    assert!(history.iter().all(|r| r.refused.is_some()
        || !matches!(&r.entry.event, Event::VersionsDeleted { reason, .. } if reason == "forged")));
    w.gc();
    let cutoff = starts[1] - starts[1] % SEG;
    assert_eq!(w.vault.wal_cutoff(&history).lsn, cutoff);
    assert_eq!(
        w.stored().first().copied(),
        Some(cutoff),
        "{:?}",
        w.stored()
    );
    assert_eq!(w.stored().len(), 4);
}

#[test]
fn a_vault_of_format_3_collects_no_wal_by_the_cut_off() {
    let mut w = World::new(3);
    cycles(&mut w);
    w.prune(2);
    w.gc();
    assert_eq!(w.stored().len(), 7, "{:?}", w.stored());
    // Its base backups' entries do not carry the start (its programs would not know it).
    assert!(w.vault.history(DS).unwrap().iter().all(|r| !matches!(
        r.entry.event,
        Event::VersionAdded {
            wal_start: Some(_),
            ..
        }
    )));
}
