//! A writer's own history loads (the agent's backups, retention and collection, under
//! `ledger::CachedReads`) read each ledger entry from a site once: later loads reuse the entries
//! decoded before, since an entry's id is the hash of its bytes. Every other load (`verify`,
//! `status`, sync, repair: anything that judges a site) reads every entry from the site, so
//! damage done after an entry was decoded is found.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::engine::verify::verify;
use embassy_core::engine::writer::BackupSession;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::Tree;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_testkit::memory::MemorySite;

const DATASET: &str = "registry";

/// A memory site that counts the GETs of ledger entries.
#[derive(Debug, Default)]
struct CountingSite {
    inner: MemorySite,
    ledger_gets: AtomicU64,
}

impl Site for CountingSite {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.inner.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        if path.starts_with("ledger/") {
            self.ledger_gets.fetch_add(1, Ordering::SeqCst);
        }
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

/// A vault on a counting site holding `versions` versions of [`DATASET`].
fn vault_with_versions(versions: usize) -> (Arc<CountingSite>, Vault) {
    let site = Arc::new(CountingSite::default());
    let root = RootSecret::generate();
    let vault = Vault::create(site.clone(), &root).expect("vault");
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).expect("keys");
    for _ in 0..versions {
        let session = BackupSession::begin(&vault, &keyring, DATASET).expect("session");
        let tree = session
            .store_blob(BlobKind::Tree, Tree { nodes: vec![] }.encode())
            .expect("tree");
        session
            .finish(VersionKind::Tree, tree, vec![], VersionStats::default())
            .expect("version");
    }
    (site, vault)
}

#[test]
fn a_writers_history_loaded_again_fetches_no_entry_it_decoded_before() {
    let (site, vault) = vault_with_versions(4);
    let count = |load: &dyn Fn() -> Vec<embassy_core::history::ledger::Record>| {
        let before = site.ledger_gets.load(Ordering::SeqCst);
        let records = load();
        (site.ledger_gets.load(Ordering::SeqCst) - before, records)
    };
    let load = || vault.history(DATASET).expect("history");
    // Without the writer's guard, every load reads every entry.
    let (fresh, first) = count(&load);
    assert!(first.len() >= 4, "{} entries", first.len());
    assert_eq!(fresh, first.len() as u64);
    assert_eq!(count(&load).0, first.len() as u64);
    // Under it, the first load reads them and keeps them; the next reads none.
    let _writer = embassy_core::history::ledger::CachedReads::begin();
    assert_eq!(count(&load).0, first.len() as u64);
    let (fetched, again) = count(&load);
    assert_eq!(
        fetched,
        0,
        "the second load fetched {fetched} ledger entries of {} it had decoded",
        again.len()
    );
    assert_eq!(
        first.iter().map(|r| r.id).collect::<Vec<_>>(),
        again.iter().map(|r| r.id).collect::<Vec<_>>()
    );
}

#[test]
fn verify_reads_every_entry_and_finds_one_damaged_after_a_writer_decoded_it() {
    let (site, vault) = vault_with_versions(3);
    let history = {
        let _writer = embassy_core::history::ledger::CachedReads::begin();
        vault.history(DATASET).expect("history")
    };
    let clean = verify(&vault, None, &Silent).expect("verify");
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    // The first entry's bytes are damaged at the site after this process decoded them.
    let first = &history[0];
    let path = embassy_core::format::layout::ledger_entry(DATASET, first.entry.seq, &first.id);
    site.inner.lock().insert(path.clone(), b"damaged".to_vec());
    let before = site.ledger_gets.load(Ordering::SeqCst);
    let report = verify(&vault, None, &Silent).expect("verify");
    assert!(
        site.ledger_gets.load(Ordering::SeqCst) - before >= history.len() as u64,
        "verify did not read every ledger entry from the site"
    );
    assert!(
        !report.problems.is_empty(),
        "verify found nothing wrong with the damaged {path}: {report:?}"
    );
}
