//! Manifests: one per version, saying what the version holds (its root tree) and which index
//! objects locate its chunks. Sealed to the dataset's reader; the list of index objects is in the
//! plaintext header so a keyless verifier can follow references.
//!
//! ```text
//! "EMBMANI1" | u32 LE header length | header: CBOR {dataset, key_id, indexes: [index id]}
//!            | HPKE encapsulated key (32)
//!            | ChaCha20-Poly1305(object key, nonce 0, aad = everything before, CBOR ManifestBody)
//! ```

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::error::{Error, Result};
use crate::id::{ChunkId, ObjectId};
use crate::keys::crypto::{ObjectKey, ENCAPSULATED_LEN};
use crate::keys::DatasetKeys;

/// Magic at the start of every manifest.
pub const MAGIC: &[u8; 8] = b"EMBMANI1";

/// The plaintext part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestHeader {
    /// The dataset.
    pub dataset: String,
    /// Reader key id the body is sealed to.
    #[serde(with = "serde_bytes")]
    pub key_id: [u8; 8],
    /// Index objects that locate every chunk of this version.
    pub indexes: Vec<ObjectId>,
}

/// What kind of source a version came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    /// A file tree.
    Tree,
    /// A byte stream (stdin or a command's output), stored as one file named `stream`.
    Stream,
}

/// Counts that describe a version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file content in the version.
    pub bytes: u64,
    /// Bytes read from the source (unchanged files are not read).
    pub bytes_read: u64,
    /// Chunks stored for the first time by this version.
    pub new_chunks: u64,
    /// Stored (compressed, encrypted) bytes those new chunks take.
    pub new_bytes_stored: u64,
}

/// The sealed part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestBody {
    /// Tree or stream.
    pub kind: VersionKind,
    /// Root tree blob.
    pub root: ChunkId,
    /// When the source was captured (start of the backup), ns since the Unix epoch.
    pub captured_at_ns: i64,
    /// When the version was completed.
    pub completed_at_ns: i64,
    /// Host that made it.
    pub host: String,
    /// Source description: paths, `stdin` or the command line.
    pub source: Vec<String>,
    /// Counts.
    pub stats: VersionStats,
    /// Metadata of the folder that was backed up as the root (mode, owner, mtime), applied to
    /// the target of a full restore. Absent for streams and several-path versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_node: Option<crate::format::tree::Node>,
    /// Properties of the source, namespaced by kind of source (`postgres.start_lsn`, ...):
    /// what a restore of that kind needs beyond the files. Empty (and absent) for plain trees.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
}

fn info(dataset: &str) -> Vec<u8> {
    let mut info = b"data-embassy manifest v1\0".to_vec();
    info.extend_from_slice(dataset.as_bytes());
    info
}

/// Encodes a manifest.
pub fn encode(keys: &DatasetKeys, indexes: Vec<ObjectId>, body: &ManifestBody) -> Vec<u8> {
    let header = cbor::to_vec(&ManifestHeader {
        dataset: keys.dataset.clone(),
        key_id: keys.key_id(),
        indexes,
    });
    let (key, encapsulated) = ObjectKey::seal_to(&keys.reader_public, &info(&keys.dataset));
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&encapsulated);
    let sealed = key.encrypt(0, &out, &cbor::to_vec(body));
    out.extend_from_slice(&sealed);
    out
}

/// Reads the plaintext header (no keys needed); returns it and where the sealed part starts.
pub fn decode_header(path: &str, bytes: &[u8]) -> Result<(ManifestHeader, usize)> {
    crate::format::framing::header(MAGIC, "a manifest", path, bytes, ENCAPSULATED_LEN)
}

/// Decodes a manifest with the reader key.
pub fn decode(
    keys: &DatasetKeys,
    path: &str,
    bytes: &[u8],
) -> Result<(ManifestHeader, ManifestBody)> {
    let (header, end) = decode_header(path, bytes)?;
    if header.dataset != keys.dataset {
        return Err(Error::corrupt(
            path,
            format!(
                "manifest of dataset {} presented as dataset {}",
                header.dataset, keys.dataset
            ),
        ));
    }
    if header.key_id != keys.key_id() {
        return Err(Error::WrongKey(format!(
            "manifest {path} is sealed to reader key {}, not the key at hand ({})",
            hex::encode(header.key_id),
            hex::encode(keys.key_id())
        )));
    }
    let encapsulated: [u8; ENCAPSULATED_LEN] = bytes[end..end + ENCAPSULATED_LEN]
        .try_into()
        .unwrap_or([0u8; ENCAPSULATED_LEN]);
    let sealed_at = end + ENCAPSULATED_LEN;
    let key = ObjectKey::open_with(keys.reader()?, &encapsulated, &info(&keys.dataset))
        .map_err(|_| Error::corrupt(path, "manifest key does not open"))?;
    let plain = key
        .decrypt(0, &bytes[..sealed_at], &bytes[sealed_at..])
        .map_err(|_| Error::corrupt(path, "manifest does not authenticate: altered or foreign"))?;
    let body: ManifestBody = cbor::from_slice(&plain).map_err(|e| Error::corrupt(path, e))?;
    Ok((header, body))
}
