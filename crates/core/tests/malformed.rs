//! Every parser of bytes that come from a site, fed random bytes and mutated valid objects: it
//! must return an error, never panic, and accept a changed object only when what it decodes is
//! exactly what was written (for objects under a MAC or signature) or keeps the parser's own
//! promises (trees, which the blob layer authenticates).
//!
//! The cargo-fuzz targets in `fuzz/` explore the same parsers with coverage guidance; this test
//! keeps them honest on stable Rust in every `cargo test`. Valid objects are made with the public
//! encoders; the "writer" properties re-seal or re-sign mutated plaintext to reach the CBOR
//! decoding behind the authentication, as a malicious writer could.

use embassy_testkit::memory::MemorySite;
use std::path::Path;
use std::sync::OnceLock;

use embassy_core::format::config::VaultConfig;
use embassy_core::format::index;
use embassy_core::format::layout;
use embassy_core::format::manifest::{self, ManifestBody, VersionKind, VersionStats};
use embassy_core::format::pack::{self, BlobCompressor, BlobEntry, BlobKind, PackWriter};
use embassy_core::format::tree::{self, Node, NodeKind, Tree};
use embassy_core::history::ledger::{self, Entry, Event};
use embassy_core::id::ObjectId;
use embassy_core::keys::crypto::{self, ObjectKey};
use embassy_core::keys::keyfile::{KdfParams, KeyFile};
use embassy_core::keys::{self, DatasetKeys, RootSecret};
use proptest::prelude::*;
use proptest::sample::Index;

const PATH: &str = "test/object";
const PASSPHRASE: &[u8] = b"malformed passphrase";
const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallelism: 1,
};

// ----------------------------------------------------------------------------------------------
// Valid objects, made once
// ----------------------------------------------------------------------------------------------

struct Objects {
    root: RootSecret,
    keys: DatasetKeys,
    writer: ed25519_dalek::SigningKey,
    signers: Vec<[u8; 32]>,
    pack: Vec<u8>,
    pack_blobs: Vec<(BlobEntry, Vec<u8>)>,
    index: Vec<u8>,
    index_body: Vec<u8>,
    manifest: Vec<u8>,
    manifest_body: Vec<u8>,
    ledger: Vec<u8>,
    tree: Vec<u8>,
    config: Vec<u8>,
    config_sig: Vec<u8>,
    keyfile: Vec<u8>,
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

fn sample_tree(keys: &DatasetKeys) -> Tree {
    let node = |name: &[u8], kind: NodeKind| Node {
        name: name.to_vec(),
        kind,
        mode: 0o644,
        uid: 1000,
        gid: 1000,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_001,
        inode: 42,
        size: 0,
        content: vec![],
        subtree: None,
        target: None,
    };
    let mut file = node(b"data.csv", NodeKind::File);
    file.size = 96;
    file.content = vec![keys.chunk_id(b"a"), keys.chunk_id(b"b")];
    let mut dir = node(b"dir", NodeKind::Dir);
    dir.subtree = Some(keys.chunk_id(b"subtree"));
    let mut link = node(b"link", NodeKind::Symlink);
    link.target = Some(b"../elsewhere".to_vec());
    Tree {
        nodes: vec![file, dir, link, node(b"pipe", NodeKind::Fifo)],
    }
}

fn objects() -> &'static Objects {
    static OBJECTS: OnceLock<Objects> = OnceLock::new();
    OBJECTS.get_or_init(|| {
        let root = RootSecret::from_bytes(&[7; 32]);
        let keys = root.dataset_keys("fuzz", 0);
        let writer = root.writer_signing_key(0);
        let signers = vec![
            writer.verifying_key().to_bytes(),
            root.writer_signing_key(1).verifying_key().to_bytes(),
        ];

        let tree = sample_tree(&keys).encode();
        let compressible = b"registry row;".repeat(60);
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut comp = BlobCompressor::new().unwrap();
        let mut writer_pack = PackWriter::new(&keys, 0);
        let raws = [
            (BlobKind::Data, compressible),
            (BlobKind::Data, noise),
            (BlobKind::Tree, tree.clone()),
        ];
        for (kind, raw) in &raws {
            writer_pack
                .add(&mut comp, *kind, keys.chunk_id(raw), raw)
                .unwrap();
        }
        let (pack, entries) = writer_pack.finish();
        let pack_blobs: Vec<(BlobEntry, Vec<u8>)> = entries
            .iter()
            .zip(raws)
            .map(|(e, (_, raw))| (*e, raw))
            .collect();
        let pack_id = ObjectId::of(&pack);

        let index = index::encode(&keys, &writer, &[(pack_id, entries.clone())]);
        let index_body = cbor(
            &entries
                .iter()
                .map(|b| index::IndexEntry { pack: 0, blob: *b })
                .collect::<Vec<_>>(),
        );

        let body = ManifestBody {
            kind: VersionKind::Tree,
            root: keys.chunk_id(&tree),
            captured_at_ns: 1,
            completed_at_ns: 2,
            host: "host".into(),
            source: vec!["/srv".into()],
            stats: VersionStats::default(),
            root_node: None,
            properties: Default::default(),
        };
        let manifest = manifest::encode(&keys, vec![ObjectId::of(&index)], &body);
        let manifest_body = cbor(&body);

        let entry = Entry {
            dataset: "fuzz".into(),
            seq: 1,
            prev: None,
            time_ns: 3,
            signer: signers[0],
            event: Event::VersionAdded {
                manifest: ObjectId::of(&manifest),
                kind: VersionKind::Tree,
                captured_at_ns: 1,
                stats: VersionStats::default(),
                wal_start: None,
            },
        };
        let ledger = ledger::encode(&entry, &writer);

        let config = VaultConfig::new(&root);
        let config_bytes = serde_json::to_vec_pretty(&config).unwrap();
        let config_sig = hex::encode(keys::sign(
            &root.root_signing_key(),
            b"data-embassy config v1",
            &config_bytes,
        ))
        .into_bytes();

        let keyfile = serde_json::to_vec_pretty(
            &KeyFile::seal(&root, &config.vault_id, PASSPHRASE, FAST_KDF).unwrap(),
        )
        .unwrap();

        Objects {
            root,
            keys,
            writer,
            signers,
            pack,
            pack_blobs,
            index,
            index_body,
            manifest,
            manifest_body,
            ledger,
            tree,
            config: config_bytes,
            config_sig,
            keyfile,
        }
    })
}

// ----------------------------------------------------------------------------------------------
// The parsers, as the engine calls them
// ----------------------------------------------------------------------------------------------

/// What `verify` does with a whole pack: header, directory, every blob.
fn read_pack(bytes: &[u8]) -> embassy_core::Result<Vec<(BlobEntry, Vec<u8>)>> {
    let o = objects();
    let key = pack::open_key(&o.keys, PATH, bytes)?;
    let entries = pack::read_directory(&key, PATH, bytes)?;
    entries
        .into_iter()
        .map(|e| {
            let start = e.offset as usize;
            let end = start + e.length as usize;
            assert!(
                start >= pack::HEADER_LEN && end <= bytes.len(),
                "read_directory returned {e:?} outside a pack of {} bytes",
                bytes.len()
            );
            let raw = pack::open_blob(&key, &o.keys, PATH, &e, &bytes[start..end])?;
            Ok((e, raw))
        })
        .collect()
}

fn read_index(bytes: &[u8]) -> embassy_core::Result<(index::IndexHeader, Vec<index::IndexEntry>)> {
    if let Ok((_, body_at)) = index::decode_header(PATH, bytes) {
        assert!(body_at <= bytes.len());
    }
    let (header, entries) = index::decode(&objects().keys, PATH, bytes)?;
    assert!(entries
        .iter()
        .all(|e| (e.pack as usize) < header.packs.len()));
    Ok((header, entries))
}

fn read_manifest(
    bytes: &[u8],
) -> embassy_core::Result<(manifest::ManifestHeader, manifest::ManifestBody)> {
    if let Ok((_, end)) = manifest::decode_header(PATH, bytes) {
        assert!(end + crypto::ENCAPSULATED_LEN <= bytes.len());
    }
    manifest::decode(&objects().keys, PATH, bytes)
}

/// `ledger::decode` checks the signature of the key the entry names; whether that key may sign is
/// `load_history`'s decision, restated here with the fixed signer list.
fn read_ledger(bytes: &[u8]) -> Option<Entry> {
    ledger::decode(PATH, bytes)
        .ok()
        .filter(|e| objects().signers.contains(&e.signer))
}

fn read_tree(bytes: &[u8]) -> embassy_core::Result<Tree> {
    let tree = Tree::decode(bytes, "test tree")?;
    for pair in tree.nodes.windows(2) {
        assert!(pair[0].name < pair[1].name, "accepted an unsorted tree");
    }
    for node in &tree.nodes {
        assert!(tree::is_safe_name(&node.name), "accepted {:?}", node.name);
    }
    let again = Tree::decode(&tree.encode(), "again").expect("re-encoded tree decodes");
    assert_eq!(again, tree, "tree does not survive a round trip");
    Ok(tree)
}

fn load_config(body: &[u8], sig: &[u8]) -> embassy_core::Result<Option<VaultConfig>> {
    let site = MemorySite::with(&[(layout::CONFIG, body), (layout::CONFIG_SIGNATURE, sig)]);
    let config = VaultConfig::try_load(&site)?;
    if let Some(c) = &config {
        let _ = c.signer_keys();
        let _ = c.check_root(&objects().root);
    }
    Ok(config)
}

/// Opens a key file the way the CLI does, but never runs Argon2id above its cheapest setting.
fn open_keyfile(json: &[u8]) -> Option<RootSecret> {
    let file: KeyFile = serde_json::from_slice(json).ok()?;
    let p = file.kdf_params;
    let rejected = !(8 * 1024..=4 * 1024 * 1024).contains(&p.memory_kib)
        || !(1..=100).contains(&p.iterations)
        || !(1..=64).contains(&p.parallelism);
    if !(rejected || p == FAST_KDF) {
        return None;
    }
    file.open(PASSPHRASE, Path::new("test.key")).ok()
}

// ----------------------------------------------------------------------------------------------
// Mutations
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Cut the object short.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove a run of bytes.
    Remove(Index, usize),
    /// Overwrite a byte with a value CBOR and length fields find interesting.
    Poke(Index, u8),
    /// Rewrite one of the object's u32 LE length fields: `Some(v)` sets it, `None` nudges it.
    Length(Index, Option<u32>, i8),
    /// Add bytes at the end.
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0x00u8),
        Just(0xff),
        Just(0x7f),
        Just(0x80),
        Just(0x1a),
        Just(0x1b),
        Just(0x5b),
        Just(0x9b),
        Just(0x9f),
        Just(0xbf),
        Just(0xf6),
        any::<u8>(),
    ];
    let length = prop_oneof![
        Just(Some(0u32)),
        Just(Some(u32::MAX)),
        Just(Some(u32::MAX - 11)),
        any::<u32>().prop_map(Some),
        Just(None),
    ];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..64).prop_map(|(i, n)| Mutation::Remove(i, n)),
        2 => (any::<Index>(), interesting).prop_map(|(i, v)| Mutation::Poke(i, v)),
        2 => (any::<Index>(), length, -8i8..8).prop_map(|(i, v, d)| Mutation::Length(i, v, d)),
        1 => prop::collection::vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

/// Applies mutations; `length_fields` are the offsets of the object's u32 LE length fields
/// (negative offsets count from the end).
fn mutate(original: &[u8], mutations: &[Mutation], length_fields: &[isize]) -> Vec<u8> {
    let mut b = original.to_vec();
    for m in mutations {
        match m {
            Mutation::Flip(i, bit) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] ^= 1 << bit;
            }
            Mutation::Truncate(i) => b.truncate(i.index(b.len() + 1)),
            Mutation::Insert(i, bytes) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(i, n) if !b.is_empty() => {
                let at = i.index(b.len());
                let end = (at + n).min(b.len());
                b.drain(at..end);
            }
            Mutation::Poke(i, v) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] = *v;
            }
            Mutation::Length(i, value, delta) if !length_fields.is_empty() => {
                let field = length_fields[i.index(length_fields.len())];
                let at = if field < 0 {
                    b.len() as isize + field
                } else {
                    field
                };
                if at >= 0 && at as usize + 4 <= b.len() {
                    let at = at as usize;
                    let old = u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
                    let new = value.unwrap_or_else(|| old.wrapping_add(*delta as i32 as u32));
                    b[at..at + 4].copy_from_slice(&new.to_le_bytes());
                }
            }
            Mutation::Append(bytes) => b.extend_from_slice(bytes),
            _ => {}
        }
    }
    b
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

fn random_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..1024)
}

/// Random bytes after the right magic, so they get past the first check.
fn with_magic(magic: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(tail);
    out
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ----------------------------------------------------------------------------------------------
// The properties
// ----------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_bytes_are_rejected(bytes in random_bytes(), len in any::<u32>()) {
        let o = objects();
        let mut framed = bytes.clone();
        if framed.len() >= 4 {
            framed[..4].copy_from_slice(&len.to_le_bytes());
        }
        for tail in [&bytes, &framed] {
            prop_assert!(read_pack(tail).is_err());
            prop_assert!(read_pack(&with_magic(pack::MAGIC, tail)).is_err());
            let mut keyed = with_magic(pack::MAGIC, &o.keys.key_id());
            keyed.extend_from_slice(tail);
            prop_assert!(read_pack(&keyed).is_err());
            prop_assert!(read_index(tail).is_err());
            prop_assert!(read_index(&with_magic(index::MAGIC, tail)).is_err());
            prop_assert!(read_manifest(tail).is_err());
            prop_assert!(read_manifest(&with_magic(manifest::MAGIC, tail)).is_err());
            prop_assert!(read_ledger(tail).is_none());
            prop_assert!(read_ledger(&with_magic(ledger::MAGIC, tail)).is_none());
            let _ = read_tree(tail);
            prop_assert!(!matches!(load_config(tail, &o.config_sig), Ok(Some(_))));
            prop_assert!(!matches!(load_config(&o.config, tail), Ok(Some(_))));
            prop_assert!(open_keyfile(tail).is_none());
        }
    }

    #[test]
    fn tampered_packs_are_rejected(m in mutations()) {
        let o = objects();
        let bytes = mutate(&o.pack, &m, &[-4]);
        match read_pack(&bytes) {
            // Bytes outside every blob and the directory are not covered by the pack's AEAD (the
            // object id, a hash of all the bytes, covers them); what a pack yields cannot change.
            Ok(blobs) => prop_assert_eq!(blobs, o.pack_blobs.clone()),
            Err(_) => prop_assert_ne!(bytes, o.pack.clone()),
        }
    }

    #[test]
    fn tampered_indexes_are_rejected(m in mutations()) {
        let o = objects();
        let bytes = mutate(&o.index, &m, &[8]);
        prop_assert_eq!(read_index(&bytes).is_ok(), bytes == o.index);
    }

    #[test]
    fn tampered_manifests_are_rejected(m in mutations()) {
        let o = objects();
        let bytes = mutate(&o.manifest, &m, &[8]);
        prop_assert_eq!(read_manifest(&bytes).is_ok(), bytes == o.manifest);
    }

    #[test]
    fn tampered_ledger_entries_are_rejected(m in mutations()) {
        let o = objects();
        let bytes = mutate(&o.ledger, &m, &[8]);
        prop_assert_eq!(read_ledger(&bytes).is_some(), bytes == o.ledger);
    }

    #[test]
    fn mutated_trees_keep_their_promises(m in mutations()) {
        let o = objects();
        let bytes = mutate(&o.tree, &m, &[]);
        // Trees have no MAC of their own, so a change may still be a valid tree; read_tree asserts
        // that whatever is accepted is sorted, unique, safe and round-trips.
        let _ = read_tree(&bytes);
    }

    #[test]
    fn tampered_configs_are_rejected(m in mutations(), on_signature in any::<bool>()) {
        let o = objects();
        if on_signature {
            let sig = mutate(&o.config_sig, &m, &[]);
            let accepted = matches!(load_config(&o.config, &sig), Ok(Some(_)));
            // hex accepts either case and the file is trimmed: only the same signature may pass.
            let same = hex::decode(sig.trim_ascii()).ok() == hex::decode(&o.config_sig).ok();
            prop_assert_eq!(accepted, same);
        } else {
            let body = mutate(&o.config, &m, &[]);
            let accepted = matches!(load_config(&body, &o.config_sig), Ok(Some(_)));
            prop_assert_eq!(accepted, body == o.config);
        }
    }

    // Writers hold the keys that seal packs, index bodies and manifests and sign ledger entries:
    // a buggy or malicious one can put any plaintext behind a valid MAC. Never a panic.

    #[test]
    fn writer_sealed_garbage_never_panics(m in mutations(), which in 0u8..4) {
        let o = objects();
        match which {
            0 => {
                let body = mutate(&o.index_body, &m, &[]);
                let _ = read_index(&reseal_index(&body, &o.writer));
            }
            1 => {
                let body = mutate(&o.manifest_body, &m, &[]);
                let _ = read_manifest(&reseal_manifest(&body));
            }
            2 => {
                let (_, body) = ledger_parts(&o.ledger);
                let body = mutate(body, &m, &[]);
                let _ = read_ledger(&sign_ledger(&body, &o.writer));
            }
            _ => {
                let directory: Vec<BlobEntry> = o.pack_blobs.iter().map(|(e, _)| *e).collect();
                let plain = mutate(&cbor(&directory), &m, &[]);
                let _ = read_pack(&reseal_pack_directory(&plain));
            }
        }
    }

    #[test]
    fn tampered_histories_only_ever_lose_their_tail(
        m in mutations(),
        which in 0usize..3,
        on_path in any::<bool>(),
    ) {
        let (objects, config, records) = history();
        let mut site_objects = objects.clone();
        let (path, bytes) = &mut site_objects[which];
        if on_path {
            *path = String::from_utf8_lossy(&mutate(path.as_bytes(), &m, &[])).into_owned();
        } else {
            *bytes = mutate(bytes, &m, &[8]);
        }
        let site = MemorySite::with(
            &site_objects
                .iter()
                .map(|(p, b)| (p.as_str(), b.as_slice()))
                .collect::<Vec<_>>(),
        );
        if let Ok(loaded) = embassy_core::history::load_history(&site, config, "fuzz") {
            // A site can hide the newest entries (checkpoints catch that), never change one.
            prop_assert!(loaded.len() <= records.len());
            prop_assert_eq!(&loaded[..], &records[..loaded.len()]);
            if &site_objects == objects {
                prop_assert_eq!(loaded.len(), records.len());
            }
        }
    }

    #[test]
    fn ledger_paths_never_panic(path in ".{0,120}", seq in any::<u64>()) {
        let _ = layout::parse_ledger_path(&path);
        let _ = layout::id_in_path(&path);
        let id = ObjectId::of(path.as_bytes());
        let good = layout::ledger_entry("fuzz", seq % 10_000_000_000_000_000, &id);
        prop_assert_eq!(layout::id_in_path(&good), Some(id));
    }
}

proptest! {
    // Argon2id runs on every accepted parse: fewer cases keep the suite fast.
    #![proptest_config(ProptestConfig { cases: 48, ..config() })]

    #[test]
    fn tampered_key_files_are_rejected(m in mutations()) {
        let o = objects();
        let json = mutate(&o.keyfile, &m, &[]);
        if let Some(root) = open_keyfile(&json) {
            // Whitespace or key order may change; the secret never does.
            prop_assert_eq!(root.expose(), o.root.expose());
        }
    }
}

/// A three-entry ledger (writer 0, writer 1, writer 0) as stored, its configuration and records.
#[allow(clippy::type_complexity)]
fn history() -> &'static (Vec<(String, Vec<u8>)>, VaultConfig, Vec<ledger::Record>) {
    static HISTORY: OnceLock<(Vec<(String, Vec<u8>)>, VaultConfig, Vec<ledger::Record>)> =
        OnceLock::new();
    HISTORY.get_or_init(|| {
        let o = objects();
        let mut config = VaultConfig::new(&o.root);
        config.signers = o.signers.iter().map(hex::encode).collect();
        let first = ledger::decode(PATH, &o.ledger).unwrap();
        let writers = [
            o.writer.clone(),
            o.root.writer_signing_key(1),
            o.writer.clone(),
        ];
        let mut objects = Vec::new();
        let mut records: Vec<ledger::Record> = Vec::new();
        for (i, key) in writers.iter().enumerate() {
            let entry = Entry {
                seq: i as u64 + 1,
                prev: records.last().map(|r| r.id),
                signer: key.verifying_key().to_bytes(),
                ..first.clone()
            };
            let bytes = ledger::encode(&entry, key);
            let id = ObjectId::of(&bytes);
            objects.push((layout::ledger_entry("fuzz", entry.seq, &id), bytes));
            records.push(ledger::Record::new(id, entry));
        }
        (objects, config, records)
    })
}

fn ledger_parts(bytes: &[u8]) -> (&[u8], &[u8]) {
    let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    (&bytes[..12], &bytes[12..12 + len])
}

fn sign_ledger(body: &[u8], key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let mut out = ledger::MAGIC.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&keys::sign(key, b"data-embassy ledger v1", body));
    out
}

/// The fixture index's header with `body` sealed behind it, signed by `key`.
fn reseal_index(body: &[u8], key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let o = objects();
    let header_len = u32::from_le_bytes(o.index[8..12].try_into().unwrap()) as usize;
    let prefix = &o.index[..12 + header_len];
    let mut b = prefix.to_vec();
    b.extend_from_slice(&crypto::seal_symmetric(&o.keys.index_key, prefix, body));
    sign_index(b, key)
}

/// Appends an index signature by `key` over `unsigned`.
fn sign_index(mut unsigned: Vec<u8>, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let signature = keys::sign(key, index::SIGNATURE_LABEL, &unsigned);
    unsigned.extend_from_slice(&signature);
    unsigned
}

fn reseal_manifest(body: &[u8]) -> Vec<u8> {
    let o = objects();
    let header_len = u32::from_le_bytes(o.manifest[8..12].try_into().unwrap()) as usize;
    let header = &o.manifest[..12 + header_len];
    let (key, encapsulated) =
        ObjectKey::seal_to(&o.keys.reader_public, b"data-embassy manifest v1\0fuzz");
    let mut out = header.to_vec();
    out.extend_from_slice(&encapsulated);
    let sealed = key.encrypt(0, &out, body);
    out.extend_from_slice(&sealed);
    out
}

fn reseal_pack_directory(plain: &[u8]) -> Vec<u8> {
    let o = objects();
    let key = pack::open_key(&o.keys, PATH, &o.pack).unwrap();
    let dir_len = u32::from_le_bytes(o.pack[o.pack.len() - 4..].try_into().unwrap()) as usize;
    let mut out = o.pack[..o.pack.len() - 4 - dir_len].to_vec();
    let sealed = key.encrypt(u64::MAX, b"EMBPDIR1", plain);
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    out
}

// ----------------------------------------------------------------------------------------------
// Exhaustive and hand-made edge cases
// ----------------------------------------------------------------------------------------------

#[test]
fn every_truncation_is_rejected() {
    let o = objects();
    for len in 0..o.index.len() {
        assert!(read_index(&o.index[..len]).is_err(), "index cut at {len}");
    }
    for len in 0..o.manifest.len() {
        assert!(
            read_manifest(&o.manifest[..len]).is_err(),
            "manifest cut at {len}"
        );
    }
    for len in 0..o.ledger.len() {
        assert!(
            read_ledger(&o.ledger[..len]).is_none(),
            "ledger cut at {len}"
        );
    }
    for len in 0..o.tree.len() {
        assert!(read_tree(&o.tree[..len]).is_err(), "tree cut at {len}");
    }
    for len in 0..o.config.len() {
        assert!(load_config(&o.config[..len], &o.config_sig).is_err());
    }
    for len in (0..o.pack.len()).step_by(7) {
        assert!(read_pack(&o.pack[..len]).is_err(), "pack cut at {len}");
    }
}

#[test]
fn every_length_field_value_near_the_edges_is_rejected() {
    let o = objects();
    for (name, bytes, at) in [
        ("index", &o.index, 8usize),
        ("manifest", &o.manifest, 8),
        ("ledger", &o.ledger, 8),
        ("pack", &o.pack, o.pack.len() - 4),
    ] {
        let old = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        let len = bytes.len() as u32;
        let mut values = vec![0, 1, 11, 12, len - 12, len - 11, len, len + 1];
        values.extend([u32::MAX, u32::MAX - 11, u32::MAX - 12, 1 << 31]);
        values.extend((1..=40).flat_map(|d| [old.wrapping_add(d), old.wrapping_sub(d)]));
        for v in values.into_iter().filter(|&v| v != old) {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            let rejected = match name {
                "index" => read_index(&b).is_err(),
                "manifest" => read_manifest(&b).is_err(),
                "ledger" => read_ledger(&b).is_none(),
                _ => read_pack(&b).is_err(),
            };
            assert!(
                rejected,
                "{name} with length field {v} (was {old}) was accepted"
            );
        }
    }
}

/// Deep nesting and absurd declared lengths in CBOR, where a naive decoder would recurse off the
/// stack or preallocate gigabytes. Runs on a test thread's default 2 MiB stack, like a rayon
/// worker.
#[test]
fn hostile_cbor_is_rejected_without_exhausting_memory() {
    let o = objects();
    // An unknown field whose value nests 100 000 arrays (ignored fields are parsed generically).
    let mut deep = vec![0xa1, 0x65];
    deep.extend_from_slice(b"nodes");
    deep.push(0x81); // [ node ]
    deep.push(0xa1); // { "x": [[[[...
    deep.extend_from_slice(&[0x61, b'x']);
    deep.extend(std::iter::repeat_n(0x81u8, 100_000));
    deep.push(0x00);
    assert!(read_tree(&deep).is_err());

    let declared = [
        vec![
            0xa1, 0x65, b'n', b'o', b'd', b'e', b's', 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff,
        ],
        vec![
            0xa1, 0x65, b'n', b'o', b'd', b'e', b's', 0x9a, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![
            0x81, 0xa1, 0x64, b'n', b'a', b'm', b'e', 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff,
        ],
        vec![0x9f; 5000],
        vec![0xbf; 5000],
        vec![0xc6; 100_000], // tags on tags
    ];
    for bytes in &declared {
        assert!(read_tree(bytes).is_err());
        let _ = read_index(&reseal_index(bytes, &o.writer));
        assert!(read_manifest(&reseal_manifest(bytes)).is_err());
        assert!(read_ledger(&sign_ledger(bytes, &o.writer)).is_none());
        assert!(read_pack(&reseal_pack_directory(bytes)).is_err());
    }
    assert!(read_pack(&reseal_pack_directory(&deep)).is_err());
    assert!(read_manifest(&reseal_manifest(&deep)).is_err());

    // JSON nesting for the configuration and key file.
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(load_config(nested.as_bytes(), &o.config_sig).is_err());
    assert!(open_keyfile(nested.as_bytes()).is_none());
}

/// Index objects of format 2 are signed: an unsigned index (the version 1 layout), a stripped,
/// altered or wrongly labelled signature, and a header naming another signer than the one that
/// signed are all rejected without keys; a correctly signed index by a stranger parses (whether
/// its signer is trusted is the writer's and verify's decision) and names that stranger.
#[test]
fn index_signatures_are_checked_without_keys() {
    let o = objects();
    let header_len = u32::from_le_bytes(o.index[8..12].try_into().unwrap()) as usize;
    let unsigned = o.index[..o.index.len() - index::SIGNATURE_LEN].to_vec();
    let (good, body_at) = index::decode_header(PATH, &o.index).unwrap();
    assert_eq!(good.signer, o.writer.verifying_key().to_bytes());
    assert_eq!(body_at, 12 + header_len);
    assert!(read_index(&o.index).is_ok());

    // Unsigned: as version 1 wrote it (old magic) and with the new magic.
    let mut v1 = unsigned.clone();
    v1[..8].copy_from_slice(b"EMBINDX1");
    assert!(index::decode_header(PATH, &v1).is_err());
    assert!(read_index(&unsigned).is_err());
    // Signature zeroed, one bit flipped, wrong label, signed by another key than the header names.
    let mut zeroed = unsigned.clone();
    zeroed.extend_from_slice(&[0u8; 64]);
    assert!(read_index(&zeroed).is_err());
    let mut flipped = o.index.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(read_index(&flipped).is_err());
    let mut labelled = unsigned.clone();
    labelled.extend_from_slice(&keys::sign(&o.writer, b"data-embassy index v1", &unsigned));
    assert!(read_index(&labelled).is_err());
    let stranger = RootSecret::from_bytes(&[9; 32]).writer_signing_key(0);
    let err = read_index(&sign_index(unsigned.clone(), &stranger)).unwrap_err();
    assert!(err.to_string().contains("signature"), "{err}");

    // A header that names the stranger, signed by the stranger: parses, and names them.
    let mut header: index::IndexHeader =
        ciborium::from_reader(&o.index[12..12 + header_len]).unwrap();
    header.signer = stranger.verifying_key().to_bytes();
    let header = cbor(&header);
    let mut forged = index::MAGIC.to_vec();
    forged.extend_from_slice(&(header.len() as u32).to_le_bytes());
    forged.extend_from_slice(&header);
    let sealed = crypto::seal_symmetric(&o.keys.index_key, &forged, &o.index_body);
    forged.extend_from_slice(&sealed);
    let forged = sign_index(forged, &stranger);
    let (h, entries) = read_index(&forged).unwrap();
    assert_eq!(h.signer, stranger.verifying_key().to_bytes());
    assert_eq!(entries.len(), o.pack_blobs.len());
    // The signature covers the sealed body too: a body resealed under the same header fails.
    let mut swapped = forged[..12 + header.len()].to_vec();
    swapped.extend_from_slice(&crypto::seal_symmetric(
        &o.keys.index_key,
        &forged[..12 + header.len()],
        &o.index_body,
    ));
    swapped.extend_from_slice(&forged[forged.len() - 64..]);
    assert!(read_index(&swapped).is_err());
    // Too short to hold a signature after the header.
    for cut in 0..index::SIGNATURE_LEN {
        assert!(read_index(&o.index[..12 + header_len + cut]).is_err());
    }
}

/// Writer-sealed blob plaintexts: unknown compression, a zstd frame that lies about its size,
/// and lengths that disagree with the directory.
#[test]
fn writer_sealed_blobs_are_rejected() {
    let o = objects();
    let key = pack::open_key(&o.keys, PATH, &o.pack).unwrap();
    let (entry, raw) = &o.pack_blobs[0];
    let seal = |plain: &[u8], entry: &BlobEntry| {
        let mut aad = b"EMBBLOB1".to_vec();
        aad.push(entry.kind.into());
        aad.extend_from_slice(&entry.id.0);
        key.encrypt(entry.offset as u64, &aad, plain)
    };
    let mut zstd_plain = vec![1u8];
    zstd_plain.extend(zstd::bulk::compress(raw, 3).unwrap());
    let candidates: Vec<(Vec<u8>, BlobEntry)> = vec![
        (vec![], *entry),
        (vec![2], *entry),
        (vec![1], *entry),
        (vec![1, 0x28, 0xb5, 0x2f, 0xfd], *entry),
        (
            zstd_plain.clone(),
            BlobEntry {
                raw_length: entry.raw_length - 1,
                ..*entry
            },
        ),
        (
            zstd_plain.clone(),
            BlobEntry {
                raw_length: 0,
                ..*entry
            },
        ),
        (
            [&[0u8][..], raw].concat(),
            BlobEntry {
                raw_length: entry.raw_length + 1,
                ..*entry
            },
        ),
    ];
    for (plain, mut entry) in candidates {
        let ciphertext = seal(&plain, &entry);
        entry.length = ciphertext.len() as u32;
        assert!(pack::open_blob(&key, &o.keys, PATH, &entry, &ciphertext).is_err());
    }
    // The genuine blob still opens when sealed this way (the harness is right).
    let mut ok = *entry;
    let ciphertext = seal(&zstd_plain, &ok);
    ok.length = ciphertext.len() as u32;
    assert_eq!(
        &pack::open_blob(&key, &o.keys, PATH, &ok, &ciphertext).unwrap(),
        raw
    );
}

/// Found by fuzz_pack: a directory entry claiming a 4 GiB plaintext made the decompressor
/// reserve 4 GiB (an abort, not an error). It must be rejected as corrupt before allocating.
#[test]
fn a_huge_claimed_plaintext_is_rejected_without_allocating() {
    use embassy_core::format::pack::{self, BlobCompressor, BlobKind, PackWriter};
    use embassy_core::keys::RootSecret;
    let keys = RootSecret::from_bytes(&[7u8; 32]).dataset_keys("fuzz", 0);
    let mut writer = PackWriter::new(&keys, 1024);
    let data = vec![1u8; 100_000];
    writer
        .add(
            &mut BlobCompressor::new().unwrap(),
            BlobKind::Data,
            keys.chunk_id(&data),
            &data,
        )
        .unwrap();
    let (bytes, entries) = writer.finish();
    let key = pack::open_key(&keys, "p", &bytes).unwrap();
    let mut entry = entries[0];
    entry.raw_length = u32::MAX;
    let ct = &bytes[entry.offset as usize..][..entry.length as usize];
    let err = pack::open_blob(&key, &keys, "p", &entry, ct).unwrap_err();
    assert!(
        err.to_string().contains("more than any blob holds"),
        "{err}"
    );
}

/// WAL log objects (`wal_log`): every truncation, every length-field value near the edges, a
/// flipped bit anywhere, headers a malicious writer signs (ranges backwards or huge, body length
/// lies, misaligned segments), bodies moved between objects, and junk paths are all rejected
/// with an error, never a panic or an oversized allocation.
#[test]
fn malformed_wal_log_objects_are_rejected() {
    use embassy_core::format::wal_log::{self, LogHeader, LogKind, LogSpec};
    let root = RootSecret::from_bytes(&[7; 32]);
    let keys = root.dataset_keys("fuzz", 0);
    let writer = root.writer_signing_key(0);
    let payload = b"wal record;".repeat(300);
    let spec = LogSpec {
        kind: LogKind::Piece,
        timeline: 1,
        start: 0x100_0000,
        end: 0x100_0000 + payload.len() as u64,
        prev: None,
        captured_at_ns: 1,
        system_id: 0,
    };
    let (good, _) = wal_log::seal(&keys, &writer, &spec, &payload).unwrap();
    assert_eq!(wal_log::open(&keys, "w", &good).unwrap().1, payload);
    for len in 0..good.len() {
        assert!(
            wal_log::open(&keys, "w", &good[..len]).is_err(),
            "cut at {len}"
        );
    }
    let old = u32::from_le_bytes(good[8..12].try_into().unwrap());
    let len = good.len() as u32;
    let mut values = vec![0, 1, 11, 12, len - 12, len, len + 1, u32::MAX, 1 << 31];
    values.extend((1..=40).flat_map(|d| [old.wrapping_add(d), old.wrapping_sub(d)]));
    for v in values.into_iter().filter(|&v| v != old) {
        let mut b = good.clone();
        b[8..12].copy_from_slice(&v.to_le_bytes());
        assert!(
            wal_log::open(&keys, "w", &b).is_err(),
            "length field {v} accepted"
        );
    }
    for at in 0..good.len() {
        let mut b = good.clone();
        b[at] ^= 0x10;
        assert!(
            wal_log::open(&keys, "w", &b).is_err(),
            "flip at {at} accepted"
        );
    }
    // Headers signed by a (malicious) writer with lies in them.
    let parsed = wal_log::parse("w", &good).unwrap();
    let body = &good[parsed.body_offset..];
    let forge = |h: &LogHeader, body: &[u8]| -> Vec<u8> {
        let header = cbor(h);
        let mut out = wal_log::MAGIC.to_vec();
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&keys::sign(&writer, b"data-embassy wal log v1", &header));
        out.extend_from_slice(body);
        out
    };
    let h0 = parsed.header.clone();
    assert!(
        wal_log::open(&keys, "w", &forge(&h0, body)).is_ok(),
        "the forge helper is faithful"
    );
    let lies = [
        LogHeader {
            end: h0.start - 1,
            ..h0.clone()
        },
        LogHeader {
            end: h0.start + (1 << 40),
            ..h0.clone()
        },
        LogHeader {
            end: h0.end + 1,
            ..h0.clone()
        },
        LogHeader {
            body_len: u64::MAX,
            ..h0.clone()
        },
        LogHeader {
            body_len: 0,
            ..h0.clone()
        },
        LogHeader {
            kind: LogKind::Segment,
            ..h0.clone()
        },
        LogHeader {
            start: h0.start + 1,
            end: h0.end + 1,
            ..h0.clone()
        },
        LogHeader {
            dataset: "other".into(),
            ..h0.clone()
        },
        LogHeader {
            dataset: "../x".into(),
            ..h0.clone()
        },
        LogHeader {
            key_id: [0; 8],
            ..h0.clone()
        },
        LogHeader {
            encapsulated: [1; 32],
            ..h0.clone()
        },
        LogHeader {
            timeline: 2,
            ..h0.clone()
        },
    ];
    for (i, h) in lies.iter().enumerate() {
        assert!(
            wal_log::open(&keys, "w", &forge(h, body)).is_err(),
            "lie {i} accepted: {h:?}"
        );
    }
    // A header far larger than any real one is refused before it is decoded.
    let mut huge = wal_log::MAGIC.to_vec();
    huge.extend_from_slice(&(1u32 << 30).to_le_bytes());
    huge.extend(std::iter::repeat_n(0u8, 100));
    assert!(wal_log::parse("w", &huge).is_err());
    // A body moved from another object (same range) does not open: the AAD binds the header.
    let (other, _) = wal_log::seal(&keys, &writer, &spec, &payload).unwrap();
    let other_body = &other[wal_log::parse("w", &other).unwrap().body_offset..];
    assert!(wal_log::open(&keys, "w", &forge(&h0, other_body)).is_err());
    // Another dataset's keys do not open it; a signature by an unknown key is not this check's
    // business (callers compare `signer` with the dataset's signers) but a forged signature is.
    assert!(wal_log::open(&root.dataset_keys("other", 0), "w", &good).is_err());
    let mut bad_sig = good.clone();
    bad_sig[parsed.body_offset - 1] ^= 1;
    assert!(wal_log::parse("w", &bad_sig).is_err());
    // Junk paths.
    for p in [
        "",
        "wal",
        "wal/fuzz/00000001/p/",
        "wal/fuzz/0000000g/p/0000000001000000-0000000001000100-00",
        "wal/fuzz/00000001/x/0000000001000000-0000000001000100-0000000000000000000000000000000000000000000000000000000000000000",
        "wal/fuzz/00000001/p/0000000001000000+0000000001000100-0000000000000000000000000000000000000000000000000000000000000000",
        "wal/fuzz/00000001/p/0000000001000000-0000000001000100-0000000000000000000000000000000000000000000000000000000000000000/x",
    ] {
        assert!(wal_log::parse_path(p).is_none(), "{p:?}");
    }
}

// ----------------------------------------------------------------------------------------------
// Checkpoints (checkpoint::load_valid): a hostile site names any bytes by their hash
// ----------------------------------------------------------------------------------------------

/// A site holding one checkpoint of [`history`]'s head, signed by the first pinned writer key,
/// and the checkpoint's stored bytes.
fn checkpoint_site() -> (MemorySite, Vec<u8>) {
    use embassy_core::history::checkpoint::{self, Head};
    let (_, config, records) = history();
    let head = records.last().unwrap();
    let site = MemorySite::with(&[]);
    let heads = [(
        head.entry.dataset.clone(),
        Head {
            seq: head.entry.seq,
            id: head.id,
        },
    )]
    .into_iter()
    .collect();
    checkpoint::write_at(
        &site,
        &config.vault_id,
        heads,
        &objects().writer,
        head.entry.time_ns,
    )
    .unwrap();
    let listed = embassy_core::site::Site::list(&site, checkpoint::CHECKPOINTS).unwrap();
    let bytes = embassy_core::site::Site::get(&site, &listed[0].path).unwrap();
    (site, bytes)
}

fn load_checkpoints(bytes: &[u8]) -> Vec<embassy_core::history::checkpoint::StoredCheckpoint> {
    use embassy_core::history::checkpoint;
    let (_, config, records) = history();
    // Stored as a site would, under the time the honest checkpoint states.
    let id = ObjectId::of(bytes);
    let time = records.last().unwrap().entry.time_ns;
    let site = MemorySite::with(&[(
        format!("{}{time:020}-{id}", checkpoint::CHECKPOINTS).as_str(),
        bytes,
    )]);
    let mut signers = config.signer_keys();
    signers.push(config.root_key().unwrap());
    let histories = [(records[0].entry.dataset.clone(), records.clone())]
        .into_iter()
        .collect();
    checkpoint::load_valid(&site, &config.vault_id, &signers, &histories)
        .map(|(valid, _noise)| valid)
        .unwrap_or_default()
}

#[test]
fn a_valid_checkpoint_is_accepted() {
    let (_, bytes) = checkpoint_site();
    assert_eq!(load_checkpoints(&bytes).len(), 1);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn tampered_checkpoints_are_noise_unless_unchanged(m in mutations()) {
        let (_, original) = checkpoint_site();
        let want = load_checkpoints(&original).remove(0).checkpoint;
        let bytes = mutate(&original, &m, &[8]);
        for cp in load_checkpoints(&bytes) {
            // Under the signature nothing can change.
            prop_assert_eq!(&cp.checkpoint.heads, &want.heads);
            prop_assert_eq!(cp.checkpoint.time_ns, want.time_ns);
            prop_assert_eq!(&cp.checkpoint.vault_id, &want.vault_id);
        }
    }

    #[test]
    fn random_checkpoint_bytes_are_noise(tail in random_bytes()) {
        prop_assert!(load_checkpoints(&with_magic(b"EMBCHKP1", &tail)).is_empty());
    }
}

// ----------------------------------------------------------------------------------------------
// Sequence 0: no entry has it (they start at 1); nothing may subtract 1 from it unchecked
// ----------------------------------------------------------------------------------------------

/// A signed entry with sequence 0 (at any place of the history) is noise, not a panic.
#[test]
fn a_ledger_entry_with_sequence_zero_is_noise() {
    let (objects, config, records) = history();
    for (prev, key) in [
        (None, objects_writer()),
        (Some(records[0].id), objects_writer()),
        (Some(records[2].id), objects_writer()),
    ] {
        let entry = Entry {
            seq: 0,
            prev,
            ..records[0].entry.clone()
        };
        let bytes = ledger::encode(&entry, &key);
        let id = ObjectId::of(&bytes);
        let path = layout::ledger_entry("fuzz", 0, &id);
        let mut site_objects = objects.clone();
        site_objects.push((path.clone(), bytes));
        let site = MemorySite::with(
            &site_objects
                .iter()
                .map(|(p, b)| (p.as_str(), b.as_slice()))
                .collect::<Vec<_>>(),
        );
        let full = embassy_core::history::load_history_full(&site, config, "fuzz").unwrap();
        assert_eq!(full.records, *records);
        assert!(
            full.noise.iter().any(|n| n.path == path),
            "{:?}",
            full.noise
        );
    }
}

fn objects_writer() -> ed25519_dalek::SigningKey {
    objects().writer.clone()
}

/// A checkpoint naming entry 0 of a dataset reports a rollback; it does not index entry -1.
#[test]
fn a_checkpoint_naming_sequence_zero_is_a_problem_not_a_panic() {
    use embassy_core::history::checkpoint::{self, Head};
    let (_, config, records) = history();
    let site = MemorySite::with(&[]);
    let heads = [(
        records[0].entry.dataset.clone(),
        Head {
            seq: 0,
            id: records[0].id,
        },
    )]
    .into_iter()
    .collect();
    checkpoint::write_at(
        &site,
        &config.vault_id,
        heads,
        &objects().writer,
        records[0].entry.time_ns,
    )
    .unwrap();
    let mut signers = config.signer_keys();
    signers.push(config.root_key().unwrap());
    let histories = [(records[0].entry.dataset.clone(), records.clone())]
        .into_iter()
        .collect();
    let (valid, _) = checkpoint::load_valid(&site, &config.vault_id, &signers, &histories).unwrap();
    for cp in &valid {
        let problems = checkpoint::check_against_except(cp, &histories, &[]);
        assert!(
            problems.iter().any(|p| p.contains("entry 0")),
            "{problems:?}"
        );
    }
    assert!(ledger::entry_at(records, 0).is_none());
    assert_eq!(ledger::entry_at(records, 1), Some(&records[0]));
    assert!(ledger::entry_at(records, u64::MAX).is_none());
}

/// A state file that remembers entry 0 of a dataset (damaged, or written by hand) makes the
/// check fail with a message, not a panic.
#[test]
fn a_state_file_remembering_sequence_zero_does_not_underflow() {
    use embassy_core::history::state::StateStore;
    let (_, _, records) = history();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("v.json"),
        r#"{"heads":{"fuzz":{"seq":0,"id":"ü€€€€€€€€€€€€€€€€€","seen_at_ns":0}}}"#,
    )
    .unwrap();
    let store = StateStore::open(dir.path(), "v").unwrap();
    let err = store.check_history("fuzz", records).unwrap_err();
    assert!(err.to_string().contains("entry 0"), "{err}");
}
