//! Hostile bytes in the objects retention and garbage collection read from a site (approvals,
//! condemnation records, backup session markers): never a panic, always a reported problem or
//! an ignored object, and never a deletion of anything a live version needs. Property tests
//! with random bytes, truncations and bit flips of valid objects, on every `cargo test`.

use embassy_testkit::memory::MemorySite;
use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions};
use embassy_core::engine::vault::Vault;
use embassy_core::history::approval::{self, Approval};
use embassy_core::id::ObjectId;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use proptest::prelude::*;

fn vault() -> (Arc<MemorySite>, Vault) {
    let site = Arc::new(MemorySite::default());
    let vault = Vault::create(site.clone(), &RootSecret::from_bytes(&[7; 32])).unwrap();
    (site, vault)
}

/// Places `bytes` where collection, writers and `forget` look for bookkeeping, named correctly
/// (by their hash), so the parsers, not the name checks, meet them.
fn place(site: &MemorySite, kind: u8, bytes: &[u8]) -> String {
    let id = ObjectId::of(bytes);
    let path = match kind % 3 {
        0 => gc::record_path("ds", 1_700_000_000_000_000_000, &id),
        1 => gc::marker_path("ds", 1_700_000_000_000_000_000, &id),
        _ => approval::path("ds", &id),
    };
    site.put(&path, bytes).unwrap();
    path
}

fn valid_approval() -> Vec<u8> {
    let key = approval::approver_signing_key(&RootSecret::from_bytes(&[9; 32]));
    approval::encode(
        &Approval {
            vault_id: "v".into(),
            dataset: "ds".into(),
            seq: 1,
            entry: ObjectId::of(b"entry"),
            reason: "r".into(),
            approver: key.verifying_key().to_bytes(),
            time_ns: 1,
            min_age_secs: None,
            promote_host: None,
            promote_key: None,
        },
        &key,
    )
}

fn exercise(site: &Arc<MemorySite>, vault: &Vault, path: &str) {
    let _ = gc::condemned(site.as_ref(), "ds");
    let (found, problems) = approval::list(site.as_ref(), "v", "ds").unwrap();
    let options = GcOptions {
        dry_run: true,
        ..GcOptions::with_grace(1)
    };
    let state = tempfile::tempdir().unwrap();
    let collector = gc::Collector::new(
        RootSecret::from_bytes(&[7; 32]).writer_signing_key(0),
        state.path(),
        &vault.config().vault_id,
    );
    let report = gc::collect_garbage(vault, &collector, &options, i64::MAX / 2).unwrap();
    if path.starts_with("approvals/") {
        assert!(found.len() + problems.len() == 1, "{found:?} {problems:?}");
    } else {
        // A damaged record or marker is a problem, never a reason to delete anything.
        assert!(report.deleted.is_empty(), "{report:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(kind in 0u8..3, bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let (site, vault) = vault();
        let path = place(&site, kind, &bytes);
        exercise(&site, &vault, &path);
    }

    #[test]
    fn damaged_approvals_are_refused(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8) {
        let good = valid_approval();
        let mut bad = good.clone();
        if flip < bad.len() {
            bad[flip] ^= 1 << bit;
        }
        bad.truncate(cut.max(1).min(bad.len()));
        prop_assume!(bad != good);
        let (site, vault) = vault();
        let path = place(&site, 2, &bad);
        let id = ObjectId::of(&bad);
        prop_assert!(approval::load(site.as_ref(), "v", "ds", &id).is_err());
        exercise(&site, &vault, &path);
    }

    #[test]
    fn hostile_records_and_markers_never_panic(kind in 0u8..2, len in 0u32..u32::MAX, tail in prop::collection::vec(any::<u8>(), 0..64)) {
        // The record/marker framing with hostile lengths and CBOR.
        let magic: &[u8; 8] = if kind == 0 { b"EMBCOND2" } else { b"EMBSESS2" };
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let (site, vault) = vault();
        let path = place(&site, kind, &bytes);
        exercise(&site, &vault, &path);
    }
}

#[test]
fn a_valid_approval_loads() {
    let (site, _) = vault();
    let bytes = valid_approval();
    place(&site, 2, &bytes);
    let a = approval::load(site.as_ref(), "v", "ds", &ObjectId::of(&bytes)).unwrap();
    assert_eq!(a.seq, 1);
    // Foreign vault or dataset: refused.
    assert!(approval::load(site.as_ref(), "other", "ds", &ObjectId::of(&bytes)).is_err());
}
