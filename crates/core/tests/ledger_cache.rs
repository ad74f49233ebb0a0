//! A writer's own history loads (the agent's backups, retention and collection, under
//! `ledger::CachedReads`) read each ledger entry from a site once: later loads reuse the entries
//! decoded before, since an entry's id is the hash of its bytes. Every other load (`verify`,
//! `status`, sync, repair: anything that judges a site) reads every entry from the site, so
//! damage done after an entry was decoded is found.

use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::engine::verify::verify;
use embassy_core::engine::writer::BackupSession;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::Tree;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_testkit::memory::{CountingGets, MemorySite};

const DATASET: &str = "registry";

/// A vault on a counting site holding `versions` versions of [`DATASET`].
fn vault_with_versions(versions: usize) -> (Arc<MemorySite>, Arc<CountingGets>, Vault) {
    let memory = Arc::new(MemorySite::default());
    let site = Arc::new(CountingGets::new(memory.clone(), "ledger/"));
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
    (memory, site, vault)
}

#[test]
fn a_writers_history_loaded_again_fetches_no_entry_it_decoded_before() {
    let (_, site, vault) = vault_with_versions(4);
    let count = |load: &dyn Fn() -> Vec<embassy_core::history::ledger::Record>| {
        let before = site.gets();
        let records = load();
        (site.gets() - before, records)
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
    let (memory, site, vault) = vault_with_versions(3);
    let history = {
        let _writer = embassy_core::history::ledger::CachedReads::begin();
        vault.history(DATASET).expect("history")
    };
    let clean = verify(&vault, None, &Silent).expect("verify");
    assert!(clean.problems.is_empty(), "{:?}", clean.problems);
    // The first entry's bytes are damaged at the site after this process decoded them.
    let first = &history[0];
    let path = embassy_core::format::layout::ledger_entry(DATASET, first.entry.seq, &first.id);
    memory.lock().insert(path.clone(), b"damaged".to_vec());
    let before = site.gets();
    let report = verify(&vault, None, &Silent).expect("verify");
    assert!(
        site.gets() - before >= history.len() as u64,
        "verify did not read every ledger entry from the site"
    );
    assert!(
        !report.problems.is_empty(),
        "verify found nothing wrong with the damaged {path}: {report:?}"
    );
}
