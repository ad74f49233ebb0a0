//! A sync (a catch-up's full comparison, `embassy sync`) cut anywhere leaves the target holding
//! a prefix of the vault: behind, never a ledger entry without the entries and objects before
//! it, which `verify` would rightly call damage (issue 19). Entries go in order, dataset by
//! dataset, stopping at the first that cannot be copied; nothing that names entries or objects
//! (entries, checkpoints) is copied while something before it is missing.

use std::sync::Arc;

use embassy_core::engine::sync::sync;
use embassy_core::engine::vault::Vault;
use embassy_core::format::layout;
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, ObjectSink, Put, Site, SiteError};
use embassy_testkit::memory::MemorySite;

/// A site that refuses to store one path (a write cut there: the site went away mid-sync).
#[derive(Debug)]
struct RefusesOne(Arc<MemorySite>, String);

impl Site for RefusesOne {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        if path == self.1 {
            return Err(SiteError::Permanent {
                site: self.location().into(),
                operation: "put",
                path: path.into(),
                message: "Permission denied (the test)".into(),
            });
        }
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.0.get(path)
    }
    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        self.0.get_to(path, sink)
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

/// A source vault with two packs, six entries of one dataset and a checkpoint (only their
/// names matter to a sync: it copies bytes checked against names), and a target holding its
/// configuration. Returns the paths of the packs, the entries and the checkpoint.
fn vault() -> (
    Arc<MemorySite>,
    Arc<MemorySite>,
    Vec<String>,
    Vec<String>,
    String,
) {
    let from = Arc::new(MemorySite::default());
    Vault::create(from.clone(), &RootSecret::from_bytes(&[7; 32])).unwrap();
    let put = |path: String, bytes: &[u8]| {
        from.put(&path, bytes).unwrap();
        path
    };
    let packs: Vec<String> = (0..2u8)
        .map(|i| {
            let bytes = vec![i; 500];
            put(layout::pack("reg", &ObjectId::of(&bytes)), &bytes)
        })
        .collect();
    let entries: Vec<String> = (1..=6u64)
        .map(|seq| {
            let bytes = format!("entry {seq}").into_bytes();
            put(
                layout::ledger_entry("reg", seq, &ObjectId::of(&bytes)),
                &bytes,
            )
        })
        .collect();
    let bytes = b"checkpoint".to_vec();
    let checkpoint = put(
        format!("checkpoints/{:020}-{}", 1, ObjectId::of(&bytes)),
        &bytes,
    );
    let to = Arc::new(MemorySite::default());
    for p in [layout::CONFIG_SIGNATURE, layout::CONFIG] {
        to.put(p, &from.get(p).unwrap()).unwrap();
    }
    (from, to, packs, entries, checkpoint)
}

#[test]
fn an_entry_that_cannot_be_copied_holds_back_every_later_one() {
    let (from, to, packs, entries, checkpoint) = vault();
    let target = RefusesOne(to.clone(), entries[2].clone());
    let report = sync(from.as_ref(), &target, false, &Silent).unwrap();
    let held = to.lock();
    for p in packs.iter().chain(&entries[..2]) {
        assert!(held.contains_key(p), "{p} not copied");
    }
    for p in entries[2..].iter().chain([&checkpoint]) {
        assert!(
            !held.contains_key(p),
            "{p} copied although entry 3 before it is missing: {:?}",
            report.problems
        );
    }
    assert!(!report.problems.is_empty());
}

#[test]
fn a_pack_that_cannot_be_copied_holds_back_the_entries() {
    let (from, to, _packs, entries, checkpoint) = vault();
    let target = RefusesOne(to.clone(), _packs[1].clone());
    let report = sync(from.as_ref(), &target, false, &Silent).unwrap();
    let held = to.lock();
    for p in entries.iter().chain([&checkpoint]) {
        assert!(!held.contains_key(p), "{p} copied without a pack before it");
    }
    assert!(
        report.problems.iter().any(|p| p.contains("not copied yet")),
        "{:?}",
        report.problems
    );
    drop(held);
    // Once the pack can be written, the next sync copies the rest.
    let report = sync(from.as_ref(), to.as_ref(), false, &Silent).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let held = to.lock();
    assert!(entries
        .iter()
        .chain([&checkpoint])
        .all(|p| held.contains_key(p)));
}
