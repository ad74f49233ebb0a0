//! Writing a version: chunk, dedup, compress, seal into packs, then index, manifest and ledger
//! entry, in that order (invariant 7).
//!
//! Callers (the sources) feed content through [`BackupSession::store_reader`] and trees through
//! [`BackupSession::store_blob`], from as many threads as they like; a pool of sealer threads
//! compresses and encrypts into packs and uploads them. Each pack is followed by its own index
//! object, so an interrupted backup leaves reusable, indexed packs and a rerun stores nothing
//! twice.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::engine::vault::{Keyring, Vault, Version};
use crate::error::{Error, Result};
use crate::format::chunker::{aligned_chunks, ChunkBuffer, ChunkError, Chunking};
use crate::format::config::{now_unix_nanos, ChunkerParams};
use crate::format::index;
use crate::format::layout;
use crate::format::manifest::{self, ManifestBody, VersionKind, VersionStats};
use crate::format::pack::BlobKind;
use crate::history::ledger::{self, Event, Record};
use crate::id::{ChunkId, ObjectId};
use crate::keys::DatasetKeys;
use crate::progress::Progress;
use crate::site::Site;

mod pipeline;

use pipeline::{lock, Batch, Known, KnownChunks, Pipeline, Shared};
pub use pipeline::{BATCH_BYTES, QUEUED_BATCHES};

thread_local! {
    static CHUNK_BUFFER: std::cell::RefCell<Option<ChunkBuffer>> = const { std::cell::RefCell::new(None) };
    static ALIGNED_BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A version being written to one dataset.
pub struct BackupSession {
    shared: Arc<Shared>,
    pipeline: Pipeline,
    vault: Vault,
    signer: ed25519_dalek::SigningKey,
    head: Option<Record>,
    /// The version number this session's version takes (versions cannot land meanwhile).
    number: u64,
    rejected: Vec<ObjectId>,
    chunker: ChunkerParams,
    captured_at_ns: i64,
    root_node: Option<crate::format::tree::Node>,
    properties: std::collections::BTreeMap<String, String>,
    wal_start: Option<crate::history::ledger::WalStart>,
    /// Problems that did not stop the backup (a damaged index that was ignored, a checkpoint
    /// that could not be written); keep a clone to read them after [`BackupSession::finish`].
    pub warnings: Arc<Mutex<Vec<String>>>,
}

impl BackupSession {
    /// Starts a version of `dataset`: verifies its history, loads what is already stored (also
    /// from interrupted runs, for resume) and starts the sealers.
    pub fn begin(vault: &Vault, keyring: &Keyring, dataset: &str) -> Result<Self> {
        let signer = keyring.signer()?;
        let site = vault.site().clone();
        let history = vault.history_full(dataset)?;
        // A version after a gap or a fork would hide the entries beyond it for good.
        history.check_appendable(dataset)?;
        let keys = keyring.dataset_at(dataset, ledger::key_epoch(&history.records))?;
        if !vault.authority(dataset, &history.records).may(
            &signer.verifying_key().to_bytes(),
            crate::history::rights::Right::AddVersions,
        ) {
            return Err(Error::Refused {
                kind: crate::ErrorKind::Keys,
                problem: format!(
                    "signing key {} may not add versions to dataset {dataset}: it was revoked, \
                     never added, or not granted add_versions; ask the root for a new sealing \
                     credential",
                    hex::encode(&signer.verifying_key().to_bytes()[..8])
                ),
                way_out: crate::error::WayOut::Grant {
                    dataset: dataset.to_string(),
                    grant: crate::error::Grant::Seal,
                },
            });
        }
        let rejected = history.rejected_ids();
        let head = history.records.last().cloned();
        let number =
            crate::history::numbering::VersionNumbering::after(&history.records).next_number();
        let mut warnings = Vec::new();
        // Tell garbage collection a session is running (before anything is read), then keep
        // away from what it has condemned: those objects may be deleted under us.
        crate::engine::gc::begin_session(
            site.as_ref(),
            dataset,
            head.as_ref().map_or(0, |h| h.entry.seq),
            &hostname(),
            &signer,
        )?;
        let condemned = crate::engine::gc::condemned(site.as_ref(), dataset)?;
        let known = load_known_chunks(
            site.as_ref(),
            vault,
            &history.records,
            &keys,
            &condemned,
            &mut warnings,
        )?;
        let shared = Arc::new(Shared {
            site,
            keys,
            signer: signer.clone(),
            pack_target: vault.config().pack_target_bytes as usize,
            known: Mutex::new(known),
            used_indexes: Mutex::new(BTreeSet::new()),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            new_chunks: AtomicU64::new(0),
            new_bytes_stored: AtomicU64::new(0),
            new_deltas: AtomicU64::new(0),
            handoffs: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            peak_queued_bytes: AtomicU64::new(0),
        });
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pipeline = Pipeline::start(&shared, workers)?;
        Ok(Self {
            shared,
            pipeline,
            vault: vault.clone(),
            signer,
            head,
            number,
            rejected,
            chunker: vault.config().chunker,
            captured_at_ns: now_unix_nanos(),
            root_node: None,
            properties: Default::default(),
            wal_start: None,
            warnings: Arc::new(Mutex::new(warnings)),
        })
    }

    /// The dataset's keys.
    pub fn keys(&self) -> &DatasetKeys {
        &self.shared.keys
    }

    /// Stores one blob unless an equal one is already stored; returns its chunk id.
    pub fn store_blob(&self, kind: BlobKind, data: Vec<u8>) -> Result<ChunkId> {
        self.shared.check()?;
        let id = self.shared.keys.chunk_id(&data);
        if self.admit(id) {
            self.hand_over(Batch::single(kind, id, data))?;
        }
        Ok(id)
    }

    /// True if chunk `id` is new to the vault: it is then marked pending, and the caller must
    /// hand it to the sealers. A chunk already stored counts its index as used (and for a
    /// delta, its base's index); a delta whose base is not known as stored is stored again.
    fn admit(&self, id: ChunkId) -> bool {
        let mut known = lock(&self.shared.known);
        if matches!(known.get(&id), Some(Known::Pending)) {
            return false;
        }
        match pipeline::indexes_for(&known, &id) {
            Some((index, base_index)) => {
                drop(known);
                let mut used = lock(&self.shared.used_indexes);
                used.insert(index);
                used.extend(base_index);
                false
            }
            None => {
                known.insert(id, Known::Pending);
                true
            }
        }
    }

    /// Hands a batch of new chunks to the sealers.
    fn hand_over(&self, batch: Batch) -> Result<()> {
        if !self.pipeline.send(&self.shared, batch) {
            self.shared.check()?;
            return Err(Error::invalid("backup session already finished"));
        }
        Ok(())
    }

    /// Hashes one chunk of a stream, adds it to `batch` when new (handing the batch over
    /// first when it is full), and returns its id.
    fn store_chunk(&self, chunk: &[u8], batch: &mut Batch) -> Result<ChunkId> {
        self.shared.check()?;
        let id = self.shared.keys.chunk_id(chunk);
        if self.admit(id) {
            self.push_new(batch, id, chunk, None)?;
        }
        Ok(id)
    }

    /// Adds a new chunk to `batch` (handing the batch over first when it is full), with the
    /// full blob it may be stored against as a delta (its id, index and plaintext).
    fn push_new(
        &self,
        batch: &mut Batch,
        id: ChunkId,
        chunk: &[u8],
        base: Option<(ChunkId, ObjectId, &[u8])>,
    ) -> Result<()> {
        let len = chunk.len() + base.map_or(0, |(_, _, p)| p.len());
        if batch.full_for(len) {
            let full = std::mem::replace(batch, self.pipeline.batch());
            self.hand_over(full)?;
        }
        match base {
            Some((b, index, plain)) => batch.push_with_base(id, chunk, (b, index), plain),
            None => batch.push(BlobKind::Data, id, chunk),
        }
        Ok(())
    }

    /// True when this vault's format has delta blobs ([`crate::format::config::DELTAS_SINCE`]).
    fn deltas_allowed(&self) -> bool {
        self.vault.config().format_version >= crate::format::config::DELTAS_SINCE
    }

    /// The index that maps `base` when it may be a delta's base: stored as a full blob in an
    /// index this session trusts (that index is named by the version's manifest when a delta
    /// is kept, so readers, verify and garbage collection find the base through the version).
    fn base_index(&self, base: &ChunkId) -> Option<ObjectId> {
        match lock(&self.shared.known).get(base) {
            Some(Known::Stored(index, None)) => Some(index),
            _ => None,
        }
    }

    /// Reads the bases of the new pages in `waiting` together (one request per run of nearby
    /// blobs of a pack, not one per page) and adds each page to `batch`, with its base when that
    /// could be read and may serve as one, else alone (a warning says why).
    fn flush_waiting(
        &self,
        waiting: &mut Vec<WaitingPage>,
        previous: &dyn DeltaBases,
        batch: &mut Batch,
    ) -> Result<()> {
        if waiting.is_empty() {
            return Ok(());
        }
        let wanted: HashSet<ChunkId> = waiting.iter().map(|w| w.base).collect();
        let bases = previous.read_bases(&wanted).unwrap_or_else(|e| {
            let mut warnings = lock(&self.warnings);
            if warnings.len() < 100 {
                warnings.push(format!(
                    "the previous version of {} pages could not be read, they are stored \
                     whole: {e}",
                    waiting.len()
                ));
            }
            HashMap::new()
        });
        for w in waiting.drain(..) {
            let plain = bases
                .get(&w.base)
                .filter(|p| crate::format::pack::usable_base(p));
            let base = plain.map(|p| (w.base, w.index, p.as_slice()));
            self.push_new(batch, w.id, &w.bytes, base)?;
        }
        Ok(())
    }

    /// New chunks this session stored as deltas so far (counted as their packs are sealed).
    pub fn deltas_stored(&self) -> u64 {
        self.shared.new_deltas.load(Ordering::Relaxed)
    }

    /// Stores a PostgreSQL relation file cut in `page`-byte chunks, offering each new page as a
    /// delta against the same page of the file's previous version (`previous`); returns its
    /// chunk ids and length.
    pub fn store_pages(
        &self,
        reader: impl Read,
        page: u32,
        previous: &dyn DeltaBases,
        progress: &dyn Progress,
    ) -> std::result::Result<(Vec<ChunkId>, u64), StoreError> {
        let mut ids = Vec::new();
        let mut total = 0u64;
        let mut buf = ALIGNED_BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
        let mut batch = self.pipeline.batch();
        let deltas = self.deltas_allowed();
        let mut waiting: Vec<WaitingPage> = Vec::new();
        let result = aligned_chunks(reader, page, &mut buf, |chunk| {
            total += chunk.len() as u64;
            progress.add(chunk.len() as u64);
            self.shared.check()?;
            let id = self.shared.keys.chunk_id(chunk);
            let base = previous.base_of(ids.len()).filter(|b| deltas && *b != id);
            ids.push(id);
            if self.admit(id) {
                match base.and_then(|b| self.base_index(&b).map(|index| (b, index))) {
                    Some((base, index)) => {
                        waiting.push(WaitingPage {
                            id,
                            bytes: chunk.to_vec(),
                            base,
                            index,
                        });
                        if waiting.len() >= PAGES_PER_BASE_READ {
                            self.flush_waiting(&mut waiting, previous, &mut batch)?;
                        }
                    }
                    None => self.push_new(&mut batch, id, chunk, None)?,
                }
            }
            Ok(())
        });
        ALIGNED_BUFFER.with(|b| *b.borrow_mut() = buf);
        // Pages admitted as new are stored whatever happened to the stream after them.
        let result = match (
            result,
            self.flush_waiting(&mut waiting, previous, &mut batch),
        ) {
            (Ok(()), Err(e)) => Err(ChunkError::Consumer(e)),
            (result, _) => result,
        };
        match self.end_stream(batch, result) {
            Ok(()) => Ok((ids, total)),
            Err(ChunkError::Read(e)) => Err(StoreError::Read(e)),
            Err(ChunkError::Consumer(e)) => Err(StoreError::Vault(e)),
        }
    }

    /// Batches handed to the sealers so far: one per [`BATCH_BYTES`] of new chunks (or per
    /// larger chunk), per stream's end and per tree, not one per chunk.
    pub fn handoffs(&self) -> u64 {
        self.shared.handoffs.load(Ordering::Relaxed)
    }

    /// The most bytes of chunks that were ever handed over and not yet sealed: bounded by
    /// ([`QUEUED_BATCHES`] + 1) × sealers × the larger of [`BATCH_BYTES`] and the largest
    /// chunk, whatever the source's size.
    pub fn peak_queued_bytes(&self) -> u64 {
        self.shared.peak_queued_bytes.load(Ordering::Relaxed)
    }

    /// Chunks and stores a whole stream; returns its chunk ids and length.
    pub fn store_reader(
        &self,
        reader: impl Read,
        progress: &dyn Progress,
    ) -> std::result::Result<(Vec<ChunkId>, u64), StoreError> {
        self.store_reader_with(reader, Chunking::ContentDefined, progress)
    }

    /// Chunks a whole stream as `chunking` says and stores it; returns its chunk ids and length.
    pub fn store_reader_with(
        &self,
        reader: impl Read,
        chunking: Chunking,
        progress: &dyn Progress,
    ) -> std::result::Result<(Vec<ChunkId>, u64), StoreError> {
        if let Chunking::Aligned(size) = chunking {
            let mut ids = Vec::new();
            let mut total = 0u64;
            let mut buf = ALIGNED_BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
            let mut batch = self.pipeline.batch();
            let result = aligned_chunks(reader, size, &mut buf, |chunk| {
                total += chunk.len() as u64;
                progress.add(chunk.len() as u64);
                ids.push(self.store_chunk(chunk, &mut batch)?);
                Ok(())
            });
            ALIGNED_BUFFER.with(|b| *b.borrow_mut() = buf);
            let result = self.end_stream(batch, result);
            return match result {
                Ok(()) => Ok((ids, total)),
                Err(ChunkError::Read(e)) => Err(StoreError::Read(e)),
                Err(ChunkError::Consumer(e)) => Err(StoreError::Vault(e)),
            };
        }
        let mut ids = Vec::new();
        let mut total = 0u64;
        let mut buffer = CHUNK_BUFFER
            .with(|b| b.borrow_mut().take())
            .unwrap_or_else(|| ChunkBuffer::new(self.chunker));
        let mut batch = self.pipeline.batch();
        let result = buffer.chunks(
            reader,
            self.chunker,
            self.shared.keys.chunker_seed,
            |chunk| {
                total += chunk.len() as u64;
                progress.add(chunk.len() as u64);
                ids.push(self.store_chunk(chunk, &mut batch)?);
                Ok(())
            },
        );
        CHUNK_BUFFER.with(|b| *b.borrow_mut() = Some(buffer));
        match self.end_stream(batch, result) {
            Ok(()) => Ok((ids, total)),
            Err(ChunkError::Read(e)) => Err(StoreError::Read(e)),
            Err(ChunkError::Consumer(e)) => Err(StoreError::Vault(e)),
        }
    }

    /// Hands over what is left in a stream's batch, also when the stream failed: every chunk
    /// marked pending must reach a sealer, or another file naming it would point at nothing.
    fn end_stream(
        &self,
        batch: Batch,
        result: std::result::Result<(), ChunkError<Error>>,
    ) -> std::result::Result<(), ChunkError<Error>> {
        let flushed = if batch.is_empty() {
            Ok(())
        } else {
            self.hand_over(batch)
        };
        match (result, flushed) {
            (Ok(()), Err(e)) => Err(ChunkError::Consumer(e)),
            (result, _) => result,
        }
    }

    /// Marks chunks of an unchanged file as used by this version. False if any is not known to
    /// be stored (then the caller must read the file again).
    pub fn reuse(&self, ids: &[ChunkId]) -> bool {
        let known = lock(&self.shared.known);
        let mut indexes = HashSet::new();
        for id in ids {
            if matches!(known.get(id), Some(Known::Pending)) {
                continue;
            }
            match pipeline::indexes_for(&known, id) {
                Some((index, base_index)) => {
                    indexes.insert(index);
                    indexes.extend(base_index);
                }
                None => return false,
            }
        }
        drop(known);
        lock(&self.shared.used_indexes).extend(indexes);
        true
    }

    /// Records the metadata of the folder backed up as the version's root.
    pub fn set_root_node(&mut self, node: crate::format::tree::Node) {
        self.root_node = Some(node);
    }

    /// Records properties of the source in the version's manifest (for example what a
    /// PostgreSQL restore needs: LSNs, timeline, system identifier). Keys are namespaced by
    /// the source, e.g. `postgres.start_lsn`.
    pub fn set_properties(&mut self, properties: std::collections::BTreeMap<String, String>) {
        self.properties = properties;
    }

    /// Records where a PostgreSQL base backup's WAL replay starts, signed into its ledger entry
    /// (vaults of format 4 on), so that WAL retention can tell keylessly which streamed WAL no
    /// kept version needs (`history::wal_retention`).
    pub fn set_wal_start(&mut self, start: crate::history::ledger::WalStart) {
        self.wal_start = Some(start);
    }

    /// Waits for the sealers and uploaders; returns the first failure of any stage.
    fn drain(&mut self) -> Result<()> {
        self.pipeline.join(&self.shared);
        match lock(&self.shared.failure).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Completes the version: waits for every pack and index to be durable, then writes the
    /// manifest, then the ledger entry. Only then does the version exist.
    pub fn finish(
        mut self,
        kind: VersionKind,
        root: ChunkId,
        source: Vec<String>,
        mut stats: VersionStats,
    ) -> Result<Version> {
        self.drain()?;
        stats.new_chunks = self.shared.new_chunks.load(Ordering::Relaxed);
        stats.new_bytes_stored = self.shared.new_bytes_stored.load(Ordering::Relaxed);
        if !self.reuse(&[root]) {
            return Err(Error::invalid("the root tree was not stored"));
        }
        let indexes: Vec<ObjectId> = lock(&self.shared.used_indexes).iter().copied().collect();
        let body = ManifestBody {
            kind,
            root,
            captured_at_ns: self.captured_at_ns,
            completed_at_ns: now_unix_nanos(),
            host: hostname(),
            source,
            stats,
            root_node: self.root_node.take(),
            properties: std::mem::take(&mut self.properties),
        };
        let keys = &self.shared.keys;
        let site = self.vault.site();
        let bytes = manifest::encode(keys, indexes, &body);
        let manifest_id = ObjectId::of(&bytes);
        site.put(&layout::manifest(&keys.dataset, &manifest_id), &bytes)?;
        let event = Event::VersionAdded {
            manifest: manifest_id,
            kind,
            captured_at_ns: self.captured_at_ns,
            stats,
            // Programs of older formats would take WAL retention's collections for damage.
            wal_start: self.wal_start.filter(|_| {
                self.vault.config().format_version >= crate::format::config::WAL_RETENTION_SINCE
            }),
        };
        let mut attempt = 0;
        let record = loop {
            match ledger::append_ignoring(
                site.as_ref(),
                &self.signer,
                &keys.dataset,
                self.head.as_ref(),
                &self.rejected,
                event.clone(),
            ) {
                Ok(record) => break record,
                // Another entry landed since this session began. A deletion (a prune), a log
                // range or a key change does not conflict with this version: append after it.
                // Another version does: one writer per dataset.
                Err(Error::History { .. }) if attempt < 5 => {
                    attempt += 1;
                    let history = self.vault.history_full(&keys.dataset)?;
                    history.check_appendable(&keys.dataset)?;
                    let base = self.head.as_ref().map_or(0, |h| h.entry.seq);
                    let moved = history.records.len() as u64 > base
                        && history.records[..base as usize].last().map(|r| r.id)
                            == self.head.as_ref().map(|h| h.id);
                    let other_version = history.records
                        [base.min(history.records.len() as u64) as usize..]
                        .iter()
                        .any(|r| matches!(r.entry.event, Event::VersionAdded { .. }));
                    if !moved || other_version {
                        return Err(Error::History {
                            dataset: keys.dataset.clone(),
                            problem: format!(
                                "another writer added a version while this backup ran (this one \
                                 began at entry {base}); only one writer per dataset may run: \
                                 rerun the backup"
                            ),
                        });
                    }
                    self.head = history.records.last().cloned();
                    self.rejected = history.rejected_ids();
                }
                Err(e) => return Err(e),
            }
        };
        // A checkpoint of every head; the version is already durable, so a failure here is
        // a warning, not a lost backup. A sealing credential may not sign checkpoints: the
        // root's next operation (or a root-held writer's backup) writes one.
        match self
            .vault
            .may_checkpoint(&self.signer)
            .then(|| self.vault.write_checkpoint(&self.signer))
        {
            None => {}
            Some(Ok((_, left_out))) => lock(&self.warnings).extend(
                left_out
                    .into_iter()
                    .map(|e| format!("checkpoint leaves out a dataset: {e}")),
            ),
            Some(Err(e)) => lock(&self.warnings).push(format!("no checkpoint written: {e}")),
        }
        Ok(Version {
            dataset: keys.dataset.clone(),
            number: self.number,
            seq: record.entry.seq,
            ledger_id: record.id,
            manifest: manifest_id,
            kind,
            captured_at_ns: self.captured_at_ns,
            recorded_at_ns: record.entry.time_ns,
            stats,
        })
    }
}

impl Drop for BackupSession {
    fn drop(&mut self) {
        let _ = self.drain();
    }
}

/// Where a page's previous version is: what [`BackupSession::store_pages`] deltas against.
pub trait DeltaBases: Sync {
    /// The full blob to store page `page` (counted from 0) against, if any: the same page of
    /// the file's previous version, or that page's own base when it is a delta (depth 1).
    fn base_of(&self, page: usize) -> Option<ChunkId>;
    /// The plaintexts of full blobs named by [`DeltaBases::base_of`], each checked against its
    /// id, read together (a backup asks for up to [`PAGES_PER_BASE_READ`] at a time).
    fn read_bases(&self, bases: &HashSet<ChunkId>) -> Result<HashMap<ChunkId, Vec<u8>>>;
}

/// New pages whose bases [`BackupSession::store_pages`] reads in one go: one request per run
/// of nearby blobs of a pack instead of one per changed page (a GET each from an S3 site).
pub const PAGES_PER_BASE_READ: usize = 128;

/// A page new to the vault waiting for its base to be read.
struct WaitingPage {
    id: ChunkId,
    bytes: Vec<u8>,
    base: ChunkId,
    index: ObjectId,
}

/// Failure while storing a stream: the source or the vault.
#[derive(Debug)]
pub enum StoreError {
    /// Reading the source failed.
    Read(std::io::Error),
    /// Storing failed.
    Vault(Error),
}

/// An index object read and parsed (signature checked), body not yet opened.
struct ListedIndex {
    id: ObjectId,
    path: String,
    header: index::IndexHeader,
    bytes: Vec<u8>,
}

/// Reads the indexes of a dataset that a backup may deduplicate against, mapping chunk to index
/// object. Trusted are only indexes (a) signed by an active signer of the dataset at the head
/// this session starts from (this includes the indexes of this writer's own interrupted runs),
/// or (b) named in the plaintext header of the manifest of a live, accepted version; and only
/// when every pack they name is present. Everything else (unsigned, altered, foreign, signed by
/// a stranger or by a revoked signer and named by no live manifest) is ignored with a warning:
/// anyone holding the dataset's index key can seal an index body, and a lying index would make
/// the new version point at the wrong bytes (dedup poisoning).
///
/// Cost: every index object is read, as before; manifests are read only when an index signed by
/// a former signer is present, newest versions of that signer first, stopping once every such
/// index is found.
fn load_known_chunks(
    site: &dyn Site,
    vault: &Vault,
    history: &[Record],
    keys: &DatasetKeys,
    condemned: &HashSet<String>,
    warnings: &mut Vec<String>,
) -> Result<KnownChunks> {
    let dataset = &keys.dataset;
    // Condemned packs count as missing, and condemned indexes as absent: garbage collection
    // may delete them before this session's version is recorded.
    let packs: HashSet<ObjectId> = site
        .list(&layout::packs_prefix(dataset))?
        .iter()
        .filter(|i| !condemned.contains(&i.path))
        .filter_map(|i| layout::id_in_path(&i.path))
        .collect();
    let mut listed = site.list(&layout::index_prefix(dataset))?;
    listed.retain(|i| !condemned.contains(&i.path));
    let loaded: Vec<Result<ListedIndex>> = listed
        .par_iter()
        .map(|info| {
            let id = layout::id_in_path(&info.path)
                .ok_or_else(|| Error::corrupt(&info.path, "not named by an object id"))?;
            // Damaged, or listed yet held nowhere: an integrity error, ignored below.
            let bytes = crate::format::object::get_checked(site, &info.path, &id, "the listing")?;
            let (header, _) = index::decode_header(&info.path, &bytes)?;
            Ok(ListedIndex {
                id,
                path: info.path.clone(),
                header,
                bytes,
            })
        })
        .collect();
    // Trust indexes signed by a key that may add versions at this head.
    let active: HashSet<[u8; 32]> = vault
        .authority(dataset, history)
        .holders(crate::history::rights::Right::AddVersions)
        .into_iter()
        .collect();
    let former: HashSet<[u8; 32]> = ever_signers(vault, history)
        .into_iter()
        .filter(|k| !active.contains(k))
        .collect();
    let deleters = crate::engine::gc::deleters(vault);
    let ignored = |path: &str, why: &str| {
        format!("{path}: ignored for deduplication ({why}); its chunks will be stored again")
    };
    let mut trusted = Vec::new();
    let mut candidates = Vec::new();
    for result in loaded {
        match result {
            Ok(l) if l.header.dataset != *dataset => warnings.push(ignored(
                &l.path,
                &format!("an index of dataset {}", l.header.dataset),
            )),
            // Another key epoch: other chunk ids, nothing to dedup against.
            Ok(l) if l.header.key_id != keys.key_id() => {}
            Ok(l) if active.contains(&l.header.signer) => trusted.push(l),
            // A repack index of garbage collection, signed by a key allowed to delete.
            Ok(l) if !l.header.replaces.is_empty() && deleters.contains(&l.header.signer) => {
                trusted.push(l)
            }
            Ok(l) if former.contains(&l.header.signer) => candidates.push(l),
            Ok(l) => warnings.push(ignored(
                &l.path,
                &format!(
                    "signed by {}, which is not a signer of dataset {dataset}",
                    hex::encode(&l.header.signer[..8])
                ),
            )),
            Err(e) if e.is_integrity() => {
                warnings.push(format!("{e}; its chunks will be stored again"));
            }
            Err(e) => return Err(e),
        }
    }
    if !candidates.is_empty() {
        let wanted: HashSet<ObjectId> = candidates.iter().map(|l| l.id).collect();
        let signers: HashSet<[u8; 32]> = candidates.iter().map(|l| l.header.signer).collect();
        let named = named_by_live_manifests(site, dataset, history, &wanted, &signers);
        for l in candidates {
            if named.contains(&l.id) {
                trusted.push(l);
            } else {
                warnings.push(ignored(
                    &l.path,
                    &format!(
                        "signed by {}, no longer a signer of dataset {dataset}, and named by no \
                         live version",
                        hex::encode(&l.header.signer[..8])
                    ),
                ));
            }
        }
    }
    let mut known = KnownChunks::default();
    for l in trusted {
        if let Some(missing) = l.header.packs.iter().find(|p| !packs.contains(p)) {
            warnings.push(format!(
                "index {} names pack {} which is missing: its chunks will be stored again",
                l.id.short(),
                missing.short()
            ));
            continue;
        }
        match index::decode(keys, &l.path, &l.bytes) {
            Ok((_, entries)) => {
                for e in entries {
                    // A full copy is preferred: only it may serve as a delta's base.
                    if e.blob.base.is_none()
                        || !matches!(known.get(&e.blob.id), Some(Known::Stored(_, None)))
                    {
                        known.insert(e.blob.id, Known::Stored(l.id, e.blob.base));
                    }
                }
            }
            Err(e) if e.is_integrity() => {
                warnings.push(format!("{e}; its chunks will be stored again"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(known)
}

/// Every key that was ever allowed to sign `history`'s entries: the configured signers and the
/// keys added by accepted entries.
fn ever_signers(vault: &Vault, history: &[Record]) -> HashSet<[u8; 32]> {
    let mut keys: HashSet<[u8; 32]> = vault.config().signer_keys().into_iter().collect();
    for record in history {
        if let Event::SignerAdded { key, .. } = &record.entry.event {
            keys.insert(*key);
        }
    }
    keys
}

/// Which of `wanted` the manifests of live versions name (keyless: their plaintext headers).
/// Reads versions signed by `signers` first, newest first, then the others, and stops as soon
/// as every wanted index is found. A manifest that cannot be read names nothing (verify reports
/// it).
fn named_by_live_manifests(
    site: &dyn Site,
    dataset: &str,
    history: &[Record],
    wanted: &HashSet<ObjectId>,
    signers: &HashSet<[u8; 32]>,
) -> HashSet<ObjectId> {
    let signer_of: HashMap<u64, [u8; 32]> = history
        .iter()
        .map(|r| (r.entry.seq, r.entry.signer))
        .collect();
    let mut live: Vec<(bool, Version)> = crate::engine::vault::versions_in(dataset, history)
        .into_iter()
        .rev()
        .map(|v| {
            let theirs = signer_of.get(&v.seq).is_some_and(|s| signers.contains(s));
            (!theirs, v)
        })
        .collect();
    live.sort_by_key(|(others, _)| *others); // stable: newest first within each group
    let mut found = HashSet::new();
    for batch in live.chunks(64) {
        let named: Vec<Vec<ObjectId>> = batch
            .par_iter()
            .filter_map(|(_, v)| {
                let path = layout::manifest(dataset, &v.manifest);
                let bytes =
                    crate::format::object::get_checked(site, &path, &v.manifest, "a live version")
                        .ok()?;
                manifest::decode_header(&path, &bytes)
                    .ok()
                    .map(|(h, _)| h.indexes)
            })
            .collect();
        found.extend(named.into_iter().flatten().filter(|id| wanted.contains(id)));
        if found.len() == wanted.len() {
            break;
        }
    }
    found
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
