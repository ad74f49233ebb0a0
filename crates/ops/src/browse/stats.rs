//! `stats`: per dataset, how much its versions hold (logical bytes) against what the vault
//! stores for them (deduplicated, compressed, encrypted), and how many blobs and packs that is.
//!
//! Stored bytes are what the site lists under the dataset's packs, indexes and manifests
//! (objects of pruned versions that `gc` has not removed yet included), plus its streamed WAL
//! for a PostgreSQL dataset. Blob counts come from the dataset's index objects, decrypted with
//! the keys (left out for a dataset the keys cannot read).

use std::collections::HashMap;

use embassy_core::engine::reader::get_checked;
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::{index, layout};
use embassy_core::id::ChunkId;
use embassy_core::{Error, Result};
use serde::Serialize;

/// Objects under a prefix: how many and their stored bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stored {
    /// Objects.
    pub objects: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

/// The distinct blobs a dataset's indexes name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Blobs {
    /// Distinct data blobs (file content chunks).
    pub data: u64,
    /// Distinct tree blobs (folders).
    pub trees: u64,
    /// Plaintext bytes of the distinct data blobs: the content after deduplication, before
    /// compression.
    pub unique_bytes: u64,
    /// Stored (compressed, encrypted) bytes of the distinct data blobs.
    pub stored_bytes: u64,
    /// Of the distinct data blobs, those stored as deltas against another (format 6).
    pub deltas: u64,
}

/// One dataset's figures.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetStats {
    /// The dataset.
    pub dataset: String,
    /// Versions held.
    pub versions: u64,
    /// Files in all versions, added up.
    pub files: u64,
    /// Bytes of file content in all versions, added up: what restoring each would write.
    pub logical_bytes: u64,
    /// Packs.
    pub packs: Stored,
    /// Index objects.
    pub indexes: Stored,
    /// Manifests.
    pub manifests: Stored,
    /// Streamed WAL (PostgreSQL datasets).
    pub wal: Stored,
    /// All of the above: what the dataset takes at the site.
    pub stored_bytes: u64,
    /// Distinct blobs (None: the keys given cannot read this dataset).
    pub blobs: Option<Blobs>,
    /// Logical bytes over unique bytes: how much deduplication saves (None without blobs or
    /// content).
    pub dedup_ratio: Option<f64>,
    /// Unique bytes over their stored bytes: how much compression saves.
    pub compression_ratio: Option<f64>,
}

/// Figures for `dataset`, or for every dataset of the vault.
pub fn stats(vault: &Vault, keyring: &Keyring, dataset: Option<&str>) -> Result<Vec<DatasetStats>> {
    let names = match dataset {
        Some(d) => {
            // An unknown dataset is an error, not a row of zeros.
            vault.find_version(d, None)?;
            vec![d.to_string()]
        }
        None => vault.datasets()?,
    };
    names
        .iter()
        .map(|name| dataset_stats(vault, keyring, name))
        .collect()
}

fn listed(vault: &Vault, prefix: &str) -> Result<Stored> {
    let site = vault.site();
    let objects = site.list(prefix).map_err(Error::from)?;
    Ok(Stored {
        objects: objects.len() as u64,
        bytes: objects.iter().map(|o| o.size).sum(),
    })
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (a > 0 && b > 0).then(|| a as f64 / b as f64)
}

fn dataset_stats(vault: &Vault, keyring: &Keyring, dataset: &str) -> Result<DatasetStats> {
    let versions = vault.versions(dataset)?;
    let packs = listed(vault, &layout::packs_prefix(dataset))?;
    let indexes = listed(vault, &layout::index_prefix(dataset))?;
    let manifests = listed(vault, &format!("manifests/{dataset}/"))?;
    let wal = listed(vault, &format!("wal/{dataset}/"))?;
    let blobs = if keyring.can_read(dataset) {
        Some(blobs(vault, keyring, dataset)?)
    } else {
        None
    };
    let logical_bytes = versions.iter().map(|v| v.stats.bytes).sum();
    Ok(DatasetStats {
        dataset: dataset.to_string(),
        versions: versions.len() as u64,
        files: versions.iter().map(|v| v.stats.files).sum(),
        logical_bytes,
        stored_bytes: packs.bytes + indexes.bytes + manifests.bytes + wal.bytes,
        packs,
        indexes,
        manifests,
        wal,
        dedup_ratio: blobs.and_then(|b| ratio(logical_bytes, b.unique_bytes)),
        compression_ratio: blobs.and_then(|b| ratio(b.unique_bytes, b.stored_bytes)),
        blobs,
    })
}

/// The distinct blobs of every index object of the dataset, each object checked against its
/// name and its signature and decrypted.
fn blobs(vault: &Vault, keyring: &Keyring, dataset: &str) -> Result<Blobs> {
    let site = vault.site();
    let objects = site
        .list(&layout::index_prefix(dataset))
        .map_err(Error::from)?;
    let mut seen: HashMap<ChunkId, (BlobKind, u32, u32)> = HashMap::new();
    for object in objects {
        let Some(id) = layout::id_in_path(&object.path) else {
            continue;
        };
        let bytes = get_checked(
            site.as_ref(),
            &object.path,
            &id,
            "the dataset's index listing",
        )?;
        let (header, _) = index::decode_header(&object.path, &bytes)?;
        let keys = keyring.dataset_for_key_id(dataset, header.key_id)?;
        let (_, entries) = index::decode(&keys, &object.path, &bytes)?;
        for e in entries {
            seen.entry(e.blob.id)
                .or_insert((e.blob.kind, e.blob.raw_length, e.blob.length));
        }
    }
    let mut blobs = Blobs::default();
    for (kind, raw, stored) in seen.into_values() {
        match kind {
            BlobKind::Data | BlobKind::Delta => {
                blobs.data += 1;
                blobs.deltas += u64::from(kind == BlobKind::Delta);
                blobs.unique_bytes += raw as u64;
                blobs.stored_bytes += stored as u64;
            }
            BlobKind::Tree => blobs.trees += 1,
        }
    }
    Ok(blobs)
}
