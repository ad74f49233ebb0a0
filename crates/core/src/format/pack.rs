//! Packs: many encrypted blobs (chunks of data or tree nodes) in one object, sealed to the
//! dataset's reader so the writer cannot read them back.
//!
//! ```text
//! header     "EMBPACK1" | reader key id (8) | HPKE encapsulated key (32)
//! blob*      ChaCha20-Poly1305(object key, nonce = offset, aad = "EMBBLOB1" | kind | chunk id
//!                              [| base chunk id, deltas only], compression (1) | body)
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
    /// File content stored as a delta against another data blob of the same dataset, its
    /// *base* (format 7): a PostgreSQL page against the same page's previous version. The
    /// base is always a full [`BlobKind::Data`] blob (depth 1), named in [`BlobEntry::base`].
    Delta,
}

impl From<BlobKind> for u8 {
    fn from(kind: BlobKind) -> u8 {
        match kind {
            BlobKind::Data => 0,
            BlobKind::Tree => 1,
            BlobKind::Delta => 2,
        }
    }
}

impl TryFrom<u8> for BlobKind {
    type Error = String;
    fn try_from(v: u8) -> std::result::Result<Self, String> {
        match v {
            0 => Ok(BlobKind::Data),
            1 => Ok(BlobKind::Tree),
            2 => Ok(BlobKind::Delta),
            _ => Err(format!("unknown blob kind {v}")),
        }
    }
}

/// Where a blob sits in its pack. Encoded as the CBOR array
/// `[kind, id, offset, length, raw_length]` (compact: one per chunk, in every index), with a
/// sixth element, the base's chunk id, for a delta (`[2, id, offset, length, raw_length, base]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobEntry {
    /// Data, tree or delta.
    pub kind: BlobKind,
    /// Keyed hash of the plaintext (for a delta: of the content it reconstructs).
    pub id: ChunkId,
    /// Byte offset of the ciphertext in the pack (also its nonce).
    pub offset: u32,
    /// Ciphertext length, tag included.
    pub length: u32,
    /// Plaintext length (for a delta: of the content it reconstructs).
    pub raw_length: u32,
    /// A delta's base: the chunk id of the full data blob it applies to. `Some` exactly when
    /// `kind` is [`BlobKind::Delta`].
    pub base: Option<ChunkId>,
}

impl Serialize for BlobEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(if self.base.is_some() { 6 } else { 5 })?;
        t.serialize_element(&self.kind)?;
        t.serialize_element(&self.id)?;
        t.serialize_element(&self.offset)?;
        t.serialize_element(&self.length)?;
        t.serialize_element(&self.raw_length)?;
        if let Some(base) = &self.base {
            t.serialize_element(base)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for BlobEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BlobEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a blob entry: [kind, id, offset, length, raw_length(, base)]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<BlobEntry, A::Error> {
                use serde::de::Error as _;
                let missing = |n| A::Error::invalid_length(n, &self);
                let kind: BlobKind = seq.next_element()?.ok_or_else(|| missing(0))?;
                let id: ChunkId = seq.next_element()?.ok_or_else(|| missing(1))?;
                let offset: u32 = seq.next_element()?.ok_or_else(|| missing(2))?;
                let length: u32 = seq.next_element()?.ok_or_else(|| missing(3))?;
                let raw_length: u32 = seq.next_element()?.ok_or_else(|| missing(4))?;
                let base: Option<ChunkId> = if kind == BlobKind::Delta {
                    Some(seq.next_element()?.ok_or_else(|| missing(5))?)
                } else {
                    None
                };
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::custom(
                        "a blob entry with more elements than its kind has",
                    ));
                }
                if base == Some(id) {
                    return Err(A::Error::custom("a delta whose base is itself"));
                }
                Ok(BlobEntry {
                    kind,
                    id,
                    offset,
                    length,
                    raw_length,
                    base,
                })
            }
        }
        d.deserialize_seq(Visitor)
    }
}

/// Largest plaintext a blob may have (chunks are at most 8 MiB; trees far smaller). A larger
/// `raw_length` in an index or pack directory is damage or an attack (it would make a reader
/// reserve gigabytes), and is rejected before any allocation.
pub const MAX_BLOB_LEN: u32 = 64 * 1024 * 1024;

const COMPRESSION_NONE: u8 = 0;
const COMPRESSION_ZSTD: u8 = 1;
/// A delta blob's payload: a zstd frame compressed with its base's plaintext as a raw-content
/// dictionary (`ZSTD_compress_usingDict`); only [`BlobKind::Delta`] blobs use it.
const COMPRESSION_DELTA: u8 = 2;
/// zstd's dictionary magic (little-endian at the start of a structured dictionary). A base
/// starting with it, or shorter than 8 bytes, would be taken for a structured dictionary (or
/// none), not raw content: writers never delta against one, readers refuse such a delta.
const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

/// True if `base` may serve as a delta's base: zstd reads it as raw content.
pub fn usable_base(base: &[u8]) -> bool {
    base.len() >= 8 && base[..4] != ZSTD_DICT_MAGIC && base.len() <= MAX_BLOB_LEN as usize
}

/// A reusable zstd context and scratch buffer, one per worker thread.
pub struct BlobCompressor {
    zstd: zstd::bulk::Compressor<'static>,
    scratch: Vec<u8>,
    /// The context for deltas (a dictionary per call, so not the bulk compressor's).
    delta: Option<zstd::zstd_safe::CCtx<'static>>,
    delta_scratch: Vec<u8>,
}

impl BlobCompressor {
    /// A compressor at [`COMPRESSION_LEVEL`].
    pub fn new() -> Result<Self> {
        let zstd = zstd::bulk::Compressor::new(COMPRESSION_LEVEL)
            .map_err(|e| Error::invalid(format!("zstd: {e}")))?;
        Ok(Self {
            zstd,
            scratch: Vec::new(),
            delta: None,
            delta_scratch: Vec::new(),
        })
    }

    /// Compresses `raw` with `base` as a raw-content dictionary into the delta scratch buffer;
    /// returns the frame's length (None when zstd fails or the base is not usable).
    fn delta(&mut self, raw: &[u8], base: &[u8]) -> Option<usize> {
        if !usable_base(base) {
            return None;
        }
        if self.delta.is_none() {
            self.delta = zstd::zstd_safe::CCtx::try_create();
        }
        let cctx = self.delta.as_mut()?;
        self.delta_scratch.clear();
        self.delta_scratch
            .reserve(zstd::zstd_safe::compress_bound(raw.len()));
        cctx.compress_using_dict(&mut self.delta_scratch, raw, base, COMPRESSION_LEVEL)
            .ok()
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

/// The associated data of a blob: `"EMBBLOB1" || kind || id`, and `|| base` for a delta (so a
/// delta's ciphertext opens only under the base its entry names).
struct BlobAad {
    bytes: [u8; 73],
    len: usize,
}

impl BlobAad {
    fn of(entry: &BlobEntry) -> Self {
        Self::new(entry.kind, &entry.id, entry.base.as_ref())
    }

    fn new(kind: BlobKind, id: &ChunkId, base: Option<&ChunkId>) -> Self {
        let mut bytes = [0u8; 73];
        bytes[..8].copy_from_slice(b"EMBBLOB1");
        bytes[8] = kind.into();
        bytes[9..41].copy_from_slice(&id.0);
        let len = match base {
            Some(base) => {
                bytes[41..].copy_from_slice(&base.0);
                73
            }
            None => 41,
        };
        BlobAad { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A delta at most this fraction of its blob's raw length is stored without trying the blob
/// compressed alone: a page compressed alone is rarely below a sixteenth of its size.
const DELTA_SURELY_SMALLER: usize = 16;

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
        if kind == BlobKind::Delta {
            return Err(Error::invalid(
                "a delta blob is added with its base (PackWriter::add_data)",
            ));
        }
        self.add_inner(compressor, kind, id, raw, None)
            .map(|(length, _)| length)
    }

    /// Adds one data blob; with `base` (the chunk id and plaintext of a full data blob of this
    /// dataset), stores it as a [`BlobKind::Delta`] against that base when the delta is smaller
    /// than the blob compressed alone. Returns its stored length and the kind it took.
    pub fn add_data(
        &mut self,
        compressor: &mut BlobCompressor,
        id: ChunkId,
        raw: &[u8],
        base: Option<(ChunkId, &[u8])>,
    ) -> Result<(u32, BlobKind)> {
        self.add_inner(compressor, BlobKind::Data, id, raw, base)
    }

    fn add_inner(
        &mut self,
        compressor: &mut BlobCompressor,
        kind: BlobKind,
        id: ChunkId,
        raw: &[u8],
        base: Option<(ChunkId, &[u8])>,
    ) -> Result<(u32, BlobKind)> {
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
        // The delta first: most changed pages differ from their base in a few tuples, and a
        // delta of at most a sixteenth of the blob is kept without compressing the blob alone
        // too (that second compression was a third of an incremental backup's CPU).
        let delta = base
            .filter(|(b, _)| *b != id)
            .and_then(|(base, plain)| Some((base, compressor.delta(raw, plain)?)));
        let delta = match delta {
            Some((base, n)) if n <= raw.len() / DELTA_SURELY_SMALLER => Some((base, n)),
            _ => {
                compressor.encode_into(raw, &mut self.bytes);
                let alone = self.bytes.len() - start;
                delta.filter(|&(_, n)| n + 1 < alone)
            }
        };
        let (mut kind, mut base_id) = (kind, None);
        if let Some((base, n)) = delta {
            self.bytes.truncate(start);
            self.bytes.push(COMPRESSION_DELTA);
            self.bytes.extend_from_slice(&compressor.delta_scratch[..n]);
            kind = BlobKind::Delta;
            base_id = Some(base);
        }
        let aad = BlobAad::new(kind, &id, base_id.as_ref());
        let tag =
            self.key
                .encrypt_in_place(offset as u64, aad.as_slice(), &mut self.bytes[start..]);
        self.bytes.extend_from_slice(&tag);
        let length = (self.bytes.len() - start) as u32;
        self.entries.push(BlobEntry {
            kind,
            id,
            offset,
            length,
            raw_length,
            base: base_id,
        });
        Ok((length, kind))
    }

    /// Seals a delta's payload (`2 | frame`, as [`open_delta_in_place`] returned its frame)
    /// again as it is, for garbage collection's repacking, which moves a delta without its
    /// base; `entry` gives its kind, id, base and plaintext length.
    pub fn add_delta_frame(&mut self, entry: &BlobEntry, frame: &[u8]) -> Result<u32> {
        if entry.kind != BlobKind::Delta || entry.base.is_none() {
            return Err(Error::invalid("add_delta_frame: not a delta"));
        }
        let offset =
            u32::try_from(self.bytes.len()).map_err(|_| Error::invalid("pack grew past 4 GiB"))?;
        let start = self.bytes.len();
        self.bytes.push(COMPRESSION_DELTA);
        self.bytes.extend_from_slice(frame);
        let moved = BlobEntry {
            offset,
            length: 0,
            ..*entry
        };
        let tag = self.key.encrypt_in_place(
            offset as u64,
            BlobAad::of(&moved).as_slice(),
            &mut self.bytes[start..],
        );
        self.bytes.extend_from_slice(&tag);
        let length = (self.bytes.len() - start) as u32;
        self.entries.push(BlobEntry { length, ..moved });
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

/// Decrypts one blob in place and returns its compression byte and body, after checking the
/// stored length and that the plaintext length is within the format's limit.
fn open_payload_in_place<'a>(
    key: &ObjectKey,
    path: &str,
    entry: &BlobEntry,
    sealed: &'a mut [u8],
) -> Result<(u8, &'a [u8])> {
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
    if (entry.kind == BlobKind::Delta) != entry.base.is_some() {
        return Err(bad(
            "a delta without a base, or a base on a full blob".into()
        ));
    }
    key.decrypt_in_place(entry.offset as u64, BlobAad::of(entry).as_slice(), sealed)
        .map_err(|_| bad("authentication failed: the bytes were altered or moved".into()))?;
    let plain = &sealed[..sealed.len() - TAG_LEN];
    Ok((plain[0], &plain[1..]))
}

/// Like [`open_blob`] without copies: decrypts `sealed` in place and returns the plaintext,
/// which lies either in `sealed` or, if it was compressed, in `scratch`. A delta is refused
/// here: it needs its base ([`open_delta_in_place`], [`apply_delta`]).
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
    if entry.kind == BlobKind::Delta {
        return Err(Error::invalid(format!(
            "blob {} of {path} is a delta: it is read with its base",
            entry.id.short()
        )));
    }
    let (compression, body) = open_payload_in_place(key, path, entry, sealed)?;
    let raw: &[u8] = match compression {
        COMPRESSION_NONE => body,
        COMPRESSION_ZSTD => {
            scratch.clear();
            scratch.reserve(entry.raw_length as usize);
            decompress(scratch, body, None).map_err(|code| {
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

/// Decrypts a delta blob in place and returns its zstd frame (still to be applied to its
/// base with [`apply_delta`]). The AEAD binds the frame to the base its entry names.
pub fn open_delta_in_place<'a>(
    key: &ObjectKey,
    path: &str,
    entry: &BlobEntry,
    sealed: &'a mut [u8],
) -> Result<&'a [u8]> {
    if entry.kind != BlobKind::Delta {
        return Err(Error::invalid(format!(
            "blob {} of {path} is not a delta",
            entry.id.short()
        )));
    }
    match open_payload_in_place(key, path, entry, sealed)? {
        (COMPRESSION_DELTA, frame) => Ok(frame),
        _ => Err(Error::corrupt(
            path,
            format!(
                "blob {}: a delta whose payload is not a delta",
                entry.id.short()
            ),
        )),
    }
}

/// Reconstructs a delta's content from its frame and its base's plaintext (already checked
/// against the base's chunk id) into `out`, and checks it: its length is the entry's and it
/// hashes to the entry's chunk id. Another base than the one the delta was made against (a
/// hostile site or writer) gives other bytes, refused here.
pub fn apply_delta(
    keys: &DatasetKeys,
    path: &str,
    entry: &BlobEntry,
    frame: &[u8],
    base: &[u8],
    out: &mut Vec<u8>,
) -> Result<()> {
    let bad = |problem: String| {
        Error::corrupt(
            path,
            format!(
                "delta blob {} against base {}: {problem}",
                entry.id.short(),
                entry.base.map(|b| b.short()).unwrap_or_default()
            ),
        )
    };
    if !usable_base(base) {
        return Err(bad(
            "its base is not raw content zstd can use (too short or a dictionary's magic)".into(),
        ));
    }
    out.clear();
    out.reserve(entry.raw_length as usize);
    decompress(out, frame, Some(base)).map_err(|code| {
        bad(format!(
            "does not decompress against its base within its stated size: {}",
            zstd::zstd_safe::get_error_name(code)
        ))
    })?;
    if out.len() != entry.raw_length as usize {
        return Err(bad(
            "reconstructed length does not match the index: a wrong base?".into(),
        ));
    }
    if keys.chunk_id(out) != entry.id {
        return Err(bad(
            "reconstructed content does not hash to its chunk id: a wrong base was served".into(),
        ));
    }
    Ok(())
}

thread_local! {
    /// This thread's zstd decompression context: one per thread, reused, instead of one
    /// allocated and freed per blob (relation files are restored as 8 KiB blobs).
    static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one zstd frame into `out` (within its capacity) with this thread's context,
/// with `dict` as a raw-content dictionary when given (a delta's base).
fn decompress(
    out: &mut Vec<u8>,
    frame: &[u8],
    dict: Option<&[u8]>,
) -> std::result::Result<usize, usize> {
    let own = |out: &mut Vec<u8>| match dict {
        Some(dict) => zstd::zstd_safe::DCtx::try_create()
            .ok_or(0usize)
            .and_then(|mut d| d.decompress_using_dict(out, frame, dict)),
        None => zstd::zstd_safe::decompress(out, frame),
    };
    DCTX.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            // Re-entered on this thread (not done today): a context of its own.
            return own(out);
        };
        if slot.is_none() {
            *slot = zstd::zstd_safe::DCtx::try_create();
        }
        match (slot.as_mut(), dict) {
            (Some(dctx), Some(dict)) => dctx.decompress_using_dict(out, frame, dict),
            (Some(dctx), None) => dctx.decompress(out, frame),
            (None, _) => own(out),
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

/// What [`check_blobs`] found in one pack.
#[derive(Debug, Default)]
pub struct CheckedPack {
    /// Blobs checked.
    pub count: usize,
    /// The directory by chunk id.
    pub ids: HashMap<ChunkId, Vec<BlobEntry>>,
    /// Each delta blob with its opened frame: authenticated, but its content is checked only
    /// once its base is read ([`apply_delta`]), which may lie in another pack.
    pub deltas: Vec<(BlobEntry, Vec<u8>)>,
}

/// Deep check of one pack of `size` bytes read by ranges through `read(offset, len)`: its header
/// opens with the dataset's reader key, its directory opens, and every blob it lists decrypts and
/// hashes to its chunk id, one blob in memory at a time (deltas: decrypt, and are returned for
/// the caller to apply to their bases).
pub fn check_blobs(
    keys: &DatasetKeys,
    path: &str,
    size: u64,
    read: &mut dyn FnMut(u64, u64) -> Result<Vec<u8>>,
) -> Result<CheckedPack> {
    let header = read(0, size.min(HEADER_LEN as u64))?;
    let key = open_key(keys, path, &header)?;
    let entries = read_directory_with(&key, path, size, read)?;
    let mut ids: HashMap<ChunkId, Vec<BlobEntry>> = HashMap::new();
    let mut deltas = Vec::new();
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
        if e.kind == BlobKind::Delta {
            let frame = open_delta_in_place(&key, path, e, &mut sealed)?.to_vec();
            deltas.push((*e, frame));
        } else {
            open_blob_in_place(&key, keys, path, e, &mut sealed, &mut scratch)?;
        }
        ids.entry(e.id).or_default().push(*e);
    }
    Ok(CheckedPack {
        count: entries.len(),
        ids,
        deltas,
    })
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
        let checked = check_blobs(&keys, "p", bytes.len() as u64, &mut ranges).unwrap();
        assert_eq!((checked.count, checked.ids.len()), (2, 2));
        assert!(asked.iter().all(|&len| len < bytes.len() as u64));
        let mut bad = bytes.clone();
        bad[entries[1].offset as usize + 2] ^= 1;
        let mut ranges = |at: u64, len: u64| Ok(bad[at as usize..][..len as usize].to_vec());
        assert!(check_blobs(&keys, "p", bad.len() as u64, &mut ranges).is_err());
    }

    /// A heap-like page: `seed` picks its tuples.
    fn page(seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
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
    }

    #[test]
    fn a_delta_opens_only_with_its_base_and_a_lying_writers_base_is_refused() {
        let root = RootSecret::from_bytes(&[6u8; 32]);
        let keys = root.dataset_keys("ds", 0);
        let mut comp = BlobCompressor::new().unwrap();
        let old = page(1);
        let mut new = old.clone();
        new[..8].copy_from_slice(&42u64.to_le_bytes());
        new[3000..3064].fill(9);
        // Unrelated content: random bytes, nothing in common with `old`.
        let mut x = 0x1234_5678_9abc_def1u64;
        let other: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let (old_id, new_id, other_id) = (
            keys.chunk_id(&old),
            keys.chunk_id(&new),
            keys.chunk_id(&other),
        );
        let mut writer = PackWriter::new(&keys, 1024);
        writer.add_data(&mut comp, old_id, &old, None).unwrap();
        let (len, kind) = writer
            .add_data(&mut comp, new_id, &new, Some((old_id, &old)))
            .unwrap();
        assert_eq!(kind, BlobKind::Delta);
        assert!(len < 300, "a delta of a small change is small: {len} bytes");
        // Unrelated content is not worth a delta: stored whole.
        let (_, kind) = writer
            .add_data(&mut comp, other_id, &other, Some((old_id, &old)))
            .unwrap();
        assert_eq!(kind, BlobKind::Data);
        // A lying writer: a delta made against `other` that names `old` as its base.
        let mut lied = other.clone();
        lied[100] ^= 1;
        let lied_id = keys.chunk_id(&lied);
        writer
            .add_data(&mut comp, lied_id, &lied, Some((old_id, &other)))
            .unwrap();
        let (bytes, entries) = writer.finish();
        let key = open_key(&keys, "p", &bytes).unwrap();
        let directory = read_directory(&key, "p", &bytes).unwrap();
        assert_eq!(directory, entries);
        let delta = entries[1];
        assert_eq!((delta.kind, delta.base), (BlobKind::Delta, Some(old_id)));
        let sealed = &bytes[delta.offset as usize..][..delta.length as usize];
        // Not readable as a full blob, and its payload opens only under the base it names.
        assert!(open_blob(&key, &keys, "p", &delta, sealed).is_err());
        let mut moved = delta;
        moved.base = Some(other_id);
        assert!(open_delta_in_place(&key, "p", &moved, &mut sealed.to_vec()).is_err());
        let mut buf = sealed.to_vec();
        let frame = open_delta_in_place(&key, "p", &delta, &mut buf).unwrap();
        let mut out = Vec::new();
        apply_delta(&keys, "p", &delta, frame, &old, &mut out).unwrap();
        assert_eq!(out, new);
        // Another base than its own: refused by the content check.
        let err = apply_delta(&keys, "p", &delta, frame, &other, &mut out).unwrap_err();
        assert!(err.to_string().contains(&old_id.short()), "{err}");
        // The lying writer's delta, applied to the base it names, reconstructs other bytes.
        let lying = entries[3];
        assert_eq!(lying.kind, BlobKind::Delta);
        let mut buf = bytes[lying.offset as usize..][..lying.length as usize].to_vec();
        let frame = open_delta_in_place(&key, "p", &lying, &mut buf).unwrap();
        let err = apply_delta(&keys, "p", &lying, frame, &old, &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not hash")
                || err.contains("does not decompress")
                || err.contains("length"),
            "{err}"
        );
        // The entry's wire form: six elements for a delta, five otherwise; a five-element
        // delta or a six-element data entry is refused.
        let wire = cbor::to_vec(&delta);
        assert_eq!(cbor::from_slice::<BlobEntry>(&wire).unwrap(), delta);
        let mut full = delta;
        full.kind = BlobKind::Data;
        full.base = None;
        assert!(cbor::to_vec(&full).len() + 34 == wire.len());
        let mut short = cbor::to_vec(&full);
        short[1] = 2; // kind 2 with five elements
        assert!(cbor::from_slice::<BlobEntry>(&short).is_err());
        let mut long = wire.clone();
        long[1] = 0; // kind 0 with six elements
        assert!(cbor::from_slice::<BlobEntry>(&long).is_err());
        // Deep check by ranges: the deltas come back with their frames, to apply to bases.
        let mut ranges = |at: u64, len: u64| Ok(bytes[at as usize..][..len as usize].to_vec());
        let checked = check_blobs(&keys, "p", bytes.len() as u64, &mut ranges).unwrap();
        assert_eq!(checked.count, 4);
        assert_eq!(checked.deltas.len(), 2);
    }
}
