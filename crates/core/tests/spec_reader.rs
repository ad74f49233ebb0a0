//! An independent reader, written from docs/format.md alone (sections 3, 4 and 5), that opens
//! a key file and a pack made by the real code: it uses the crypto crates the spec names
//! (Argon2id, XChaCha20-Poly1305, BLAKE3, HPKE, ChaCha20-Poly1305, zstd) directly and none of
//! embassy_core's key-file, key or pack code. When the code and the spec part ways, this test
//! fails: fix whichever is wrong.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::engine::writer::BackupSession;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::Tree;
use embassy_core::keys::keyfile::{KdfParams, KeyFile};
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_testkit::memory::MemorySite;
use hpke::{Deserializable, Kem as _, Serializable};

const PASS: &str = "spec reader passphrase";
const DATASET: &str = "spec";

// ---------------------------------------------------------------------------------------------
// The reader, from the spec
// ---------------------------------------------------------------------------------------------

/// §3: `KDF(context, parts) = BLAKE3-derive_key(context, R || for each part: u64le(len) || part)`.
fn kdf(root: &[u8; 32], context: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    hasher.update(root);
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    *hasher.finalize().as_bytes()
}

/// §3 "Key files": the root secret R from a key file and its passphrase.
fn open_key_file(json: &[u8], passphrase: &str) -> [u8; 32] {
    let file: serde_json::Value = serde_json::from_slice(json).unwrap();
    let text = |name: &str| {
        file[name]
            .as_str()
            .unwrap_or_else(|| panic!("key file field {name:?} missing: {file}"))
            .to_string()
    };
    assert_eq!(text("format"), "data-embassy-key-v1");
    assert_eq!(text("kdf"), "argon2id");
    let purpose = text("purpose");
    assert_eq!(purpose, "root");
    let params = &file["kdf_params"];
    let param = |name: &str| params[name].as_u64().unwrap() as u32;
    let (m, t, p) = (
        param("memory_kib"),
        param("iterations"),
        param("parallelism"),
    );
    let salt = hex::decode(text("salt")).unwrap();
    assert_eq!(salt.len(), 16);
    let mut k = [0u8; 32];
    argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(m, t, p, Some(32)).unwrap(),
    )
    .hash_password_into(passphrase.as_bytes(), &salt, &mut k)
    .unwrap();
    let sealed = hex::decode(text("sealed_secret")).unwrap();
    let aad = format!(
        "data-embassy-key-v1|{}|{purpose}|argon2id|{m}|{t}|{p}",
        text("vault_id")
    );
    // §4 SSEAL: nonce (24) || XChaCha20-Poly1305 ciphertext.
    let (nonce, ciphertext) = sealed.split_at(24);
    let plain = chacha20poly1305::XChaCha20Poly1305::new((&k).into())
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad: aad.as_bytes(),
            },
        )
        .expect("the key file opens as docs/format.md says");
    plain.try_into().unwrap()
}

/// §4 OSEAL nonce: `u64le(n) || 00 00 00 00`.
fn nonce(n: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&n.to_le_bytes());
    out
}

/// One blob of a pack as §5 describes it (a delta's plaintext is filled in once its base is
/// known, by [`apply_deltas`]).
struct Blob {
    kind: u64,
    id: [u8; 32],
    raw_length: u64,
    /// A delta's base and zstd frame.
    delta: Option<([u8; 32], Vec<u8>)>,
    plaintext: Vec<u8>,
}

/// §5 "Delta blobs": each delta's frame decompressed with its base's plaintext (a full data
/// blob) as raw-content dictionary, its length and chunk id checked.
fn apply_deltas(root: &[u8; 32], dataset: &str, blobs: &mut [Blob]) {
    let epoch = 0u32.to_le_bytes();
    let parts: [&[u8]; 2] = [dataset.as_bytes(), &epoch];
    let chunk_id_key = kdf(root, "data-embassy 2026 dataset chunk-id key v1", &parts);
    let full: std::collections::HashMap<[u8; 32], Vec<u8>> = blobs
        .iter()
        .filter(|b| b.kind == 0)
        .map(|b| (b.id, b.plaintext.clone()))
        .collect();
    for blob in blobs.iter_mut().filter(|b| b.kind == 2) {
        let (base, frame) = blob.delta.as_ref().unwrap();
        let base = &full[base];
        assert!(base.len() >= 8 && base[..4] != [0x37, 0xa4, 0x30, 0xec]);
        let plaintext = zstd::bulk::Decompressor::with_dictionary(base)
            .unwrap()
            .decompress(frame, blob.raw_length as usize)
            .expect("a delta decompresses against its base as docs/format.md says");
        assert_eq!(plaintext.len() as u64, blob.raw_length);
        assert_eq!(
            blake3::keyed_hash(&chunk_id_key, &plaintext).as_bytes(),
            &blob.id
        );
        blob.plaintext = plaintext;
    }
}

/// §5: every blob of a pack, opened and checked.
fn open_pack(root: &[u8; 32], dataset: &str, pack: &[u8]) -> Vec<Blob> {
    let epoch = 0u32.to_le_bytes();
    let parts: [&[u8]; 2] = [dataset.as_bytes(), &epoch];
    let seed = kdf(root, "data-embassy 2026 dataset reader key v1", &parts);
    let chunk_id_key = kdf(root, "data-embassy 2026 dataset chunk-id key v1", &parts);
    // §3: the reader key pair is HPKE DeriveKeyPair(seed) of DHKEM(X25519, HKDF-SHA256).
    let (private, public) = hpke::kem::X25519HkdfSha256::derive_keypair(&seed);
    let public_hash = blake3::hash(&public.to_bytes());
    let key_id = &public_hash.as_bytes()[..8];

    assert_eq!(&pack[..8], b"EMBPACK1");
    assert_eq!(&pack[8..16], key_id, "the pack names the dataset's key id");
    let enc =
        <hpke::kem::X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&pack[16..48]).unwrap();
    let mut info = b"data-embassy pack v1\0".to_vec();
    info.extend_from_slice(dataset.as_bytes());
    info.push(0);
    info.extend_from_slice(key_id);
    let context = hpke::setup_receiver::<
        hpke::aead::ExportOnlyAead,
        hpke::kdf::HkdfSha256,
        hpke::kem::X25519HkdfSha256,
    >(&hpke::OpModeR::Base, &private, &enc, &info)
    .unwrap();
    let mut object_key = [0u8; 32];
    context.export(b"object key", &mut object_key).unwrap();
    let aead = chacha20poly1305::ChaCha20Poly1305::new((&object_key).into());

    // Directory: its ciphertext ends where the trailing u32le(length) begins.
    let len_at = pack.len() - 4;
    let dir_len = u32::from_le_bytes(pack[len_at..].try_into().unwrap()) as usize;
    let directory = aead
        .decrypt(
            (&nonce(u64::MAX)).into(),
            Payload {
                msg: &pack[len_at - dir_len..len_at],
                aad: b"EMBPDIR1",
            },
        )
        .expect("the pack directory opens as docs/format.md says");
    let entries: ciborium::Value = ciborium::from_reader(&directory[..]).unwrap();
    let mut blobs = Vec::new();
    for entry in entries.as_array().unwrap() {
        // BlobEntry: [kind, id, offset, length, raw_length], and [.., base] for a delta.
        let fields = entry.as_array().expect("a BlobEntry is a CBOR array");
        let int = |i: usize| u64::try_from(fields[i].as_integer().unwrap()).unwrap();
        let (kind, offset, length, raw_length) = (int(0), int(2), int(3), int(4));
        assert_eq!(fields.len(), if kind == 2 { 6 } else { 5 });
        let id: [u8; 32] = fields[1].as_bytes().unwrap().as_slice().try_into().unwrap();
        let mut aad = b"EMBBLOB1".to_vec();
        aad.push(kind as u8);
        aad.extend_from_slice(&id);
        let base: Option<[u8; 32]> =
            (kind == 2).then(|| fields[5].as_bytes().unwrap().as_slice().try_into().unwrap());
        if let Some(base) = &base {
            aad.extend_from_slice(base);
        }
        let sealed = &pack[offset as usize..(offset + length) as usize];
        let message = aead
            .decrypt(
                (&nonce(offset)).into(),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .expect("a blob opens as docs/format.md says");
        if let Some(base) = base {
            assert_eq!(message[0], 2, "a delta's compression is 2");
            blobs.push(Blob {
                kind,
                id,
                raw_length,
                delta: Some((base, message[1..].to_vec())),
                plaintext: Vec::new(),
            });
            continue;
        }
        let plaintext = match message[0] {
            0 => message[1..].to_vec(),
            1 => zstd::decode_all(&message[1..]).unwrap(),
            other => panic!("unknown compression {other}"),
        };
        assert_eq!(plaintext.len() as u64, raw_length);
        assert_eq!(
            blake3::keyed_hash(&chunk_id_key, &plaintext).as_bytes(),
            &id,
            "the chunk id is BLAKE3-keyed(chunk-id key, plaintext)"
        );
        blobs.push(Blob {
            kind,
            id,
            raw_length,
            delta: None,
            plaintext,
        });
    }
    blobs
}

/// A previous version whose page 0 is `base` (what a file backup reads from the vault).
struct Fixed {
    base: embassy_core::id::ChunkId,
    plain: Vec<u8>,
}

impl embassy_core::engine::writer::DeltaBases for Fixed {
    fn base_of(&self, page: usize) -> Option<embassy_core::id::ChunkId> {
        (page == 0).then_some(self.base)
    }
    fn read_bases(
        &self,
        bases: &std::collections::HashSet<embassy_core::id::ChunkId>,
    ) -> embassy_core::Result<std::collections::HashMap<embassy_core::id::ChunkId, Vec<u8>>> {
        Ok(bases.iter().map(|b| (*b, self.plain.clone())).collect())
    }
}

// ---------------------------------------------------------------------------------------------
// The test: the real code writes, the spec reads
// ---------------------------------------------------------------------------------------------

#[test]
fn a_key_file_and_a_pack_open_from_the_spec_alone() {
    let site = Arc::new(MemorySite::default());
    let root = RootSecret::generate();
    let vault = Vault::create(site.clone(), &root).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    // One blob that compresses and one that does not, and a tree.
    let compressible = b"the same words again and again; ".repeat(200);
    let random: Vec<u8> = (0..5000u32)
        .map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[0])
        .collect();
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    session
        .store_blob(BlobKind::Data, compressible.clone())
        .unwrap();
    session.store_blob(BlobKind::Data, random.clone()).unwrap();
    let tree = session
        .store_blob(BlobKind::Tree, Tree::default().encode())
        .unwrap();
    session
        .finish(VersionKind::Tree, tree, vec![], VersionStats::default())
        .unwrap();
    // A second version stores a changed page as a delta against the first one's page.
    let page: Vec<u8> = (0..8192u32)
        .map(|i| blake3::hash(&(i / 4).to_le_bytes()).as_bytes()[0] | 1)
        .collect();
    let mut changed = page.clone();
    changed[100..140].fill(7);
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    let page_id = session.store_blob(BlobKind::Data, page.clone()).unwrap();
    let tree = session
        .store_blob(BlobKind::Tree, Tree::default().encode())
        .unwrap();
    session
        .finish(VersionKind::Tree, tree, vec![], VersionStats::default())
        .unwrap();
    let session = BackupSession::begin(&vault, &keyring, DATASET).unwrap();
    let previous = Fixed {
        base: page_id,
        plain: page.clone(),
    };
    session
        .store_pages(
            &changed[..],
            8192,
            &previous,
            &embassy_core::progress::Silent,
        )
        .unwrap();
    session
        .finish(VersionKind::Tree, tree, vec![], VersionStats::default())
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("vault.key");
    let cheap = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };
    KeyFile::seal(&root, &vault.config().vault_id, PASS.as_bytes(), cheap)
        .unwrap()
        .store(&key_path)
        .unwrap();

    // From here on, only bytes and the spec.
    let r = open_key_file(&std::fs::read(&key_path).unwrap(), PASS);
    assert_eq!(&r, root.expose());
    // Data and tree blobs may land in one pack or in two (the writer packs in parallel); the
    // second and third versions add one pack each.
    let packs = site.list(&format!("packs/{DATASET}/")).unwrap();
    assert!(packs.len() >= 3 && packs.len() <= 4, "{packs:?}");
    let mut blobs = Vec::new();
    for pack in &packs {
        let bytes = site.get(&pack.path).unwrap();
        // §1: an object is named by the BLAKE3 hash of its bytes.
        assert!(pack
            .path
            .ends_with(&blake3::hash(&bytes).to_hex().to_string()));
        blobs.extend(open_pack(&r, DATASET, &bytes));
    }
    apply_deltas(&r, DATASET, &mut blobs);
    assert_eq!(blobs.len(), 5);
    assert!(blobs.iter().any(|b| b.kind == 0 && b.plaintext == page));
    assert!(
        blobs.iter().any(|b| b.kind == 2 && b.plaintext == changed),
        "the changed page is a delta, read from the spec alone"
    );
    assert!(blobs
        .iter()
        .any(|b| b.kind == 0 && b.plaintext == compressible));
    assert!(blobs.iter().any(|b| b.kind == 0 && b.plaintext == random));
    assert!(blobs
        .iter()
        .any(|b| b.kind == 1 && b.plaintext == Tree::default().encode()));
}
