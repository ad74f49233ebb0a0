//! Reading a version: its manifest, the indexes it names, and its blobs, checked on the way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::index;
use crate::format::layout;
use crate::format::manifest::{self, ManifestBody};
use crate::format::pack::{self, BlobEntry, BlobKind};
use crate::format::spool::{FetchError, Spool};
use crate::format::tree::Tree;
use crate::history::version::Version;
use crate::id::{ChunkId, ObjectId};
use crate::keys::crypto::ObjectKey;
use crate::keys::DatasetKeys;
use crate::site::{Site, SiteError};

pub use crate::format::object::get_checked;

/// One place the version's indexes say a chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Location {
    /// Number of the pack in [`VersionReader::packs`].
    pack: u32,
    /// Position in the manifest's list of indexes of the index that says so.
    index: u32,
    /// Where in the pack.
    blob: BlobEntry,
}

/// Most bytes one ranged read of a pack asks for when it gathers nearby blobs (a single larger
/// blob is read alone): two threads reading whole packs held 35 MB in spans when restoring the
/// full benchmark corpus.
const MAX_SPAN: u64 = 4 * 1024 * 1024;

/// Where one of a version's indexes says a chunk is (see [`VersionReader::mappings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// The index object that says so.
    pub index: ObjectId,
    /// The pack.
    pub pack: ObjectId,
    /// Where in the pack.
    pub blob: BlobEntry,
}

/// An opened version, ready to read blobs from.
///
/// When several of the manifest's indexes map one chunk to different places (the same chunk
/// stored twice by concurrent or interrupted runs, or an index that lies), every mapping is
/// kept, in the manifest's order, and a read tries the next one when a mapping does not open.
pub struct VersionReader {
    site: Arc<dyn Site>,
    keys: Arc<DatasetKeys>,
    /// The version.
    pub version: Version,
    /// Its decrypted manifest.
    pub manifest: ManifestBody,
    packs: Vec<ObjectId>,
    indexes: Vec<ObjectId>,
    locations: Locations,
    pack_keys: Mutex<HashMap<u32, Arc<ObjectKey>>>,
}

/// Every place the version's indexes map each chunk to: one flat array sorted by chunk id (a
/// chunk's places in the manifest's order of indexes), searched by bisection. A hash map of
/// small vectors cost 112 MB for the full benchmark corpus's 233,000 chunks (each vector's
/// first push reserves room for four); this costs 88 bytes a place.
struct Locations(Vec<Location>);

impl Locations {
    /// Sorts `all` and keeps one of each (pack, blob) a chunk is mapped to, the first in the
    /// manifest's order.
    fn new(mut all: Vec<Location>) -> Self {
        all.sort_by(|a, b| a.blob.id.cmp(&b.blob.id).then(a.index.cmp(&b.index)));
        let mut kept = 0;
        let mut group = 0;
        for at in 0..all.len() {
            let l = all[at];
            if kept == 0 || all[kept - 1].blob.id != l.blob.id {
                group = kept;
            }
            if !all[group..kept]
                .iter()
                .any(|p| p.pack == l.pack && p.blob == l.blob)
            {
                all[kept] = l;
                kept += 1;
            }
        }
        all.truncate(kept);
        all.shrink_to_fit();
        Self(all)
    }

    /// The places of chunk `id`, in the manifest's order; None when no index names it.
    fn get(&self, id: &ChunkId) -> Option<&[Location]> {
        let start = self.0.partition_point(|l| l.blob.id < *id);
        let len = self.0[start..].partition_point(|l| l.blob.id == *id);
        (len > 0).then(|| &self.0[start..start + len])
    }
}

impl VersionReader {
    /// Opens a version: fetches and decrypts its manifest and loads the indexes it names.
    pub fn open(site: Arc<dyn Site>, keys: Arc<DatasetKeys>, version: &Version) -> Result<Self> {
        let dataset = &keys.dataset;
        let manifest_path = layout::manifest(dataset, &version.manifest);
        let ledger_ref = format!("ledger entry {} of {dataset}", version.seq);
        let bytes = get_checked(
            site.as_ref(),
            &manifest_path,
            &version.manifest,
            &ledger_ref,
        )?;
        let (header, body) = manifest::decode(&keys, &manifest_path, &bytes)?;
        let load = |id: &ObjectId| {
            let path = layout::index(dataset, id);
            let bytes = get_checked(site.as_ref(), &path, id, &manifest_path)?;
            index::decode(&keys, &path, &bytes)
        };
        let mut indexes = header.indexes.clone();
        let mut loaded: Vec<Result<(index::IndexHeader, Vec<index::IndexEntry>)>> =
            indexes.par_iter().map(load).collect();
        // An index garbage collection repacked and deleted: the repack indexes that stand in
        // for it (any signer will do here: every blob read is checked against its chunk id).
        if loaded
            .iter()
            .any(|r| matches!(r, Err(Error::Missing { .. })))
        {
            let named: std::collections::HashSet<ObjectId> = indexes.iter().copied().collect();
            let candidates: Vec<ObjectId> = site
                .list(&layout::index_prefix(dataset))?
                .iter()
                .filter_map(|i| layout::id_in_path(&i.path))
                .filter(|id| !named.contains(id))
                .collect();
            let (replacements, _) =
                index::Replacements::load(site.as_ref(), dataset, candidates, &|_| true);
            let mut all_indexes = Vec::new();
            let mut all_loaded = Vec::new();
            for (id, result) in indexes.iter().zip(loaded) {
                let stand_ins = replacements.needed(id, version.seq);
                match result {
                    Err(Error::Missing { .. }) if stand_ins != [*id] => {
                        for stand_in in stand_ins {
                            if !all_indexes.contains(&stand_in) {
                                all_loaded.push(load(&stand_in));
                                all_indexes.push(stand_in);
                            }
                        }
                    }
                    result => {
                        all_indexes.push(*id);
                        all_loaded.push(result);
                    }
                }
            }
            indexes = all_indexes;
            loaded = all_loaded;
        }
        let mut packs = Vec::new();
        let mut pack_numbers = HashMap::new();
        let places = loaded
            .iter()
            .map(|r| r.as_ref().map_or(0, |(_, entries)| entries.len()))
            .sum();
        let mut locations = Vec::with_capacity(places);
        for (position, result) in loaded.into_iter().enumerate() {
            let (header, entries) = result?;
            for e in entries {
                let pack_id = header.packs[e.pack as usize];
                let number = *pack_numbers.entry(pack_id).or_insert_with(|| {
                    packs.push(pack_id);
                    (packs.len() - 1) as u32
                });
                locations.push(Location {
                    pack: number,
                    index: position as u32,
                    blob: e.blob,
                });
            }
        }
        let locations = Locations::new(locations);
        Ok(Self {
            site,
            keys,
            version: version.clone(),
            manifest: body,
            packs,
            indexes,
            locations,
            pack_keys: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a version with whichever of the keyring's keys its manifest was sealed to.
    pub fn open_with(
        site: Arc<dyn Site>,
        keyring: &crate::engine::vault::Keyring,
        version: &Version,
    ) -> Result<Self> {
        let path = layout::manifest(&version.dataset, &version.manifest);
        let who = format!("ledger entry {} of {}", version.seq, version.dataset);
        let bytes = get_checked(site.as_ref(), &path, &version.manifest, &who)?;
        let (header, _) = manifest::decode_header(&path, &bytes)?;
        let keys = keyring.dataset_for_key_id(&version.dataset, header.key_id)?;
        Self::open(site, keys, version)
    }

    /// The dataset's keys.
    pub fn keys(&self) -> &DatasetKeys {
        &self.keys
    }

    fn pack_path(&self, number: u32) -> String {
        layout::pack(&self.keys.dataset, &self.packs[number as usize])
    }

    /// Every mapping of a chunk in the version's indexes, in the manifest's order (never empty).
    fn locate(&self, id: &ChunkId) -> Result<&[Location]> {
        self.locations.get(id).ok_or_else(|| {
            Error::corrupt(
                layout::manifest(&self.keys.dataset, &self.version.manifest),
                format!("chunk {} is not in any index the version names", id.short()),
            )
        })
    }

    /// Where the version's indexes say a chunk is: one mapping per distinct place, in the
    /// manifest's order of indexes. Empty when no index of the version names the chunk.
    pub fn mappings(&self, id: &ChunkId) -> Vec<Mapping> {
        self.locations.get(id).map_or_else(Vec::new, |ls| {
            ls.iter()
                .map(|l| Mapping {
                    index: self.indexes[l.index as usize],
                    pack: self.packs[l.pack as usize],
                    blob: l.blob,
                })
                .collect()
        })
    }

    fn pack_key(&self, number: u32) -> Result<Arc<ObjectKey>> {
        if let Some(key) = self
            .pack_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&number)
        {
            return Ok(key.clone());
        }
        let path = self.pack_path(number);
        let key = Arc::new(
            self.open_range(&path, 0, pack::HEADER_LEN as u64, |header| {
                pack::open_key(&self.keys, &path, header)
            })?,
        );
        self.pack_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(number, key.clone());
        Ok(key)
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.site.get_range(path, offset, len).map_err(|e| match e {
            // Shorter than its index says: damage, not an outage.
            SiteError::Permanent { .. }
                if self
                    .stored_size(path)
                    .is_some_and(|size| size < offset + len) =>
            {
                Error::corrupt(
                    path,
                    format!(
                        "truncated: holds {} bytes, but its index needs bytes up to {}",
                        self.stored_size(path).unwrap_or(0),
                        offset + len
                    ),
                )
            }
            SiteError::NotFound { .. } => Error::Missing {
                path: path.to_string(),
                site: self.site.location().to_string(),
                referenced_by: format!(
                    "an index of version {} of {}",
                    self.version.number, self.keys.dataset
                ),
            },
            e => e.into(),
        })
    }

    fn stored_size(&self, path: &str) -> Option<u64> {
        self.site
            .list(path)
            .ok()?
            .into_iter()
            .find(|i| i.path == path)
            .map(|i| i.size)
    }

    /// Plaintext size of a blob, from the index.
    pub fn blob_size(&self, id: &ChunkId) -> Result<u32> {
        let locations = self.locate(id)?;
        let first = locations[0].blob.raw_length;
        if locations.iter().all(|l| l.blob.raw_length == first) {
            return Ok(first);
        }
        // The indexes disagree: only the mapping that opens tells.
        Ok(self.read_blob(id)?.len() as u32)
    }

    /// Reads one blob, trying each of its mappings in turn.
    pub fn read_blob(&self, id: &ChunkId) -> Result<Vec<u8>> {
        self.read_blob_of_kind(id, None)
    }

    /// Reads one blob through its mappings of `kind` (any content, full or delta, when
    /// `None`): the first that opens. When none does, the first mapping's error is returned
    /// (it names the pack). A delta is read with its base, which must be a full data blob.
    fn read_blob_of_kind(&self, id: &ChunkId, kind: Option<BlobKind>) -> Result<Vec<u8>> {
        let mut first_error = None;
        for location in self.locate(id)? {
            if kind.is_some_and(|k| k != location.blob.kind) {
                continue;
            }
            let read = if location.blob.kind == BlobKind::Delta {
                self.read_delta_at(location.pack, &location.blob)
            } else {
                self.read_at(location.pack, &location.blob)
            };
            match read {
                Ok(plain) => return Ok(plain),
                Err(e) if e.is_integrity() || matches!(e, Error::Missing { .. }) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(first_error.unwrap_or_else(|| {
            Error::corrupt(
                layout::manifest(&self.keys.dataset, &self.version.manifest),
                match kind {
                    Some(BlobKind::Data) => format!(
                        "chunk {} is the base of a delta but is stored only as a delta itself \
                         (a delta's base must be a full blob)",
                        id.short()
                    ),
                    _ => format!("chunk {} is used as a tree but stored as data", id.short()),
                },
            )
        }))
    }

    /// Reads the blob `entry` says is in pack `number`.
    fn read_at(&self, number: u32, entry: &BlobEntry) -> Result<Vec<u8>> {
        let key = self.pack_key(number)?;
        let path = self.pack_path(number);
        self.open_range(&path, entry.offset as u64, entry.length as u64, |sealed| {
            pack::open_blob(&key, &self.keys, &path, entry, sealed)
        })
    }

    /// Reads the delta `entry` says is in pack `number`, and its base (a full data blob
    /// through the version's indexes), and reconstructs the content, checked against its id.
    fn read_delta_at(&self, number: u32, entry: &BlobEntry) -> Result<Vec<u8>> {
        let base_id = entry.base.ok_or_else(|| {
            Error::corrupt(self.pack_path(number), "a delta entry without a base")
        })?;
        let base = self.read_base(&base_id)?;
        let key = self.pack_key(number)?;
        let path = self.pack_path(number);
        self.open_range(&path, entry.offset as u64, entry.length as u64, |sealed| {
            let mut sealed = sealed.to_vec();
            let frame = pack::open_delta_in_place(&key, &path, entry, &mut sealed)?;
            let mut out = Vec::new();
            pack::apply_delta(&self.keys, &path, entry, frame, &base, &mut out)?;
            Ok(out)
        })
    }

    /// Reads the full blob a delta applies to (never a delta: depth 1).
    pub fn read_base(&self, base: &ChunkId) -> Result<Vec<u8>> {
        self.read_blob_of_kind(base, Some(BlobKind::Data))
    }

    /// The full data blob to store a new version of chunk `id` against: `id` itself when the
    /// version's indexes hold it as a full data blob, else the base of its delta. None when
    /// the version does not hold it as data.
    pub fn delta_base_for(&self, id: &ChunkId) -> Option<ChunkId> {
        let locations = self.locations.get(id)?;
        if locations.iter().any(|l| l.blob.kind == BlobKind::Data) {
            return Some(*id);
        }
        locations
            .iter()
            .find(|l| l.blob.kind == BlobKind::Delta)
            .and_then(|l| l.blob.base)
    }

    /// Reads `len` bytes at `offset` of `path` and opens them with `open`. When they do not
    /// open (a damaged copy), the whole object is read, checked against its name (several
    /// sites fall back to a good copy, see [`VersionReader::whole_checked`]), and the same
    /// bytes of it opened instead: the one rule for ranged reads of packs (headers and blobs).
    fn open_range<T>(
        &self,
        path: &str,
        offset: u64,
        len: u64,
        open: impl Fn(&[u8]) -> Result<T>,
    ) -> Result<T> {
        let ranged = self.get_range(path, offset, len)?;
        match open(&ranged) {
            Err(e) if e.is_integrity() => {
                let whole = self.whole_checked(path, e)?;
                let sealed = whole
                    .read_at(offset, len)
                    .map_err(|_| Error::corrupt(path, "shorter than its index says"))?;
                open(&sealed)
            }
            r => r,
        }
    }

    /// The whole object at `path`, whose bytes must hash to its name, spooled to local disk
    /// (never held in memory: a pack may be gigabytes); `damage` is the error that sent us
    /// here, returned when no good copy can be had.
    fn whole_checked(&self, path: &str, damage: Error) -> Result<Spool> {
        let Some(id) = layout::id_in_path(path) else {
            return Err(damage);
        };
        match Spool::fetch(self.site.as_ref(), path, &id) {
            Ok(Ok(spool)) => Ok(spool),
            Err(FetchError::Local(e)) => Err(e),
            _ => Err(damage),
        }
    }

    /// Reads and parses a tree blob.
    pub fn read_tree(&self, id: &ChunkId) -> Result<Tree> {
        let plain = self.read_blob_of_kind(id, Some(BlobKind::Tree))?;
        Tree::decode(&plain, &format!("tree {}", id.short()))
    }

    /// Every chunk the version's trees reference: its tree blobs and its files' data chunks
    /// (each once), read by walking the trees from the root.
    pub fn chunks(
        &self,
    ) -> Result<(
        std::collections::HashSet<ChunkId>,
        std::collections::HashSet<ChunkId>,
    )> {
        let mut pending = vec![self.manifest.root];
        let mut trees = std::collections::HashSet::new();
        let mut data = std::collections::HashSet::new();
        while let Some(tree_id) = pending.pop() {
            if !trees.insert(tree_id) {
                continue;
            }
            for node in self.read_tree(&tree_id)?.nodes {
                match node.kind {
                    crate::format::tree::NodeKind::Dir => pending.extend(node.subtree),
                    crate::format::tree::NodeKind::File => data.extend(node.content),
                    _ => {}
                }
            }
        }
        Ok((trees, data))
    }

    /// The bases of the deltas among `ids` (chunks stored as deltas in the version's indexes):
    /// blobs the version needs although its trees do not name them.
    pub fn delta_bases<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a ChunkId>,
    ) -> std::collections::HashSet<ChunkId> {
        ids.into_iter()
            .filter_map(|id| self.locations.get(id))
            .flatten()
            .filter_map(|l| l.blob.base)
            .collect()
    }

    /// The root tree.
    pub fn root(&self) -> Result<Tree> {
        self.read_tree(&self.manifest.root)
    }

    /// Reads many blobs, grouped by pack so each pack is read once in one request, in parallel;
    /// calls `sink` with each blob's plaintext in no particular order. Deltas are read first
    /// (their frames are small and kept), then the full blobs asked for and the deltas' bases,
    /// each delta reconstructed as its base arrives: no base is held longer than its blob.
    pub fn for_each_blob(
        &self,
        ids: impl IntoIterator<Item = ChunkId>,
        sink: &(dyn Fn(&ChunkId, &[u8]) -> Result<()> + Sync),
    ) -> Result<()> {
        // Per pack, the blobs to read (borrowed from the version's locations: no copies).
        let mut fulls: HashMap<u32, Vec<&BlobEntry>> = HashMap::new();
        let mut deltas: HashMap<u32, Vec<&BlobEntry>> = HashMap::new();
        for id in ids {
            let locations = self.locate(&id)?;
            // A full copy when the version has one: no base to read.
            let chosen = locations
                .iter()
                .find(|l| l.blob.kind != BlobKind::Delta)
                .unwrap_or(&locations[0]);
            let into = if chosen.blob.kind == BlobKind::Delta {
                &mut deltas
            } else {
                &mut fulls
            };
            into.entry(chosen.pack).or_default().push(&chosen.blob);
        }
        let fallback = |id: &ChunkId| sink(id, &self.read_blob(id)?);
        if deltas.is_empty() {
            return self.read_packs(
                fulls,
                &|key, _, path, entry, sealed, scratch| {
                    sink(
                        &entry.id,
                        pack::open_blob_in_place(key, &self.keys, path, entry, sealed, scratch)?,
                    )
                },
                &fallback,
            );
        }
        // 1. The deltas' frames, by base (the AEAD already binds each to its base), with the
        // number of the pack each came from (most bases have one delta: room for one).
        type Waiting = HashMap<ChunkId, Vec<(BlobEntry, u32, Vec<u8>)>>;
        let waiting: Mutex<Waiting> = Mutex::new(HashMap::new());
        self.read_packs(
            deltas,
            &|key, number, path, entry, sealed, _| {
                let frame = pack::open_delta_in_place(key, path, entry, sealed)?.to_vec();
                let base = entry
                    .base
                    .ok_or_else(|| Error::corrupt(path, "a delta entry without a base"))?;
                waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(base)
                    .or_insert_with(|| Vec::with_capacity(1))
                    .push((*entry, number, frame));
                Ok(())
            },
            &fallback,
        )?;
        let waiting = waiting.into_inner().unwrap_or_else(|p| p.into_inner());
        // 2. The full blobs asked for, and the bases (full copies only: depth 1).
        let mut asked: Vec<ChunkId> = fulls.values().flatten().map(|e| e.id).collect();
        asked.sort_unstable();
        for base in waiting.keys() {
            let location = self
                .locate(base)?
                .iter()
                .find(|l| l.blob.kind == BlobKind::Data)
                .ok_or_else(|| {
                    Error::corrupt(
                        layout::manifest(&self.keys.dataset, &self.version.manifest),
                        format!(
                            "chunk {} is the base of a delta but is stored only as a delta \
                             itself (a delta's base must be a full blob)",
                            base.short()
                        ),
                    )
                })?;
            fulls.entry(location.pack).or_default().push(&location.blob);
        }
        let waiting = Mutex::new(waiting);
        let arrived = |id: &ChunkId, plain: &[u8]| -> Result<()> {
            if asked.binary_search(id).is_ok() {
                sink(id, plain)?;
            }
            let mine = waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            let mut out = Vec::new();
            for (entry, number, frame) in mine.into_iter().flatten() {
                let path = self.pack_path(number);
                pack::apply_delta(&self.keys, &path, &entry, &frame, plain, &mut out)?;
                sink(&entry.id, &out)?;
            }
            Ok(())
        };
        self.read_packs(
            fulls,
            &|key, _, path, entry, sealed, scratch| {
                arrived(
                    &entry.id,
                    pack::open_blob_in_place(key, &self.keys, path, entry, sealed, scratch)?,
                )
            },
            &|id| arrived(id, &self.read_base(id)?),
        )?;
        let left = waiting.into_inner().unwrap_or_else(|p| p.into_inner());
        match left.keys().next() {
            None => Ok(()),
            Some(base) => Err(Error::corrupt(
                layout::manifest(&self.keys.dataset, &self.version.manifest),
                format!("the base {} of a delta was never read", base.short()),
            )),
        }
    }

    /// Reads the blobs of `work` (by pack number), one pack per task, in parallel, runs of
    /// nearby blobs in one request (at most [`MAX_SPAN`] bytes, unless one blob is larger), and
    /// calls `open` with each blob's pack number, pack path and stored bytes. A blob that does
    /// not open is read through its other mappings (`fallback`, when the version has several),
    /// or once more from the whole pack checked against its name.
    #[allow(clippy::type_complexity)]
    fn read_packs(
        &self,
        work: HashMap<u32, Vec<&BlobEntry>>,
        open: &(dyn Fn(&ObjectKey, u32, &str, &BlobEntry, &mut [u8], &mut Vec<u8>) -> Result<()>
              + Sync),
        fallback: &(dyn Fn(&ChunkId) -> Result<()> + Sync),
    ) -> Result<()> {
        let mut work: Vec<(u32, Vec<&BlobEntry>)> = work.into_iter().collect();
        work.sort_by_key(|(n, _)| *n);
        // One pack per task: packs are few and heavy, so idle threads steal them one by one.
        work.par_iter_mut()
            .with_max_len(1)
            .try_for_each(|(number, entries)| {
                entries.sort_by_key(|e| e.offset);
                entries.dedup_by_key(|e| e.id);
                let key = self.pack_key(*number)?;
                let path = self.pack_path(*number);
                // Read runs of blobs that are close together in one request.
                let mut i = 0;
                while i < entries.len() {
                    let start = entries[i].offset as u64;
                    let mut end = start + entries[i].length as u64;
                    let mut j = i + 1;
                    while j < entries.len()
                        && (entries[j].offset as u64) < end + 1024 * 1024
                        && entries[j].offset as u64 + entries[j].length as u64 - start <= MAX_SPAN
                    {
                        end = end.max(entries[j].offset as u64 + entries[j].length as u64);
                        j += 1;
                    }
                    let mut span = self.get_range(&path, start, end - start)?;
                    if span.len() as u64 != end - start {
                        // A site implementation that returns a short range must not become a panic.
                        return Err(Error::corrupt(
                            &path,
                            "the site returned fewer bytes than asked for",
                        ));
                    }
                    let mut scratch = Vec::new();
                    let mut refetched = false;
                    for entry in &entries[i..j] {
                        let at = (entry.offset as u64 - start) as usize;
                        let range = at..at + entry.length as usize;
                        match open(
                            &key,
                            *number,
                            &path,
                            entry,
                            &mut span[range.clone()],
                            &mut scratch,
                        ) {
                            Ok(()) => {}
                            // Another index of the version maps the chunk elsewhere: try that.
                            Err(e)
                                if e.is_integrity()
                                    && self
                                        .locations
                                        .get(&entry.id)
                                        .is_some_and(|l| l.len() > 1) =>
                            {
                                fallback(&entry.id)?;
                            }
                            Err(e) if e.is_integrity() && !refetched => {
                                // A damaged copy: take the span from the whole pack, checked
                                // against its name (several sites fall back to a good copy).
                                refetched = true;
                                let whole = self.whole_checked(&path, e)?;
                                let fresh = whole.read_at(start, end - start).map_err(|_| {
                                    Error::corrupt(&path, "shorter than its index says")
                                })?;
                                span.copy_from_slice(&fresh);
                                open(&key, *number, &path, entry, &mut span[range], &mut scratch)?;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    i = j;
                }
                Ok(())
            })
    }
}
