//! Index objects: where each chunk of a dataset is stored. Written after the packs they describe
//! are durable, one per pack, so an interrupted backup leaves indexes a rerun can reuse.
//!
//! ```text
//! "EMBINDX2" | u32 LE header length | header: CBOR {dataset, packs: [pack id], key_id, signer}
//!            | XChaCha20-Poly1305(index key, aad = everything before, CBOR [IndexEntry])
//!            | Ed25519 signature by `signer` over "data-embassy index v2" || 0x00 || everything before
//! ```
//! The header is plaintext so anyone can check, without keys, that the packs it names exist and
//! who signed the index. Every holder of the dataset's keys can seal an index body, so the
//! signature is what tells a writer whether to trust an index for deduplication (see
//! `writer::load_known_chunks`): only indexes signed by an active signer, or named by the
//! manifest of an accepted version, are used.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::error::{Error, Result};
use crate::format::pack::BlobEntry;
use crate::id::ObjectId;
use crate::keys::crypto;
use crate::keys::{self, DatasetKeys};

/// Magic at the start of every index object.
pub const MAGIC: &[u8; 8] = b"EMBINDX2";

/// Domain-separation label of an index object's signature.
pub const SIGNATURE_LABEL: &[u8] = b"data-embassy index v2";

/// Length of the Ed25519 signature at the end of an index object.
pub const SIGNATURE_LEN: usize = 64;

/// The plaintext part of an index object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexHeader {
    /// The dataset.
    pub dataset: String,
    /// The packs described.
    pub packs: Vec<ObjectId>,
    /// Key id of the dataset keys (epoch) whose index key sealed the body.
    #[serde(with = "serde_bytes")]
    pub key_id: [u8; 8],
    /// Ed25519 public key that signed the object (the writer's ledger signing key).
    #[serde(with = "serde_bytes")]
    pub signer: [u8; 32],
    /// A *repack index* (written by garbage collection, signed by a key allowed to delete):
    /// the indexes whose live chunks it holds, copied into its own packs, so that the packs of
    /// those indexes can be deleted. Empty (and omitted) in the indexes backups write.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<ObjectId>,
    /// For a repack index: the dataset's ledger head (sequence number) whose live versions'
    /// chunks it holds. It stands in for a replaced index only for versions at or below this
    /// sequence number; a version added later that names a replaced index needs that index.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub as_of_seq: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl IndexHeader {
    /// True when this index stands in for `replaced` for the version at ledger sequence number
    /// `version_seq` (see [`IndexHeader::replaces`]).
    pub fn stands_in_for(&self, replaced: &ObjectId, version_seq: u64) -> bool {
        version_seq <= self.as_of_seq && self.replaces.contains(replaced)
    }
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

/// The index entries of `packs`, each blob naming its pack by position in the list.
fn entries_of(packs: &[(ObjectId, Vec<BlobEntry>)]) -> Vec<IndexEntry> {
    packs
        .iter()
        .enumerate()
        .flat_map(|(i, (_, blobs))| {
            blobs.iter().map(move |b| IndexEntry {
                pack: i as u32,
                blob: *b,
            })
        })
        .collect()
}

/// Encodes an index object for `packs` and their blobs, signed by `signer` (the key that signs
/// the writer's ledger entries).
pub fn encode(
    keys: &DatasetKeys,
    signer: &SigningKey,
    packs: &[(ObjectId, Vec<BlobEntry>)],
) -> Vec<u8> {
    let entries = entries_of(packs);
    encode_entries(
        keys,
        signer,
        packs.iter().map(|(id, _)| *id).collect(),
        &entries,
    )
}

/// Encodes an index object with the given header packs and entries as they are (entries may name
/// any position, even outside `packs`: for tests of what readers do with a lying index).
pub fn encode_entries(
    keys: &DatasetKeys,
    signer: &SigningKey,
    packs: Vec<ObjectId>,
    entries: &[IndexEntry],
) -> Vec<u8> {
    let header = IndexHeader {
        dataset: keys.dataset.clone(),
        packs,
        key_id: keys.key_id(),
        signer: signer.verifying_key().to_bytes(),
        replaces: Vec::new(),
        as_of_seq: 0,
    };
    encode_with_header(keys, signer, header, entries)
}

/// Encodes a repack index: `packs` and their blobs, standing in for the indexes `replaces` for
/// the versions up to ledger sequence number `as_of_seq` (see [`IndexHeader::replaces`]).
pub fn encode_repack(
    keys: &DatasetKeys,
    signer: &SigningKey,
    packs: &[(ObjectId, Vec<BlobEntry>)],
    replaces: Vec<ObjectId>,
    as_of_seq: u64,
) -> Vec<u8> {
    let entries = entries_of(packs);
    let header = IndexHeader {
        dataset: keys.dataset.clone(),
        packs: packs.iter().map(|(id, _)| *id).collect(),
        key_id: keys.key_id(),
        signer: signer.verifying_key().to_bytes(),
        replaces,
        as_of_seq: as_of_seq.max(1),
    };
    encode_with_header(keys, signer, header, &entries)
}

fn encode_with_header(
    keys: &DatasetKeys,
    signer: &SigningKey,
    header: IndexHeader,
    entries: &[IndexEntry],
) -> Vec<u8> {
    let header = cbor::to_vec(&header);
    let mut out = Vec::with_capacity(12 + header.len() + entries.len() * 64 + 128);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    let sealed = crypto::seal_symmetric(&keys.index_key, &out, &cbor::to_vec(&entries));
    out.extend_from_slice(&sealed);
    let signature = keys::sign(signer, SIGNATURE_LABEL, &out);
    out.extend_from_slice(&signature);
    out
}

/// Reads the plaintext header (no keys needed) and checks the signature by `header.signer`;
/// returns the header and where the sealed body starts (it ends [`SIGNATURE_LEN`] bytes before
/// the end). Whether that signer may be trusted is the caller's decision.
pub fn decode_header(path: &str, bytes: &[u8]) -> Result<(IndexHeader, usize)> {
    let (header, body_at): (IndexHeader, usize) =
        crate::format::framing::header(MAGIC, "an index object", path, bytes, SIGNATURE_LEN)?;
    let signed = bytes.len() - SIGNATURE_LEN;
    if !keys::verify_signature(
        &header.signer,
        SIGNATURE_LABEL,
        &bytes[..signed],
        &bytes[signed..],
    ) {
        return Err(Error::corrupt(
            path,
            format!(
                "index signature by {} does not verify (unsigned, altered or forged)",
                hex::encode(&header.signer[..8])
            ),
        ));
    }
    Ok((header, body_at))
}

/// Decodes a whole index object: its header (signature checked) and the chunk locations.
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
    let signed = bytes.len() - SIGNATURE_LEN;
    let plain = crypto::open_symmetric(&keys.index_key, &bytes[..body_at], &bytes[body_at..signed])
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

/// The repack indexes of a dataset (see [`IndexHeader::replaces`]): which index stands in for
/// which, so that readers, `verify` and garbage collection follow a version's references past
/// packs that garbage collection rewrote.
#[derive(Debug, Default, Clone)]
pub struct Replacements {
    /// Replaced index → the repack indexes that name it, with their headers.
    by_replaced: std::collections::HashMap<ObjectId, Vec<(ObjectId, IndexHeader)>>,
}

impl Replacements {
    /// Reads the headers of the indexes `candidates` of `dataset` at `site` (keylessly) and keeps
    /// the repack indexes among them whose bytes hash to their name, whose signature verifies and
    /// whose signer `trusted` accepts (garbage collection and `verify` accept only keys allowed
    /// to delete; a reader, which checks every blob against its chunk id, may accept any).
    /// Candidates that cannot be read are left out and named in the second value.
    pub fn load(
        site: &dyn crate::site::Site,
        dataset: &str,
        candidates: impl IntoIterator<Item = ObjectId>,
        trusted: &dyn Fn(&[u8; 32]) -> bool,
    ) -> (Self, Vec<String>) {
        let mut out = Self::default();
        let mut problems = Vec::new();
        for id in candidates {
            let path = crate::format::layout::index(dataset, &id);
            let header = crate::format::object::get_checked(site, &path, &id, "the listing")
                .and_then(|bytes| decode_header(&path, &bytes).map(|(h, _)| h));
            match header {
                Ok(h) if h.replaces.is_empty() => {}
                Ok(h) if h.dataset != dataset || !trusted(&h.signer) => problems.push(format!(
                    "{path}: a repack index signed by {} (or of another dataset), which may not \
                     delete: ignored",
                    hex::encode(&h.signer[..8])
                )),
                Ok(h) => out.add(id, h),
                Err(e) => problems.push(format!("{path}: {e}")),
            }
        }
        (out, problems)
    }

    /// Records the repack index `id` with header `header`.
    pub fn add(&mut self, id: ObjectId, header: IndexHeader) {
        for replaced in header.replaces.clone() {
            let list = self.by_replaced.entry(replaced).or_default();
            if !list.iter().any(|(i, _)| *i == id) {
                list.push((id, header.clone()));
            }
        }
    }

    /// Keeps only the repack indexes whose every pack `has_pack` says the site holds (or that
    /// are in `written`, whose packs this process has just stored), and returns the ids of those
    /// dropped. Garbage collection applies it before it lets a repack index stand in for the
    /// indexes it replaces: a repack whose new pack is lost or withheld must never make the old
    /// packs, the only copy left, look unneeded.
    pub fn retain_complete(
        &mut self,
        written: &[ObjectId],
        has_pack: &dyn Fn(&ObjectId) -> bool,
    ) -> Vec<ObjectId> {
        let mut dropped = Vec::new();
        for list in self.by_replaced.values_mut() {
            list.retain(|(id, header)| {
                let complete = written.contains(id) || header.packs.iter().all(has_pack);
                if !complete && !dropped.contains(id) {
                    dropped.push(*id);
                }
                complete
            });
        }
        self.by_replaced.retain(|_, list| !list.is_empty());
        dropped
    }

    /// True when no repack index was found.
    pub fn is_empty(&self) -> bool {
        self.by_replaced.is_empty()
    }

    /// The indexes a version at ledger sequence number `version_seq` needs in place of the index
    /// `index` its manifest names: `index` itself when no repack index stands in for it, else
    /// the repack indexes that do (following repacks of repack indexes), in the order found.
    pub fn needed(&self, index: &ObjectId, version_seq: u64) -> Vec<ObjectId> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pending = vec![*index];
        while let Some(x) = pending.pop() {
            if !seen.insert(x) {
                continue;
            }
            let stand_ins: Vec<ObjectId> = self
                .by_replaced
                .get(&x)
                .map(|l| {
                    l.iter()
                        .filter(|(_, h)| h.stands_in_for(&x, version_seq))
                        .map(|(id, _)| *id)
                        .collect()
                })
                .unwrap_or_default();
            if stand_ins.is_empty() {
                out.push(x);
            } else {
                pending.extend(stand_ins.into_iter().rev());
            }
        }
        out
    }
}
