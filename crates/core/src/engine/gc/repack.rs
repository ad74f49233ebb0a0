//! Repacking: a pack that holds both live and dead blobs is never unreferenced, so pruning a
//! version whose unique data shares packs with kept versions frees little. Repacking copies the
//! live blobs of such packs into new packs, described by a *repack index* that stands in for
//! the old packs' indexes (`format::index::IndexHeader::replaces`); the old packs and indexes
//! are then unreferenced and go the two-phase way of all garbage (condemned now, deleted by a
//! later run after the grace period, unless referenced again).
//!
//! Order, so that a crash anywhere leaves every version readable: the new packs are stored
//! first, then the repack index (so a reader following it finds every pack); nothing old is
//! touched in this run. A version recorded after the ledger head this run read
//! (`IndexHeader::as_of_seq`) and naming an old index still references it and its packs: a backup
//! running meanwhile may have deduplicated against a blob that was dead when the live set was
//! taken, and keeps it.
//!
//! Which packs (restic's `--max-unused` rule): of the packs live versions reference, the unused
//! bytes (blobs no live version needs) may be at most `max_unused_percent` of what the dataset
//! then stores (`unused <= used * p / (100 - p)`); above it, the packs with the largest unused
//! share are rewritten first, until the rest is within the limit.
//!
//! Each blob is sealed with its pack's own key at its offset (`docs/format.md` §5), so moving it
//! means opening and sealing it again: repacking needs the dataset's reader key.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{GcOptions, GcReport};
use crate::engine::reader::VersionReader;
use crate::engine::vault::{versions_in, Keyring, Vault};
use crate::error::{Error, Result};
use crate::format::index::{self, IndexEntry};
use crate::format::layout;
use crate::format::pack::{self, BlobCompressor, BlobEntry, PackWriter};
use crate::history::ledger::{Event, Record};
use crate::id::{ChunkId, ObjectId};
use crate::keys::DatasetKeys;
use ed25519_dalek::SigningKey;

/// What one dataset's repacking works from.
pub(super) struct Plan<'a> {
    pub vault: &'a Vault,
    pub keyring: &'a Keyring,
    /// The collector's key, which signs the repack index (a key allowed to delete).
    pub signer: &'a SigningKey,
    pub dataset: &'a str,
    pub history: &'a [Record],
    /// What the live versions reference now (paths).
    pub referenced: &'a HashSet<String>,
    /// Objects condemnation records list: never repacked (they are on their way out).
    pub pending: &'a HashSet<String>,
    /// Stored size of every listed object.
    pub sizes: &'a HashMap<&'a str, u64>,
    pub options: &'a GcOptions,
}

/// An index the live versions reference, with its packs: rewritten as a whole or not at all.
struct Unit {
    index: ObjectId,
    keys: std::sync::Arc<DatasetKeys>,
    /// Its packs: id, stored size, its blobs per the index.
    packs: Vec<(ObjectId, u64, Vec<BlobEntry>)>,
    used: u64,
    unused: u64,
}

impl Unit {
    fn size(&self) -> u64 {
        self.used + self.unused
    }
}

/// Repacks the dataset's partly-dead packs as [`GcOptions::max_unused_percent`] says; returns
/// the repack indexes written (empty when nothing was, or in a dry run).
pub(super) fn repack(plan: &Plan, report: &mut GcReport) -> Result<Vec<ObjectId>> {
    let Plan {
        vault,
        keyring,
        dataset,
        history,
        options,
        ..
    } = *plan;
    if options.max_unused_percent >= 100 && options.repack_small_bytes == 0 {
        return Ok(Vec::new());
    }
    if !keyring.can_read(dataset) {
        report.repack_notes.push(format!(
            "{dataset}: not repacked: the key given cannot read it (repacking opens and seals \
             live blobs again, which needs the dataset's reader key)"
        ));
        return Ok(Vec::new());
    }
    if history
        .iter()
        .any(|r| matches!(r.entry.event, Event::LogRangeAdded { .. }))
    {
        report.repack_notes.push(format!(
            "{dataset}: not repacked: it holds log ranges, whose chunks repacking does not follow"
        ));
        return Ok(Vec::new());
    }
    let versions = versions_in(dataset, history);
    let Some(head_seq) = history.last().map(|r| r.entry.seq) else {
        return Ok(Vec::new());
    };
    // The live set: every chunk a live version's trees reference.
    let mut live: HashSet<ChunkId> = HashSet::new();
    for version in &versions {
        let reader = VersionReader::open_with(vault.site().clone(), keyring, version)?;
        let (trees, data) = reader.chunks()?;
        // A delta keeps its base alive, though no tree names the base.
        live.extend(reader.delta_bases(&data));
        live.extend(trees);
        live.extend(data);
    }
    let units = units(plan, &live)?;
    let chosen = choose(units, options);
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    for unit in &chosen {
        for (pack, size, _) in &unit.packs {
            report.repacked.push(layout::pack(dataset, pack));
            report.repacked_bytes += size;
        }
        report.repacked_unused_bytes += unit.unused;
    }
    if options.dry_run {
        return Ok(Vec::new());
    }
    // One repack index per key epoch (a blob stays under the keys of its chunk id).
    let mut by_epoch: BTreeMap<[u8; 8], Vec<Unit>> = BTreeMap::new();
    for unit in chosen {
        by_epoch.entry(unit.keys.key_id()).or_default().push(unit);
    }
    let mut written = Vec::new();
    for units in by_epoch.into_values() {
        written.push(rewrite(plan, &units, &live, head_seq, report)?);
    }
    Ok(written)
}

/// The referenced indexes of the dataset whose packs only they name, with the live and dead
/// bytes of those packs.
fn units(plan: &Plan, live: &HashSet<ChunkId>) -> Result<Vec<Unit>> {
    let Plan {
        vault,
        keyring,
        dataset,
        referenced,
        pending,
        sizes,
        ..
    } = *plan;
    let site = vault.site().as_ref();
    let index_prefix = layout::index_prefix(dataset);
    let mut loaded = Vec::new();
    let mut namers: HashMap<ObjectId, usize> = HashMap::new();
    for path in referenced.iter().filter(|p| p.starts_with(&index_prefix)) {
        let Some(id) = layout::id_in_path(path) else {
            continue;
        };
        let bytes = crate::format::object::get_checked(site, path, &id, "a live version")?;
        let (header, _) = index::decode_header(path, &bytes)?;
        let keys = keyring.dataset_for_key_id(dataset, header.key_id)?;
        let (header, entries) = index::decode(&keys, path, &bytes)?;
        for p in &header.packs {
            *namers.entry(*p).or_default() += 1;
        }
        loaded.push((id, keys, header, entries));
    }
    let mut out = Vec::new();
    'index: for (id, keys, header, entries) in loaded {
        if pending.contains(&layout::index(dataset, &id)) {
            continue;
        }
        let mut packs = Vec::new();
        let (mut used, mut unused) = (0u64, 0u64);
        for (n, p) in header.packs.iter().enumerate() {
            let path = layout::pack(dataset, p);
            // A pack another index also names, or one being collected, stays as it is.
            let Some(&size) = sizes.get(path.as_str()) else {
                continue 'index;
            };
            if namers.get(p).copied().unwrap_or(0) > 1 || pending.contains(&path) {
                continue 'index;
            }
            let blobs: Vec<BlobEntry> = entries
                .iter()
                .filter(|e: &&IndexEntry| e.pack as usize == n)
                .map(|e| e.blob)
                .collect();
            // Dead: blobs no live version needs, and second copies of one chunk; the pack's
            // header and directory count as used.
            let mut counted = HashSet::new();
            let dead_bytes: u64 = blobs
                .iter()
                .filter(|b| !(live.contains(&b.id) && counted.insert(b.id)))
                .map(|b| u64::from(b.length))
                .sum::<u64>()
                .min(size);
            used += size - dead_bytes;
            unused += dead_bytes;
            packs.push((*p, size, blobs));
        }
        out.push(Unit {
            index: id,
            keys,
            packs,
            used,
            unused,
        });
    }
    Ok(out)
}

/// restic's rule: rewrite the packs with the largest unused share first until the unused bytes
/// left are at most `p / (100 - p)` of the used bytes; with `repack_small_bytes`, also merge
/// the packs smaller than that (when there are at least two).
fn choose(mut units: Vec<Unit>, options: &GcOptions) -> Vec<Unit> {
    let used: u64 = units.iter().map(|u| u.used).sum();
    let mut unused: u64 = units.iter().map(|u| u.unused).sum();
    let p = u64::from(options.max_unused_percent.min(100));
    let allowed = if p >= 100 {
        u64::MAX
    } else {
        used.saturating_mul(p) / (100 - p)
    };
    // Largest unused share first (compared as fractions, without floating point).
    units.sort_by(|a, b| {
        (u128::from(b.unused) * u128::from(a.size().max(1)))
            .cmp(&(u128::from(a.unused) * u128::from(b.size().max(1))))
    });
    let small = |u: &Unit| u.size() < options.repack_small_bytes;
    let small_count = units.iter().filter(|u| small(u)).count();
    let mut chosen = Vec::new();
    for unit in units {
        let over = unused > allowed && unit.unused > 0;
        if over || (small_count >= 2 && small(&unit)) {
            unused = unused.saturating_sub(unit.unused);
            chosen.push(unit);
        }
    }
    chosen
}

/// Copies the live blobs of `units` (one key epoch) into new packs, stores them, then the
/// repack index standing in for the units' indexes; returns the repack index's id.
fn rewrite(
    plan: &Plan,
    units: &[Unit],
    live: &HashSet<ChunkId>,
    head_seq: u64,
    report: &mut GcReport,
) -> Result<ObjectId> {
    let Plan {
        vault,
        signer,
        dataset,
        ..
    } = *plan;
    let site = vault.site().as_ref();
    let keys = &units[0].keys;
    let target = usize::try_from(vault.config().pack_target_bytes).unwrap_or(usize::MAX);
    let mut compressor = BlobCompressor::new()?;
    let mut packs: Vec<(ObjectId, Vec<BlobEntry>)> = Vec::new();
    let mut writer = PackWriter::new(keys, target.min(64 << 20));
    // Chunks copied, and those copied as a full blob: a full copy is copied even after a delta
    // of the same chunk was (it may be the base of other deltas, which need a full one).
    let mut copied: HashSet<ChunkId> = HashSet::new();
    let mut copied_full: HashSet<ChunkId> = HashSet::new();
    let put_pack = |writer: PackWriter, report: &mut GcReport| -> Result<_> {
        let (bytes, blobs) = writer.finish();
        let id = ObjectId::of(&bytes);
        let path = layout::pack(dataset, &id);
        site.put(&path, &bytes)?;
        report.repack_written.push(path);
        report.repack_written_bytes += bytes.len() as u64;
        Ok((id, blobs))
    };
    for unit in units {
        for (pack_id, _, blobs) in &unit.packs {
            let path = layout::pack(dataset, pack_id);
            let bytes = crate::format::object::get_checked(site, &path, pack_id, "a live version")?;
            let header = bytes
                .get(..pack::HEADER_LEN)
                .ok_or_else(|| Error::corrupt(&path, "shorter than a pack header"))?;
            let key = pack::open_key(keys, &path, header)?;
            for blob in blobs {
                let full = blob.kind != pack::BlobKind::Delta;
                if !live.contains(&blob.id)
                    || copied_full.contains(&blob.id)
                    || (!full && copied.contains(&blob.id))
                {
                    continue;
                }
                let start = blob.offset as usize;
                let sealed = bytes
                    .get(start..start.saturating_add(blob.length as usize))
                    .ok_or_else(|| Error::corrupt(&path, "shorter than its index says"))?;
                if blob.kind == pack::BlobKind::Delta {
                    // Moved as it is (its base may be in another pack): the AEAD checks it,
                    // the content is checked whenever it is read with its base.
                    let mut sealed = sealed.to_vec();
                    let frame = pack::open_delta_in_place(&key, &path, blob, &mut sealed)?;
                    writer.add_delta_frame(blob, frame)?;
                } else {
                    let plain = pack::open_blob(&key, keys, &path, blob, sealed)?;
                    writer.add(&mut compressor, blob.kind, blob.id, &plain)?;
                }
                copied.insert(blob.id);
                if full {
                    copied_full.insert(blob.id);
                }
                if writer.len() >= target {
                    let done =
                        std::mem::replace(&mut writer, PackWriter::new(keys, target.min(64 << 20)));
                    packs.push(put_pack(done, report)?);
                }
            }
        }
    }
    if !writer.is_empty() {
        packs.push(put_pack(writer, report)?);
    }
    // Only now, every new pack stored: the index that makes readers use them.
    let replaces = units.iter().map(|u| u.index).collect();
    let bytes = index::encode_repack(keys, signer, &packs, replaces, head_seq);
    let id = ObjectId::of(&bytes);
    let path = layout::index(dataset, &id);
    site.put(&path, &bytes)?;
    report.repack_written.push(path);
    report.repack_written_bytes += bytes.len() as u64;
    Ok(id)
}
