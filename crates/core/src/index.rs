//! Index objects: where each chunk of a dataset is stored. Written after the packs they describe
//! are durable, one per pack, so an interrupted backup leaves indexes a rerun can reuse.
//!
//! ```text
//! "EMBINDX1" | u32 LE header length | header: CBOR {dataset, packs: [pack id]}
//!            | XChaCha20-Poly1305(index key, aad = everything before, CBOR [IndexEntry])
//! ```
//! The header is plaintext so anyone can check, without keys, that the packs it names exist.

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::crypto;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::keys::DatasetKeys;
use crate::pack::BlobEntry;

/// Magic at the start of every index object.
pub const MAGIC: &[u8; 8] = b"EMBINDX1";

/// The plaintext part of an index object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// The dataset.
    pub dataset: String,
    /// The packs described.
    pub packs: Vec<ObjectId>,
    /// Key id of the dataset keys (epoch) whose index key sealed the body.
    #[serde(default, with = "serde_bytes", skip_serializing_if = "Option::is_none")]
    pub key_id: Option<[u8; 8]>,
}

/// One chunk's location. Encoded as the CBOR array `[pack, blob]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "(u32, BlobEntry)", from = "(u32, BlobEntry)")]
pub struct IndexEntry {
    /// Position of the pack in [`IndexHeader::packs`].
    pub pack: u32,
    /// Where the blob is inside the pack.
    pub blob: BlobEntry,
}

impl From<IndexEntry> for (u32, BlobEntry) {
    fn from(e: IndexEntry) -> Self {
        (e.pack, e.blob)
    }
}

impl From<(u32, BlobEntry)> for IndexEntry {
    fn from((pack, blob): (u32, BlobEntry)) -> Self {
        IndexEntry { pack, blob }
    }
}

/// Encodes an index object for `packs` and their blobs.
pub fn encode(keys: &DatasetKeys, packs: &[(ObjectId, Vec<BlobEntry>)]) -> Vec<u8> {
    let header = IndexHeader {
        dataset: keys.dataset.clone(),
        packs: packs.iter().map(|(id, _)| *id).collect(),
        key_id: Some(keys.key_id()),
    };
    let entries: Vec<IndexEntry> = packs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, blobs))| {
            blobs.iter().map(move |b| IndexEntry {
                pack: i as u32,
                blob: *b,
            })
        })
        .collect();
    let header = cbor::to_vec(&header);
    let mut out = Vec::with_capacity(12 + header.len() + entries.len() * 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    let sealed = crypto::seal_symmetric(&keys.index_key, &out, &cbor::to_vec(&entries));
    out.extend_from_slice(&sealed);
    out
}

/// Reads the plaintext header (no keys needed); returns it and where the sealed body starts.
pub fn decode_header(path: &str, bytes: &[u8]) -> Result<(IndexHeader, usize)> {
    crate::framing::header(MAGIC, "an index object", path, bytes, 0)
}

/// Decodes a whole index object: its header and the chunk locations.
pub fn decode(
    keys: &DatasetKeys,
    path: &str,
    bytes: &[u8],
) -> Result<(IndexHeader, Vec<IndexEntry>)> {
    let (header, body_at) = decode_header(path, bytes)?;
    if header.dataset != keys.dataset {
        return Err(Error::corrupt(
            path,
            format!(
                "index of dataset {} found under dataset {}",
                header.dataset, keys.dataset
            ),
        ));
    }
    let plain = crypto::open_symmetric(&keys.index_key, &bytes[..body_at], &bytes[body_at..])
        .map_err(|_| {
            Error::corrupt(
                path,
                "index body does not authenticate with the dataset's index key",
            )
        })?;
    let entries: Vec<IndexEntry> = cbor::from_slice(&plain).map_err(|e| Error::corrupt(path, e))?;
    if entries
        .iter()
        .any(|e| e.pack as usize >= header.packs.len())
    {
        return Err(Error::corrupt(
            path,
            "entry names a pack outside the header",
        ));
    }
    Ok((header, entries))
}
