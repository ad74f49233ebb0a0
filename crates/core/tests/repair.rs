//! `sync --repair` replaces only copies proven damaged at the target. A target that cannot be
//! read for a while (throttled, down) keeps its copies: found by the red team, where a repair
//! during S3 throttling deleted every pack of a complete site and then failed to write them.

use std::sync::Arc;

use embassy_core::engine::sync::{seed, sync};
use embassy_core::engine::vault::Vault;
use embassy_core::format::layout;
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, ObjectSink, Put, Site, SiteError};
use embassy_testkit::memory::MemorySite;

/// A site whose packs cannot be read (every read of them is a transient failure), while the
/// rest of it, and deletes, work.
#[derive(Debug)]
struct PacksUnreadable(Arc<MemorySite>);

impl PacksUnreadable {
    fn refuse(&self, path: &str) -> Result<(), SiteError> {
        if path.starts_with("packs/") {
            return Err(SiteError::Retryable {
                site: self.0.location().to_string(),
                operation: "get",
                path: path.to_string(),
                message: "503 SlowDown".into(),
            });
        }
        Ok(())
    }
}

impl Site for PacksUnreadable {
    fn location(&self) -> &str {
        self.0.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.0.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.refuse(path)?;
        self.0.get(path)
    }
    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        self.refuse(path)?;
        self.0.get_to(path, sink)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.refuse(path)?;
        self.0.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.0.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.0.delete(path)
    }
}

/// Objects by path, with their bytes.
type Objects = Vec<(String, Vec<u8>)>;

/// A source vault holding two packs, and a target that holds a full copy of it.
fn copied() -> (Arc<MemorySite>, Arc<MemorySite>, Objects) {
    let from = Arc::new(MemorySite::default());
    Vault::create(from.clone(), &RootSecret::from_bytes(&[9; 32])).unwrap();
    let packs: Objects = (0..2u8)
        .map(|i| {
            let bytes = vec![i; 1000 + i as usize];
            (layout::pack("registry", &ObjectId::of(&bytes)), bytes)
        })
        .collect();
    for (path, bytes) in &packs {
        from.put(path, bytes).unwrap();
    }
    let to = Arc::new(MemorySite::default());
    let first = seed(from.as_ref(), to.as_ref(), false, &Silent).unwrap();
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    assert_eq!(first.copied, 2);
    (from, to, packs)
}

#[test]
fn a_repair_keeps_copies_it_cannot_read() {
    let (from, to, packs) = copied();
    let flaky = PacksUnreadable(to.clone());
    let report = sync(from.as_ref(), &flaky, true, &Silent).unwrap();
    for (path, bytes) in &packs {
        assert_eq!(
            to.lock().get(path),
            Some(bytes),
            "{path} was deleted or changed at a target that could not be read"
        );
    }
    assert_eq!(report.repaired, 0);
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.contains("cannot be read at the target") && p.contains("not repaired")),
        "{:?}",
        report.problems
    );
}

#[test]
fn a_repair_replaces_a_copy_proven_damaged() {
    let (from, to, packs) = copied();
    let (path, bytes) = &packs[0];
    to.lock().insert(path.clone(), b"damaged".to_vec());
    let report = sync(from.as_ref(), to.as_ref(), true, &Silent).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.repaired, 1);
    assert_eq!(to.lock().get(path), Some(bytes));
}
