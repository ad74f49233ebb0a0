//! The backup pipeline (producers → sealers → uploaders, `engine::writer`): chunks are handed
//! over in batches, in order; memory stays bounded however large the source; a failure in any
//! stage surfaces once, from `finish`, and leaves no version; a stream that breaks mid-way
//! still hands over every chunk it marked pending.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::writer::{BackupSession, StoreError, BATCH_BYTES, QUEUED_BATCHES};
use embassy_core::format::chunker::{Chunking, PG_PAGE};
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_testkit::memory::{Failure, MemorySite, Op};

const DATASET: &str = "pipeline";

fn vault_on(site: Arc<dyn Site>) -> (Vault, Keyring) {
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    (vault, keyring)
}

/// `pages` distinct, incompressible 8 KiB pages (page `i` is the same in every call).
fn pages(range: std::ops::Range<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(range.len() * PG_PAGE as usize);
    for i in range {
        let mut h = blake3::Hasher::new();
        h.update(&i.to_le_bytes());
        let mut page = vec![0u8; PG_PAGE as usize];
        h.finalize_xof().fill(&mut page);
        out.extend_from_slice(&page);
    }
    out
}

fn file_node(name: &str, content: Vec<ChunkId>, size: u64) -> Node {
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        size,
        content,
        subtree: None,
        target: None,
    }
}

/// Finishes a version of the given files (name, chunk ids, size).
fn finish(session: BackupSession, files: Vec<Node>) -> embassy_core::Result<Version> {
    let root = session.store_blob(BlobKind::Tree, Tree { nodes: files }.encode())?;
    session.finish(VersionKind::Tree, root, vec![], VersionStats::default())
}

/// A file's bytes read back from a version.
fn read_back(vault: &Vault, keyring: &Keyring, version: &Version, name: &str) -> Vec<u8> {
    let reader = VersionReader::open_with(vault.site().clone(), keyring, version).unwrap();
    let node = reader
        .root()
        .unwrap()
        .nodes
        .into_iter()
        .find(|n| n.name == name.as_bytes())
        .unwrap();
    let mut out = Vec::new();
    for id in &node.content {
        out.extend(reader.read_blob(id).unwrap());
    }
    out
}

fn store_pages(session: &BackupSession, data: &[u8]) -> (Vec<ChunkId>, u64) {
    session
        .store_reader_with(data, Chunking::Aligned(PG_PAGE), &Silent)
        .map_err(|e| format!("{e:?}"))
        .unwrap()
}

/// Pages (PostgreSQL relation files) go to the sealers a batch at a time, not one message per
/// page (which kept the queue a few pages deep and both cores waiting on each other), and
/// their ids stay in file order, duplicates within a batch stored once.
#[test]
fn pages_are_handed_over_in_batches_and_in_order() {
    let site = Arc::new(MemorySite::default());
    let (vault, keyring) = vault_on(site);
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    // 4 MiB of distinct pages, then the first 100 pages again (already pending).
    let n = (4 * BATCH_BYTES / PG_PAGE as usize) as u32;
    let mut data = pages(0..n);
    data.extend(pages(0..100));
    let (ids, len) = store_pages(&session, &data);
    assert_eq!(len, data.len() as u64);
    assert_eq!(ids.len(), n as usize + 100);
    assert_eq!(ids[..100], ids[n as usize..]);
    let batches = session.handoffs();
    assert!(
        batches <= (4 + 1) as u64,
        "{} pages went to the sealers in {batches} hand-offs: they should go in batches of \
         {BATCH_BYTES} bytes",
        n + 100
    );
    let version = finish(session, vec![file_node("rel", ids, len)]).unwrap();
    assert_eq!(
        version.stats.new_chunks,
        n as u64 + 1,
        "each page once, and the tree"
    );
    assert!(read_back(&vault, &keyring, &version, "rel") == data);
}

/// A site whose puts take a while: the uploaders fall behind, and the sealers and producers
/// must wait instead of queueing without end.
#[derive(Debug)]
struct SlowSite(MemorySite);

impl Site for SlowSite {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        if path.starts_with("packs/") {
            std::thread::sleep(Duration::from_millis(40));
        }
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.0.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.0.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.0.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.0.delete(path)
    }
}

/// However large the source, what waits between the producers and the packs is bounded: the
/// queue to the sealers, a batch per sealer, and a batch per blocked producer.
#[test]
fn memory_between_the_stages_stays_bounded_with_a_slow_site() {
    let (vault, keyring) = vault_on(Arc::new(SlowSite(MemorySite::default())));
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let bound = ((workers * (QUEUED_BATCHES + 1) + 1) * BATCH_BYTES) as u64;
    // Packs of 16 MiB; many times the bound in pages, so that an unbounded queue would show.
    let n = ((12 * bound).min(96 << 20) / PG_PAGE as u64) as u32;
    let data = pages(0..n);
    let (ids, len) = store_pages(&session, &data);
    let peak = session.peak_queued_bytes();
    assert!(peak > 0);
    assert!(
        peak <= bound,
        "{peak} bytes of chunks waited for the sealers at once; at most {bound} may"
    );
    let version = finish(session, vec![file_node("big", ids, len)]).unwrap();
    assert!(read_back(&vault, &keyring, &version, "big") == data);
}

/// A pack that cannot be stored fails the backup once, with the site's own error, from
/// `finish`; no manifest and no version are recorded; a rerun stores the rest and restores.
#[test]
fn a_failed_pack_put_surfaces_once_and_leaves_no_version() {
    let site = Arc::new(MemorySite::default());
    let (vault, keyring) = vault_on(site.clone());
    let data = pages(0..(40 * BATCH_BYTES / PG_PAGE as usize) as u32);
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    site.fail_next(Op::Put, 1, Failure::Permanent);
    // The stream may end before or after the sealers notice: either way it stops cleanly.
    let stored = session.store_reader_with(&data[..], Chunking::Aligned(PG_PAGE), &Silent);
    // Whichever way the stream ended, the tree may be refused too ("backup stopped"): the
    // session's own failure is what `finish` reports (the Ok path used to stop at the tree's
    // refusal, under load).
    let tree = match stored {
        Ok((ids, len)) => Tree {
            nodes: vec![file_node("f", ids, len)],
        }
        .encode(),
        Err(StoreError::Vault(_)) => Tree::default().encode(),
        Err(StoreError::Read(e)) => panic!("reading a slice failed: {e}"),
    };
    let root = session
        .store_blob(BlobKind::Tree, tree)
        .unwrap_or(ChunkId([0; 32]));
    let error = session
        .finish(VersionKind::Tree, root, vec![], VersionStats::default())
        .unwrap_err();
    let text = error.to_string();
    assert_eq!(
        text.matches("injected by the test").count(),
        1,
        "the site's failure, once: {text}"
    );
    assert!(!text.contains("backup stopped"), "the cause itself: {text}");
    assert!(!error.is_integrity(), "an outage, not damage: {text}");
    assert!(vault.versions(DATASET).unwrap().is_empty());
    assert!(site
        .list(&format!("manifests/{DATASET}/"))
        .unwrap()
        .is_empty());

    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    let (ids, len) = store_pages(&session, &data);
    let version = finish(session, vec![file_node("f", ids, len)]).unwrap();
    assert_eq!(vault.versions(DATASET).unwrap().len(), 1);
    assert!(read_back(&vault, &keyring, &version, "f") == data);
}

/// Yields `data`, then fails.
struct Breaks<'a>(&'a [u8]);

impl Read for Breaks<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = out.len().min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// A stream that breaks half-way reports the read error, yet the chunks it had marked as
/// pending still reach the packs: another file of the same version naming them (a PostgreSQL
/// base backup stores files one after another in one session) reads back whole.
#[test]
fn a_broken_stream_still_hands_over_what_it_marked_pending() {
    let site = Arc::new(MemorySite::default());
    let (vault, keyring) = vault_on(site);
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    // The chunker reads ~1 MiB at a time and cuts what it read before reading on: the first
    // read fills one batch and starts the next, which is still the stream's own at the break.
    let head = pages(0..(BATCH_BYTES / PG_PAGE as usize * 3 / 2) as u32);
    match session.store_reader_with(Breaks(&head), Chunking::Aligned(PG_PAGE), &Silent) {
        Err(StoreError::Read(e)) => assert!(e.to_string().contains("went away")),
        other => panic!("expected the read error, got {:?}", other.map(|r| r.1)),
    }
    let (ids, len) = store_pages(&session, &head);
    let version = finish(session, vec![file_node("again", ids, len)]).unwrap();
    assert!(read_back(&vault, &keyring, &version, "again") == head);
}

/// A session dropped before `finish` (an interrupted backup) records no version; what it
/// stored is indexed, so the rerun stores none of it again.
#[test]
fn an_interrupted_session_leaves_no_version_and_a_rerun_reuses_its_packs() {
    let site = Arc::new(MemorySite::default());
    let (vault, keyring) = vault_on(site);
    let data = pages(0..(3 * BATCH_BYTES / PG_PAGE as usize) as u32);
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    store_pages(&session, &data);
    drop(session);
    assert!(vault.versions(DATASET).unwrap().is_empty());

    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    let (ids, len) = store_pages(&session, &data);
    assert_eq!(session.handoffs(), 0, "every page was already stored");
    let version = finish(session, vec![file_node("f", ids, len)]).unwrap();
    assert_eq!(version.stats.new_chunks, 1, "only the tree is new");
    assert!(read_back(&vault, &keyring, &version, "f") == data);
}
