//! Key custody at the library level (issue 5): write-only sealing credentials, per-dataset
//! reader credentials, and revocation that every verifier enforces without losing honest data.

use std::path::Path;
use std::sync::Arc;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::engine::verify;
use embassy_core::format::{manifest, pack};
use embassy_core::history::ledger::{self, Event};
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_core::Error;
use embassy_sites::LocalSite;
use embassy_sources::files;

fn tree(dir: &Path, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..5 {
        std::fs::write(
            dir.join(format!("{tag}-{i}.txt")),
            format!("{tag} record {i}\n").repeat(2000 + i),
        )
        .unwrap();
    }
}

fn setup() -> (tempfile::TempDir, Vault, RootSecret) {
    let dir = tempfile::tempdir().unwrap();
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path().join("site")).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    (dir, vault, root)
}

fn root_keyring(vault: &Vault, root: &RootSecret) -> Keyring {
    Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap()
}

fn add_signer(vault: &Vault, root: &RootSecret, dataset: &str, credential: &Credential) {
    let history = vault.history_full(dataset).unwrap();
    let key = credential.signing_key().unwrap().verifying_key().to_bytes();
    ledger::append_ignoring(
        vault.site().as_ref(),
        &root.root_signing_key(),
        dataset,
        history.records.last(),
        &history.rejected_ids(),
        Event::SignerAdded {
            key,
            role: credential.label.clone(),
            rights: embassy_core::history::rights::Right::sealing(false),
        },
    )
    .unwrap();
}

fn packs(vault: &Vault, dataset: &str) -> Vec<(String, Vec<u8>)> {
    let site = vault.site();
    site.list(&format!("packs/{dataset}/"))
        .unwrap()
        .into_iter()
        .map(|i| (i.path.clone(), site.get(&i.path).unwrap()))
        .collect()
}

#[test]
fn a_sealing_credential_adds_but_cannot_read_anything_not_even_its_own_packs() {
    let (dir, vault, root) = setup();
    let src = dir.path().join("src");
    tree(&src, "a");
    let owner = root_keyring(&vault, &root);
    files::backup(
        &vault,
        &owner,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap();
    let before: Vec<String> = packs(&vault, "population")
        .into_iter()
        .map(|(p, _)| p)
        .collect();

    let credential = Credential::sealing(
        &root,
        &vault.config().vault_id,
        "host-1",
        &["population".into()],
    );
    add_signer(&vault, &root, "population", &credential);
    let sealing = Keyring::from_credential(credential, vault.config()).unwrap();
    tree(&src, "b");
    let added = files::backup(
        &vault,
        &sealing,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap();
    assert_eq!(vault.versions("population").unwrap().len(), 2);

    let keys = sealing.dataset("population").unwrap();
    let all = packs(&vault, "population");
    assert!(
        all.len() > before.len(),
        "the sealing credential stored packs"
    );
    for (path, bytes) in &all {
        let own = !before.contains(path);
        match pack::open_key(&keys, path, bytes) {
            Err(Error::WrongKey(m)) => assert!(m.contains("sealing credential"), "{m}"),
            other => panic!(
                "sealing credential opened {} pack {path}: {:?}",
                if own { "its own" } else { "another" },
                other.is_ok()
            ),
        }
    }
    // Nor its manifest, nor a restore.
    let path = format!("manifests/population/{}", added.version.manifest);
    let bytes = vault.site().get(&path).unwrap();
    assert!(matches!(
        manifest::decode(&keys, &path, &bytes),
        Err(Error::WrongKey(_))
    ));
    let err = VersionReader::open(vault.site().clone(), keys.clone(), &added.version)
        .err()
        .unwrap();
    assert!(matches!(err, Error::WrongKey(_)), "{err}");
    // The owner reads both versions.
    for v in vault.versions("population").unwrap() {
        let reader = VersionReader::open(
            vault.site().clone(),
            owner.dataset("population").unwrap(),
            &v,
        )
        .unwrap();
        files::restore(
            &reader,
            &dir.path().join(format!("out{}", v.seq)),
            &Default::default(),
            &Silent,
        )
        .unwrap();
    }
    // It covers no other dataset.
    assert!(matches!(sealing.dataset("land"), Err(Error::WrongKey(_))));
}

#[test]
fn a_reader_credential_reads_only_its_dataset_and_cannot_sign() {
    let (dir, vault, root) = setup();
    let owner = root_keyring(&vault, &root);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    tree(&a, "a");
    tree(&b, "b");
    files::backup(
        &vault,
        &owner,
        "population",
        std::slice::from_ref(&a),
        &Silent,
    )
    .unwrap();
    let land = files::backup(&vault, &owner, "land", std::slice::from_ref(&b), &Silent).unwrap();
    let reader = Keyring::from_credential(
        Credential::reader(
            &root,
            &vault.config().vault_id,
            "population team",
            &["population".into()],
        ),
        vault.config(),
    )
    .unwrap();
    let version = vault.find_version("population", None).unwrap();
    let r = VersionReader::open(
        vault.site().clone(),
        reader.dataset("population").unwrap(),
        &version,
    )
    .unwrap();
    files::restore(&r, &dir.path().join("out"), &Default::default(), &Silent).unwrap();
    assert!(matches!(reader.dataset("land"), Err(Error::WrongKey(_))));
    // Population's reader key does not open land's packs, even when forced.
    let keys = reader.dataset("population").unwrap();
    for (path, bytes) in packs(&vault, "land") {
        assert!(pack::open_key(&keys, &path, &bytes).is_err(), "{path}");
    }
    assert!(matches!(
        files::backup(&vault, &reader, "population", &[a], &Silent),
        Err(Error::WrongKey(_))
    ));
    assert_eq!(land.version.seq, 1);
}

#[test]
fn a_revoked_credential_is_refused_and_its_forced_entries_are_rejected_without_harming_history() {
    let (dir, vault, root) = setup();
    let src = dir.path().join("src");
    tree(&src, "a");
    let owner = root_keyring(&vault, &root);
    files::backup(
        &vault,
        &owner,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap();
    let credential = Credential::sealing(
        &root,
        &vault.config().vault_id,
        "host-1",
        &["population".into()],
    );
    let stolen = credential.signing_key().unwrap();
    add_signer(&vault, &root, "population", &credential);
    let sealing = Keyring::from_credential(credential.clone(), vault.config()).unwrap();
    tree(&src, "b");
    files::backup(
        &vault,
        &sealing,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap();

    // Revoke it (a root-signed entry).
    let history = vault.history_full("population").unwrap();
    let key = stolen.verifying_key().to_bytes();
    ledger::append(
        vault.site().as_ref(),
        &root.root_signing_key(),
        "population",
        history.records.last(),
        Event::SignerRevoked {
            key,
            reason: "host-1 compromised".into(),
        },
    )
    .unwrap();

    // The client refuses to write with it.
    tree(&src, "c");
    let err = files::backup(
        &vault,
        &sealing,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, Error::WrongKey(m) | Error::Refused { problem: m, .. } if m.contains("revoked")),
        "{err}"
    );

    // An attacker holding the key forces an entry anyway, and one chained to it.
    let history = vault.history_full("population").unwrap();
    let honest_versions = vault.versions("population").unwrap();
    let forged_manifest = honest_versions[0].manifest;
    let forged = ledger::append(
        vault.site().as_ref(),
        &stolen,
        "population",
        history.records.last(),
        Event::VersionAdded {
            manifest: forged_manifest,
            kind: embassy_core::format::manifest::VersionKind::Tree,
            captured_at_ns: 0,
            stats: Default::default(),
            wal_start: None,
        },
    )
    .unwrap();
    ledger::append(
        vault.site().as_ref(),
        &stolen,
        "population",
        Some(&forged),
        Event::VersionsDeleted {
            seqs: vec![1],
            reason: "ransom".into(),
            policy: None,
            as_of_ns: None,
            approvals: Vec::new(),
        },
    )
    .unwrap();

    // Every verifier rejects both, names them, and keeps the honest history whole.
    let full = vault.history_full("population").unwrap();
    assert_eq!(full.rejected.len(), 2, "{:?}", full.rejected);
    assert!(
        full.rejected[0].reason.contains("revoked"),
        "{}",
        full.rejected[0].reason
    );
    assert_eq!(vault.versions("population").unwrap(), honest_versions);
    let report = verify::verify(&vault, Some(&owner), &Silent).unwrap();
    // Noise, not damage (issue 12): reported by path, not an integrity failure.
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.noise.len(), 2, "{:?}", report.noise);
    assert!(
        report.noise.iter().all(|p| p.contains("rejected")),
        "{:?}",
        report.noise
    );

    // The owner goes on writing over the rejected entries; everything restores.
    files::backup(
        &vault,
        &owner,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap();
    let versions = vault.versions("population").unwrap();
    assert_eq!(versions.len(), honest_versions.len() + 1);
    for v in versions {
        let reader = VersionReader::open(
            vault.site().clone(),
            owner.dataset("population").unwrap(),
            &v,
        )
        .unwrap();
        files::restore(
            &reader,
            &dir.path().join(format!("restore-{}", v.seq)),
            &Default::default(),
            &Silent,
        )
        .unwrap();
    }
}

#[test]
fn rotating_the_reader_key_keeps_old_versions_readable_and_retires_old_credentials() {
    let (dir, vault, root) = setup();
    let src = dir.path().join("src");
    tree(&src, "a");
    let owner = root_keyring(&vault, &root);
    let vault_id = vault.config().vault_id.clone();
    let v1 = files::backup(
        &vault,
        &owner,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap()
    .version;
    let old_reader = Keyring::from_credential(
        Credential::reader(&root, &vault_id, "team", &["population".into()]),
        vault.config(),
    )
    .unwrap();
    let old_sealing_cred = Credential::sealing(&root, &vault_id, "host", &["population".into()]);
    add_signer(&vault, &root, "population", &old_sealing_cred);
    let old_sealing = Keyring::from_credential(old_sealing_cred, vault.config()).unwrap();

    // Rotate (a root-signed ledger entry); nothing stored is rewritten.
    let objects_before = vault.site().list("packs/").unwrap().len();
    let history = vault.history_full("population").unwrap();
    let new_keys = root.dataset_keys("population", 1);
    ledger::append(
        vault.site().as_ref(),
        &root.root_signing_key(),
        "population",
        history.records.last(),
        Event::ReaderKeyRotated {
            epoch: 1,
            reader_public: embassy_core::keys::crypto::reader_public_bytes(&new_keys.reader_public),
        },
    )
    .unwrap();
    assert_eq!(vault.site().list("packs/").unwrap().len(), objects_before);

    tree(&src, "b");
    let v2 = files::backup(
        &vault,
        &owner,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap()
    .version;
    let path = format!("manifests/population/{}", v2.manifest);
    let (header, _) = manifest::decode_header(&path, &vault.site().get(&path).unwrap()).unwrap();
    assert_eq!(
        header.key_id,
        new_keys.key_id(),
        "the new version is sealed to the new key"
    );

    // The old sealing credential holds no keys of the new epoch.
    let err = files::backup(
        &vault,
        &old_sealing,
        "population",
        std::slice::from_ref(&src),
        &Silent,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, Error::WrongKey(m) if m.contains("epoch 1")),
        "{err}"
    );
    // The old reader reads v1, not v2.
    assert!(VersionReader::open_with(vault.site().clone(), &old_reader, &v1).is_ok());
    assert!(matches!(
        VersionReader::open_with(vault.site().clone(), &old_reader, &v2),
        Err(Error::WrongKey(_))
    ));
    // A reader credential issued now holds every epoch; the root reads everything.
    let new_reader = Keyring::from_credential(
        Credential::at_epochs(&root, &vault_id, "team", &[("population".into(), 1)], true),
        vault.config(),
    )
    .unwrap();
    for (i, v) in [&v1, &v2].into_iter().enumerate() {
        for keyring in [&new_reader, &owner] {
            let reader = VersionReader::open_with(vault.site().clone(), keyring, v).unwrap();
            let out = dir.path().join(format!("out-{i}-{}", rand_suffix()));
            files::restore(&reader, &out, &Default::default(), &Silent).unwrap();
        }
    }
    let report = verify::verify(&vault, Some(&owner), &Silent).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.datasets[0].versions_complete, 2);
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
