//! The per-version checks of a verification: keyless, that everything a version references
//! exists; deep, that every chunk of its trees resolves through its own indexes to a blob the
//! deep pass opened.

use std::collections::{HashMap, HashSet};

use crate::engine::reader::VersionReader;
use crate::engine::vault::{Keyring, Vault};
use crate::error::{Error, Result};
use crate::format::index;
use crate::format::layout;
use crate::format::manifest;
use crate::format::pack;
use crate::id::{ChunkId, ObjectId};

use super::known::Known;

/// Keyless: the manifest, its indexes (or the repack indexes that stand in for them) and their
/// packs exist.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_references(
    vault: &Vault,
    sizes: &HashMap<&str, u64>,
    replacements: &index::Replacements,
    dataset: &str,
    version: &crate::engine::vault::Version,
    referenced: &mut HashSet<String>,
    learned: &mut Known,
    problem: &dyn Fn(String),
    failed: &dyn Fn(Error),
) -> bool {
    let site = vault.site().as_ref();
    // Listed at the start, or stored since (by a backup running meanwhile).
    let exists = |path: &str| {
        sizes.contains_key(path)
            || site
                .list(path)
                .is_ok_and(|l| l.iter().any(|i| i.path == path))
    };
    // Bytes that do not match their name were noted in step 1 when listed (damage, since they
    // are referenced: judged after step 2); either way a
    // substitute's references are not followed (they would accuse objects of being missing).
    let matches_name = |path: &str, bytes: &[u8], id: &ObjectId| {
        let ok = ObjectId::of(bytes) == *id;
        if !ok && !sizes.contains_key(path) {
            problem(format!(
                "{path}: bytes do not hash to the object's name (altered, truncated or substituted)"
            ));
        }
        ok
    };
    let manifest_path = layout::manifest(dataset, &version.manifest);
    let who = format!("ledger entry {} of {dataset}", version.seq);
    if !exists(&manifest_path) {
        problem(format!("{manifest_path}: missing (referenced by {who})"));
        return false;
    }
    referenced.insert(manifest_path.clone());
    let header = match site.get(&manifest_path).map_err(Error::from).and_then(|b| {
        if !matches_name(&manifest_path, &b, &version.manifest) {
            return Ok(None);
        }
        manifest::decode_header(&manifest_path, &b).map(Some)
    }) {
        Ok(Some((h, _))) => h,
        Ok(None) => return false,
        Err(e) => {
            failed(e);
            return false;
        }
    };
    let mut ok = true;
    // What this version resolved to, remembered when all of it was found.
    let mut trail = vec![manifest_path.clone()];
    if header.dataset != dataset {
        problem(format!(
            "{manifest_path}: belongs to dataset {}, substituted",
            header.dataset
        ));
        ok = false;
    }
    let needed: Vec<ObjectId> = header
        .indexes
        .iter()
        .flat_map(|i| replacements.needed(i, version.seq))
        .collect();
    for index_id in &needed {
        let index_path = layout::index(dataset, index_id);
        if !exists(&index_path) {
            problem(format!(
                "{index_path}: missing (referenced by {manifest_path})"
            ));
            ok = false;
            continue;
        }
        trail.push(index_path.clone());
        if !referenced.insert(index_path.clone()) {
            continue; // already followed for an earlier version
        }
        let packs = match site.get(&index_path).map_err(Error::from).and_then(|b| {
            if !matches_name(&index_path, &b, index_id) {
                return Ok(None);
            }
            index::decode_header(&index_path, &b).map(Some)
        }) {
            Ok(Some((h, _))) => h.packs,
            Ok(None) => {
                ok = false;
                continue;
            }
            Err(e) => {
                failed(e);
                ok = false;
                continue;
            }
        };
        let mut pack_paths = Vec::with_capacity(packs.len());
        for pack_id in packs {
            let pack_path = layout::pack(dataset, &pack_id);
            if !exists(&pack_path) {
                problem(format!("{pack_path}: missing (referenced by {index_path})"));
                ok = false;
            }
            referenced.insert(pack_path.clone());
            pack_paths.push(pack_path);
        }
        learned.indexes.insert(index_path, pack_paths);
    }
    if ok {
        learned.versions.insert(
            super::known::version_key(dataset, version.seq, &version.ledger_id),
            trail,
        );
    }
    ok
}

/// Where a check reports: damage (`problem`), what could not be read this time (`unreadable`),
/// and an error to be sorted into one of the two by its kind (`failed`).
#[derive(Clone, Copy)]
pub(super) struct Findings<'a> {
    pub problem: &'a dyn Fn(String),
    pub unreadable: &'a dyn Fn(String),
    pub failed: &'a dyn Fn(Error),
}

/// Deep: each verified pack's directory by chunk id (every entry's blob opened).
pub(super) type PackDirectories = HashMap<String, HashMap<ChunkId, Vec<pack::BlobEntry>>>;

/// Deep: every chunk of the version's trees is resolved through the version's own indexes (the
/// ones its manifest names), and each of its mappings must be an entry of the named pack's
/// directory, which the deep pass opened: a mapping that does not hold (a poisoned index an
/// accepted version relies on) is damage naming the version, the index and the chunk.
pub(super) fn deep_check_version(
    vault: &Vault,
    keyring: &Keyring,
    version: &crate::engine::vault::Version,
    pack_blobs: &PackDirectories,
    unreadable_paths: &HashSet<String>,
    findings: &Findings,
) -> bool {
    let Findings {
        problem,
        unreadable,
        failed,
    } = *findings;
    let result = (|| -> Result<bool> {
        let reader = VersionReader::open_with(vault.site().clone(), keyring, version)?;
        let (seen, mut data) = reader.chunks()?;
        // The bases of its deltas are needed too, though no tree names them.
        let bases = reader.delta_bases(&data);
        data.extend(bases);
        let dataset = &version.dataset;
        let manifest_path = layout::manifest(dataset, &version.manifest);
        let mut missing = 0u64;
        // Chunks whose only packs could not be read this time: not checked, not missing.
        let mut unchecked = 0u64;
        // Per lying index: how many chunks, and the first one (chunk, pack, offset).
        let mut wrong: std::collections::BTreeMap<ObjectId, (u64, ChunkId, ObjectId, u32)> =
            Default::default();
        for id in data.iter().chain(seen.iter()) {
            let mut verified_pack = false;
            let mut unread_pack = false;
            for m in reader.mappings(id) {
                let pack_path = layout::pack(dataset, &m.pack);
                let Some(directory) = pack_blobs.get(&pack_path) else {
                    unread_pack |= unreadable_paths.contains(&pack_path);
                    continue; // not verified: counted below if no mapping verifies
                };
                verified_pack = true;
                let holds = directory
                    .get(id)
                    .is_some_and(|entries| entries.contains(&m.blob));
                if !holds {
                    wrong.entry(m.index).and_modify(|w| w.0 += 1).or_insert((
                        1,
                        *id,
                        m.pack,
                        m.blob.offset,
                    ));
                }
            }
            if !verified_pack {
                if unread_pack {
                    unchecked += 1;
                } else {
                    missing += 1;
                }
            }
        }
        for (index_id, (count, chunk, pack_id, offset)) in &wrong {
            problem(format!(
                "{}: version {} of {dataset} (manifest {}) resolves {count} chunks through this \
                 index to places their pack does not hold them (first: chunk {} at offset \
                 {offset} of pack {}): the index lies; a restore of those chunks fails unless \
                 another index of the version maps them correctly",
                layout::index(dataset, index_id),
                version.number,
                version.manifest.short(),
                chunk.short(),
                pack_id.short(),
            ));
        }
        if missing > 0 {
            return Err(Error::corrupt(
                manifest_path,
                format!(
                    "{missing} chunks of version {} are not in any verified pack",
                    version.number
                ),
            ));
        }
        if unchecked > 0 {
            unreadable(format!(
                "{manifest_path}: {unchecked} chunks of version {} are in packs that could not be \
                 read this time: not checked",
                version.number
            ));
            return Ok(false);
        }
        Ok(wrong.is_empty())
    })();
    match result {
        Ok(ok) => ok,
        Err(e) => {
            failed(e);
            false
        }
    }
}
