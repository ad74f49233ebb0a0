//! Delta blobs (format 7, issue 18 "smaller vaults"): a changed PostgreSQL page is stored as a
//! delta against the same page of the previous version (depth 1: the base is always a full
//! blob). Round trip byte for byte, depth 1 over several days, a hostile site serving another
//! base, garbage collection keeping a delta's base while its version is kept and collecting it
//! after, and vaults of format 5 getting no deltas. Against real local-folder sites.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions};
use embassy_core::engine::prune;
use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::verify;
use embassy_core::engine::writer::{BackupSession, DeltaBases};
use embassy_core::format::config::{now_unix_nanos, VaultConfig};
use embassy_core::format::layout;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::{BlobEntry, BlobKind};
use embassy_core::format::tree::Tree;
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::id::ChunkId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_sites::LocalSite;
use embassy_sources::files::{self, RestoreOptions};

const PAGE: usize = 8192;
const DS: &str = "pg";
const HEAP: &str = "base/16384/16385";

/// A heap-like page: a header with an "LSN", then tuples of semi-random and text bytes.
fn page(seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut p = vec![0u8; PAGE];
    for (i, b) in p.iter_mut().enumerate() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = if i % 2 == 0 {
            (s & 0xff) as u8
        } else {
            b'a' + (i % 7) as u8
        };
    }
    p
}

/// A data directory (with `PG_VERSION`, so its relation files are cut in pages) whose heap
/// holds `pages` pages.
fn make_data_dir(root: &Path, pages: usize) -> PathBuf {
    let db = root.join("db");
    fs::create_dir_all(db.join("base/16384")).unwrap();
    fs::create_dir_all(db.join("global")).unwrap();
    fs::write(db.join("PG_VERSION"), "15\n").unwrap();
    fs::write(db.join("global/1262"), page(7)).unwrap();
    let mut heap = Vec::with_capacity(pages * PAGE);
    for i in 0..pages {
        heap.extend_from_slice(&page(1000 + i as u64));
    }
    fs::write(db.join(HEAP), &heap).unwrap();
    db
}

/// Changes pages `which` in place the way a day of updates does: a new LSN in the header and
/// a tuple of 64 bytes rewritten in the middle (a different one each round).
fn update_pages(file: &Path, which: impl Iterator<Item = usize>, round: u64) {
    let f = fs::OpenOptions::new().write(true).open(file).unwrap();
    for i in which {
        let at = (i * PAGE) as u64;
        f.write_all_at(&(round * 1_000_003 + i as u64).to_le_bytes(), at)
            .unwrap();
        let tuple: Vec<u8> = (0..64u64)
            .map(|k| (round.wrapping_mul(31) ^ k ^ i as u64) as u8)
            .collect();
        f.write_all_at(&tuple, at + 2048 + round * 128).unwrap();
    }
}

/// Replaces pages `which` with unrelated random bytes (nothing in common with any page before:
/// no delta pays).
fn rewrite_pages(file: &Path, which: impl Iterator<Item = usize>, round: u64) {
    let f = fs::OpenOptions::new().write(true).open(file).unwrap();
    for i in which {
        let mut s = (round * 1_000_000 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let random: Vec<u8> = (0..PAGE)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 32) as u8
            })
            .collect();
        f.write_all_at(&random, (i * PAGE) as u64).unwrap();
    }
}

/// A site that, once `armed`, serves other bytes than stored for one pack: what a hostile or
/// broken site can do (its ranges altered at `at`, whole reads altered too so the reader's
/// fallback to a good whole copy finds none).
#[derive(Debug)]
struct Hostile {
    inner: Arc<dyn Site>,
    armed: Arc<AtomicBool>,
    target: Arc<std::sync::Mutex<Option<(String, u64)>>>,
    /// Ranged reads of packs served (requests, as an S3 site would count GETs).
    pack_ranges: Arc<AtomicU64>,
}

impl Hostile {
    fn alter(&self, path: &str, offset: u64, mut bytes: Vec<u8>) -> Vec<u8> {
        if !self.armed.load(Ordering::SeqCst) {
            return bytes;
        }
        if let Some((p, at)) = self.target.lock().unwrap().clone() {
            if p == path && at >= offset && at < offset + bytes.len() as u64 {
                bytes[(at - offset) as usize] ^= 0x55;
            }
        }
        bytes
    }
}

impl Site for Hostile {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.inner.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        Ok(self.alter(path, 0, self.inner.get(path)?))
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        if path.starts_with(&layout::packs_prefix(DS)) {
            self.pack_ranges.fetch_add(1, Ordering::SeqCst);
        }
        Ok(self.alter(path, offset, self.inner.get_range(path, offset, len)?))
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.inner.delete(path)
    }
}

struct Setup {
    dir: tempfile::TempDir,
    db: PathBuf,
    vault: Vault,
    root: RootSecret,
    armed: Arc<AtomicBool>,
    target: Arc<std::sync::Mutex<Option<(String, u64)>>>,
    pack_ranges: Arc<AtomicU64>,
}

impl Setup {
    fn new(pages: usize, format_version: Option<u32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let target = Arc::new(std::sync::Mutex::new(None));
        let pack_ranges = Arc::new(AtomicU64::new(0));
        let site: Arc<dyn Site> = Arc::new(Hostile {
            inner: Arc::new(LocalSite::new(dir.path().join("site")).unwrap()),
            armed: armed.clone(),
            target: target.clone(),
            pack_ranges: pack_ranges.clone(),
        });
        let root = RootSecret::generate();
        let mut config = VaultConfig::new(&root);
        config.pack_target_bytes = 256 * 1024;
        if let Some(v) = format_version {
            config.format_version = v;
        }
        config.create(site.as_ref(), &root).unwrap();
        let vault = Vault::open(site).unwrap();
        let db = make_data_dir(dir.path(), pages);
        Setup {
            dir,
            db,
            vault,
            root,
            armed,
            target,
            pack_ranges,
        }
    }

    fn keyring(&self) -> Keyring {
        Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap()
    }

    fn heap(&self) -> PathBuf {
        self.db.join(HEAP)
    }

    fn backup(&self) -> Version {
        files::backup(
            &self.vault,
            &self.keyring(),
            DS,
            std::slice::from_ref(&self.db),
            &Silent,
        )
        .unwrap()
        .version
    }

    fn reader(&self, v: &Version) -> VersionReader {
        VersionReader::open_with(self.vault.site().clone(), &self.keyring(), v).unwrap()
    }

    /// Restores `v` into a fresh folder; returns the heap's bytes.
    fn try_restore(&self, v: &Version) -> embassy_core::Result<Vec<u8>> {
        let target = self
            .dir
            .path()
            .join(format!("restored-{}-{}", v.number, now_unix_nanos()));
        files::restore(
            &self.reader(v),
            &target,
            &RestoreOptions::default(),
            &Silent,
        )?;
        Ok(fs::read(target.join(HEAP)).unwrap())
    }

    /// Where `v`'s indexes (or the repack indexes standing in for them) map chunk `id`.
    fn mappings(&self, v: &Version, id: &ChunkId) -> Vec<(String, BlobEntry)> {
        self.reader(v)
            .mappings(id)
            .into_iter()
            .map(|m| (layout::pack(DS, &m.pack), m.blob))
            .collect()
    }

    /// The full copy of chunk `id` in `v`: its pack and entry.
    fn full_copy(&self, v: &Version, id: &ChunkId) -> (String, BlobEntry) {
        self.mappings(v, id)
            .into_iter()
            .find(|(_, e)| e.kind == BlobKind::Data)
            .expect("a delta's base is a full blob in the version's own indexes")
    }

    /// The heap's deltas in `v`: (page number, entry) for each page stored only as a delta.
    fn heap_deltas(&self, v: &Version) -> Vec<(usize, BlobEntry)> {
        let reader = self.reader(v);
        let db = reader.root().unwrap();
        let base = reader
            .read_tree(&db.find(b"base").unwrap().subtree.unwrap())
            .unwrap();
        let oid = reader
            .read_tree(&base.find(b"16384").unwrap().subtree.unwrap())
            .unwrap();
        let heap = oid.find(b"16385").unwrap();
        heap.content
            .iter()
            .enumerate()
            .filter_map(|(i, id)| {
                let all = reader.mappings(id);
                (!all.is_empty() && all.iter().all(|m| m.blob.kind == BlobKind::Delta))
                    .then(|| (i, all[0].blob))
            })
            .collect()
    }

    fn verifies(&self) {
        let keyless = verify::verify(&self.vault, None, &Silent).unwrap();
        assert!(keyless.is_ok(), "keyless: {:?}", keyless.problems);
        let deep = verify::verify(&self.vault, Some(&self.keyring()), &Silent).unwrap();
        assert!(deep.is_ok(), "deep: {:?}", deep.problems);
    }

    fn keep_newest(&self) {
        let policy = RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        };
        let r = prune::apply_retention(&self.vault, &self.keyring(), DS, &policy, now_unix_nanos())
            .unwrap();
        assert!(!r.deleted.is_empty());
    }

    fn gc(&self, now_ns: i64) -> gc::GcReport {
        let collector = gc::Collector::new(
            self.keyring().signer().unwrap(),
            &self.dir.path().join("gc-state"),
            &self.vault.config().vault_id,
        )
        .with_keyring(Arc::new(self.keyring()));
        let options = GcOptions {
            grace_secs: 1,
            clock_skew_secs: 1,
            max_unused_percent: 0,
            ..Default::default()
        };
        let report = gc::collect_garbage(&self.vault, &collector, &options, now_ns).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        report
    }

    fn holds(&self, path: &str) -> bool {
        self.vault
            .site()
            .list(path)
            .unwrap()
            .iter()
            .any(|i| i.path == path)
    }
}

fn after_grace() -> i64 {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    now_unix_nanos()
}

#[test]
fn changed_pages_are_stored_as_deltas_of_depth_one_and_restore_byte_for_byte() {
    let pages = 256;
    let s = Setup::new(pages, None);
    let day0 = fs::read(s.heap()).unwrap();
    let v1 = s.backup();
    assert!(s.heap_deltas(&v1).is_empty(), "a first backup has no base");

    // Day 1: 40 pages change a little.
    let changed: Vec<usize> = (0..40).map(|k| (k * 37 + 5) % pages).collect();
    update_pages(&s.heap(), changed.iter().copied(), 1);
    let day1 = fs::read(s.heap()).unwrap();
    let v2 = s.backup();
    let deltas = s.heap_deltas(&v2);
    assert_eq!(deltas.len(), changed.len(), "every changed page is a delta");
    let day0_ids: Vec<ChunkId> = {
        let keys = s.keyring().dataset(DS).unwrap();
        day0.chunks(PAGE).map(|p| keys.chunk_id(p)).collect()
    };
    for (i, e) in &deltas {
        assert!(changed.contains(i));
        assert_eq!(
            e.base,
            Some(day0_ids[*i]),
            "page {i}: based on the same page of day 0"
        );
    }
    // A page compressed alone takes about half its size here; its delta far less.
    println!(
        "day 1: {} bytes stored for {} changed pages",
        v2.stats.new_bytes_stored,
        changed.len()
    );
    assert!(
        v2.stats.new_bytes_stored < (changed.len() * PAGE / 8) as u64 + 20_000,
        "{} bytes stored for {} changed pages",
        v2.stats.new_bytes_stored,
        changed.len()
    );

    // Day 2: the same pages change again. Their day-1 versions are deltas, so the new ones are
    // stored against day 0's full pages (depth 1), never against a delta.
    update_pages(&s.heap(), changed.iter().copied(), 2);
    let day2 = fs::read(s.heap()).unwrap();
    let v3 = s.backup();
    let deltas3 = s.heap_deltas(&v3);
    assert_eq!(deltas3.len(), changed.len());
    for (i, e) in &deltas3 {
        assert_eq!(
            e.base,
            Some(day0_ids[*i]),
            "page {i}: against the full day-0 page"
        );
        s.full_copy(&v3, &e.base.unwrap());
    }

    // Every version restores byte for byte (the restore reads each pack once, bases included).
    assert!(s.try_restore(&v1).unwrap() == day0, "day 0 restored");
    assert!(s.try_restore(&v2).unwrap() == day1, "day 1 restored");
    assert!(s.try_restore(&v3).unwrap() == day2, "day 2 restored");
    // One blob at a time (what mount, diff and streams use).
    let reader = s.reader(&v3);
    for (i, e) in &deltas3 {
        assert!(reader.read_blob(&e.id).unwrap() == day2[i * PAGE..(i + 1) * PAGE]);
    }
    // Keyless and deep verification (every delta applied to its base and hashed) pass.
    s.verifies();
}

#[test]
fn a_backup_reads_the_bases_of_changed_pages_together_not_one_request_per_page() {
    let pages = 512;
    let s = Setup::new(pages, None);
    s.backup();
    // 60 scattered pages change: their bases lie in the first backup's few packs.
    let changed: Vec<usize> = (0..60).map(|k| (k * 53 + 3) % pages).collect();
    update_pages(&s.heap(), changed.iter().copied(), 1);
    let packs = s
        .vault
        .site()
        .list(&layout::packs_prefix(DS))
        .unwrap()
        .len() as u64;
    s.pack_ranges.store(0, Ordering::SeqCst);
    let v2 = s.backup();
    let ranges = s.pack_ranges.load(Ordering::SeqCst);
    assert_eq!(
        s.heap_deltas(&v2).len(),
        changed.len(),
        "every changed page is a delta"
    );
    // A header and a run or two of blobs per pack of the first backup (one request per changed
    // page, as before, made 78 here).
    assert!(
        ranges <= 3 * packs && 3 * packs < changed.len() as u64,
        "{ranges} ranged pack reads for {} changed pages in {packs} packs",
        changed.len()
    );
}

/// A writer that names a page of the previous version as a delta's base but makes the delta
/// against other bytes (a holder of the dataset's keys that lies, or a bug).
struct LyingBases {
    base: ChunkId,
    plain: Vec<u8>,
}

impl DeltaBases for LyingBases {
    fn base_of(&self, page: usize) -> Option<ChunkId> {
        (page == 0).then_some(self.base)
    }
    fn read_bases(
        &self,
        bases: &HashSet<ChunkId>,
    ) -> embassy_core::Result<HashMap<ChunkId, Vec<u8>>> {
        Ok(bases.iter().map(|b| (*b, self.plain.clone())).collect())
    }
}

#[test]
fn deep_verify_finds_a_delta_made_against_other_bytes_than_its_base() {
    let s = Setup::new(8, None);
    s.backup();
    s.verifies();
    let keyring = s.keyring();
    let day0 = fs::read(s.heap()).unwrap();
    let base = keyring.dataset(DS).unwrap().chunk_id(&day0[..PAGE]);
    let mut changed = day0[..PAGE].to_vec();
    changed[100..140].fill(7);
    // The delta is made against these bytes, not against the base its entry names.
    let mut other = changed.clone();
    other[4000..4016].fill(1);
    let session = BackupSession::begin(&s.vault, &keyring, DS).unwrap();
    let lying = LyingBases { base, plain: other };
    session
        .store_pages(&changed[..], PAGE as u32, &lying, &Silent)
        .unwrap();
    let tree = session
        .store_blob(BlobKind::Tree, Tree::default().encode())
        .unwrap();
    session
        .finish(VersionKind::Tree, tree, vec![], VersionStats::default())
        .unwrap();
    let keyless = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(keyless.is_ok(), "keyless: {:?}", keyless.problems);
    let deep = verify::verify(&s.vault, Some(&keyring), &Silent).unwrap();
    assert!(
        deep.problems
            .iter()
            .any(|p| p.contains(&base.short()) && p.contains("delta blob")),
        "deep verify names the delta and its base: {:?}",
        deep.problems
    );
}

#[test]
fn a_site_serving_another_base_is_refused_with_a_clear_error() {
    let s = Setup::new(64, None);
    s.backup();
    update_pages(&s.heap(), [3usize, 9].into_iter(), 1);
    let v2 = s.backup();
    let deltas = s.heap_deltas(&v2);
    assert_eq!(deltas.len(), 2);
    // The site alters the stored bytes of page 3's base (a day-0 page) wherever it serves them.
    let base = deltas[0].1.base.unwrap();
    let (pack, entry) = s.full_copy(&v2, &base);
    *s.target.lock().unwrap() = Some((pack.clone(), u64::from(entry.offset) + 20));
    s.armed.store(true, Ordering::SeqCst);
    let err = s.try_restore(&v2).unwrap_err().to_string();
    assert!(
        err.contains(&pack) && err.contains(&base.short()),
        "the error names the pack and the base: {err}"
    );
    assert!(
        err.contains("altered") || err.contains("does not hash"),
        "the error says why: {err}"
    );
    let reader = s.reader(&v2);
    let one = reader.read_blob(&deltas[0].1.id).unwrap_err().to_string();
    assert!(one.contains(&base.short()), "{one}");
    // Deep verification reports it as damage.
    let deep = verify::verify(&s.vault, Some(&s.keyring()), &Silent).unwrap();
    assert!(!deep.is_ok(), "deep verify must fail");
    s.armed.store(false, Ordering::SeqCst);
    s.verifies();
}

#[test]
fn gc_keeps_a_deltas_base_while_its_version_is_kept_and_collects_it_after() {
    let pages = 64;
    let s = Setup::new(pages, None);
    s.backup();
    // Day 1: every page changes a little, so each day-0 page is needed only as a base.
    update_pages(&s.heap(), 0..pages, 1);
    let day1 = fs::read(s.heap()).unwrap();
    let v2 = s.backup();
    assert_eq!(s.heap_deltas(&v2).len(), pages);
    let bases: Vec<(String, BlobEntry)> = s
        .heap_deltas(&v2)
        .iter()
        .map(|(_, e)| s.full_copy(&v2, &e.base.unwrap()))
        .collect();
    let base_packs: std::collections::BTreeSet<String> =
        bases.iter().map(|(p, _)| p.clone()).collect();
    // Version 1 goes; version 2 is kept: two runs of gc (condemn, then delete after the grace
    // period), repacking whatever is partly dead.
    s.keep_newest();
    s.gc(now_unix_nanos());
    s.gc(after_grace());
    assert!(
        s.try_restore(&v2).unwrap() == day1,
        "the kept version still restores: its bases were kept"
    );
    s.verifies();

    // Day 2: every page is rewritten with unrelated content (stored whole: no delta pays), and
    // version 2 goes. Nothing needs the day-0 pages any more: collected.
    rewrite_pages(&s.heap(), 0..pages, 2);
    let day2 = fs::read(s.heap()).unwrap();
    let v3 = s.backup();
    assert!(s.heap_deltas(&v3).is_empty());
    // Where the bases live now (a repack may have moved them).
    let still_based: Vec<String> = bases
        .iter()
        .map(|(_, b)| s.full_copy(&v2, &b.id).0)
        .collect();
    s.keep_newest();
    s.gc(now_unix_nanos());
    s.gc(after_grace());
    for p in base_packs.iter().chain(still_based.iter()) {
        assert!(
            !s.holds(p),
            "{p}: the bases' pack is collected once no kept version needs it"
        );
    }
    assert!(s.try_restore(&v3).unwrap() == day2);
    s.verifies();
}

#[test]
fn a_format_5_vault_gets_no_deltas() {
    let s = Setup::new(64, Some(5));
    s.backup();
    update_pages(&s.heap(), [1usize, 2, 3].into_iter(), 1);
    let day1 = fs::read(s.heap()).unwrap();
    let v2 = s.backup();
    assert!(
        s.heap_deltas(&v2).is_empty(),
        "format 5 programs cannot read deltas"
    );
    assert!(s.try_restore(&v2).unwrap() == day1);
    s.verifies();
}

#[test]
fn an_unchanged_file_of_deltas_keeps_naming_their_bases() {
    // Every page changes, so the bases (day 0's pages, in several packs and indexes) are
    // needed by no chunk of the day-2 version but through the deltas.
    let pages = 256;
    let s = Setup::new(pages, None);
    s.backup();
    update_pages(&s.heap(), 0..pages, 1);
    let day1 = fs::read(s.heap()).unwrap();
    s.backup();
    // Day 2: the heap is unchanged (its pages, deltas among them, are reused without being
    // read); another file changes. The new version must still name the bases' index.
    fs::write(s.db.join("global/1262"), page(8)).unwrap();
    let v3 = s.backup();
    assert_eq!(
        v3.stats.bytes_read, PAGE as u64,
        "only the changed file is read"
    );
    assert_eq!(s.heap_deltas(&v3).len(), pages);
    assert!(s.try_restore(&v3).unwrap() == day1);
    // With every older version gone and collected, it still restores and verifies.
    s.keep_newest();
    s.gc(now_unix_nanos());
    s.gc(after_grace());
    assert!(s.try_restore(&v3).unwrap() == day1);
    s.verifies();
}
