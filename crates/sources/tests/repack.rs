//! Repacking in garbage collection (issue 15 item 6): packs that mix live and dead blobs are
//! rewritten when the dataset's unused space is above `max_unused_percent`, under the same
//! two-phase rules as the rest of gc: new packs and the repack index first, the old packs
//! condemned and deleted by a later run; a backup running meanwhile keeps what it reuses; a run
//! stopped at any step leaves a vault that verifies, restores, and a rerun completes.
//! Against real local-folder sites and real stream backups.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions, GcReport};
use embassy_core::engine::prune;
use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::verify;
use embassy_core::format::config::{now_unix_nanos, ChunkerParams, VaultConfig};
use embassy_core::format::{index, layout, manifest};
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_sites::LocalSite;

const DS: &str = "registry";
const BLOCK: usize = 128 * 1024;

/// A site that refuses puts under `refuse_prefix` while `refusing` is set: a gc run that stops
/// (crashes) just before that step.
#[derive(Debug)]
struct Stopping {
    inner: Arc<dyn Site>,
    refusing: Arc<AtomicBool>,
    refuse_prefix: Arc<std::sync::Mutex<String>>,
}

impl Site for Stopping {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let prefix = self.refuse_prefix.lock().unwrap().clone();
        if self.refusing.load(Ordering::SeqCst) && path.starts_with(&prefix) {
            return Err(SiteError::Permanent {
                site: self.location().into(),
                operation: "put",
                path: path.into(),
                message: "the process was killed here (test)".into(),
            });
        }
        self.inner.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.inner.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.inner.get_range(path, offset, len)
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
    vault: Vault,
    root: RootSecret,
    refusing: Arc<AtomicBool>,
    refuse_prefix: Arc<std::sync::Mutex<String>>,
}

impl Setup {
    /// A vault with small chunks and 256 KiB packs, so a few MiB make many mixed packs.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse_prefix = Arc::new(std::sync::Mutex::new(String::new()));
        let site: Arc<dyn Site> = Arc::new(Stopping {
            inner: Arc::new(LocalSite::new(dir.path().join("site")).unwrap()),
            refusing: refusing.clone(),
            refuse_prefix: refuse_prefix.clone(),
        });
        Self::on(site, dir, refusing, refuse_prefix)
    }

    /// A vault with small chunks and 256 KiB packs made on `site`.
    fn on(
        site: Arc<dyn Site>,
        dir: tempfile::TempDir,
        refusing: Arc<AtomicBool>,
        refuse_prefix: Arc<std::sync::Mutex<String>>,
    ) -> Self {
        let root = RootSecret::generate();
        let mut config = VaultConfig::new(&root);
        config.chunker = ChunkerParams {
            min: 8 * 1024,
            avg: 32 * 1024,
            max: 128 * 1024,
        };
        config.pack_target_bytes = 256 * 1024;
        config.create(site.as_ref(), &root).unwrap();
        let vault = Vault::open(site).unwrap();
        Setup {
            dir,
            vault,
            root,
            refusing,
            refuse_prefix,
        }
    }

    /// [`Setup::new`] on two folder sites `a` and `b` (writes count once one holds them; a
    /// missed write is queued), `b` the one that can refuse.
    fn two_sites() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse_prefix = Arc::new(std::sync::Mutex::new(String::new()));
        let a: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("a")).unwrap());
        let b: Arc<dyn Site> = Arc::new(Stopping {
            inner: Arc::new(LocalSite::new(dir.path().join("b")).unwrap()),
            refusing: refusing.clone(),
            refuse_prefix: refuse_prefix.clone(),
        });
        let site: Arc<dyn Site> = Arc::new(
            embassy_sites::ReplicatedSite::new(vec![a, b], 1)
                .unwrap()
                .with_queue(&dir.path().join("state"))
                .unwrap(),
        );
        Self::on(site, dir, refusing, refuse_prefix)
    }

    fn keyring(&self) -> Keyring {
        Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap()
    }

    /// The collector, with the keyring so that it repacks.
    fn collector(&self) -> gc::Collector {
        gc::Collector::new(
            self.keyring().signer().unwrap(),
            &self.dir.path().join("gc-state"),
            &self.vault.config().vault_id,
        )
        .with_keyring(std::sync::Arc::new(self.keyring()))
    }

    fn gc(&self, max_unused_percent: u8, now_ns: i64) -> GcReport {
        self.try_gc(max_unused_percent, now_ns).unwrap()
    }

    fn try_gc(&self, max_unused_percent: u8, now_ns: i64) -> embassy_core::Result<GcReport> {
        let options = GcOptions {
            grace_secs: 1,
            clock_skew_secs: 1,
            max_unused_percent,
            ..Default::default()
        };
        gc::collect_garbage(&self.vault, &self.collector(), &options, now_ns)
    }

    fn backup(&self, data: Vec<u8>, hook: impl FnMut()) -> Version {
        embassy_sources::stream::backup_reader(
            &self.vault,
            &self.keyring(),
            DS,
            HookedReader {
                data: std::io::Cursor::new(data),
                hook: Some(hook),
            },
            "stdin",
            &Silent,
        )
        .unwrap()
    }

    fn restore(&self, v: &Version) -> Vec<u8> {
        let reader =
            VersionReader::open_with(self.vault.site().clone(), &self.keyring(), v).unwrap();
        let mut out = Vec::new();
        embassy_sources::stream::restore_to(&reader, &mut out, &Silent).unwrap();
        out
    }

    /// Deletes every version but the newest.
    fn keep_newest(&self) {
        let policy = RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        };
        let r = prune::apply_retention(&self.vault, &self.keyring(), DS, &policy, now_unix_nanos())
            .unwrap();
        assert!(!r.deleted.is_empty());
    }

    /// Stored bytes of the dataset's packs, indexes and manifests.
    fn stored(&self) -> u64 {
        ["packs/", "index/", "manifests/"]
            .iter()
            .flat_map(|p| {
                self.vault
                    .site()
                    .list(&format!("{p}{DS}/"))
                    .unwrap()
                    .into_iter()
            })
            .map(|i| i.size)
            .sum()
    }

    fn packs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .vault
            .site()
            .list(&format!("packs/{DS}/"))
            .unwrap()
            .into_iter()
            .map(|i| i.path)
            .collect();
        v.sort();
        v
    }

    /// The indexes the manifest of `v` names and the packs they name: what reading it needs
    /// unless a repack index stands in for them.
    fn needed_by(&self, v: &Version) -> std::collections::BTreeSet<String> {
        let site = self.vault.site();
        let path = layout::manifest(DS, &v.manifest);
        let (header, _) = manifest::decode_header(&path, &site.get(&path).unwrap()).unwrap();
        let mut out = std::collections::BTreeSet::new();
        for i in header.indexes {
            let ipath = layout::index(DS, &i);
            let (ih, _) = index::decode_header(&ipath, &site.get(&ipath).unwrap()).unwrap();
            out.extend(ih.packs.iter().map(|p| layout::pack(DS, p)));
            out.insert(ipath);
        }
        out
    }

    /// Whether the site still stores `path`.
    fn holds(&self, path: &str) -> bool {
        self.vault.site().get(path).is_ok()
    }

    /// Keyless and deep verification both pass.
    fn verifies(&self) {
        let keyless = verify::verify(&self.vault, None, &Silent).unwrap();
        assert!(keyless.is_ok(), "keyless: {:?}", keyless.problems);
        let deep = verify::verify(&self.vault, Some(&self.keyring()), &Silent).unwrap();
        assert!(deep.is_ok(), "deep: {:?}", deep.problems);
    }
}

/// A source that runs `hook` when the backup first reads it: after the session has started and
/// loaded what is stored, before it stores or references anything.
struct HookedReader<F: FnMut()> {
    data: std::io::Cursor<Vec<u8>>,
    hook: Option<F>,
}

impl<F: FnMut()> std::io::Read for HookedReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(mut hook) = self.hook.take() {
            hook();
        }
        self.data.read(buf)
    }
}

/// Incompressible block `n`.
fn block(n: u64) -> Vec<u8> {
    let mut out = vec![0u8; BLOCK];
    let mut s = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in out.iter_mut() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (s >> 56) as u8;
    }
    out
}

/// `count` live blocks (1000..), with a dead block (2000..) after each one `dead_every` says.
fn stream(count: u64, dead: impl Fn(u64) -> bool) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let mut dead_bytes = 0;
    for i in 0..count {
        out.extend(block(1000 + i));
        if dead(i) {
            out.extend(block(2000 + i));
            dead_bytes += BLOCK as u64;
        }
    }
    (out, dead_bytes)
}

fn after_grace() -> i64 {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    now_unix_nanos()
}

#[test]
fn gc_repacks_mixed_packs_and_frees_the_dead_data_of_a_pruned_version() {
    let s = Setup::new();
    // Version 1: live and unique data interleaved, so every pack holds both; version 2 keeps
    // only the live data. Pruning version 1 leaves every pack partly dead.
    let (mixed, dead_bytes) = stream(24, |_| true);
    let (live, _) = stream(24, |_| false);
    s.backup(mixed, || {});
    let v2 = s.backup(live.clone(), || {});
    s.keep_newest();
    let before = s.stored();
    let old_packs = s.packs();

    let first = s.gc(10, now_unix_nanos());
    assert!(!first.repacked.is_empty(), "{first:?}");
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    // Phase 1 writes the new packs and the repack index and condemns the old ones: nothing is
    // deleted yet, and every remaining version restores through the repack index.
    assert!(first.deleted.is_empty());
    for p in &first.repacked {
        assert!(first.condemned.contains(p), "{p} condemned");
    }
    assert!(
        s.restore(&v2) == live,
        "restores byte for byte after phase 1"
    );
    s.verifies();

    let second = s.gc(10, after_grace());
    assert!(second.problems.is_empty(), "{:?}", second.problems);
    for p in &first.repacked {
        assert!(second.deleted.contains(p), "{p} deleted in phase 2");
    }
    let after = s.stored();
    let freed = before.saturating_sub(after);
    println!(
        "repack: stored {before} bytes before, {after} after: freed {freed} of {dead_bytes} dead \
         bytes ({} packs repacked, {} bytes written)",
        first.repacked.len(),
        first.repack_written_bytes
    );
    assert!(
        freed * 10 >= dead_bytes * 9,
        "freed {freed} bytes of {dead_bytes} dead: at least 90 % must go"
    );
    assert!(s.packs().iter().all(|p| !first.repacked.contains(p)));
    assert_ne!(s.packs(), old_packs);
    // The old packs and indexes are gone: the version reads through the repack index alone.
    assert!(
        s.restore(&v2) == live,
        "restores byte for byte after phase 2"
    );
    s.verifies();
    // A third run has nothing left to repack, and a backup of the same data reuses it all.
    let third = s.gc(10, after_grace());
    assert!(third.repacked.is_empty(), "{third:?}");
    let v3 = s.backup(live.clone(), || {});
    assert!(
        v3.stats.new_bytes_stored < 64 * 1024,
        "deduplicates against the repacked packs: {:?}",
        v3.stats
    );
    assert!(s.restore(&v3) == live);
    s.verifies();
}

#[test]
fn packs_below_the_unused_threshold_are_not_rewritten() {
    let s = Setup::new();
    // One dead block among 24 live ones: about 4 % unused, under a 10 % threshold.
    let (mixed, _) = stream(24, |i| i == 5);
    let (live, _) = stream(24, |_| false);
    s.backup(mixed, || {});
    let v2 = s.backup(live.clone(), || {});
    s.keep_newest();
    let packs = s.packs();
    let first = s.gc(10, now_unix_nanos());
    assert!(first.repacked.is_empty(), "{first:?}");
    let second = s.gc(10, after_grace());
    assert!(second.repacked.is_empty(), "{second:?}");
    let kept: Vec<&String> = packs.iter().filter(|p| s.packs().contains(p)).collect();
    assert!(
        !second.deleted.iter().any(|d| d.starts_with("packs/")) || kept.len() + 2 >= packs.len(),
        "only wholly dead packs go"
    );
    // With no unused space allowed, the packs holding the dead block's chunks are rewritten,
    // and only they: a few of the dataset's packs (how many depends on which pack each chunk
    // landed in, which the parallel writer does not fix), never most of them.
    let strict = s.gc(0, after_grace());
    assert!(!strict.repacked.is_empty(), "{strict:?}");
    assert!(
        strict.repacked.len() <= 5 && strict.repacked.len() * 2 < packs.len(),
        "only the packs holding the dead block: {:?} of {} packs",
        strict.repacked,
        packs.len()
    );
    assert!(s.restore(&v2) == live);
    s.verifies();
}

#[test]
fn a_backup_running_during_a_repack_keeps_the_dead_chunks_it_reuses() {
    let s = Setup::new();
    let (mixed, _) = stream(16, |_| true);
    let (live, _) = stream(16, |_| false);
    s.backup(mixed.clone(), || {});
    let v2 = s.backup(live.clone(), || {});
    s.keep_newest();
    // A backup of version 1's data again starts and loads the stored chunks (not condemned yet:
    // it will reuse the dead ones). Meanwhile gc repacks (the live set it copies lacks them),
    // condemns the old packs and, past the grace period, would delete them.
    let mut reports = Vec::new();
    let v3 = s.backup(mixed.clone(), || {
        reports.push(s.gc(10, now_unix_nanos()));
        reports.push(s.gc(10, after_grace()));
    });
    assert!(!reports[0].repacked.is_empty(), "{:?}", reports[0]);
    assert!(reports[1].deleted.iter().all(|p| !p.starts_with("packs/")));
    assert!(
        v3.stats.new_bytes_stored < 512 * 1024,
        "the session reused version 1's chunks: {:?}",
        v3.stats
    );
    // Its version names old indexes the repack condemned (the race is real: what it reuses was
    // condemned under it) and was recorded after the repack's ledger head: they and their packs
    // are referenced again, never deleted. What version 1 alone held and the new version does
    // not reuse may go: its root tree, when the parallel writer sealed it into a pack of its own
    // (the new version stores its own root), which happens on a loaded machine.
    let needed = s.needed_by(&v3);
    let condemned_needed: Vec<&String> = reports[0]
        .condemned
        .iter()
        .filter(|p| needed.contains(*p))
        .collect();
    assert!(
        condemned_needed.iter().any(|p| p.starts_with("packs/"))
            && condemned_needed.iter().any(|p| p.starts_with("index/")),
        "the new version reuses condemned packs: {:?} of {needed:?}",
        reports[0].condemned
    );
    for report in [s.gc(10, after_grace()), s.gc(10, after_grace())] {
        let lost: Vec<&String> = report
            .deleted
            .iter()
            .filter(|p| needed.contains(*p))
            .collect();
        assert!(
            lost.is_empty(),
            "deleted what version 3 needs: {lost:?}\n{report:?}"
        );
        for p in &condemned_needed {
            assert!(s.holds(p), "{p} is gone: {report:?}");
        }
    }
    assert!(
        s.restore(&v3) == mixed,
        "the concurrent version restores byte for byte"
    );
    assert!(s.restore(&v2) == live);
    s.verifies();
}

#[test]
fn a_repack_stopped_at_any_step_leaves_a_vault_that_verifies_and_a_rerun_completes() {
    // Stopped: while storing a new pack, before the repack index, before the condemnation.
    for step in ["packs/", "index/", "gc/"] {
        let s = Setup::new();
        let (mixed, dead_bytes) = stream(16, |_| true);
        let (live, _) = stream(16, |_| false);
        s.backup(mixed, || {});
        let v2 = s.backup(live.clone(), || {});
        s.keep_newest();
        let before = s.stored();
        *s.refuse_prefix.lock().unwrap() = step.to_string();
        s.refusing.store(true, Ordering::SeqCst);
        let stopped = s.try_gc(10, now_unix_nanos());
        s.refusing.store(false, Ordering::SeqCst);
        let stopped_report = format!("{stopped:?}");
        assert!(
            stopped.is_err() || !stopped.as_ref().unwrap().problems.is_empty(),
            "{step}: {stopped_report}"
        );
        assert!(s.restore(&v2) == live, "{step}: restores after the stop");
        s.verifies();
        // Reruns complete: repack (again, or not needed), condemn, delete.
        s.gc(10, after_grace());
        s.gc(10, after_grace());
        let last = s.gc(10, after_grace());
        assert!(last.problems.is_empty(), "{step}: {:?}", last.problems);
        let freed = before.saturating_sub(s.stored());
        assert!(
            freed * 10 >= dead_bytes * 9,
            "{step}: freed {freed} of {dead_bytes}"
        );
        assert!(s.restore(&v2) == live, "{step}: restores after the rerun");
        s.verifies();
    }
}

/// Moves `paths` of the site folder away (a site that lost or withholds them) into `aside`.
fn hide(s: &Setup, paths: &[String], aside: &std::path::Path) {
    for p in paths {
        let to = aside.join(p);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(s.dir.path().join("site").join(p), to).unwrap();
    }
}

/// Puts back what [`hide`] moved away.
fn unhide(s: &Setup, paths: &[String], aside: &std::path::Path) {
    for p in paths {
        std::fs::rename(aside.join(p), s.dir.path().join("site").join(p)).unwrap();
    }
}

/// A repack mixed live and dead data; returns the kept version, its bytes and the first gc's
/// report (old packs condemned, new packs and the repack index written).
fn repacked(s: &Setup) -> (Version, Vec<u8>, GcReport) {
    let (mixed, _) = stream(24, |_| true);
    let (live, _) = stream(24, |_| false);
    s.backup(mixed, || {});
    let v2 = s.backup(live.clone(), || {});
    s.keep_newest();
    let first = s.gc(10, now_unix_nanos());
    assert!(!first.repacked.is_empty(), "{first:?}");
    (v2, live, first)
}

// Red team (session 6): after a repack the site lost the new pack; the next gc deleted the old
// pack anyway (the repack index stood in without its pack), and the version was gone.
#[test]
fn a_repack_whose_new_pack_is_lost_never_makes_gc_delete_the_old_pack() {
    let s = Setup::new();
    let (v2, live, first) = repacked(&s);
    let new_packs: Vec<String> = first
        .repack_written
        .iter()
        .filter(|p| p.starts_with("packs/"))
        .cloned()
        .collect();
    assert!(!new_packs.is_empty(), "{first:?}");
    let aside = s.dir.path().join("lost");
    hide(&s, &new_packs, &aside);
    for _ in 0..3 {
        let r = s.gc(100, after_grace());
        for old in &first.repacked {
            assert!(!r.deleted.contains(old), "{old} deleted: {r:?}");
        }
    }
    assert!(s.restore(&v2) == live, "restores from the old packs");
}

// Red team (session 6): a site that withheld only the repack index for two gc runs made gc
// delete the new packs (unreferenced), then, once the index was shown again, the old ones.
#[test]
fn a_withheld_repack_index_never_makes_gc_delete_both_copies() {
    let s = Setup::new();
    let (v2, live, first) = repacked(&s);
    let repack_indexes: Vec<String> = first
        .repack_written
        .iter()
        .filter(|p| p.starts_with("index/"))
        .cloned()
        .collect();
    assert!(!repack_indexes.is_empty(), "{first:?}");
    let aside = s.dir.path().join("withheld");
    hide(&s, &repack_indexes, &aside);
    s.gc(100, after_grace());
    s.gc(100, after_grace());
    unhide(&s, &repack_indexes, &aside);
    for _ in 0..3 {
        s.gc(100, after_grace());
    }
    assert!(s.restore(&v2) == live, "the version still restores");
    let keyless = verify::verify(&s.vault, None, &Silent).unwrap();
    assert!(keyless.is_ok(), "keyless: {:?}", keyless.problems);
}

/// Issue 19's crash campaign (seed 1796643470424951416): a repack index reached one site (the
/// other refused the write, queued, not caught up yet); garbage collection judged by all sites'
/// listings together that the repack index stood in for the old index everywhere and deleted
/// the old index and packs at both sites: the site without the repack index could no longer
/// restore the kept version. Each site now keeps what it alone needs.
#[test]
fn a_repack_index_at_one_site_never_makes_gc_delete_what_another_site_needs() {
    let s = Setup::two_sites();
    let (mixed, _) = stream(24, |_| true);
    let (live, _) = stream(24, |_| false);
    s.backup(mixed, || {});
    let v2 = s.backup(live.clone(), || {});
    s.keep_newest();
    // b refuses index writes while gc repacks: the repack index reaches a only (the new packs
    // and the condemnation records reach both).
    *s.refuse_prefix.lock().unwrap() = "index/".to_string();
    s.refusing.store(true, Ordering::SeqCst);
    let first = s.gc(10, now_unix_nanos());
    assert!(!first.repacked.is_empty(), "{first:?}");
    s.refusing.store(false, Ordering::SeqCst);
    // Both sites up, b's queue not drained: two more runs past the grace period.
    for _ in 0..2 {
        let r = s.gc(10, after_grace());
        assert!(
            r.problems.iter().all(|p| !p.message.contains("missing")),
            "{r:?}"
        );
    }
    // b alone still restores the kept version and verifies.
    let b: Arc<dyn Site> = Arc::new(LocalSite::new(s.dir.path().join("b")).unwrap());
    let b_vault = Vault::open(b.clone()).unwrap();
    let reader = VersionReader::open_with(b, &s.keyring(), &v2).unwrap();
    let mut out = Vec::new();
    embassy_sources::stream::restore_to(&reader, &mut out, &Silent).unwrap();
    assert!(
        out == live,
        "b alone restores the kept version byte for byte"
    );
    let keyless = verify::verify(&b_vault, None, &Silent).unwrap();
    assert!(keyless.is_ok(), "b alone: {:?}", keyless.problems);
    // And a, which holds the repack index, was collected.
    let a: Arc<dyn Site> = Arc::new(LocalSite::new(s.dir.path().join("a")).unwrap());
    for p in &first.repacked {
        assert!(a.get(p).is_err(), "{p} still at a");
    }
}
