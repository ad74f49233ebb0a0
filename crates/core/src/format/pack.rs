//! Packs: many encrypted blobs (chunks of data or tree nodes) in one object, sealed to the
//! dataset's reader so the writer cannot read them back.
//!
//! ```text
//! header     "EMBPACK1" | reader key id (8) | HPKE encapsulated key (32)
//! blob*      ChaCha20-Poly1305(object key, nonce = offset, aad = "EMBBLOB1" | kind | chunk id,
//!                              compression (1) | body)
//! directory  ChaCha20-Poly1305(object key, nonce = 2^64-1, aad = "EMBPDIR1", CBOR [entry*])
//! trailer    u32 LE length of the directory
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::keys::crypto::{ObjectKey, ENCAPSULATED_LEN, TAG_LEN};
use crate::keys::DatasetKeys;

/// zstd level used for chunk compression. Chosen by measurement on the registry corpus
/// (see `bench/README.md`): level 3 compresses database pages well at a cost the pipeline absorbs.
pub const COMPRESSION_LEVEL: i32 = 3;

/// Magic at the start of every pack.
pub const MAGIC: &[u8; 8] = b"EMBPACK1";
/// Length of the pack header.
pub const HEADER_LEN: usize = 8 + 8 + ENCAPSULATED_LEN;
const DIRECTORY_NONCE: u64 = u64::MAX;

/// What a blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub enum BlobKind {
    /// File or stream content.
    Data,
    /// A serialized directory ([`crate::format::tree::Tree`]).
    Tree,
}

impl From<BlobKind> for u8 {
    fn from(kind: BlobKind) -> u8 {
        match kind {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
        }
    }
}

impl TryFrom<u8> for BlobKind {
    type Error = String;
    fn try_from(v: u8) -> std::result::Result<Self, String> {
        match v {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            _ => Err(format!("unknown blob kind {v}")),
        }
    }
}

/// Where a blob sits in its pack. Encoded as the CBOR array
/// `[kind, id, offset, length, raw_length]` (compact: one per chunk, in every index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "BlobEntryWire", from = "BlobEntryWire")]
pub struct BlobEntry {
    /// Data or tree.
    pub kind: BlobKind,
    /// Keyed hash of the plaintext.
    pub id: ChunkId,
    /// Byte offset of the ciphertext in the pack (also its nonce).
    pub offset: u32,
    /// Ciphertext length, tag included.
    pub length: u32,
    /// Plaintext length.
    pub raw_length: u32,
}

/// The wire form of a [`BlobEntry`].
#[derive(Serialize, Deserialize)]
struct BlobEntryWire(BlobKind, ChunkId, u32, u32, u32);

impl From<BlobEntry> for BlobEntryWire {
    fn from(e: BlobEntry) -> Self {
        BlobEntryWire(e.kind, e.id, e.offset, e.length, e.raw_length)
    }
}

impl From<BlobEntryWire> for BlobEntry {
    fn from(w: BlobEntryWire) -> Self {
        BlobEntry {
            kind: w.0,
            id: w.1,
            offset: w.2,
            length: w.3,
            raw_length: w.4,
        }
    }
}

/// Largest plaintext a blob may have (chunks are at most 8 MiB; trees far smaller). A larger
/// `raw_length` in an index or pack directory is damage or an attack (it would make a reader
/// reserve gigabytes), and is rejected before any allocation.
pub const MAX_BLOB_LEN: u32 = 64 * 1024 * 1024;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;

/// A reusable zstd context and scratch buffer, one per worker thread.
pub struct BlobCompressor {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
}

impl BlobCompressor {
    /// A compressor at [`COMPRESSION_LEVEL`].
    pub fn new() -> Result<Self> {
        let zstd = zstd::bulk::Compressor::new(COMPRESSION_LEVEL)
            .map_err(|e| Error::invalid(format!("zstd: {e}")))?;
        Ok(Self {
            zstd,
            scratch: Vec::new(),
        })
    }

    /// Appends `compression byte | body` to `out`: zstd when it saves at least 3 %, else the
    /// bytes as they are. Large blobs are sampled first, so incompressible data (scans,
    /// archives) costs almost nothing.
    fn encode_into(&mut self, raw: &[u8], out: &mut Vec<u8>) {
        const SAMPLE: usize = 64 * 1024;
        let worth_trying = raw.len() <= 2 * SAMPLE
            || {
                self.scratch.clear();
                self.scratch
                    .reserve(zstd::zstd_safe::compress_bound(SAMPLE));
                matches!(self.zstd.compress_to_buffer(&raw[..SAMPLE], &mut self.scratch), Ok(n) if n < SAMPLE * 97 / 100)
            };
        if worth_trying {
            self.scratch.clear();
            self.scratch
                .reserve(zstd::zstd_safe::compress_bound(raw.len()));
            if let Ok(n) = self.zstd.compress_to_buffer(raw, &mut self.scratch) {
                if n < raw.len() * 97 / 100 {
                    out.push(COMPRESSION_ZSTD);
                    out.extend_from_slice(&self.scratch[..n]);
                    return;
                }
            }
        }
        out.push(COMPRESSION_NONE);
        out.extend_from_slice(raw);
    }
}

fn hpke_info(dataset: &str, key_id: &[u8; 8]) -> Vec<u8> {
    let mut info = b"data-embassy pack v1\0".to_vec();
    info.extend_from_slice(dataset.as_bytes());
    info.push(0);
    info.extend_from_slice(key_id);
    info
}

fn blob_aad(kind: BlobKind, id: &ChunkId) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[..8].copy_from_slice(b"EMBBLOB1");
    aad[8] = kind.into();
    aad[9..].copy_from_slice(&id.0);
    aad
}

/// Builds one pack in memory.
pub struct PackWriter {
    key: ObjectKey,
    bytes: Vec<u8>,
    entries: Vec<BlobEntry>,
}

impl PackWriter {
    /// Starts a pack sealed to `keys`' reader.
    pub fn new(keys: &DatasetKeys, capacity: usize) -> Self {
        let key_id = keys.key_id();
        let (key, encapsulated) =
            ObjectKey::seal_to(&keys.reader_public, &hpke_info(&keys.dataset, &key_id));
        let mut bytes = Vec::with_capacity(capacity);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&key_id);
        bytes.extend_from_slice(&encapsulated);
        Self {
            key,
            bytes,
            entries: Vec::new(),
        }
    }

    /// Compresses and encrypts one blob into the pack; returns its stored length.
    pub fn add(
        &mut self,
        compressor: &mut BlobCompressor,
        kind: BlobKind,
        id: ChunkId,
        raw: &[u8],
    ) -> Result<u32> {
        let offset =
            u32::try_from(self.bytes.len()).map_err(|_| Error::invalid("pack grew past 4 GiB"))?;
        let raw_length = u32::try_from(raw.len())
            .ok()
            .filter(|&n| n <= MAX_BLOB_LEN)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "a blob of {} bytes is larger than the format's {MAX_BLOB_LEN}: a directory with too many entries?",
                    raw.len()
                ))
            })?;
        let start = self.bytes.len();
        compressor.encode_into(raw, &mut self.bytes);
        let tag = self.key.encrypt_in_place(
            offset as u64,
            &blob_aad(kind, &id),
            &mut self.bytes[start..],
        );
        self.bytes.extend_from_slice(&tag);
        let length = (self.bytes.len() - start) as u32;
        self.entries.push(BlobEntry {
            kind,
            id,
            offset,
            length,
            raw_length,
        });
        Ok(length)
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when no blob was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Closes the pack: the stored bytes and the blobs in it.
    pub fn finish(mut self) -> (Vec<u8>, Vec<BlobEntry>) {
        let directory = cbor::to_vec(&self.entries);
        let sealed = self.key.encrypt(DIRECTORY_NONCE, b"EMBPDIR1", &directory);
        self.bytes.extend_from_slice(&sealed);
        self.bytes
            .extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        (self.bytes, self.entries)
    }
}

/// Recovers the object key of a pack from its header (needs the reader secret).
pub fn open_key(keys: &DatasetKeys, path: &str, header: &[u8]) -> Result<ObjectKey> {
    if header.len() < HEADER_LEN || &header[..8] != MAGIC {
        return Err(Error::corrupt(path, "not a pack (bad magic or too short)"));
    }
    let key_id: [u8; 8] = header[8..16].try_into().unwrap_or_default();
    if key_id != keys.key_id() {
        return Err(Error::corrupt(
            path,
            format!(
                "sealed to reader key {} but dataset {} uses {}: a foreign or substituted pack",
                hex::encode(key_id),
                keys.dataset,
                hex::encode(keys.key_id())
            ),
        ));
    }
    let encapsulated: [u8; ENCAPSULATED_LEN] = header[16..HEADER_LEN]
        .try_into()
        .unwrap_or([0u8; ENCAPSULATED_LEN]);
    ObjectKey::open_with(
        keys.reader()?,
        &encapsulated,
        &hpke_info(&keys.dataset, &key_id),
    )
    .map_err(|_| Error::corrupt(path, "pack header does not open with the reader key"))
}

/// Decrypts, decompresses and checks one blob; `ciphertext` is exactly the blob's stored bytes.
pub fn open_blob(
    key: &ObjectKey,
    keys: &DatasetKeys,
    path: &str,
    entry: &BlobEntry,
    ciphertext: &[u8],
) -> Result<Vec<u8>> {
    let mut sealed = ciphertext.to_vec();
    let mut scratch = Vec::new();
    open_blob_in_place(key, keys, path, entry, &mut sealed, &mut scratch).map(|p| p.to_vec())
}

/// Like [`open_blob`] without copies: decrypts `sealed` in place and returns the plaintext,
/// which lies either in `sealed` or, if it was compressed, in `scratch`.
pub fn open_blob_in_place<'a>(
    key: &ObjectKey,
    keys: &DatasetKeys,
    path: &str,
    entry: &BlobEntry,
    sealed: &'a mut [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8]> {
    let bad =
        |problem: String| Error::corrupt(path, format!("blob {}: {problem}", entry.id.short()));
    if sealed.len() != entry.length as usize || sealed.len() < TAG_LEN + 1 {
        return Err(bad("stored length does not match the index".into()));
    }
    if entry.raw_length > MAX_BLOB_LEN {
        return Err(bad(format!(
            "claims {} bytes of plaintext, more than any blob holds",
            entry.raw_length
        )));
    }
    key.decrypt_in_place(
        entry.offset as u64,
        &blob_aad(entry.kind, &entry.id),
        sealed,
    )
    .map_err(|_| bad("authentication failed: the bytes were altered or moved".into()))?;
    let plain = &sealed[..sealed.len() - TAG_LEN];
    let raw: &[u8] = match plain[0] {
        COMPRESSION_NONE => &plain[1..],
        COMPRESSION_ZSTD => {
            scratch.clear();
            scratch.reserve(entry.raw_length as usize);
            decompress(scratch, &plain[1..]).map_err(|code| {
                bad(format!(
                    "does not decompress within its stated size: {}",
                    zstd::zstd_safe::get_error_name(code)
                ))
            })?;
            scratch
        }
        _ => return Err(bad("unknown compression".into())),
    };
    if raw.len() != entry.raw_length as usize {
        return Err(bad("plaintext length does not match the index".into()));
    }
    if keys.chunk_id(raw) != entry.id {
        return Err(bad("content does not hash to its chunk id".into()));
    }
    Ok(raw)
}

thread_local! {
    /// This thread's zstd decompression context: one per thread, reused, instead of one
    /// allocated and freed per blob (relation files are restored as 8 KiB blobs).
    static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one zstd frame into `out` (within its capacity) with this thread's context.
fn decompress(out: &mut Vec<u8>, frame: &[u8]) -> std::result::Result<usize, usize> {
    DCTX.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Re-entered on this thread (not done today): a context of its own.
            return zstd::zstd_safe::decompress(out, frame);
        };
        if slot.is_none() {
            *slot = zstd::zstd_safe::DCtx::try_create();
        }
        match slot.as_mut() {
            Some(dctx) => dctx.decompress(out, frame),
            None => zstd::zstd_safe::decompress(out, frame),
        }
    })
}

/// Reads the directory at the end of a whole pack (for repair and deep verification).
pub fn read_directory(key: &ObjectKey, path: &str, pack: &[u8]) -> Result<Vec<BlobEntry>> {
    read_directory_with(key, path, pack.len() as u64, &mut |offset, len| {
        Ok(pack[offset as usize..][..len as usize].to_vec())
    })
}

/// Reads the directory of a pack of `size` bytes through `read(offset, len)`, which returns
/// that range of the pack (asked only within `size`): the pack need not be held whole.
pub fn read_directory_with(
    key: &ObjectKey,
    path: &str,
    size: u64,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<Vec<BlobEntry>> {
    let bad = |p: &str| Error::corrupt(path, format!("pack directory: {p}"));
    if size < HEADER_LEN as u64 + 4 {
        return Err(bad("pack too short"));
    }
    let len_at = size - 4;
    let trailer = read(len_at, 4)?;
    let dir_len = u64::from(u32::from_le_bytes(
        trailer.as_slice().try_into().unwrap_or_default(),
    ));
    if dir_len > len_at - HEADER_LEN as u64 {
        return Err(bad("length out of range"));
    }
    let sealed = read(len_at - dir_len, dir_len)?;
    let plain = key
        .decrypt(DIRECTORY_NONCE, b"EMBPDIR1", &sealed)
        .map_err(|_| bad("authentication failed"))?;
    let entries: Vec<BlobEntry> = cbor::from_slice(&plain).map_err(|e| bad(&e))?;
    let data_end = len_at - dir_len;
    for e in &entries {
        if (e.offset as usize) < HEADER_LEN || e.offset as u64 + e.length as u64 > data_end {
            return Err(bad("entry points outside the pack"));
        }
    }
    Ok(entries)
}

/// Deep check of one pack of `size` bytes read by ranges through `read(offset, len)`: its header
/// opens with the dataset's reader key, its directory opens, and every blob it lists decrypts and
/// hashes to its chunk id, one blob in memory at a time. Returns the number of blobs and the
/// directory by chunk id.
pub fn check_blobs(
    keys: &DatasetKeys,
    path: &str,
    size: u64,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<(usize, HashMap<ChunkId, Vec<BlobEntry>>)> {
    let header = read(0, size.min(HEADER_LEN as u64))?;
    let key = open_key(keys, path, &header)?;
    let entries = read_directory_with(&key, path, size, read)?;
    let mut ids: HashMap<ChunkId, Vec<BlobEntry>> = HashMap::new();
    let mut scratch = Vec::new();
    for e in &entries {
        if u64::from(e.length) > MAX_SEALED_BLOB_LEN {
            return Err(Error::corrupt(
                path,
                format!(
                    "blob {}: stored as {} bytes, more than any blob takes",
                    e.id.short(),
                    e.length
                ),
            ));
        }
        let mut sealed = read(u64::from(e.offset), u64::from(e.length))?;
        open_blob_in_place(&key, keys, path, e, &mut sealed, &mut scratch)?;
        ids.entry(e.id).or_default().push(*e);
    }
    Ok((entries.len(), ids))
}

/// Largest stored blob: the largest plaintext uncompressed, its compression byte and its tag.
/// A directory entry claiming more is damage, refused before its bytes are read.
pub const MAX_SEALED_BLOB_LEN: u64 = MAX_BLOB_LEN as u64 + 1 + TAG_LEN as u64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::RootSecret;

    #[test]
    fn pack_round_trip_and_tamper_detection() {
        let root = RootSecret::from_bytes(&[5u8; 32]);
        let keys = root.dataset_keys("ds", 0);
        let mut comp = BlobCompressor::new().unwrap();
        let mut writer = PackWriter::new(&keys, 1024);
        let a = vec![7u8; 300_000];
        let b: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        writer
            .add(&mut comp, BlobKind::Data, keys.chunk_id(&a), &a)
            .unwrap();
        writer
            .add(&mut comp, BlobKind::Tree, keys.chunk_id(&b), &b)
            .unwrap();
        let (bytes, entries) = writer.finish();
        let key = open_key(&keys, "p", &bytes).unwrap();
        assert_eq!(read_directory(&key, "p", &bytes).unwrap(), entries);
        for (entry, raw) in entries.iter().zip([&a, &b]) {
            let ct = &bytes[entry.offset as usize..][..entry.length as usize];
            assert_eq!(&open_blob(&key, &keys, "p", entry, ct).unwrap(), raw);
            let mut bad = ct.to_vec();
            bad[3] ^= 0x40;
            assert!(open_blob(&key, &keys, "p", entry, &bad).is_err());
        }
        // A blob presented under another id (substitution inside a pack) is rejected.
        let mut moved = entries[0];
        moved.id = entries[1].id;
        let ct = &bytes[moved.offset as usize..][..moved.length as usize];
        assert!(open_blob(&key, &keys, "p", &moved, ct).is_err());
        // Another dataset's keys cannot open the pack.
        let other = root.dataset_keys("other", 0);
        assert!(open_key(&other, "p", &bytes).is_err());

        // Checked by ranges (deep verification from a spool): the same blobs, none held whole.
        let mut asked = Vec::new();
        let mut ranges = |at: u64, len: u64| {
            asked.push(len);
            Ok(bytes[at as usize..][..len as usize].to_vec())
        };
        let (count, ids) = check_blobs(&keys, "p", bytes.len() as u64, &mut ranges).unwrap();
        assert_eq!((count, ids.len()), (2, 2));
        assert!(asked.iter().all(|&len| len < bytes.len() as u64));
        let mut bad = bytes.clone();
        bad[entries[1].offset as usize + 2] ^= 1;
        let mut ranges = |at: u64, len: u64| Ok(bad[at as usize..][..len as usize].to_vec());
        assert!(check_blobs(&keys, "p", bad.len() as u64, &mut ranges).is_err());
    }
}
