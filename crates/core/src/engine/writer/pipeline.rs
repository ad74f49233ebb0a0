//! The writer's pipeline behind [`super::BackupSession`]: producers (the callers' threads: read,
//! chunk, hash, dedup) hand *batches* of new chunks to a pool of sealer threads (compress,
//! encrypt into packs), which hand full packs to uploader threads (pack, then its index).
//!
//! Every queue is bounded, so memory stays flat whatever the source's size:
//!
//! - producers → sealers: at most [`QUEUED_BATCHES`] per worker, each at most [`BATCH_BYTES`]
//!   of chunks or one larger chunk (at most the chunker's maximum);
//! - sealers → uploaders: a rendezvous (a finished pack waits for a free uploader);
//! - emptied batch buffers go back to the producers through a free list of the same bound, so
//!   a backup does not fault in fresh pages for every megabyte it reads.
//!
//! Batches matter because PostgreSQL relation files are cut in 8 KiB pages: one channel message
//! per page kept the queue a few pages deep, so a producer descheduled for a millisecond left
//! both sealers waiting on an empty queue, and every page paid a wake-up. A batch carries up to
//! 1 MiB of pages in one buffer and one message.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_channel::{Receiver, Sender};

use crate::error::{Error, Result};
use crate::format::index;
use crate::format::layout;
use crate::format::pack::{BlobCompressor, BlobEntry, BlobKind, PackWriter};
use crate::id::{ChunkId, ObjectId};
use crate::keys::DatasetKeys;
use crate::site::Site;

/// Where a known chunk is.
#[derive(Clone, Copy)]
pub(super) enum Known {
    /// In an index object already on the site: as a full blob (`None`, which may serve as a
    /// delta's base), or as a delta against the given base.
    Stored(ObjectId, Option<ChunkId>),
    /// Handed to a sealer in this session (or in a producer's batch about to be handed over);
    /// its index will be one of this session's.
    Pending,
}

/// What a session knows of its dataset's chunks ([`Known`] per chunk), compactly: a number per
/// chunk (its index's, or pending) and the bases of deltas apart. A map of `Known` values (a
/// 32-byte index id and an optional base per chunk) held 51 MB for the full benchmark corpus
/// in an incremental backup; this holds about a third of it.
#[derive(Default)]
pub(super) struct KnownChunks {
    /// Per chunk: the number of the index that maps it (see `indexes`), or [`PENDING`].
    chunks: HashMap<ChunkId, u32>,
    /// The base of each chunk stored as a delta.
    bases: HashMap<ChunkId, ChunkId>,
    /// Index ids by number.
    indexes: Vec<ObjectId>,
    /// Index numbers by id.
    numbers: HashMap<ObjectId, u32>,
}

/// The number of a chunk handed to a sealer in this session.
const PENDING: u32 = u32::MAX;

impl KnownChunks {
    /// What is known of chunk `id`.
    pub(super) fn get(&self, id: &ChunkId) -> Option<Known> {
        let number = *self.chunks.get(id)?;
        if number == PENDING {
            return Some(Known::Pending);
        }
        let index = *self.indexes.get(number as usize)?;
        Some(Known::Stored(index, self.bases.get(id).copied()))
    }

    /// Records what is known of chunk `id`.
    pub(super) fn insert(&mut self, id: ChunkId, known: Known) {
        let (number, base) = match known {
            Known::Pending => (PENDING, None),
            Known::Stored(index, base) => {
                let next = self.indexes.len() as u32;
                let number = *self.numbers.entry(index).or_insert(next);
                if number == next {
                    self.indexes.push(index);
                }
                (number, base)
            }
        };
        self.chunks.insert(id, number);
        match base {
            Some(base) => self.bases.insert(id, base),
            None => self.bases.remove(&id),
        };
    }
}

/// The indexes a version must name to use stored chunk `id`: the one that maps it, and for a
/// delta the one that maps its base as a full blob. None when `id` is not stored, or is a delta
/// whose base is not (any more) known as a full blob: then it must be stored again.
pub(super) fn indexes_for(
    known: &KnownChunks,
    id: &ChunkId,
) -> Option<(ObjectId, Option<ObjectId>)> {
    match known.get(id)? {
        Known::Stored(index, None) => Some((index, None)),
        Known::Stored(index, Some(base)) => match known.get(&base)? {
            Known::Stored(base_index, None) => Some((index, Some(base_index))),
            _ => None,
        },
        Known::Pending => None,
    }
}

/// Bytes of chunks a producer gathers before handing them to the sealers in one message
/// (a chunk larger than this goes alone).
pub const BATCH_BYTES: usize = 1 << 20;
/// Batches that may wait in the queue to the sealers, per sealer thread.
pub const QUEUED_BATCHES: usize = 2;

/// One blob of a batch: its kind, id and length, and for a page that may be stored as a delta
/// its base's chunk id, length and index (the base's plaintext follows the blob's bytes).
struct BatchBlob {
    kind: BlobKind,
    id: ChunkId,
    len: usize,
    base: Option<(ChunkId, usize, ObjectId)>,
}

/// New chunks on their way to a sealer: their bytes back to back in one buffer.
pub(super) struct Batch {
    data: Vec<u8>,
    blobs: Vec<BatchBlob>,
}

impl Batch {
    /// One blob whose bytes the batch takes as they are (no copy).
    pub(super) fn single(kind: BlobKind, id: ChunkId, data: Vec<u8>) -> Self {
        let len = data.len();
        Batch {
            data,
            blobs: vec![BatchBlob {
                kind,
                id,
                len,
                base: None,
            }],
        }
    }

    /// True when `len` more bytes would take a non-empty batch past [`BATCH_BYTES`].
    pub(super) fn full_for(&self, len: usize) -> bool {
        !self.blobs.is_empty() && self.data.len() + len > BATCH_BYTES
    }

    /// Appends a copy of one chunk.
    pub(super) fn push(&mut self, kind: BlobKind, id: ChunkId, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
        self.blobs.push(BatchBlob {
            kind,
            id,
            len: bytes.len(),
            base: None,
        });
    }

    /// Appends a copy of one data chunk and of the full blob it may be stored against as a
    /// delta (the sealer keeps the smaller of the delta and the chunk compressed alone), with
    /// the index that maps that base (the version's manifest names it when a delta is kept).
    pub(super) fn push_with_base(
        &mut self,
        id: ChunkId,
        bytes: &[u8],
        base: (ChunkId, ObjectId),
        plain: &[u8],
    ) {
        self.data.extend_from_slice(bytes);
        self.data.extend_from_slice(plain);
        self.blobs.push(BatchBlob {
            kind: BlobKind::Data,
            id,
            len: bytes.len(),
            base: Some((base.0, plain.len(), base.1)),
        });
    }

    /// True when no chunk was added.
    pub(super) fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
}

/// What the session's threads share.
pub(super) struct Shared {
    pub(super) site: Arc<dyn Site>,
    pub(super) keys: Arc<DatasetKeys>,
    /// Signs this session's index objects (the key that signs its ledger entry).
    pub(super) signer: ed25519_dalek::SigningKey,
    pub(super) pack_target: usize,
    pub(super) known: Mutex<KnownChunks>,
    pub(super) used_indexes: Mutex<BTreeSet<ObjectId>>,
    pub(super) failure: Mutex<Option<Error>>,
    pub(super) failed: AtomicBool,
    pub(super) new_chunks: AtomicU64,
    pub(super) new_bytes_stored: AtomicU64,
    /// New chunks stored as deltas.
    pub(super) new_deltas: AtomicU64,
    /// Batches handed to the sealers (for tests and measurements).
    pub(super) handoffs: AtomicU64,
    /// Bytes of chunks handed over and not yet sealed, and the most there ever were.
    pub(super) queued_bytes: AtomicU64,
    pub(super) peak_queued_bytes: AtomicU64,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a worker panicked; its data is still a consistent map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Remembers the first failure of any stage; later ones are consequences of it.
    pub(super) fn fail(&self, error: Error) {
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            *slot = Some(error);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// An error once any stage failed (the failure itself is reported by `finish`).
    pub(super) fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            let first = lock(&self.failure)
                .as_ref()
                .map(|e| e.to_string())
                .unwrap_or_default();
            Err(Error::invalid(format!(
                "backup stopped: a pack could not be stored: {first}"
            )))
        } else {
            Ok(())
        }
    }

    /// Stores one sealed pack, then its index object; marks its chunks as stored.
    fn upload(&self, bytes: Vec<u8>, entries: Vec<BlobEntry>) -> Result<()> {
        let pack_id = ObjectId::of(&bytes);
        let dataset = &self.keys.dataset;
        self.site.put(&layout::pack(dataset, &pack_id), &bytes)?;
        let stored: u64 = bytes.len() as u64;
        drop(bytes);
        let described = (pack_id, entries);
        let index_bytes = index::encode(&self.keys, &self.signer, std::slice::from_ref(&described));
        let entries = &described.1;
        let index_id = ObjectId::of(&index_bytes);
        self.site
            .put(&layout::index(dataset, &index_id), &index_bytes)?;
        {
            let mut known = lock(&self.known);
            for e in entries {
                known.insert(e.id, Known::Stored(index_id, e.base));
            }
        }
        lock(&self.used_indexes).insert(index_id);
        self.new_chunks
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        self.new_bytes_stored.fetch_add(stored, Ordering::Relaxed);
        Ok(())
    }

    /// Compresses and encrypts batches of blobs into packs; hands each full pack to the
    /// uploaders and each emptied batch buffer back to the producers.
    fn sealer(&self, batches: Receiver<Batch>, uploads: Sender<PackWriter>, free: Sender<Vec<u8>>) {
        let mut compressor = match BlobCompressor::new() {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        let mut pack: Option<PackWriter> = None;
        for batch in batches {
            let bytes = batch.data.len() as u64;
            if !self.failed.load(Ordering::Relaxed) {
                self.seal(&mut compressor, &mut pack, &batch, &uploads);
            } // else: drain so producers never block
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            let mut data = batch.data;
            if (BATCH_BYTES / 2..=2 * BATCH_BYTES).contains(&data.capacity()) {
                data.clear();
                let _ = free.try_send(data);
            }
        }
        // Hand over what is left even after a failure elsewhere: it is progress for a rerun.
        if let Some(last) = pack.take().filter(|p| !p.is_empty()) {
            let _ = uploads.send(last);
        }
    }

    /// Seals one batch's blobs, in order, into the sealer's current pack.
    fn seal(
        &self,
        compressor: &mut BlobCompressor,
        pack: &mut Option<PackWriter>,
        batch: &Batch,
        uploads: &Sender<PackWriter>,
    ) {
        let mut at = 0;
        for blob in &batch.blobs {
            let raw = &batch.data[at..at + blob.len];
            at += blob.len;
            let writer = pack
                .get_or_insert_with(|| PackWriter::new(&self.keys, self.pack_target + PACK_SLACK));
            let added = match blob.base {
                Some((base, base_len, base_index)) => {
                    let plain = &batch.data[at..at + base_len];
                    at += base_len;
                    writer
                        .add_data(compressor, blob.id, raw, Some((base, plain)))
                        .map(|(_, kind)| {
                            if kind == BlobKind::Delta {
                                self.new_deltas.fetch_add(1, Ordering::Relaxed);
                                // Readers find the base through the version's own indexes.
                                lock(&self.used_indexes).insert(base_index);
                            }
                        })
                }
                None => writer.add(compressor, blob.kind, blob.id, raw).map(|_| ()),
            };
            if let Err(e) = added {
                return self.fail(e);
            }
            if writer.len() >= self.pack_target {
                if let Some(full) = pack.take() {
                    if uploads.send(full).is_err() {
                        return self.fail(Error::invalid("pack uploaders stopped"));
                    }
                }
            }
        }
    }

    /// Stores finished packs and their indexes.
    fn uploader(&self, packs: Receiver<PackWriter>) {
        for pack in packs {
            let (bytes, entries) = pack.finish();
            if let Err(e) = self.upload(bytes, entries) {
                self.fail(e);
            }
        }
    }
}

/// Room in a pack's buffer beyond its target size: one largest chunk and its framing.
const PACK_SLACK: usize = 9 * 1024 * 1024;

/// The running sealer and uploader threads and the queues into them.
pub(super) struct Pipeline {
    batches: Option<Sender<Batch>>,
    free: Receiver<Vec<u8>>,
    sealers: Vec<std::thread::JoinHandle<()>>,
    uploaders: Vec<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    /// Starts `workers` sealers and `workers` uploaders.
    pub(super) fn start(shared: &Arc<Shared>, workers: usize) -> Result<Self> {
        let (tx, rx) = crossbeam_channel::bounded::<Batch>(workers * QUEUED_BATCHES);
        let (free_tx, free_rx) = crossbeam_channel::bounded::<Vec<u8>>(workers * QUEUED_BATCHES);
        // A rendezvous: a finished pack waits for a free uploader instead of in a queue, so at
        // most `workers` packs are being sealed and `workers` uploaded (bounded memory).
        let (pack_tx, pack_rx) = crossbeam_channel::bounded::<PackWriter>(0);
        let mut pipeline = Pipeline {
            batches: Some(tx),
            free: free_rx,
            sealers: Vec::with_capacity(workers),
            uploaders: Vec::with_capacity(workers),
        };
        for i in 0..workers {
            let (worker, rx, pack_tx, free_tx) =
                (shared.clone(), rx.clone(), pack_tx.clone(), free_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("sealer-{i}"))
                .spawn(move || worker.sealer(rx, pack_tx, free_tx))
                .map_err(|e| Error::io("starting sealer threads", e))?;
            pipeline.sealers.push(handle);
            let (worker, pack_rx) = (shared.clone(), pack_rx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("uploader-{i}"))
                .spawn(move || worker.uploader(pack_rx))
                .map_err(|e| Error::io("starting uploader threads", e))?;
            pipeline.uploaders.push(handle);
        }
        Ok(pipeline)
    }

    /// An empty batch, in a buffer a sealer gave back when there is one.
    pub(super) fn batch(&self) -> Batch {
        Batch {
            data: self
                .free
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(BATCH_BYTES)),
            blobs: Vec::new(),
        }
    }

    /// Hands a batch to the sealers, waiting while the queue is full. False once the sealers
    /// are gone (the session finished or failed).
    pub(super) fn send(&self, shared: &Shared, batch: Batch) -> bool {
        let Some(tx) = self.batches.as_ref() else {
            return false;
        };
        let bytes = batch.data.len() as u64;
        let queued = shared.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        shared
            .peak_queued_bytes
            .fetch_max(queued, Ordering::Relaxed);
        shared.handoffs.fetch_add(1, Ordering::Relaxed);
        if tx.send(batch).is_err() {
            shared.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Closes the queue and waits for every sealer, then every uploader; a panicked worker
    /// is recorded as the session's failure.
    pub(super) fn join(&mut self, shared: &Shared) {
        self.batches = None;
        // Sealers first: when the last one ends, the uploaders' channel closes.
        for handle in self
            .sealers
            .drain(..)
            .chain(std::mem::take(&mut self.uploaders))
        {
            if handle.join().is_err() {
                shared.fail(Error::invalid("a backup worker thread panicked"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compact table answers what the map of [`Known`] values did: an index per chunk
    /// (shared numbers for chunks of one index), a delta's base, pending chunks, and a chunk
    /// stored again as a full blob forgetting its old base.
    #[test]
    fn known_chunks_answer_as_a_map_of_known_values() {
        let chunk = |n: u8| ChunkId([n; 32]);
        let (one, two) = (ObjectId::of(b"index 1"), ObjectId::of(b"index 2"));
        let mut known = KnownChunks::default();
        known.insert(chunk(1), Known::Stored(one, None));
        known.insert(chunk(2), Known::Stored(two, Some(chunk(1))));
        known.insert(chunk(3), Known::Stored(one, None));
        known.insert(chunk(4), Known::Pending);
        assert!(matches!(known.get(&chunk(1)), Some(Known::Stored(i, None)) if i == one));
        assert!(
            matches!(known.get(&chunk(2)), Some(Known::Stored(i, Some(b))) if i == two && b == chunk(1))
        );
        assert!(matches!(known.get(&chunk(3)), Some(Known::Stored(i, None)) if i == one));
        assert!(matches!(known.get(&chunk(4)), Some(Known::Pending)));
        assert!(known.get(&chunk(5)).is_none());
        assert_eq!(known.indexes.len(), 2);
        assert_eq!(indexes_for(&known, &chunk(2)), Some((two, Some(one))));
        assert_eq!(indexes_for(&known, &chunk(4)), None);

        // Stored again whole: no base any more; a pending chunk stored.
        known.insert(chunk(2), Known::Stored(one, None));
        known.insert(chunk(4), Known::Stored(two, None));
        assert_eq!(indexes_for(&known, &chunk(2)), Some((one, None)));
        assert_eq!(indexes_for(&known, &chunk(4)), Some((two, None)));
        assert!(known.bases.is_empty());
    }
}
