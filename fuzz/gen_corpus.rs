//! Writes the seed corpora: real objects made with embassy-core's own encoders, framed as each
//! harness expects, into `fuzz/corpus/<target>/seed-*`. Every seed meant to be valid is run through
//! its harness first, so a seed that the harness would reject (a framing mistake) fails here.
//!
//! Run from `fuzz/`: `cargo run --release --example gen_corpus`. Packs, manifests, index bodies and
//! key files use fresh randomness (HPKE ephemeral keys, nonces, salts), so the seed bytes change at
//! every run; what they are does not.

use std::fs;
use std::path::PathBuf;

use embassy_core::format::config::VaultConfig;
use embassy_core::format::index::{self, IndexEntry, IndexHeader};
use embassy_core::format::layout;
use embassy_core::format::manifest::{
    self, ManifestBody, ManifestHeader, VersionKind, VersionStats,
};
use embassy_core::format::pack::{self, BlobCompressor, BlobEntry, BlobKind, PackWriter};
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::history::ledger::{self, Entry, Event};
use embassy_core::id::ObjectId;
use embassy_core::keys::keyfile::{self, KdfParams, KeyFile};
use embassy_fuzz::{
    config_flags, fixture, hex_encode, join_u16, sign_ledger_as_named, DATASET, FAST_KDF,
    PASSPHRASE,
};

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR into a Vec");
    out
}

fn with_mode(mode: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(body);
    out
}

struct Corpus {
    dir: PathBuf,
    written: usize,
}

impl Corpus {
    fn new(target: &str) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target);
        fs::create_dir_all(&dir).expect("create corpus dir");
        for old in fs::read_dir(&dir).expect("list corpus dir").flatten() {
            if old.file_name().to_string_lossy().starts_with("seed-") {
                fs::remove_file(old.path()).expect("remove old seed");
            }
        }
        Self { dir, written: 0 }
    }

    /// A seed the harness must accept whole.
    fn valid(&mut self, name: &str, bytes: Vec<u8>, harness: fn(&[u8]) -> bool) {
        assert!(
            harness(&bytes),
            "seed {name} is not accepted by its harness"
        );
        self.write(name, bytes);
    }

    /// A seed that exercises a rejection path (the harness must not panic on it either).
    fn rejected(&mut self, name: &str, bytes: Vec<u8>, harness: fn(&[u8]) -> bool) {
        assert!(!harness(&bytes), "seed {name} was expected to be rejected");
        self.write(name, bytes);
    }

    fn write(&mut self, name: &str, bytes: Vec<u8>) {
        fs::write(self.dir.join(format!("seed-{name}")), bytes).expect("write seed");
        self.written += 1;
    }
}

fn sample_data() -> (Vec<u8>, Vec<u8>) {
    let compressible = b"population registry row;".repeat(400);
    let noise: Vec<u8> = (0..3000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    (compressible, noise)
}

fn sample_tree() -> Tree {
    let keys = &fixture().keys;
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
    file.size = 9600;
    file.content = vec![keys.chunk_id(b"a"), keys.chunk_id(b"b")];
    let mut dir = node(b"dir", NodeKind::Dir);
    dir.mode = 0o755;
    dir.subtree = Some(keys.chunk_id(b"subtree"));
    let mut link = node(b"link", NodeKind::Symlink);
    link.target = Some(b"../elsewhere".to_vec());
    let fifo = node(b"pipe", NodeKind::Fifo);
    let mut odd = node(b"\xffnot-utf8", NodeKind::File);
    odd.size = 0;
    Tree {
        nodes: vec![file, dir, link, fifo, odd],
    }
}

fn packs() -> Vec<(ObjectId, Vec<BlobEntry>)> {
    let f = fixture();
    let keys = &f.keys;
    let mut corpus = Corpus::new("fuzz_pack");
    let (compressible, noise) = sample_data();
    let tree = sample_tree().encode();
    let mut comp = BlobCompressor::new().expect("zstd");

    let mut writer = PackWriter::new(keys, 0);
    for (kind, raw) in [
        (BlobKind::Data, &compressible),
        (BlobKind::Data, &noise),
        (BlobKind::Tree, &tree),
    ] {
        writer
            .add(&mut comp, kind, keys.chunk_id(raw), raw)
            .expect("add blob");
    }
    let (three, three_entries) = writer.finish();
    corpus.valid(
        "stored-three-blobs",
        with_mode(0, &three),
        embassy_fuzz::pack,
    );

    let mut writer = PackWriter::new(keys, 0);
    writer
        .add(&mut comp, BlobKind::Data, keys.chunk_id(b"x"), b"x")
        .expect("add blob");
    let (one, one_entries) = writer.finish();
    corpus.valid("stored-one-blob", with_mode(0, &one), embassy_fuzz::pack);

    let (empty, _) = PackWriter::new(keys, 0).finish();
    corpus.valid("stored-empty", with_mode(0, &empty), embassy_fuzz::pack);

    let other = f.root.dataset_keys("other", 0);
    let (foreign, _) = PackWriter::new(&other, 0).finish();
    corpus.rejected(
        "stored-foreign-dataset",
        with_mode(0, &foreign),
        embassy_fuzz::pack,
    );

    // Writer mode: plaintext directory and blob area, sealed by the harness.
    let mut area = Vec::new();
    let mut entries = Vec::new();
    let zstd_body = zstd::bulk::compress(&compressible, 3).expect("zstd");
    for (kind, raw, compression, body) in [
        (BlobKind::Data, &compressible, 1u8, &zstd_body),
        (BlobKind::Data, &noise, 0u8, &noise),
        (BlobKind::Tree, &tree, 0u8, &tree),
    ] {
        let offset = (pack::HEADER_LEN + area.len()) as u32;
        area.push(compression);
        area.extend_from_slice(body);
        area.extend_from_slice(&[0u8; embassy_core::keys::crypto::TAG_LEN]);
        entries.push(BlobEntry {
            kind,
            id: keys.chunk_id(raw),
            offset,
            length: (pack::HEADER_LEN + area.len()) as u32 - offset,
            raw_length: raw.len() as u32,
            base: None,
        });
    }
    corpus.valid(
        "sealed-three-blobs",
        with_mode(1, &join_u16(&cbor(&entries), &area)),
        embassy_fuzz::pack,
    );
    corpus.valid(
        "sealed-empty",
        with_mode(1, &join_u16(&cbor(&Vec::<BlobEntry>::new()), &[])),
        embassy_fuzz::pack,
    );
    // Deltas (kind 2): a changed page against the harness's fixed base, stored and sealed.
    let base = embassy_fuzz::delta_base();
    let base_id = keys.chunk_id(base);
    let mut page = base.to_vec();
    page[..8].copy_from_slice(&42u64.to_le_bytes());
    page[3000..3064].fill(9);
    let mut writer = PackWriter::new(keys, 0);
    let (_, kind) = writer
        .add_data(
            &mut comp,
            keys.chunk_id(&page),
            &page,
            Some((base_id, base)),
        )
        .expect("add delta");
    assert_eq!(kind, BlobKind::Delta, "a small change is stored as a delta");
    let (stored_delta, _) = writer.finish();
    corpus.valid(
        "stored-delta",
        with_mode(0, &stored_delta),
        embassy_fuzz::pack,
    );
    let frame = zstd::bulk::Compressor::with_dictionary(3, base)
        .and_then(|mut c| c.compress(&page))
        .expect("zstd with a raw-content dictionary");
    let mut area = vec![2u8];
    area.extend_from_slice(&frame);
    area.extend_from_slice(&[0u8; embassy_core::keys::crypto::TAG_LEN]);
    let delta = BlobEntry {
        kind: BlobKind::Delta,
        id: keys.chunk_id(&page),
        offset: pack::HEADER_LEN as u32,
        length: area.len() as u32,
        raw_length: page.len() as u32,
        base: Some(base_id),
    };
    corpus.valid(
        "sealed-delta",
        with_mode(1, &join_u16(&cbor(&vec![delta]), &area)),
        embassy_fuzz::pack,
    );
    println!("fuzz_pack: {} seeds", corpus.written);
    finding_zstd_reserve();
    vec![
        (ObjectId::of(&three), three_entries),
        (ObjectId::of(&one), one_entries),
    ]
}

/// The reproducer of finding F1 (README): a writer-sealed blob whose directory entry says
/// `raw_length = u32::MAX` and whose plaintext is a 16-byte zstd frame claiming 4 GiB. Before
/// `pack::MAX_BLOB_LEN`, libFuzzer reported `malloc(4294967295)` on it; now it is rejected.
fn finding_zstd_reserve() {
    let mut plain = vec![1u8]; // zstd
    plain.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0xa0]); // magic, single segment, 4-byte size
    plain.extend_from_slice(&u32::MAX.to_le_bytes()); // frame content size
    plain.extend_from_slice(&(1u32 | (1 << 1) | (16 << 3)).to_le_bytes()[..3]); // last RLE block
    plain.push(b'A');
    let mut area = plain;
    area.extend_from_slice(&[0u8; embassy_core::keys::crypto::TAG_LEN]);
    let entry = BlobEntry {
        kind: BlobKind::Data,
        id: fixture().keys.chunk_id(b"never"),
        offset: pack::HEADER_LEN as u32,
        length: area.len() as u32,
        raw_length: u32::MAX,
        base: None,
    };
    let input = with_mode(1, &join_u16(&cbor(&vec![entry]), &area));
    assert!(
        !embassy_fuzz::pack(&input),
        "a 4 GiB raw_length was accepted"
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("findings");
    fs::create_dir_all(&dir).expect("create findings dir");
    fs::write(dir.join("fuzz_pack-zstd-4gib-reserve"), input).expect("write finding");
}

fn indexes(packs: &[(ObjectId, Vec<BlobEntry>)]) -> Vec<ObjectId> {
    let keys = &fixture().keys;
    let mut corpus = Corpus::new("fuzz_index");
    let writer = &fixture().writers[0];
    let two = index::encode(keys, writer, packs);
    corpus.valid("stored-two-packs", with_mode(0, &two), embassy_fuzz::index);
    let one = index::encode(keys, writer, &packs[1..]);
    corpus.valid("stored-one-pack", with_mode(0, &one), embassy_fuzz::index);
    let none = index::encode(keys, writer, &[]);
    corpus.valid("stored-empty", with_mode(0, &none), embassy_fuzz::index);
    let other = index::encode(&fixture().root.dataset_keys("other", 0), writer, packs);
    corpus.rejected(
        "stored-foreign-dataset",
        with_mode(0, &other),
        embassy_fuzz::index,
    );

    let header = IndexHeader {
        dataset: DATASET.into(),
        packs: packs.iter().map(|(id, _)| *id).collect(),
        key_id: keys.key_id(),
        signer: writer.verifying_key().to_bytes(),
        replaces: Vec::new(),
        as_of_seq: 0,
    };
    let body: Vec<IndexEntry> = packs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, blobs))| {
            blobs.iter().map(move |b| IndexEntry {
                pack: i as u32,
                blob: *b,
            })
        })
        .collect();
    corpus.valid(
        "sealed-two-packs",
        with_mode(1, &join_u16(&cbor(&header), &cbor(&body))),
        embassy_fuzz::index,
    );
    println!("fuzz_index: {} seeds", corpus.written);
    vec![ObjectId::of(&two), ObjectId::of(&one)]
}

fn manifests(indexes: Vec<ObjectId>) -> ObjectId {
    let keys = &fixture().keys;
    let mut corpus = Corpus::new("fuzz_manifest");
    let body = ManifestBody {
        kind: VersionKind::Tree,
        root: keys.chunk_id(&sample_tree().encode()),
        captured_at_ns: 1_700_000_000_000_000_000,
        completed_at_ns: 1_700_000_100_000_000_000,
        host: "registry-db-01".into(),
        source: vec!["/srv/registry".into(), "/etc/registry".into()],
        stats: VersionStats {
            files: 12,
            dirs: 3,
            bytes: 123_456,
            bytes_read: 100_000,
            new_chunks: 4,
            new_bytes_stored: 80_000,
        },
        root_node: Some(sample_tree().nodes[1].clone()),
        properties: Default::default(),
    };
    let tree_manifest = manifest::encode(keys, indexes.clone(), &body);
    corpus.valid(
        "stored-tree",
        with_mode(0, &tree_manifest),
        embassy_fuzz::manifest,
    );
    let stream = ManifestBody {
        kind: VersionKind::Stream,
        source: vec!["pg_dump registry".into()],
        ..body.clone()
    };
    corpus.valid(
        "stored-stream-no-index",
        with_mode(0, &manifest::encode(keys, vec![], &stream)),
        embassy_fuzz::manifest,
    );
    let header = ManifestHeader {
        dataset: DATASET.into(),
        key_id: keys.key_id(),
        indexes,
    };
    corpus.valid(
        "sealed-tree",
        with_mode(1, &join_u16(&cbor(&header), &cbor(&body))),
        embassy_fuzz::manifest,
    );
    println!("fuzz_manifest: {} seeds", corpus.written);
    ObjectId::of(&tree_manifest)
}

fn ledgers(manifest: ObjectId) {
    let f = fixture();
    let mut corpus = Corpus::new("fuzz_ledger");
    let first = Entry {
        dataset: DATASET.into(),
        seq: 1,
        prev: None,
        time_ns: 1_700_000_100_000_000_000,
        signer: f.signers[0],
        event: Event::VersionAdded {
            manifest,
            kind: VersionKind::Tree,
            captured_at_ns: 1_700_000_000_000_000_000,
            stats: VersionStats::default(),
            wal_start: None,
        },
    };
    let first_bytes = ledger::encode(&first, &f.writers[0]);
    corpus.valid(
        "stored-first",
        with_mode(0, &first_bytes),
        embassy_fuzz::ledger,
    );
    let second = Entry {
        seq: 2,
        prev: Some(ObjectId::of(&first_bytes)),
        signer: f.signers[1],
        ..first.clone()
    };
    corpus.valid(
        "stored-second-epoch1",
        with_mode(0, &ledger::encode(&second, &f.writers[1])),
        embassy_fuzz::ledger,
    );
    let stranger = f.root.writer_signing_key(9);
    let unpinned = Entry {
        signer: stranger.verifying_key().to_bytes(),
        ..first.clone()
    };
    corpus.rejected(
        "stored-unpinned-signer",
        with_mode(0, &ledger::encode(&unpinned, &stranger)),
        embassy_fuzz::ledger,
    );
    corpus.valid(
        "sealed-first",
        with_mode(1, &cbor(&first)),
        embassy_fuzz::ledger,
    );

    // Whole histories. Mode 3: bodies the harness signs; mode 2: the same, stored and listed.
    let root_key = f.root.root_signing_key().verifying_key().to_bytes();
    let mut bodies = Vec::new();
    let mut stored = Vec::new();
    let mut prev = None;
    let events = [
        (f.signers[0], first.event.clone()),
        (f.signers[1], first.event.clone()),
        (
            root_key,
            Event::SignerRevoked {
                key: f.signers[1],
                reason: "host retired".into(),
            },
        ),
        (f.signers[0], first.event.clone()),
    ];
    for (i, (signer, event)) in events.into_iter().enumerate() {
        let entry = Entry {
            seq: i as u64 + 1,
            prev,
            signer,
            event,
            ..first.clone()
        };
        let body = cbor(&entry);
        let (bytes, _) = sign_ledger_as_named(&body);
        let id = ObjectId::of(&bytes);
        prev = Some(id);
        bodies.extend_from_slice(&join_u16(&body, &[]));
        let path = layout::ledger_entry(DATASET, entry.seq, &id);
        stored.extend_from_slice(&join_u16(path.as_bytes(), &join_u16(&bytes, &[])));
    }
    corpus.valid(
        "history-signed",
        with_mode(3, &bodies),
        embassy_fuzz::ledger,
    );
    corpus.valid(
        "history-stored",
        with_mode(2, &stored),
        embassy_fuzz::ledger,
    );
    corpus.valid("history-empty", vec![2], embassy_fuzz::ledger);
    println!("fuzz_ledger: {} seeds", corpus.written);
}

fn trees() {
    let mut corpus = Corpus::new("fuzz_tree");
    corpus.valid("sample", sample_tree().encode(), embassy_fuzz::tree);
    corpus.valid("empty", Tree::default().encode(), embassy_fuzz::tree);
    let mut unsafe_name = sample_tree();
    unsafe_name.nodes[0].name = b"..".to_vec();
    unsafe_name.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    corpus.rejected("unsafe-name", unsafe_name.encode(), embassy_fuzz::tree);
    println!("fuzz_tree: {} seeds", corpus.written);
}

fn configs() {
    let f = fixture();
    let mut corpus = Corpus::new("fuzz_config");
    let mut config = VaultConfig::new(&f.root);
    config.created_unix = 1_700_000_000;
    config.signers = f.signers.iter().map(|k| hex_encode(k)).collect();
    let body = serde_json::to_vec_pretty(&config).expect("config JSON");
    let signature = embassy_fuzz::sign_config(&body);
    corpus.valid(
        "signed",
        with_mode(0, &join_u16(&signature, &body)),
        embassy_fuzz::config,
    );
    corpus.valid(
        "harness-signs",
        with_mode(config_flags::SIGN, &join_u16(&[], &body)),
        embassy_fuzz::config,
    );
    let compact = serde_json::to_vec(&config).expect("config JSON");
    corpus.valid(
        "harness-signs-compact",
        with_mode(config_flags::SIGN, &join_u16(&[], &compact)),
        embassy_fuzz::config,
    );
    corpus.rejected(
        "no-signature",
        with_mode(config_flags::NO_SIGNATURE, &join_u16(&[], &body)),
        embassy_fuzz::config,
    );
    corpus.rejected(
        "empty-site",
        with_mode(config_flags::NO_CONFIG, &join_u16(&[], &[])),
        embassy_fuzz::config,
    );
    println!("fuzz_config: {} seeds", corpus.written);
}

fn keyfiles() {
    let f = fixture();
    let mut corpus = Corpus::new("fuzz_keyfile");
    let fast = KeyFile::seal(
        &f.root,
        "00112233445566778899aabbccddeeff",
        PASSPHRASE,
        FAST_KDF,
    )
    .expect("seal key file");
    corpus.valid(
        "fast-kdf",
        serde_json::to_vec_pretty(&fast).expect("key file JSON"),
        embassy_fuzz::keyfile,
    );
    let witness = KeyFile::seal_payload(
        &[9u8; 32],
        keyfile::PURPOSE_WITNESS,
        "witness",
        PASSPHRASE,
        FAST_KDF,
    )
    .expect("seal witness key file");
    corpus.valid(
        "witness",
        serde_json::to_vec(&witness).expect("key file JSON"),
        embassy_fuzz::keyfile,
    );
    // Parsed only: the harness does not run Argon2 at the default 64 MiB / 3 passes.
    let costly = KeyFile {
        kdf_params: KdfParams::DEFAULT,
        ..fast.clone()
    };
    corpus.rejected(
        "default-kdf-parse-only",
        serde_json::to_vec_pretty(&costly).expect("key file JSON"),
        embassy_fuzz::keyfile,
    );
    let zero = KeyFile {
        kdf_params: KdfParams {
            iterations: 0,
            ..FAST_KDF
        },
        ..fast.clone()
    };
    corpus.rejected(
        "zero-iterations",
        serde_json::to_vec(&zero).expect("key file JSON"),
        embassy_fuzz::keyfile,
    );
    println!("fuzz_keyfile: {} seeds", corpus.written);
}

fn main() {
    // `GEN_CORPUS_ONLY=fuzz_wal_log` regenerates just that target's seeds.
    if std::env::var("GEN_CORPUS_ONLY").as_deref() == Ok("fuzz_wal_log") {
        wal_logs();
        return;
    }
    if std::env::var("GEN_CORPUS_ONLY").as_deref() == Ok("fuzz_wal_records") {
        wal_records();
        return;
    }
    let packs = packs();
    let indexes = indexes(&packs);
    let manifest = manifests(indexes);
    ledgers(manifest);
    trees();
    configs();
    keyfiles();
    wal_logs();
    withdrawals();
}

fn withdrawals() {
    use embassy_core::history::withdrawal::Withdrawal;
    let f = fixture();
    let (_, [x, y]) = embassy_fuzz::withdrawal_race();
    let mut c = Corpus::new("fuzz_withdrawals");
    // Y's own signer withdraws Y, which lost to X (and the other way round).
    for (name, entry, lost_to) in [("y-lost-to-x", *y, *x), ("x-lost-to-y", *x, *y)] {
        let body = cbor(&Withdrawal {
            dataset: DATASET.into(),
            seq: 2,
            entry,
            lost_to: vec![lost_to],
            time_ns: 4_000_000_000,
            signer: f.signers[0],
        });
        let signed = embassy_fuzz::sign_withdrawal(&body);
        c.valid(name, with_mode(0, &signed), embassy_fuzz::withdrawals);
        c.valid(
            &format!("{name}-body"),
            with_mode(1, &body),
            embassy_fuzz::withdrawals,
        );
        let mut bad = signed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        c.rejected(
            &format!("{name}-tampered"),
            with_mode(0, &bad),
            embassy_fuzz::withdrawals,
        );
    }
    // Signed by the other writer key: not the entries' own signer.
    let foreign = cbor(&Withdrawal {
        dataset: DATASET.into(),
        seq: 2,
        entry: *y,
        lost_to: vec![*x],
        time_ns: 4_000_000_000,
        signer: f.signers[1],
    });
    c.rejected(
        "foreign-signer-body",
        with_mode(1, &foreign),
        embassy_fuzz::withdrawals,
    );
    println!("fuzz_withdrawals: {} seeds", c.written);
}

fn wal_logs() {
    use embassy_core::format::wal_log::{self, LogKind, LogSpec};
    let f = fixture();
    let mut c = Corpus::new("fuzz_wal_log");
    let (compressible, noise) = sample_data();
    for (name, kind, payload) in [
        ("piece-zstd", LogKind::Piece, &compressible),
        ("piece-raw", LogKind::Piece, &noise),
        (
            "history",
            LogKind::History,
            &b"1\t0/5000028\tno recovery target specified\n".to_vec(),
        ),
    ] {
        let start = if kind == LogKind::History {
            0
        } else {
            0x100_0000
        };
        let spec = LogSpec {
            kind,
            timeline: 1,
            start,
            end: start + payload.len() as u64,
            prev: Some(ObjectId::of(b"previous")),
            captured_at_ns: 1_700_000_000_000_000_000,
            system_id: 0,
        };
        let (bytes, _) = wal_log::seal(&f.keys, &f.writers[0], &spec, payload).expect("seal");
        c.valid(name, with_mode(0, &bytes), embassy_fuzz::wal_log);
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        c.rejected(
            &format!("{name}-tampered"),
            with_mode(0, &bad),
            embassy_fuzz::wal_log,
        );
        let parsed = wal_log::parse("seed", &bytes).expect("parse");
        let header = &bytes[12..parsed.body_offset - 64];
        let body = &bytes[parsed.body_offset..];
        // Re-signed by the same writer: the harness's writer mode rebuilds the very object.
        c.valid(
            &format!("{name}-resigned"),
            with_mode(1, &join_u16(header, body)),
            embassy_fuzz::wal_log,
        );
    }
    let mut sealed = vec![0u8];
    sealed.extend_from_slice(&1u32.to_le_bytes());
    sealed.extend_from_slice(&0x200_0000u64.to_le_bytes());
    sealed.extend_from_slice(&compressible);
    c.valid(
        "seal-round-trip",
        with_mode(2, &sealed),
        embassy_fuzz::wal_log,
    );
    println!("fuzz_wal_log: {} seeds", c.written);
}

/// WAL as PostgreSQL writes it at the start of segment 3: 8 KiB pages whose headers name their
/// addresses, MAXALIGNed records linked by `xl_prev` with their CRC-32C, one crossing a page.
fn wal_records() {
    use embassy_postgres::walend::synthetic;
    // A commit, a heap record crossing into the second page, a prepare, a segment switch.
    let records = [
        (64u32, 0u8, 1u8),
        (9000, 0, 10),
        (56, 0x10, 1),
        (24, 0x40, 0),
    ];
    let (b, _) = synthetic::segment(3 << 24, 0, &records);
    let mut c = Corpus::new("fuzz_wal_records");
    c.valid("segment", with_mode(3, &b), embassy_fuzz::wal_records);
    c.valid(
        "cut",
        with_mode(3, &b[..synthetic::PAGE + 500]),
        embassy_fuzz::wal_records,
    );
    c.rejected("other-segment", with_mode(4, &b), embassy_fuzz::wal_records);
    println!("fuzz_wal_records: {} seeds", c.written);
}
