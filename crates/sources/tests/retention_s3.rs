//! Retention and garbage collection on a real S3 server (moto, started by the tests; see
//! embassy-testkit's moto harness) whose bucket has Object Lock with retention on every object:
//! prune and collection work through S3 listings and deletes; on a versioned, locked bucket a
//! delete only hides the object behind a delete marker (the locked version stays until its
//! retention ends), which collection reports as deleted and which never harms a kept version.

use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions};
use embassy_core::engine::prune;
use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::engine::verify;
use embassy_core::format::config::now_unix_nanos;
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_sites::s3::{LockMode, ObjectLock};
use embassy_sites::S3Site;
use embassy_sources::stream;
use embassy_testkit::moto::{s3_target, ServerKind};

fn data(seed: u64) -> Vec<u8> {
    embassy_testkit::random_bytes(3 * 1024 * 1024, seed)
}

#[test]
fn prune_and_gc_on_s3_with_object_lock() {
    if s3_target().kind != ServerKind::Moto {
        // Garage has no Object Lock (crates/sites/tests/conformance.rs checks init refuses it).
        eprintln!(
            "NOT RUN against {}: Object Lock is checked on moto only",
            s3_target().endpoint
        );
        return;
    }
    let base = embassy_testkit::s3::s3_site("retention", "vault", true);
    let mut cfg = base.config().clone();
    cfg.object_lock = Some(ObjectLock {
        mode: LockMode::Governance,
        days: 1,
    });
    let s3 = Arc::new(S3Site::new(cfg).unwrap());
    let site: Arc<dyn Site> = s3.clone();
    let root = RootSecret::generate();
    let vault = Vault::create(site.clone(), &root).unwrap();
    let keyring =
        || Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    let mut contents = Vec::new();
    for i in 0..3 {
        let bytes = data(100 + i);
        let v = stream::backup_reader(
            &vault,
            &keyring(),
            "treasury",
            std::io::Cursor::new(bytes.clone()),
            "stdin",
            &Silent,
        )
        .unwrap();
        contents.push((v.seq, bytes));
    }
    let report = prune::apply_retention(
        &vault,
        &keyring(),
        "treasury",
        &RetentionPolicy {
            keep_last: 1,
            ..Default::default()
        },
        now_unix_nanos(),
    )
    .unwrap();
    assert_eq!(report.deleted, vec![1, 2]);
    let options = GcOptions::with_grace(1);
    let gc_state = tempfile::tempdir().unwrap();
    let collector = gc::Collector::new(
        root.writer_signing_key(0),
        gc_state.path(),
        &vault.config().vault_id,
    );
    let first = gc::collect_garbage(&vault, &collector, &options, now_unix_nanos()).unwrap();
    assert!(
        first.condemned.iter().any(|p| p.starts_with("packs/")),
        "{first:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = gc::collect_garbage(&vault, &collector, &options, now_unix_nanos()).unwrap();
    let mut deleted = second.deleted.clone();
    deleted.sort();
    let mut condemned = first.condemned.clone();
    condemned.sort();
    assert_eq!(deleted, condemned, "{second:?}");
    assert!(second.refused.is_empty(), "{second:?}");
    // Gone from the listing, yet the locked version is still in the bucket.
    let listed: Vec<String> = site.list("").unwrap().into_iter().map(|i| i.path).collect();
    for p in &deleted {
        assert!(!listed.contains(p), "{p} still listed");
    }
    let pack = deleted.iter().find(|p| p.starts_with("packs/")).unwrap();
    assert!(
        s3.version_count(pack).unwrap() >= 1,
        "the locked version of {pack} is gone"
    );
    // The kept version restores byte-identically; the vault verifies without keys and deeply.
    let live = vault.versions("treasury").unwrap();
    assert_eq!(live.len(), 1);
    let reader = VersionReader::open_with(site.clone(), &keyring(), &live[0]).unwrap();
    let mut out = Vec::new();
    stream::restore_to(&reader, &mut out, &Silent).unwrap();
    assert!(out == contents[2].1, "restored bytes differ");
    let report = verify::verify(&vault, Some(&keyring()), &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.unreferenced.is_empty(), "{:?}", report.unreferenced);
}
