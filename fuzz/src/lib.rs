//! Harnesses shared by the fuzz targets (`fuzz_targets/`) and the seed generator
//! (`gen_corpus.rs`). Each harness takes the fuzzer's bytes, hands them to one parser of
//! site-supplied bytes in `embassy-core` exactly as the engine would, and returns `true` only when
//! the parser accepted the whole object. A panic anywhere is a finding.
//!
//! Objects protected by a MAC or signature cannot be reached past that check by mutation alone,
//! so the harnesses for packs, indexes, manifests, ledger entries and the configuration take a
//! leading mode byte:
//!
//! - even: the bytes are the object **as stored on a site** (the site is the adversary);
//! - odd: the bytes are the object's **plaintext parts**, which the harness seals or signs with
//!   the fixed test keys before parsing. This models a malicious or buggy *writer* (which holds
//!   the sealing credential) and lets the fuzzer reach the CBOR decoding, range checks and
//!   decompression behind the authentication.
//!
//! Framing details (`u16 LE` lengths and so on) are documented per harness. The fixed keys come
//! from `RootSecret::from_bytes(&[7; 32])` and dataset [`DATASET`] at epoch 0.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use embassy_core::format::config::VaultConfig;
use embassy_core::format::pack::{self, BlobEntry, BlobKind};
use embassy_core::format::tree::{self, Tree};
use embassy_core::format::{index, layout, manifest};
use embassy_core::history::ledger;
use embassy_core::keys::crypto::{self, ObjectKey, TAG_LEN};
use embassy_core::keys::keyfile::{self, KdfParams, KeyFile};
use embassy_core::keys::{self, DatasetKeys, RootSecret};
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};

/// The dataset every harness uses.
pub const DATASET: &str = "fuzz";
/// The fixed root secret of the fuzz vault.
pub const ROOT_BYTES: [u8; 32] = [7; 32];
/// The passphrase the keyfile harness tries.
pub const PASSPHRASE: &[u8] = b"fuzz passphrase";
/// The smallest Argon2id cost `KdfParams` accepts; the only one the keyfile harness will run.
pub const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallelism: 1,
};

// Domain-separation strings of the format (docs/format.md); private in embassy-core, so the
// harness restates them to seal and sign objects in "writer" mode.
const PACK_DIRECTORY_AAD: &[u8] = b"EMBPDIR1";
const PACK_DIRECTORY_NONCE: u64 = u64::MAX;
const LEDGER_LABEL: &[u8] = b"data-embassy ledger v1";
const CONFIG_LABEL: &[u8] = b"data-embassy config v1";

const PATH: &str = "fuzz/object";

/// Keys and objects made once per process.
pub struct Fixture {
    /// The vault's root secret.
    pub root: RootSecret,
    /// Keys of [`DATASET`] at epoch 0.
    pub keys: DatasetKeys,
    /// Writer signing keys of epochs 0 and 1.
    pub writers: Vec<ed25519_dalek::SigningKey>,
    /// Their public keys: the pinned signer list given to `ledger::decode`.
    pub signers: Vec<[u8; 32]>,
    /// A valid pack header sealed to the reader key, and the object key it opens to.
    pub pack_header: Vec<u8>,
    /// The object key of [`Fixture::pack_header`].
    pub pack_key: ObjectKey,
    /// A vault configuration for the fixture root, pinning [`Fixture::signers`].
    pub config: VaultConfig,
}

/// The shared fixture.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = RootSecret::from_bytes(&ROOT_BYTES);
        let keys = root.dataset_keys(DATASET, 0);
        let writers = vec![root.writer_signing_key(0), root.writer_signing_key(1)];
        let signers: Vec<[u8; 32]> = writers
            .iter()
            .map(|k| k.verifying_key().to_bytes())
            .collect();
        let (empty_pack, _) = pack::PackWriter::new(&keys, 0).finish();
        let pack_header = empty_pack[..pack::HEADER_LEN].to_vec();
        let pack_key =
            pack::open_key(&keys, PATH, &pack_header).expect("fixture pack header opens");
        let mut config = VaultConfig::new(&root);
        config.signers = signers.iter().map(|k: &[u8; 32]| hex_encode(k)).collect();
        Fixture {
            root,
            keys,
            writers,
            signers,
            pack_header,
            pack_key,
            config,
        }
    })
}

/// Splits `u16 LE length | part | rest`; a short input gives everything to `part`.
pub fn split_u16(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (data, &[]);
    }
    let len = u16::from_le_bytes([data[0], data[1]]) as usize;
    let data = &data[2..];
    data.split_at(len.min(data.len()))
}

/// Frames two parts as [`split_u16`] reads them (for the seed generator).
pub fn join_u16(part: &[u8], rest: &[u8]) -> Vec<u8> {
    let len = u16::try_from(part.len()).expect("part fits a u16 length");
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(part);
    out.extend_from_slice(rest);
    out
}

// ---------------------------------------------------------------------------------------------
// Packs: pack::open_key, pack::read_directory, pack::open_blob
// ---------------------------------------------------------------------------------------------

/// Packs. Even mode: `mode | pack bytes`, read as `verify` reads a whole pack (header, directory,
/// every blob). Odd mode: `mode | u16 LE n | directory CBOR (n bytes) | blob area`, where the
/// blob area holds each blob's *plaintext* (compression byte and body) followed by a 16-byte tag
/// slot; the harness seals the directory and each blob the directory names with the fixture's
/// pack key, then opens them.
pub fn pack(data: &[u8]) -> bool {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => pack_as_stored(rest),
        Some((_, rest)) => pack_as_sealed(rest),
        None => false,
    }
}

fn pack_as_stored(bytes: &[u8]) -> bool {
    let f = fixture();
    let Ok(key) = pack::open_key(&f.keys, PATH, bytes) else {
        return false;
    };
    let Ok(entries) = pack::read_directory(&key, PATH, bytes) else {
        return false;
    };
    let mut all_ok = true;
    for entry in &entries {
        let ciphertext = blob_range(bytes, entry);
        all_ok &= open_entry(&key, entry, ciphertext);
    }
    all_ok
}

/// The base every delta of the harness is applied to (whatever base id its entry names): a
/// heap-like 8 KiB page, so seeds made against it reconstruct and mutations reach zstd's
/// dictionary decoding.
pub fn delta_base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        (0..8192)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                if i % 2 == 0 {
                    (s & 0xff) as u8
                } else {
                    b'a' + (i % 7) as u8
                }
            })
            .collect()
    })
}

/// Opens one blob as a reader does: a full blob with `open_blob`; a delta (an index entry of
/// kind 2 with its base, a payload of compression 2) with `open_delta_in_place`, then its frame
/// applied to [`delta_base`] with `apply_delta`.
fn open_entry(key: &ObjectKey, entry: &BlobEntry, ciphertext: &[u8]) -> bool {
    let f = fixture();
    if entry.kind != BlobKind::Delta {
        return pack::open_blob(key, &f.keys, PATH, entry, ciphertext).is_ok();
    }
    let mut sealed = ciphertext.to_vec();
    let Ok(frame) = pack::open_delta_in_place(key, PATH, entry, &mut sealed) else {
        return false;
    };
    let mut out = Vec::new();
    pack::apply_delta(&f.keys, PATH, entry, frame, delta_base(), &mut out).is_ok()
}

fn pack_as_sealed(data: &[u8]) -> bool {
    let f = fixture();
    let (directory, area) = split_u16(data);
    let mut bytes = f.pack_header.clone();
    bytes.extend_from_slice(area);
    let sealed = f
        .pack_key
        .encrypt(PACK_DIRECTORY_NONCE, PACK_DIRECTORY_AAD, directory);
    bytes.extend_from_slice(&sealed);
    bytes.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
    let Ok(entries) = pack::read_directory(&f.pack_key, PATH, &bytes) else {
        return false;
    };
    let mut all_ok = true;
    for entry in &entries {
        let slot = blob_range(&bytes, entry);
        let ciphertext = match slot.len().checked_sub(TAG_LEN) {
            Some(plain_len) => {
                f.pack_key
                    .encrypt(entry.offset as u64, &blob_aad(entry), &slot[..plain_len])
            }
            None => slot.to_vec(),
        };
        all_ok &= open_entry(&f.pack_key, entry, &ciphertext);
    }
    all_ok
}

/// The stored bytes of a blob; `read_directory` promises the range is inside the pack.
fn blob_range<'a>(pack: &'a [u8], entry: &BlobEntry) -> &'a [u8] {
    let start = entry.offset as usize;
    let end = start + entry.length as usize;
    assert!(
        start >= pack::HEADER_LEN && end <= pack.len(),
        "read_directory returned an entry outside the pack: {entry:?} in {} bytes",
        pack.len()
    );
    &pack[start..end]
}

/// `"EMBBLOB1" | kind | chunk id [| base chunk id, deltas only]`, as in docs/format.md §5.
pub fn blob_aad(entry: &BlobEntry) -> Vec<u8> {
    let mut aad = b"EMBBLOB1".to_vec();
    aad.push(entry.kind.into());
    aad.extend_from_slice(&entry.id.0);
    if let Some(base) = &entry.base {
        aad.extend_from_slice(&base.0);
    }
    aad
}

// ---------------------------------------------------------------------------------------------
// Index objects: index::decode_header, index::decode
// ---------------------------------------------------------------------------------------------

/// Index objects. Even mode: `mode | index object`. Odd mode: `mode | u16 LE n | header CBOR (n
/// bytes) | body CBOR`; the harness frames the header, seals the body with the index key and
/// signs the whole with the fixture's first writer key.
pub fn index(data: &[u8]) -> bool {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => index_object(rest),
        Some((_, rest)) => {
            let (header, body) = split_u16(rest);
            index_object(&seal_index(header, body))
        }
        None => false,
    }
}

/// An index object with this plaintext header and body, sealed with the fixture's index key and
/// signed by the fixture's first writer key (a header naming that key as `signer` verifies).
pub fn seal_index(header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = index::MAGIC.to_vec();
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    let sealed = crypto::seal_symmetric(&fixture().keys.index_key, &out, body);
    out.extend_from_slice(&sealed);
    let signature = keys::sign(&fixture().writers[0], index::SIGNATURE_LABEL, &out);
    out.extend_from_slice(&signature);
    out
}

fn index_object(bytes: &[u8]) -> bool {
    if let Ok((_, body_at)) = index::decode_header(PATH, bytes) {
        assert!(body_at <= bytes.len(), "index body offset past the end");
    }
    match index::decode(&fixture().keys, PATH, bytes) {
        Ok((header, entries)) => {
            assert!(
                entries
                    .iter()
                    .all(|e| (e.pack as usize) < header.packs.len()),
                "index::decode accepted an entry naming a pack outside its header"
            );
            true
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Manifests: manifest::decode_header, manifest::decode
// ---------------------------------------------------------------------------------------------

/// Manifests. Even mode: `mode | manifest`. Odd mode: `mode | u16 LE n | header CBOR (n bytes) |
/// body CBOR`; the harness frames the header and seals the body to the reader key.
pub fn manifest(data: &[u8]) -> bool {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => manifest_object(rest),
        Some((_, rest)) => {
            let (header, body) = split_u16(rest);
            manifest_object(&seal_manifest(header, body))
        }
        None => false,
    }
}

/// A manifest with this plaintext header and body, sealed to the fixture's reader key.
pub fn seal_manifest(header: &[u8], body: &[u8]) -> Vec<u8> {
    let keys = &fixture().keys;
    let mut info = b"data-embassy manifest v1\0".to_vec();
    info.extend_from_slice(keys.dataset.as_bytes());
    let (key, encapsulated) = ObjectKey::seal_to(&keys.reader_public, &info);
    let mut out = manifest::MAGIC.to_vec();
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(&encapsulated);
    let sealed = key.encrypt(0, &out, body);
    out.extend_from_slice(&sealed);
    out
}

fn manifest_object(bytes: &[u8]) -> bool {
    if let Ok((_, end)) = manifest::decode_header(PATH, bytes) {
        assert!(
            end + crypto::ENCAPSULATED_LEN <= bytes.len(),
            "manifest header end past the end"
        );
    }
    manifest::decode(&fixture().keys, PATH, bytes).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Ledger entries: ledger::decode
// ---------------------------------------------------------------------------------------------

/// Ledger entries and histories. The mode byte's two low bits select:
///
/// - 0: `mode | entry` as stored: `ledger::decode`, then the pinned-signer check that
///   `load_history` makes (fixed list: writer keys of epochs 0 and 1);
/// - 1: `mode | entry CBOR`: framed and signed by the epoch-0 writer key, then as 0;
/// - 2: `mode | (u16 LE n | path (n bytes) | u16 LE m | object (m bytes))*`: a whole ledger as a
///   site lists and serves it, read by `embassy_core::history::load_history` with the fixture's configuration;
/// - 3: `mode | (u16 LE m | entry CBOR (m bytes))*`: each entry signed (by the key it names when
///   the fixture holds it, else the epoch-0 writer key) and stored under its proper path, then
///   read by `load_history`: reaches the chain, fork and signer-set checks.
pub fn ledger(data: &[u8]) -> bool {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    match mode & 3 {
        0 => ledger_entry(rest),
        1 => ledger_entry(&sign_ledger(rest, &f.writers[0])),
        2 => {
            let mut objects = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let (path, tail) = split_u16(rest);
                let (object, tail) = split_u16(tail);
                objects.push((String::from_utf8_lossy(path).into_owned(), object.to_vec()));
                rest = tail;
            }
            ledger_history(objects)
        }
        _ => {
            let mut objects = Vec::new();
            let mut rest = rest;
            while !rest.is_empty() {
                let (body, tail) = split_u16(rest);
                let (bytes, seq) = sign_ledger_as_named(body);
                let id = embassy_core::id::ObjectId::of(&bytes);
                let seq = seq.unwrap_or(objects.len() as u64 + 1);
                objects.push((layout::ledger_entry(DATASET, seq, &id), bytes));
                rest = tail;
            }
            ledger_history(objects)
        }
    }
}

fn ledger_entry(bytes: &[u8]) -> bool {
    match ledger::decode(PATH, bytes) {
        Ok(entry) => fixture().signers.contains(&entry.signer),
        Err(_) => false,
    }
}

fn ledger_history(objects: Vec<(String, Vec<u8>)>) -> bool {
    let site = MemorySite::with(objects);
    match embassy_core::history::load_history(&site, &fixture().config, DATASET) {
        Ok(records) => {
            for (i, record) in records.iter().enumerate() {
                assert_eq!(record.entry.seq, i as u64 + 1, "history is not contiguous");
                let prev = i.checked_sub(1).map(|p| records[p].id);
                assert_eq!(record.entry.prev, prev, "history does not chain");
                assert_eq!(record.entry.dataset, DATASET, "foreign entry in history");
            }
            true
        }
        Err(_) => false,
    }
}

/// A ledger entry with this CBOR body, framed and signed by `key`.
pub fn sign_ledger(body: &[u8], key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    let mut out = ledger::MAGIC.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&keys::sign(key, LEDGER_LABEL, body));
    out
}

/// Signs a CBOR entry body with the fixture key it names (root, writer 0 or 1; writer 0 for any
/// other or an unparsable body); returns the object and the sequence number it claims.
pub fn sign_ledger_as_named(body: &[u8]) -> (Vec<u8>, Option<u64>) {
    let f = fixture();
    let parsed: Option<ledger::Entry> = ciborium::from_reader(body).ok();
    let root = f.root.root_signing_key();
    let key = match &parsed {
        Some(e) if e.signer == root.verifying_key().to_bytes() => root,
        Some(e) if e.signer == f.signers[1] => f.writers[1].clone(),
        _ => f.writers[0].clone(),
    };
    (sign_ledger(body, &key), parsed.map(|e| e.seq))
}

// ---------------------------------------------------------------------------------------------
// Trees: Tree::decode
// ---------------------------------------------------------------------------------------------

/// Tree blobs (plaintext CBOR: trees are authenticated by the blob layer, but a malicious writer
/// chooses them freely). An accepted tree must keep its promises and survive a round trip.
pub fn tree(data: &[u8]) -> bool {
    let Ok(tree) = Tree::decode(data, "fuzz tree") else {
        return false;
    };
    for pair in tree.nodes.windows(2) {
        assert!(pair[0].name < pair[1].name, "accepted tree is not sorted");
    }
    for node in &tree.nodes {
        assert!(tree::is_safe_name(&node.name), "accepted an unsafe name");
        assert!(tree.find(&node.name).is_some(), "find misses a node");
    }
    let again = Tree::decode(&tree.encode(), "fuzz tree again").expect("re-encoded tree decodes");
    assert_eq!(again, tree, "tree does not survive a round trip");
    true
}

// ---------------------------------------------------------------------------------------------
// Vault configuration: VaultConfig::try_load
// ---------------------------------------------------------------------------------------------

/// An in-memory [`Site`]: the fuzz harness's way to hand bytes to `VaultConfig::try_load`
/// exactly as a real site would.
#[derive(Debug, Default)]
pub struct MemorySite {
    objects: Mutex<HashMap<String, Vec<u8>>>,
    /// When set, every read fails with a permanent error.
    pub broken: bool,
}

impl MemorySite {
    /// A site holding these objects.
    pub fn with(objects: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        Self {
            objects: Mutex::new(objects.into_iter().collect()),
            broken: false,
        }
    }

    fn objects(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fail(&self, operation: &'static str, path: &str) -> SiteError {
        SiteError::Permanent {
            site: self.location().into(),
            operation,
            path: path.into(),
            message: "injected failure".into(),
        }
    }
}

impl Site for MemorySite {
    fn location(&self) -> &str {
        "memory:fuzz"
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let mut objects = self.objects();
        if objects.contains_key(path) {
            return Ok(Put::AlreadyExisted);
        }
        objects.insert(path.to_string(), bytes.to_vec());
        Ok(Put::Created)
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        if self.broken {
            return Err(self.fail("get", path));
        }
        self.objects()
            .get(path)
            .cloned()
            .ok_or_else(|| SiteError::NotFound {
                site: self.location().into(),
                path: path.into(),
            })
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        let whole = self.get(path)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let end = usize::try_from(offset.saturating_add(len)).unwrap_or(usize::MAX);
        whole
            .get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| self.fail("get_range", path))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        Ok(self
            .objects()
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(p, b)| ObjectInfo {
                path: p.clone(),
                size: b.len() as u64,
            })
            .collect())
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.objects().remove(path);
        Ok(())
    }
}

/// Flag bits of the config harness's first byte.
pub mod config_flags {
    /// Replace `config.sig` with the fixture root key's real signature over the body.
    pub const SIGN: u8 = 1;
    /// Leave `config.sig` off the site.
    pub const NO_SIGNATURE: u8 = 2;
    /// Leave `config` off the site (an empty site).
    pub const NO_CONFIG: u8 = 4;
    /// Make every read fail with a permanent site error.
    pub const BROKEN_SITE: u8 = 8;
}

/// The vault configuration as `VaultConfig::try_load` reads it from a site:
/// `flags | u16 LE n | config.sig (n bytes) | config (JSON)`; see [`config_flags`].
pub fn config(data: &[u8]) -> bool {
    let Some((&flags, rest)) = data.split_first() else {
        return false;
    };
    let (signature, body) = split_u16(rest);
    let signature = if flags & config_flags::SIGN != 0 {
        sign_config(body)
    } else {
        signature.to_vec()
    };
    let mut objects = Vec::new();
    if flags & config_flags::NO_CONFIG == 0 {
        objects.push((layout::CONFIG.to_string(), body.to_vec()));
    }
    if flags & config_flags::NO_SIGNATURE == 0 {
        objects.push((layout::CONFIG_SIGNATURE.to_string(), signature));
    }
    let mut site = MemorySite::with(objects);
    site.broken = flags & config_flags::BROKEN_SITE != 0;
    match VaultConfig::try_load(&site) {
        Ok(Some(config)) => {
            // Accepted configurations must be usable by the rest of the engine without panics.
            let _ = config.signer_keys();
            let _ = config.check_root(&fixture().root);
            true
        }
        Ok(None) | Err(_) => false,
    }
}

/// The hex signature `config.sig` holds for this configuration body, by the fixture root key.
pub fn sign_config(body: &[u8]) -> Vec<u8> {
    let signature = keys::sign(&fixture().root.root_signing_key(), CONFIG_LABEL, body);
    hex_encode(&signature).into_bytes()
}

/// Lower-case hex.
pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Key files: serde_json + KeyFile::open
// ---------------------------------------------------------------------------------------------

/// Key files: the JSON is parsed as `KeyFile::load` parses it, then opened with [`PASSPHRASE`]
/// (`open` for a root key file, `open_payload` for credentials and witness keys) —
/// but only when `KeyFile::open` is sure to be fast: Argon2id at the cheapest parameters
/// ([`FAST_KDF`], ~10 ms) or parameters the KDF check rejects before stretching. Valid but costly
/// parameters (up to 4 GiB and 100 passes) are parsed only, or each run could take minutes.
pub fn keyfile(data: &[u8]) -> bool {
    let Ok(file) = serde_json::from_slice::<KeyFile>(data) else {
        return false;
    };
    if !open_is_cheap(&file.kdf_params) {
        return false;
    }
    let path = Path::new("fuzz.key");
    if file.purpose == keyfile::PURPOSE_ROOT {
        file.open(PASSPHRASE, path).is_ok()
    } else {
        file.open_payload(PASSPHRASE, path).is_ok()
    }
}

/// True when `KeyFile::open` with these parameters either runs Argon2id at its cheapest or is
/// rejected by the parameter check (mirrors `KdfParams::check`, which is private).
pub fn open_is_cheap(p: &KdfParams) -> bool {
    let rejected = !(8 * 1024..=4 * 1024 * 1024).contains(&p.memory_kib)
        || !(1..=100).contains(&p.iterations)
        || !(1..=64).contains(&p.parallelism);
    rejected || *p == FAST_KDF
}

const WAL_LOG_LABEL: &[u8] = b"data-embassy wal log v1";

/// WAL log objects (`embassy_core::format::wal_log`). Mode byte:
///
/// - `0`: the rest is an object as stored; parsed without keys, then opened with the fixture
///   reader key; the path parser also gets the bytes as a path.
/// - `1`: `u16 LE length | CBOR LogHeader | body`: the header is signed with writer 0 (a
///   malicious writer), so the fuzzer reaches the header's range and length checks and the
///   body's authentication.
/// - `2`: `kind (1) | timeline (4) | start (8) | payload`: sealed with the fixture keys by the
///   real encoder, which must open again to exactly the payload (an encoder/decoder mismatch
///   panics: a finding).
pub fn wal_log(data: &[u8]) -> bool {
    use embassy_core::format::wal_log::{self, LogKind, LogSpec};
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let check = |bytes: &[u8]| -> bool {
        let parsed = wal_log::parse(PATH, bytes);
        match wal_log::open(&f.keys, PATH, bytes) {
            Ok((h, payload)) => {
                assert!(parsed.is_ok(), "open accepted what parse refused");
                assert_eq!(payload.len() as u64, h.end - h.start);
                true
            }
            Err(_) => false,
        }
    };
    match mode % 3 {
        0 => {
            let _ = wal_log::parse_path(&String::from_utf8_lossy(rest));
            check(rest)
        }
        1 => {
            let (header, body) = split_u16(rest);
            let mut out = wal_log::MAGIC.to_vec();
            out.extend_from_slice(&(header.len() as u32).to_le_bytes());
            out.extend_from_slice(header);
            out.extend_from_slice(&keys::sign(&f.writers[0], WAL_LOG_LABEL, header));
            out.extend_from_slice(body);
            check(&out)
        }
        _ => {
            if rest.len() < 13 {
                return false;
            }
            let kind = match rest[0] % 3 {
                0 => LogKind::Piece,
                1 => LogKind::Segment,
                _ => LogKind::History,
            };
            let timeline = u32::from_le_bytes(rest[1..5].try_into().unwrap_or_default());
            let start = u64::from_le_bytes(rest[5..13].try_into().unwrap_or_default());
            let payload = &rest[13..];
            let start = if kind == LogKind::Segment {
                start & !0xff_ffff
            } else {
                start
            };
            let spec = LogSpec {
                kind,
                timeline,
                start,
                end: start.wrapping_add(payload.len() as u64),
                prev: None,
                captured_at_ns: 1,
                system_id: 0,
            };
            match wal_log::seal(&f.keys, &f.writers[0], &spec, payload) {
                Ok((bytes, _)) => {
                    let (_, back) = wal_log::open(&f.keys, PATH, &bytes)
                        .expect("an object the encoder sealed opens again");
                    assert_eq!(back, payload, "round trip changed the payload");
                    true
                }
                Err(_) => false,
            }
        }
    }
}

/// Deletion bookkeeping as verification and garbage collection read it from a site:
/// `mode | object`, stored under the fixture dataset and named by its hash. `mode % 3`: `0` an
/// approval (through `approval::load` and `approval::list`), `1` a condemnation record, `2` a
/// backup session marker (both through `gc::condemned` and a real collection run, which must
/// never delete anything because of a hostile record or marker). True when the object was
/// accepted as what it claims to be.
pub fn deletion_records(data: &[u8]) -> bool {
    use embassy_core::engine::gc::{self, GcOptions};
    use embassy_core::engine::vault::Vault;
    use embassy_core::id::ObjectId;
    use embassy_core::{history::approval, site::Site};
    let f = fixture();
    let Some((&mode, bytes)) = data.split_first() else {
        return false;
    };
    let id = ObjectId::of(bytes);
    let path = match mode % 3 {
        0 => approval::path(DATASET, &id),
        1 => gc::record_path(DATASET, 1_000_000_000, &id),
        _ => gc::marker_path(DATASET, 1_000_000_000, &id),
    };
    let site = std::sync::Arc::new(MemorySite::with([]));
    let vault = match Vault::create(site.clone(), &f.root) {
        Ok(v) => v,
        Err(e) => panic!("the fuzz vault cannot be created on an in-memory site: {e}"),
    };
    if site.put(&path, bytes).is_err() {
        panic!("the in-memory site refused a put");
    }
    let vault_id = vault.config().vault_id.clone();
    let accepted = if mode % 3 == 0 {
        let loaded = approval::load(site.as_ref(), &vault_id, DATASET, &id).is_ok();
        if let Ok((found, problems)) = approval::list(site.as_ref(), &vault_id, DATASET) {
            assert_eq!(found.len() + problems.len(), 1, "one approval stored");
            assert_eq!(found.len(), usize::from(loaded), "list and load disagree");
        }
        loaded
    } else {
        gc::condemned(site.as_ref(), DATASET).is_ok_and(|c| !c.is_empty())
    };
    let options = GcOptions::with_grace(1);
    let state = std::env::temp_dir().join(format!("embassy-fuzz-gc-{}", std::process::id()));
    let collector = gc::Collector::new(f.writers[0].clone(), &state, &vault.config().vault_id);
    if let Ok(report) = gc::collect_garbage(&vault, &collector, &options, i64::MAX / 2) {
        assert!(report.deleted.is_empty(), "deleted {:?}", report.deleted);
    }
    assert!(
        site.get(&path).is_ok(),
        "the hostile object itself was deleted"
    );
    accepted
}

// ---------------------------------------------------------------------------------------------
// Checkpoints and cosignatures: checkpoint::load_valid
// ---------------------------------------------------------------------------------------------

const CHECKPOINT_LABEL: &[u8] = b"data-embassy checkpoint v1";
const COSIGNATURE_LABEL: &[u8] = b"data-embassy cosignature v1";

/// Checkpoints and cosignatures as a site lists and serves them, judged by
/// `checkpoint::load_valid` (signer pinning, vault id, time check against the entries they
/// name, cosignature signatures) with the fixture's root and writer keys as checkpoint signers.
/// Mode byte:
/// - even: `(u16 LE n | path (n bytes) | u16 LE m | object (m bytes))*`, stored as given;
/// - odd: `(u16 LE m | CBOR body (m bytes))*`, alternately framed and signed as a checkpoint
///   (`EMBCHKP1`, by writer 0) under `checkpoints/` and as a cosignature (`EMBCOSG1`, by writer 1)
///   of the previous checkpoint under `cosignatures/`, so the fuzzer reaches past the signatures.
///
/// An accepted checkpoint must be this vault's and signed by a pinned key.
pub fn checkpoints(data: &[u8]) -> bool {
    let f = fixture();
    let Some((&mode, mut rest)) = data.split_first() else {
        return false;
    };
    let mut objects = Vec::new();
    if mode & 1 == 0 {
        while !rest.is_empty() {
            let (path, tail) = split_u16(rest);
            let (object, tail) = split_u16(tail);
            objects.push((String::from_utf8_lossy(path).into_owned(), object.to_vec()));
            rest = tail;
        }
    } else {
        let mut last = embassy_core::id::ObjectId::of(b"none");
        let mut n = 0u64;
        while !rest.is_empty() {
            let (body, tail) = split_u16(rest);
            rest = tail;
            n += 1;
            let (magic, label, key) = if n % 2 == 1 {
                (b"EMBCHKP1", CHECKPOINT_LABEL, &f.writers[0])
            } else {
                (b"EMBCOSG1", COSIGNATURE_LABEL, &f.writers[1])
            };
            let mut out = magic.to_vec();
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(&keys::sign(key, label, body));
            let id = embassy_core::id::ObjectId::of(&out);
            let path = if n % 2 == 1 {
                last = id;
                format!(
                    "{}{n:020}-{id}",
                    embassy_core::history::checkpoint::CHECKPOINTS
                )
            } else {
                format!(
                    "{}{last}/{}-{id}",
                    embassy_core::history::checkpoint::COSIGNATURES,
                    hex_encode(&f.signers[1][..8])
                )
            };
            objects.push((path, out));
        }
    }
    let site = MemorySite::with(objects);
    let mut signers = vec![f.root.root_signing_key().verifying_key().to_bytes()];
    signers.extend(f.signers.iter().copied());
    let histories = std::collections::BTreeMap::new();
    match embassy_core::history::checkpoint::load_valid(
        &site,
        &f.config.vault_id,
        &signers,
        &histories,
    ) {
        Ok((valid, _noise)) => {
            for cp in &valid {
                assert_eq!(
                    cp.checkpoint.vault_id, f.config.vault_id,
                    "a checkpoint of another vault was accepted"
                );
                assert!(
                    signers.contains(&cp.checkpoint.signer),
                    "a checkpoint by an unpinned key was accepted"
                );
            }
            !valid.is_empty()
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Withdrawals: withdrawal::decode and load_at, as the fork rule reads them
// ---------------------------------------------------------------------------------------------

const WITHDRAWAL_LABEL: &[u8] = b"data-embassy withdrawal v1";

/// The fixed race the withdrawal harness judges: entry 1, and two entries at 2 (X's and Y's,
/// both by writer 0) continuing it. Returns the objects as stored and the ids of X's and Y's.
pub fn withdrawal_race() -> &'static (Vec<(String, Vec<u8>)>, [embassy_core::id::ObjectId; 2]) {
    use embassy_core::format::manifest::{VersionKind, VersionStats};
    use embassy_core::history::ledger::{Entry, Event};
    use embassy_core::id::ObjectId;
    static RACE: OnceLock<(Vec<(String, Vec<u8>)>, [ObjectId; 2])> = OnceLock::new();
    RACE.get_or_init(|| {
        let f = fixture();
        let key = &f.writers[0];
        let version = |n: u8| Event::VersionAdded {
            wal_start: None,
            manifest: ObjectId::of(&[n]),
            kind: VersionKind::Stream,
            captured_at_ns: i64::from(n),
            stats: VersionStats::default(),
        };
        let entry = |seq: u64, prev: Option<ObjectId>, n: u8| Entry {
            dataset: DATASET.into(),
            seq,
            prev,
            time_ns: 1_000_000_000 * i64::from(n),
            signer: f.signers[0],
            event: version(n),
        };
        let first = ledger::encode(&entry(1, None, 1), key);
        let first_id = ObjectId::of(&first);
        let x = ledger::encode(&entry(2, Some(first_id), 2), key);
        let y = ledger::encode(&entry(2, Some(first_id), 3), key);
        let ids = [ObjectId::of(&x), ObjectId::of(&y)];
        let objects = vec![
            (layout::ledger_entry(DATASET, 1, &first_id), first),
            (layout::ledger_entry(DATASET, 2, &ids[0]), x),
            (layout::ledger_entry(DATASET, 2, &ids[1]), y),
        ];
        (objects, ids)
    })
}

/// A withdrawal with this CBOR body, framed and signed by writer 0 (the race's signer).
pub fn sign_withdrawal(body: &[u8]) -> Vec<u8> {
    use embassy_core::history::withdrawal;
    let mut out = withdrawal::MAGIC.to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&keys::sign(&fixture().writers[0], WITHDRAWAL_LABEL, body));
    out
}

/// Withdrawals as the fork rule reads them from a site (format 6): `mode | object`, stored
/// under the withdrawals of sequence number 2 of [`withdrawal_race`]'s fork, named by its hash.
/// Mode even: the object as stored. Odd: a CBOR `Withdrawal` body the harness frames and signs
/// with writer 0 (the race's own signer), so the fuzzer reaches the rule's checks past the
/// signature. The history must load, and be one a site could honestly show: the fork
/// (nothing accepted past entry 1), or exactly one of the two entries accepted with the other
/// withdrawn. True when a withdrawal counted.
pub fn withdrawals(data: &[u8]) -> bool {
    use embassy_core::history::withdrawal;
    use embassy_core::id::ObjectId;
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    let object = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        sign_withdrawal(rest)
    };
    let (objects, ids) = withdrawal_race();
    let mut stored = objects.clone();
    stored.push((withdrawal::path(DATASET, 2, &ObjectId::of(&object)), object));
    let site = MemorySite::with(stored);
    let h = match embassy_core::history::load(&site, &fixture().config, DATASET, None) {
        Ok(h) => h,
        Err(e) => panic!("a history with a hostile withdrawal did not load: {e}"),
    };
    match h.records.len() {
        1 => {
            assert!(
                h.conflict.is_some(),
                "the fork vanished without a withdrawal"
            );
            assert!(h.withdrawn.is_empty(), "withdrawn, yet the fork stays");
            false
        }
        2 => {
            let last = h.records[1].id;
            assert!(ids.contains(&last), "an entry from nowhere was accepted");
            assert!(h.conflict.is_none(), "accepted past an unresolved fork");
            assert_eq!(
                h.withdrawn.len(),
                1,
                "one entry accepted without one withdrawn"
            );
            assert!(
                ids.contains(&h.withdrawn[0].id) && h.withdrawn[0].id != last,
                "the withdrawn entry is not the other one of the fork"
            );
            true
        }
        n => panic!("{n} entries accepted from a ledger of three entries with a fork at 2"),
    }
}

/// WAL records as `embassy_postgres::walend` walks them (a latest restore's pin, the fork
/// judge's walk): `segment (1) | bytes`. The bytes are WAL from the start of segment
/// `segment`, up to their end; the WAL inside a log object is what a credential that signs the
/// dataset's WAL wrote, so any bytes can reach the walk. Checked: no panic, and what it finds
/// lies inside the bytes given.
pub fn wal_records(data: &[u8]) -> bool {
    let Some((&segment, bytes)) = data.split_first() else {
        return false;
    };
    let start = u64::from(segment) * 16 * 1024 * 1024;
    let end = start + bytes.len() as u64;
    let last = embassy_postgres::walend::last_record_start(bytes, start, end);
    if let Some(at) = last {
        assert!(
            at >= start && at < end,
            "a record start outside the bytes: {at}"
        );
    }
    if let Ok(Some(at)) = embassy_postgres::walend::last_data_end(bytes, start, end) {
        assert!(
            at > start && at <= end,
            "a commit end outside the bytes: {at}"
        );
    }
    last.is_some()
}
