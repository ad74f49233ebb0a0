//! Dedup poisoning (issue 12, attack 3). Anyone holding a dataset's index key (every sealing and
//! reader credential, revoked ones too) can seal an index object. One that maps an existing
//! chunk id to the wrong place of an existing pack must never make a later backup point at the
//! wrong bytes, and `verify --deep` must resolve each version through its own mapping.
//!
//! Every attack runs through the real library against a real local-folder vault. The attacker
//! also chooses the listing order (a site that colludes, or plain luck): [`OrderedSite`] lists the
//! forged objects last, so that an unprotected writer, where the last mapping of a chunk wins,
//! deterministically picks the forgery.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::verify::{self, VerifyReport};
use embassy_core::engine::writer::BackupSession;
use embassy_core::format::config::{ChunkerParams, VaultConfig};
use embassy_core::format::index::{self, IndexEntry};
use embassy_core::format::layout;
use embassy_core::format::manifest;
use embassy_core::format::pack::BlobKind;
use embassy_core::history::ledger::{self, Event};
use embassy_core::id::ObjectId;
use embassy_core::keys::{self, Credential, DatasetKeys, RootSecret};
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_sites::LocalSite;
use embassy_sources::stream;

const DS: &str = "registry";

// ---------------------------------------------------------------------------------------------
// A site whose listing order the attacker chooses
// ---------------------------------------------------------------------------------------------

/// A local folder that lists the paths in `last` after every other path.
#[derive(Debug)]
struct OrderedSite {
    real: LocalSite,
    last: Mutex<Vec<String>>,
}

impl Site for OrderedSite {
    fn location(&self) -> &str {
        self.real.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.real.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.real.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.real.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        let mut out = self.real.list(prefix)?;
        let last = self.last.lock().unwrap().clone();
        out.sort_by_key(|i| last.iter().position(|l| *l == i.path).map(|p| p + 1));
        Ok(out)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.real.delete(path)
    }
}

// ---------------------------------------------------------------------------------------------
// The lab: a vault, its root, credentials
// ---------------------------------------------------------------------------------------------

struct Lab {
    _tmp: tempfile::TempDir,
    site: Arc<OrderedSite>,
    vault: Vault,
    root: RootSecret,
}

impl Lab {
    /// A vault with small chunks (so a few hundred KiB make many chunks in one pack).
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let site = Arc::new(OrderedSite {
            real: LocalSite::new(tmp.path().join("site")).unwrap(),
            last: Mutex::default(),
        });
        let root = RootSecret::generate();
        let mut config = VaultConfig::new(&root);
        config.chunker = ChunkerParams {
            min: 4 * 1024,
            avg: 16 * 1024,
            max: 64 * 1024,
        };
        config.create(site.as_ref(), &root).unwrap();
        let vault = Vault::open(site.clone()).unwrap();
        Self {
            _tmp: tmp,
            site,
            vault,
            root,
        }
    }

    fn owner(&self) -> Keyring {
        Keyring::from_root(
            RootSecret::from_bytes(self.root.expose()),
            self.vault.config(),
        )
        .unwrap()
    }

    fn root_keys(&self) -> Arc<DatasetKeys> {
        self.owner().dataset(DS).unwrap()
    }

    /// A sealing credential whose key the root adds to the dataset's signers.
    fn sealing(&self, label: &str) -> Credential {
        let credential = Credential::sealing(
            &self.root,
            &self.vault.config().vault_id,
            label,
            &[DS.into()],
        );
        let key = credential.signing_key().unwrap().verifying_key().to_bytes();
        self.vault
            .append_root_event(
                &self.root,
                DS,
                Event::SignerAdded {
                    key,
                    role: label.into(),
                    rights: embassy_core::history::rights::Right::sealing(false),
                },
            )
            .unwrap();
        credential
    }

    fn revoke(&self, credential: &Credential) {
        let key = credential.signing_key().unwrap().verifying_key().to_bytes();
        self.vault
            .append_root_event(
                &self.root,
                DS,
                Event::SignerRevoked {
                    key,
                    reason: "host compromised".into(),
                },
            )
            .unwrap();
    }

    fn keyring(&self, credential: &Credential) -> Keyring {
        Keyring::from_credential(credential.clone(), self.vault.config()).unwrap()
    }

    fn backup(&self, keyring: &Keyring, data: &[u8]) -> Version {
        stream::backup_reader(&self.vault, keyring, DS, data, "test", &Silent)
            .unwrap_or_else(|e| panic!("honest backup failed: {e}"))
    }

    fn restore(&self, version: &Version) -> embassy_core::Result<Vec<u8>> {
        let reader = VersionReader::open_with(self.vault.site().clone(), &self.owner(), version)?;
        let mut out = Vec::new();
        stream::restore_to(&reader, &mut out, &Silent)?;
        Ok(out)
    }

    fn manifest_indexes(&self, version: &Version) -> Vec<ObjectId> {
        let path = layout::manifest(DS, &version.manifest);
        let bytes = self.site.get(&path).unwrap();
        manifest::decode_header(&path, &bytes).unwrap().0.indexes
    }

    /// Stores a forged object and has it listed after everything else.
    fn plant(&self, bytes: &[u8]) -> String {
        let path = layout::index(DS, &ObjectId::of(bytes));
        assert_eq!(self.site.put(&path, bytes).unwrap(), Put::Created);
        self.site.last.lock().unwrap().push(path.clone());
        path
    }

    /// The honest index objects of the dataset, decoded with the index key.
    fn honest_indexes(
        &self,
        keys: &DatasetKeys,
    ) -> Vec<(ObjectId, index::IndexHeader, Vec<IndexEntry>)> {
        let planted = self.site.last.lock().unwrap().clone();
        self.site
            .list(&layout::index_prefix(DS))
            .unwrap()
            .into_iter()
            .filter(|i| !planted.contains(&i.path))
            .map(|i| {
                let bytes = self.site.get(&i.path).unwrap();
                let (header, entries) = index::decode(keys, &i.path, &bytes).unwrap();
                (ObjectId::of(&bytes), header, entries)
            })
            .collect()
    }

    fn verify(&self, deep: bool) -> VerifyReport {
        let keyring = self.owner();
        verify::verify(&self.vault, deep.then_some(&keyring), &Silent).expect("verify runs")
    }
}

/// Deterministic incompressible bytes.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0xA24B_AED4_963E_E407);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The lie: every data chunk of the index mapped to another data chunk's place in the same pack
/// (or a few bytes off when it is alone). Trees keep their true place.
/// True if an index names a data blob: one of a pack holding only a tree has nothing to
/// misplace (the writer hands a file's chunks to the sealers in batches, so one pack may get
/// them all and the other only the tree).
fn holds_data(index: &(ObjectId, index::IndexHeader, Vec<IndexEntry>)) -> bool {
    index.2.iter().any(|e| e.blob.kind == BlobKind::Data)
}

fn poisoned(entries: &[IndexEntry]) -> Vec<IndexEntry> {
    let data: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].blob.kind == BlobKind::Data)
        .collect();
    let mut out = entries.to_vec();
    for (n, &i) in data.iter().enumerate() {
        let other = data[(n + 1) % data.len()];
        let mut blob = entries[other].blob;
        blob.id = entries[i].blob.id;
        blob.kind = BlobKind::Data;
        if other == i {
            blob.offset += 16;
        }
        out[i].blob = blob;
    }
    out
}

/// An index with these header packs and entries, signed by `signer`.
fn forge(
    keys: &DatasetKeys,
    signer: &SigningKey,
    packs: &[ObjectId],
    entries: &[IndexEntry],
) -> Vec<u8> {
    index::encode_entries(keys, signer, packs.to_vec(), entries)
}

/// The same index claiming to be signed by `claimed`, with a signature by nobody (64 zero bytes,
/// or the forger's own signature): what a key holder without an active signing key can make.
fn forge_claiming(
    keys: &DatasetKeys,
    forger: &SigningKey,
    claimed: &[u8; 32],
    packs: &[ObjectId],
    entries: &[IndexEntry],
    zero_signature: bool,
) -> Vec<u8> {
    let header = index::IndexHeader {
        dataset: DS.into(),
        packs: packs.to_vec(),
        key_id: keys.key_id(),
        signer: *claimed,
        replaces: Vec::new(),
        as_of_seq: 0,
    };
    let mut header_bytes = Vec::new();
    ciborium::into_writer(&header, &mut header_bytes).unwrap();
    let mut body = Vec::new();
    ciborium::into_writer(&entries, &mut body).unwrap();
    let mut out = index::MAGIC.to_vec();
    out.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&header_bytes);
    let sealed = embassy_core::keys::crypto::seal_symmetric(&keys.index_key, &out, &body);
    out.extend_from_slice(&sealed);
    if zero_signature {
        out.extend_from_slice(&[0u8; 64]);
    } else {
        let signature = keys::sign(forger, index::SIGNATURE_LABEL, &out);
        out.extend_from_slice(&signature);
    }
    out
}

/// An index as format 1 wrote it: no signer, no signature.
fn forge_unsigned_v1(keys: &DatasetKeys, packs: &[ObjectId], entries: &[IndexEntry]) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct V1Header<'a> {
        dataset: &'a str,
        packs: &'a [ObjectId],
        #[serde(with = "serde_bytes")]
        key_id: [u8; 8],
    }
    let mut header = Vec::new();
    ciborium::into_writer(
        &V1Header {
            dataset: DS,
            packs,
            key_id: keys.key_id(),
        },
        &mut header,
    )
    .unwrap();
    let mut body = Vec::new();
    ciborium::into_writer(&entries, &mut body).unwrap();
    let mut out = b"EMBINDX1".to_vec();
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    let sealed = embassy_core::keys::crypto::seal_symmetric(&keys.index_key, &out, &body);
    out.extend_from_slice(&sealed);
    out
}

fn noise_about<'a>(report: &'a VerifyReport, path: &str) -> &'a String {
    report
        .noise
        .iter()
        .find(|n| n.contains(path))
        .unwrap_or_else(|| panic!("{path} is not reported as noise: {:#?}", report.noise))
}

/// What every attack must leave: the new version restores byte for byte, it names none of the
/// forged indexes, and keyless verify calls each forgery noise (not a problem).
fn assert_unpoisoned(lab: &Lab, version: &Version, expected: &[u8], forged: &[String]) {
    let named: Vec<String> = lab
        .manifest_indexes(version)
        .iter()
        .map(|id| layout::index(DS, id))
        .collect();
    for path in forged {
        assert!(
            !named.contains(path),
            "version {} deduplicated against the forged index {path}",
            version.seq
        );
    }
    let restored = lab
        .restore(version)
        .unwrap_or_else(|e| panic!("version {} does not restore: {e}", version.number));
    assert!(
        restored == expected,
        "version {} restores other bytes",
        version.seq
    );
    let report = lab.verify(false);
    assert!(report.is_ok(), "{:#?}", report.problems);
    for path in forged {
        let line = noise_about(&report, path);
        assert!(line.contains("ignored"), "{line}");
        assert!(!report.unreferenced.contains(path));
    }
    let deep = lab.verify(true);
    assert!(deep.is_ok(), "{:#?}", deep.problems);
}

// ---------------------------------------------------------------------------------------------
// The attacks
// ---------------------------------------------------------------------------------------------

/// A sealing credential, revoked after a compromise, still holds the index key. It forges
/// indexes mapping the chunks of its own earlier (accepted) version to the wrong places of the
/// same packs: signed by its revoked key, and unsigned (format 1, and format 2 claiming the
/// root's writer key with no valid signature). The next honest backup restores byte for byte and
/// still deduplicates against the revoked host's honest indexes (named by its accepted version).
#[test]
fn poisoned_index_by_credential_holder_is_not_used_for_dedup() {
    let lab = Lab::new();
    let host = lab.sealing("host-a");
    let host_keyring = lab.keyring(&host);
    let first = data(1, 600 * 1024);
    let v1 = lab.backup(&host_keyring, &first);
    lab.revoke(&host);

    // The attacker: the revoked credential's keys.
    let keys = host_keyring.dataset(DS).unwrap();
    let revoked_key = host.signing_key().unwrap();
    let root_writer = lab.root.writer_signing_key(0).verifying_key().to_bytes();
    let mut forged = Vec::new();
    for (_, header, entries) in lab.honest_indexes(&keys).into_iter().filter(holds_data) {
        let lie = poisoned(&entries);
        assert_ne!(lie, entries);
        forged.push(lab.plant(&forge_unsigned_v1(&keys, &header.packs, &lie)));
        for zero in [true, false] {
            forged.push(lab.plant(&forge_claiming(
                &keys,
                &revoked_key,
                &root_writer,
                &header.packs,
                &lie,
                zero,
            )));
        }
        forged.push(lab.plant(&forge(&keys, &revoked_key, &header.packs, &lie)));
    }
    assert!(forged.len() >= 4);

    // The next honest backup: the same records and some new ones.
    let mut second = first.clone();
    second.extend(data(2, 200 * 1024));
    let v2 = lab.backup(&lab.owner(), &second);
    assert_unpoisoned(&lab, &v2, &second, &forged);
    // Rule (b): the revoked host's honest indexes are named by its accepted version 1, so the
    // new version still reuses its chunks: only the new tail (and the boundary chunk) is stored.
    assert!(
        v2.stats.new_chunks * 3 < v1.stats.new_chunks * 2,
        "version 2 stored {} chunks again (version 1 had {})",
        v2.stats.new_chunks,
        v1.stats.new_chunks
    );
    assert_eq!(lab.restore(&v1).unwrap(), first);
    let report = lab.verify(false);
    let line = noise_about(&report, forged.last().unwrap());
    assert!(line.contains("not an active signer"), "{line}");
    let line = noise_about(&report, &forged[0]);
    assert!(line.contains("unparsable"), "{line}");
    let line = noise_about(&report, &forged[1]);
    assert!(line.contains("signature"), "{line}");
}

/// A reader credential holds the index key but no signing key: whatever it signs with, or
/// claims, its index is never used for deduplication.
#[test]
fn poisoned_index_by_reader_credential_is_not_used_for_dedup() {
    let lab = Lab::new();
    let first = data(3, 500 * 1024);
    lab.backup(&lab.owner(), &first);
    let reader = Credential::reader(
        &lab.root,
        &lab.vault.config().vault_id,
        "registry-team",
        &[DS.into()],
    );
    let reader_keyring = lab.keyring(&reader);
    assert!(
        reader_keyring.signer().is_err(),
        "a reader has no signing key"
    );
    let keys = reader_keyring.dataset(DS).unwrap();
    let own_key = SigningKey::from_bytes(&[42; 32]);
    let root_writer = lab.root.writer_signing_key(0).verifying_key().to_bytes();
    let mut forged = Vec::new();
    for (_, header, entries) in lab.honest_indexes(&keys).into_iter().filter(holds_data) {
        let lie = poisoned(&entries);
        forged.push(lab.plant(&forge(&keys, &own_key, &header.packs, &lie)));
        forged.push(lab.plant(&forge_claiming(
            &keys,
            &own_key,
            &root_writer,
            &header.packs,
            &lie,
            false,
        )));
    }

    let mut second = data(4, 100 * 1024);
    second.extend_from_slice(&first);
    let v2 = lab.backup(&lab.owner(), &second);
    assert_unpoisoned(&lab, &v2, &second, &forged);
    let report = lab.verify(false);
    assert!(noise_about(&report, &forged[0]).contains("not an active signer"));
    assert!(noise_about(&report, &forged[1]).contains("signature"));
}

/// An active but malicious signer signs a lying index and records a version through it. Writers
/// trust an active signer's index (the rule), so only `verify --deep` can tell: it resolves each
/// version's chunks through that version's own indexes and names the version, the index and a
/// chunk whose mapping its pack does not hold. Version 1 is untouched. Keyless verify calls an
/// unsigned forgery lying next to it noise.
#[test]
fn verify_deep_resolves_each_version_through_its_own_mapping() {
    let lab = Lab::new();
    let first = data(5, 500 * 1024);
    let v1 = lab.backup(&lab.owner(), &first);
    let evil = lab.sealing("evil-host");
    let evil_keyring = lab.keyring(&evil);
    let keys = evil_keyring.dataset(DS).unwrap();
    let evil_key = evil.signing_key().unwrap();
    let mut lying = Vec::new();
    for (_, header, entries) in lab.honest_indexes(&keys).into_iter().filter(holds_data) {
        lying.push(lab.plant(&forge(&keys, &evil_key, &header.packs, &poisoned(&entries))));
    }
    let mut second = first.clone();
    second.extend(data(6, 50 * 1024));
    let v2 = lab.backup(&evil_keyring, &second);
    let named: Vec<String> = lab
        .manifest_indexes(&v2)
        .iter()
        .map(|id| layout::index(DS, id))
        .collect();
    assert!(
        lying.iter().any(|p| named.contains(p)),
        "the active signer's version relies on its lying index"
    );
    let unsigned = {
        let (_, header, entries) = &lab.honest_indexes(&keys)[0];
        lab.plant(&forge_unsigned_v1(&keys, &header.packs, &poisoned(entries)))
    };

    // Keyless: nothing to see but the unsigned forgery, as noise.
    let report = lab.verify(false);
    assert!(report.is_ok(), "{:#?}", report.problems);
    assert!(noise_about(&report, &unsigned).contains("unparsable"));

    // Deep: version 2 is damaged, named with its index and a chunk; version 1 is not.
    let deep = lab.verify(true);
    assert!(!deep.is_ok());
    let lines: Vec<&String> = deep
        .problems
        .iter()
        .filter(|p| p.contains(&format!("version {} of {DS}", v2.number)))
        .collect();
    assert!(!lines.is_empty(), "{:#?}", deep.problems);
    for line in &lines {
        assert!(lying.iter().any(|p| line.contains(p.as_str())), "{line}");
        assert!(
            line.contains("chunk ") && line.contains("does not hold"),
            "{line}"
        );
    }
    assert!(
        !deep
            .problems
            .iter()
            .any(|p| p.contains(&format!("version {} of {DS}", v1.number))),
        "{:#?}",
        deep.problems
    );
    let summary = deep.datasets.iter().find(|d| d.name == DS).unwrap();
    assert_eq!(summary.versions_complete, 1, "only version 1 is complete");
    assert!(lab.restore(&v2).is_err(), "version 2 points at wrong bytes");
    assert_eq!(lab.restore(&v1).unwrap(), first);
}

/// A manifest naming a lying index before the true one (what an active signer can record): the
/// reader tries the next mapping of a chunk when one does not open, so the version restores,
/// while `verify --deep` still reports the lying index.
#[test]
fn reader_tries_the_next_mapping_when_an_index_of_the_version_lies() {
    let lab = Lab::new();
    let first = data(7, 400 * 1024);
    let v1 = lab.backup(&lab.owner(), &first);
    let keys = lab.root_keys();
    let writer = lab.root.writer_signing_key(0);
    let honest = lab.honest_indexes(&keys);
    assert_eq!(lab.manifest_indexes(&v1).len(), honest.len());
    let mut lying = Vec::new();
    for (_, header, entries) in &honest {
        let path = lab.plant(&forge(&keys, &writer, &header.packs, &poisoned(entries)));
        lying.push(layout::id_in_path(&path).unwrap());
    }
    // Version 2: version 1's content, its manifest naming the lying indexes first.
    let path = layout::manifest(DS, &v1.manifest);
    let (_, body) = manifest::decode(&keys, &path, &lab.site.get(&path).unwrap()).unwrap();
    let mut names = lying.clone();
    names.extend(honest.iter().map(|(id, _, _)| *id));
    let bytes = manifest::encode(&keys, names, &body);
    let manifest_id = ObjectId::of(&bytes);
    lab.site
        .put(&layout::manifest(DS, &manifest_id), &bytes)
        .unwrap();
    let head = lab.vault.history(DS).unwrap().pop();
    ledger::append(
        lab.site.as_ref(),
        &writer,
        DS,
        head.as_ref(),
        Event::VersionAdded {
            manifest: manifest_id,
            kind: v1.kind,
            captured_at_ns: v1.captured_at_ns,
            stats: v1.stats,
            wal_start: None,
        },
    )
    .unwrap();
    let v2 = lab.vault.find_version(DS, None).unwrap();
    assert_eq!(v2.manifest, manifest_id);
    assert_eq!(lab.restore(&v2).unwrap(), first, "the true mapping is used");
    let reader = VersionReader::open_with(lab.vault.site().clone(), &lab.owner(), &v2).unwrap();
    let tree = reader.root().unwrap();
    let chunk = tree.nodes[0].content[0];
    assert_eq!(reader.mappings(&chunk).len(), 2, "both mappings are kept");
    let deep = lab.verify(true);
    assert!(
        deep.problems
            .iter()
            .any(|p| p.contains(&format!("version {} of {DS}", v2.number))
                && p.contains("the index lies")),
        "{:#?}",
        deep.problems
    );
}

/// A sealing credential's interrupted backup leaves signed packs and indexes that its rerun
/// reuses (it is still an active signer). Once the credential is revoked, its orphaned indexes,
/// which no accepted version names, are not trusted any more: the next backup stores those
/// chunks again, and restores byte for byte.
#[test]
fn interrupted_backup_still_resumes_and_reuses_its_own_packs() {
    let lab = Lab::new();
    let host = lab.sealing("host-b");
    let keyring = lab.keyring(&host);
    let content = data(8, 500 * 1024);
    {
        let session = BackupSession::begin(&lab.vault, &keyring, DS).unwrap();
        session.store_reader(&content[..], &Silent).unwrap();
        // Dropped without finishing: a crash after the packs and indexes are durable.
    }
    let orphans = lab.site.list(&layout::index_prefix(DS)).unwrap();
    assert!(!orphans.is_empty(), "the interrupted run left indexes");
    assert!(lab.vault.versions(DS).unwrap().is_empty());
    let v1 = lab.backup(&keyring, &content);
    assert!(
        v1.stats.new_chunks <= 2,
        "the rerun stored {} chunks again (only the tree is new)",
        v1.stats.new_chunks
    );
    assert_eq!(lab.restore(&v1).unwrap(), content);

    // Another interrupted run of other content, then revocation: those orphans are not reused.
    let other = data(9, 300 * 1024);
    {
        let session = BackupSession::begin(&lab.vault, &keyring, DS).unwrap();
        session.store_reader(&other[..], &Silent).unwrap();
    }
    lab.revoke(&host);
    let before: HashSet<String> = lab
        .site
        .list(&layout::index_prefix(DS))
        .unwrap()
        .into_iter()
        .map(|i| i.path)
        .collect();
    let v2 = lab.backup(&lab.owner(), &other);
    assert!(
        v2.stats.new_chunks >= 10,
        "orphans of a revoked key were reused"
    );
    assert_eq!(lab.restore(&v2).unwrap(), other);
    // ... while version 1's indexes, named by an accepted version, still are.
    let mut both = content.clone();
    both.extend_from_slice(&other);
    let v3 = lab.backup(&lab.owner(), &both);
    assert!(v3.stats.new_chunks <= 4, "{}", v3.stats.new_chunks);
    assert_eq!(lab.restore(&v3).unwrap(), both);
    let report = lab.verify(false);
    assert!(report.is_ok(), "{:#?}", report.problems);
    let orphan_noise: Vec<&String> = report
        .noise
        .iter()
        .filter(|n| before.iter().any(|p| n.contains(p.as_str())))
        .collect();
    assert!(
        !orphan_noise.is_empty(),
        "revoked orphans are noise: {:#?}",
        report
    );
}

/// The cost of trust: with a few hundred versions, starting a backup reads no manifest when
/// every index is signed by an active signer, and reads them (in parallel) only when an index of
/// a former signer is present. Prints both start times.
#[test]
fn backup_start_stays_cheap_with_hundreds_of_versions() {
    let lab = Lab::new();
    let owner = lab.owner();
    let host = lab.sealing("host-c");
    let host_keyring = lab.keyring(&host);
    for i in 0..200u64 {
        let keyring = if i % 2 == 0 { &owner } else { &host_keyring };
        lab.backup(keyring, &data(100 + i, 8 * 1024));
    }
    let time_begin = |label: &str| {
        let started = Instant::now();
        let session = BackupSession::begin(&lab.vault, &owner, DS).unwrap();
        let took = started.elapsed();
        drop(session);
        eprintln!("backup start, 200 versions, {label}: {took:?}");
        took
    };
    let all_active = time_begin("every index by an active signer");
    lab.revoke(&host);
    let former = time_begin("half the indexes by a revoked signer (manifests read)");
    // A forged index of the revoked key that no manifest names: every manifest is read.
    let keys = host_keyring.dataset(DS).unwrap();
    let (_, header, entries) = &lab.honest_indexes(&keys)[0];
    lab.plant(&forge(
        &keys,
        &host.signing_key().unwrap(),
        &header.packs,
        &poisoned(entries),
    ));
    let worst = time_begin("plus one forged index of the revoked signer (all manifests read)");
    for took in [all_active, former, worst] {
        assert!(took.as_secs() < 20, "backup start took {took:?}");
    }
}
