//! Filling a restore's files from blobs that arrive in pack order, not file order, from several
//! threads at once.
//!
//! - A file is created (under its temporary name, [`NewFile`]) when its first blob arrives, on
//!   the thread that read that blob: creating thousands of files is spread over the threads
//!   reading packs instead of done by one thread before any pack is read. Files that get no
//!   blob (empty ones) are created by [`Fills::finish`].
//! - Its descriptors stay open while it is being filled (at most [`MAX_OPEN`] files at once;
//!   beyond that a file is reopened by its temporary name, with `O_NOFOLLOW`, for each blob).
//! - A blob that continues the previous one of the same file (the 8 KiB pages of a relation
//!   file, stored in order) is gathered with it into one write of up to [`RUN`] bytes (all
//!   gathered bytes together stay under [`BUFFERED`]).
//! - Files of [`DIRECT_FROM`] bytes or more are written past the page cache (`O_DIRECT`): every
//!   whole [`ALIGN`]-byte block of a write goes straight to the disk; the bytes of a block that
//!   a write covers only in part wait (as "edges", a few KiB each) for the rest of the block,
//!   which another blob brings, and the block is written whole when complete. The file's last
//!   block, when not whole, goes through the page cache. A file system that refuses `O_DIRECT`
//!   (at open or at a write) gets plain writes for that file and every later one: the same bytes.
//!
//! No file is ever synced here (a restore's durability is unchanged: the caller renames the
//! files into place; `O_DIRECT` only sends bytes to the disk sooner).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use embassy_core::fsutil::{NewFile, PendingFile, WRITE_SLICE};
use embassy_core::{Error, Result};
use rayon::prelude::*;

/// Block size of direct writes: offsets, lengths and buffers are multiples of it.
pub(super) const ALIGN: u64 = 4096;
/// Most bytes gathered for one write.
pub(super) const RUN: usize = WRITE_SLICE;
/// Most bytes gathered across all files at once.
const BUFFERED: usize = 4 * RUN;
/// Most files holding open descriptors at once.
pub(super) const MAX_OPEN: usize = 256;
/// Files at least this big are written with `O_DIRECT` (smaller ones are mostly one small
/// write, for which a synchronous trip to the disk costs more than the copy it saves).
pub(super) const DIRECT_FROM: u64 = 1024 * 1024;

/// Whether to try `O_DIRECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direct {
    /// Never: every write goes through the page cache.
    Off,
    /// For files of [`DIRECT_FROM`] bytes or more, where the file system takes it.
    Try,
    /// Tests: the file system refuses `O_DIRECT` at open (`EINVAL`).
    #[cfg(test)]
    RefusedAtOpen,
    /// Tests: the file system takes `O_DIRECT` at open and refuses the writes (the kernel's
    /// real `EINVAL`, from a misaligned buffer).
    #[cfg(test)]
    RefusedAtWrite,
}

/// The files of one restore being filled.
pub(super) struct Fills<'a> {
    slots: Vec<Option<Slot<'a>>>,
    direct: Direct,
    /// Set once the file system refused `O_DIRECT`: later files do not try it.
    refused: AtomicBool,
    buffered: AtomicUsize,
    open: AtomicUsize,
    max_open: usize,
    pool: Mutex<Vec<Vec<u8>>>,
    /// Bytes written with `O_DIRECT` (for tests and measurements).
    direct_bytes: AtomicU64,
    /// Write system calls made (for tests and measurements).
    writes: AtomicU64,
}

struct Slot<'a> {
    path: &'a Path,
    size: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Option<PendingFile>,
    plain: Option<Arc<File>>,
    direct: Option<Arc<File>>,
    /// Whether this file is written with `O_DIRECT` (decided at creation, cleared on refusal).
    use_direct: bool,
    /// Bytes not yet handed over (written, gathered or waiting in an edge).
    left: u64,
    /// Gathered bytes starting at `run_at`.
    run_at: u64,
    run: Vec<u8>,
    /// Parts of blocks waiting for the rest of the block: block number → (offset, bytes).
    edges: HashMap<u64, Vec<(u64, Vec<u8>)>>,
}

/// One write to make once the file's lock is released.
struct Job<'d> {
    at: u64,
    bytes: Bytes<'d>,
    direct: bool,
}

enum Bytes<'d> {
    Borrowed(&'d [u8]),
    Owned(Vec<u8>),
}

impl Bytes<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Borrowed(b) => b,
            Bytes::Owned(v) => v,
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a> Fills<'a> {
    /// Prepares to fill `files` (final path and size; `None` for a file left as it is).
    pub(super) fn new(files: Vec<Option<(&'a Path, u64)>>, direct: Direct) -> Self {
        Fills {
            slots: files
                .into_iter()
                .map(|f| {
                    f.map(|(path, size)| Slot {
                        path,
                        size,
                        state: Mutex::new(State {
                            left: size,
                            ..State::default()
                        }),
                    })
                })
                .collect(),
            direct,
            refused: AtomicBool::new(false),
            buffered: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max_open: MAX_OPEN,
            pool: Mutex::new(Vec::new()),
            direct_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    /// Bytes written with `O_DIRECT` so far.
    #[cfg(test)]
    pub(super) fn direct_bytes(&self) -> u64 {
        self.direct_bytes.load(Ordering::Relaxed)
    }

    /// Write system calls made so far.
    #[cfg(test)]
    pub(super) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Files holding descriptors now.
    #[cfg(test)]
    pub(super) fn open_files(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(super) fn set_max_open(&mut self, max: usize) {
        self.max_open = max;
    }

    fn slot(&self, i: usize) -> Result<&Slot<'a>> {
        self.slots
            .get(i)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::invalid(format!("restore: no file number {i} to fill")))
    }

    /// Creates the file if it is not yet, and opens its descriptors if they are closed.
    /// Refusing `O_DIRECT` at open adds the edges' bytes to `jobs` (plain writes).
    fn open_slot<'d>(
        &self,
        slot: &Slot<'a>,
        st: &mut State,
        jobs: &mut Vec<Job<'d>>,
    ) -> Result<()> {
        let path = slot.path;
        if st.pending.is_none() {
            let file = NewFile::beside(path)
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            file.file()
                .set_len(slot.size)
                .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
            let plain = file
                .file()
                .try_clone()
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            st.pending = Some(file.into_pending());
            st.plain = Some(Arc::new(plain));
            st.use_direct = self.direct != Direct::Off
                && slot.size >= DIRECT_FROM
                && !self.refused.load(Ordering::Relaxed);
            self.open.fetch_add(1, Ordering::Relaxed);
        } else if st.plain.is_none() {
            let temp = st.pending.as_ref().map(PendingFile::temp_path);
            let plain = temp
                .map(|t| {
                    OpenOptions::new()
                        .write(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                        .open(t)
                })
                .transpose()
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            st.plain = plain.map(Arc::new);
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        if st.use_direct && st.direct.is_none() {
            let temp = st.pending.as_ref().map(PendingFile::temp_path);
            let opened = match (self.direct, temp) {
                #[cfg(test)]
                (Direct::RefusedAtOpen, _) => Err(io::Error::from_raw_os_error(libc::EINVAL)),
                (_, Some(t)) => OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_DIRECT)
                    .open(t),
                (_, None) => Err(io::Error::from(ErrorKind::NotFound)),
            };
            match opened {
                Ok(f) => st.direct = Some(Arc::new(f)),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    self.refused.store(true, Ordering::Relaxed);
                    self.fall_back(st, jobs);
                }
                Err(e) => return Err(Error::io(format!("opening {}", slot.path.display()), e)),
            }
        }
        Ok(())
    }

    /// Plain writes for this file from now on: what waits in edges is written as it is.
    fn fall_back<'d>(&self, st: &mut State, jobs: &mut Vec<Job<'d>>) {
        st.use_direct = false;
        st.direct = None;
        for (_, pieces) in st.edges.drain() {
            for (at, bytes) in pieces {
                jobs.push(Job {
                    at,
                    bytes: Bytes::Owned(bytes),
                    direct: false,
                });
            }
        }
    }

    /// Writes `data` at `offset` of file number `i`.
    pub(super) fn put(&self, i: usize, offset: u64, data: &[u8]) -> Result<()> {
        let slot = self.slot(i)?;
        let path = slot.path;
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > slot.size) {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!(
                    "a chunk at byte {offset} ends past the {} bytes the tree says",
                    slot.size
                ),
            ));
        }
        if data.is_empty() {
            // Nothing to write (the file itself is made by `finish` if no blob reaches it).
            return Ok(());
        }
        let mut jobs: Vec<Job> = Vec::with_capacity(4);
        let (plain, direct) = {
            let mut st = lock(&slot.state);
            self.open_slot(slot, &mut st, &mut jobs)?;
            st.left = st.left.checked_sub(len).ok_or_else(|| {
                Error::corrupt(
                    path.display().to_string(),
                    "its chunks hold more bytes than the tree says",
                )
            })?;
            let mut out: Vec<(u64, Bytes)> = Vec::with_capacity(2);
            let continues = !st.run.is_empty()
                && st.run_at + st.run.len() as u64 == offset
                && st.run.len() + data.len() <= RUN;
            if continues {
                st.run.extend_from_slice(data);
                self.buffered.fetch_add(data.len(), Ordering::Relaxed);
                if st.run.len() >= RUN || st.left == 0 {
                    out.push(self.take_run(&mut st));
                }
            } else {
                if !st.run.is_empty() {
                    out.push(self.take_run(&mut st));
                }
                let room = self.buffered.load(Ordering::Relaxed) + data.len() <= BUFFERED;
                if data.len() * 2 >= RUN || st.left == 0 || !room {
                    out.push((offset, Bytes::Borrowed(data)));
                } else {
                    st.run = self.buffer();
                    st.run_at = offset;
                    st.run.extend_from_slice(data);
                    self.buffered.fetch_add(data.len(), Ordering::Relaxed);
                }
            }
            for (at, bytes) in out {
                if st.use_direct {
                    self.split(slot.size, &mut st, at, bytes, &mut jobs);
                } else {
                    jobs.push(Job {
                        at,
                        bytes,
                        direct: false,
                    });
                }
            }
            let handles = (st.plain.clone(), st.direct.clone());
            if st.left == 0 || self.open.load(Ordering::Relaxed) > self.max_open {
                st.plain = None;
                st.direct = None;
                self.open.fetch_sub(1, Ordering::Relaxed);
            }
            handles
        };
        let plain = plain.ok_or_else(|| {
            Error::io(
                format!("writing {}", path.display()),
                io::Error::from(ErrorKind::NotFound),
            )
        })?;
        for job in jobs {
            self.run_job(slot, &plain, direct.as_deref(), job)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        Ok(())
    }

    fn take_run<'d>(&self, st: &mut State) -> (u64, Bytes<'d>) {
        let run = std::mem::take(&mut st.run);
        self.buffered.fetch_sub(run.len(), Ordering::Relaxed);
        (st.run_at, Bytes::Owned(run))
    }

    fn buffer(&self) -> Vec<u8> {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RUN))
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() >= RUN {
            buf.clear();
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < 4 {
                pool.push(buf);
            }
        }
    }

    /// Splits a write of a direct file into its whole blocks (one direct job) and the parts of
    /// blocks it covers only in part (kept as edges; a block whose edges are complete becomes a
    /// job of its own: direct when whole, plain when it is the file's shorter last block).
    fn split<'d>(
        &self,
        size: u64,
        st: &mut State,
        at: u64,
        bytes: Bytes<'d>,
        jobs: &mut Vec<Job<'d>>,
    ) {
        let data = bytes.as_slice();
        let end = at + data.len() as u64;
        let first_whole = at.div_ceil(ALIGN) * ALIGN;
        let last_whole = end / ALIGN * ALIGN;
        // The part of the first block before `first_whole`, and of the last one after
        // `last_whole` (a write within one or two blocks may have only these).
        let mut partial: Vec<(u64, u64)> = Vec::with_capacity(2);
        let head_end = first_whole.min(end);
        if at < head_end {
            partial.push((at, head_end));
        }
        let tail_start = last_whole.max(head_end);
        if tail_start < end {
            partial.push((tail_start, end));
        }
        for &(from, to) in &partial {
            let block = from / ALIGN;
            let piece = data[(from - at) as usize..(to - at) as usize].to_vec();
            let pieces = st.edges.entry(block).or_default();
            pieces.push((from, piece));
            let need = size.min((block + 1) * ALIGN) - block * ALIGN;
            let have: u64 = pieces.iter().map(|(_, p)| p.len() as u64).sum();
            if have == need {
                let mut pieces = st.edges.remove(&block).unwrap_or_default();
                pieces.sort_by_key(|(o, _)| *o);
                let whole: Vec<u8> = pieces.into_iter().flat_map(|(_, p)| p).collect();
                jobs.push(Job {
                    at: block * ALIGN,
                    direct: need == ALIGN,
                    bytes: Bytes::Owned(whole),
                });
            }
        }
        if first_whole < last_whole {
            let (from, to) = ((first_whole - at) as usize, (last_whole - at) as usize);
            let bytes = match bytes {
                Bytes::Borrowed(b) => Bytes::Borrowed(&b[from..to]),
                Bytes::Owned(mut v) if from == 0 => {
                    v.truncate(to);
                    Bytes::Owned(v)
                }
                Bytes::Owned(v) => Bytes::Owned(v[from..to].to_vec()),
            };
            jobs.push(Job {
                at: first_whole,
                bytes,
                direct: true,
            });
        }
    }

    fn run_job(
        &self,
        slot: &Slot<'a>,
        plain: &File,
        direct: Option<&File>,
        job: Job,
    ) -> io::Result<()> {
        let bytes = job.bytes.as_slice();
        let mut done = false;
        if let (true, Some(file)) = (job.direct, direct) {
            match self.write_direct(file, bytes, job.at) {
                Ok(()) => done = true,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // Refused: this file (and later ones) through the page cache.
                    self.refused.store(true, Ordering::Relaxed);
                    let mut more = Vec::new();
                    self.fall_back(&mut lock(&slot.state), &mut more);
                    for j in more {
                        self.write_plain(plain, j.bytes.as_slice(), j.at)?;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if !done {
            self.write_plain(plain, bytes, job.at)?;
        }
        if let Bytes::Owned(v) = job.bytes {
            self.give_back(v);
        }
        Ok(())
    }

    fn write_plain(&self, file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
        let mut at = at;
        for s in bytes.chunks(WRITE_SLICE) {
            file.write_all_at(s, at)?;
            self.writes.fetch_add(1, Ordering::Relaxed);
            at += s.len() as u64;
        }
        Ok(())
    }

    /// Writes whole blocks past the page cache, from this thread's aligned buffer.
    fn write_direct(&self, file: &File, bytes: &[u8], at: u64) -> io::Result<()> {
        ALIGNED.with(|cell| {
            let mut buf = cell.borrow_mut();
            let mut at = at;
            for s in bytes.chunks(RUN) {
                let room = buf.room(s.len());
                #[cfg(test)]
                let room = if self.direct == Direct::RefusedAtWrite {
                    &mut room[1..]
                } else {
                    room
                };
                let room = &mut room[..s.len()];
                room.copy_from_slice(s);
                file.write_all_at(room, at)?;
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.direct_bytes
                    .fetch_add(s.len() as u64, Ordering::Relaxed);
                at += s.len() as u64;
            }
            Ok(())
        })
    }

    /// Creates the files no blob reached (empty ones), checks that every file got all its
    /// bytes, and returns them in order (`None` for files left as they were), to be renamed
    /// into place.
    pub(super) fn finish(self) -> Result<Vec<Option<PendingFile>>> {
        self.slots
            .par_iter()
            .map(|slot| {
                let Some(slot) = slot else { return Ok(None) };
                let mut st = lock(&slot.state);
                if st.pending.is_none() {
                    self.open_slot(slot, &mut st, &mut Vec::new())?;
                }
                if st.left != 0 || !st.run.is_empty() || !st.edges.is_empty() {
                    return Err(Error::corrupt(
                        slot.path.display().to_string(),
                        format!("{} of its bytes were never read", st.left),
                    ));
                }
                if st.plain.take().is_some() {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
                st.direct = None;
                Ok(st.pending.take())
            })
            .collect()
    }
}

/// A buffer aligned to [`ALIGN`] holding up to [`RUN`] bytes.
struct Aligned {
    store: Vec<u8>,
}

impl Aligned {
    /// `len` (at most [`RUN`]) bytes of the buffer, starting on an aligned address (plus one
    /// spare block for tests that misalign it on purpose).
    fn room(&mut self, len: usize) -> &mut [u8] {
        let align = ALIGN as usize;
        if self.store.len() < RUN + 2 * align {
            self.store = vec![0u8; RUN + 2 * align];
        }
        let start = self.store.as_ptr().align_offset(align).min(align);
        &mut self.store[start..start + len.min(RUN) + align]
    }
}

thread_local! {
    static ALIGNED: RefCell<Aligned> = const { RefCell::new(Aligned { store: Vec::new() }) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::seq::SliceRandom;
    use rand::SeedableRng;

    fn bytes_of(size: u64, seed: u64) -> Vec<u8> {
        (0..size)
            .map(|j| ((j * 31 + seed * 7) % 251) as u8)
            .collect()
    }

    /// Cuts `size` bytes into pieces: 8 KiB pages for the first third, then uneven pieces
    /// (odd sizes, some smaller than a block, some larger than a run).
    fn pieces(size: u64) -> Vec<(u64, u64)> {
        let sizes = [
            8192, 8192, 3001, 1, 4095, 70_000, 4097, 1_500_000, 12_345, 8192,
        ];
        let mut out = Vec::new();
        let mut at = 0;
        let mut k = 0;
        while at < size {
            let want = if at < size / 3 {
                8192
            } else {
                sizes[k % sizes.len()]
            };
            let len = want.min(size - at);
            out.push((at, len));
            at += len;
            k += 1;
        }
        out
    }

    fn takes_direct(dir: &Path) -> bool {
        let path = dir.join("probe");
        std::fs::write(&path, b"").unwrap();
        let ok = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .is_ok();
        std::fs::remove_file(&path).unwrap();
        ok
    }

    /// Files of every size around the block, run and direct-write edges, their blobs given in
    /// shuffled order from two threads, come back byte for byte, with `O_DIRECT` used where
    /// the file system takes it and plain writes where it refuses it at open or at a write.
    #[test]
    fn shuffled_blobs_of_every_size_around_block_edges_come_back_whole() {
        let a = ALIGN;
        let sizes = [
            0,
            1,
            a - 1,
            a,
            a + 1,
            2 * a - 1,
            8192,
            8193,
            RUN as u64 - 1,
            RUN as u64,
            RUN as u64 + 1,
            DIRECT_FROM - 1,
            DIRECT_FROM + a - 1,
            DIRECT_FROM + a + 1,
            3 * RUN as u64 + 12_345,
            5 * RUN as u64,
        ];
        let dir = tempfile::tempdir().unwrap();
        let direct_works = takes_direct(dir.path());
        assert!(
            direct_works,
            "the test folder's file system refuses O_DIRECT: run the tests on ext4 or xfs"
        );
        for mode in [
            Direct::Try,
            Direct::Off,
            Direct::RefusedAtOpen,
            Direct::RefusedAtWrite,
        ] {
            let paths: Vec<_> = (0..sizes.len())
                .map(|i| dir.path().join(format!("{mode:?}-{i}")))
                .collect();
            let contents: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &s)| bytes_of(s, i as u64))
                .collect();
            let fills = Fills::new(
                paths
                    .iter()
                    .zip(&sizes)
                    .map(|(p, &s)| Some((p.as_path(), s)))
                    .collect(),
                mode,
            );
            let mut work: Vec<(usize, u64, u64)> = sizes
                .iter()
                .enumerate()
                .flat_map(|(i, &s)| pieces(s).into_iter().map(move |(at, len)| (i, at, len)))
                .collect();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            work.shuffle(&mut rng);
            // Keep some runs of consecutive pages in order, as packs hold them.
            work.sort_by_key(|&(i, at, _)| (at / (64 * 8192) + i as u64) % 5);
            work.par_iter().with_max_len(1).for_each(|&(i, at, len)| {
                let c = &contents[i];
                fills
                    .put(i, at, &c[at as usize..(at + len) as usize])
                    .unwrap();
            });
            let direct_bytes = fills.direct_bytes();
            for pending in fills.finish().unwrap() {
                pending.unwrap().persist().unwrap();
            }
            for (i, path) in paths.iter().enumerate() {
                let back = std::fs::read(path).unwrap();
                assert!(back == contents[i], "{mode:?}: size {} differs", sizes[i]);
            }
            match mode {
                Direct::Try => assert!(
                    direct_bytes > 8 * RUN as u64,
                    "big files were not written with O_DIRECT ({direct_bytes} bytes)"
                ),
                _ => assert_eq!(direct_bytes, 0, "{mode:?}"),
            }
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(embassy_core::fsutil::TEMP_SUFFIX))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    /// The 8 KiB pages of a relation file, given in order, reach the file system in writes of
    /// a run each, not one per page.
    #[test]
    fn consecutive_pages_are_gathered_into_few_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("16384");
        let size = 4 * RUN as u64;
        let content = bytes_of(size, 3);
        for mode in [Direct::Off, Direct::Try] {
            let fills = Fills::new(vec![Some((path.as_path(), size))], mode);
            for at in (0..size).step_by(8192) {
                fills
                    .put(0, at, &content[at as usize..at as usize + 8192])
                    .unwrap();
            }
            assert_eq!(fills.writes(), 4, "{mode:?}: one write per run of pages");
            for pending in fills.finish().unwrap() {
                pending.unwrap().persist().unwrap();
            }
            assert!(std::fs::read(&path).unwrap() == content);
        }
    }

    /// However many files are being filled at once, at most `max_open` hold descriptors; the
    /// others are reopened by their temporary names, and every byte lands.
    #[test]
    fn open_descriptors_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let n = 12;
        let size = 3 * 8192u64;
        let paths: Vec<_> = (0..n).map(|i| dir.path().join(format!("f{i}"))).collect();
        let contents: Vec<_> = (0..n).map(|i| bytes_of(size, i as u64)).collect();
        let mut fills = Fills::new(
            paths.iter().map(|p| Some((p.as_path(), size))).collect(),
            Direct::Off,
        );
        fills.set_max_open(3);
        for page in 0..3u64 {
            for (i, content) in contents.iter().enumerate() {
                let at = (page * 8192) as usize;
                fills.put(i, at as u64, &content[at..at + 8192]).unwrap();
                assert!(fills.open_files() <= 3, "{} open", fills.open_files());
            }
        }
        for pending in fills.finish().unwrap() {
            pending.unwrap().persist().unwrap();
        }
        for (p, c) in paths.iter().zip(&contents) {
            assert!(&std::fs::read(p).unwrap() == c);
        }
    }

    /// A file that never got all its bytes fails the restore, and no temporary file is left;
    /// an empty file is created without any blob; bytes past the stated size are refused.
    #[test]
    fn missing_or_excess_bytes_are_refused_and_empty_files_made() {
        let dir = tempfile::tempdir().unwrap();
        let (short, empty) = (dir.path().join("short"), dir.path().join("empty"));
        let fills = Fills::new(
            vec![
                Some((short.as_path(), 10)),
                Some((empty.as_path(), 0)),
                None,
            ],
            Direct::Try,
        );
        assert!(fills.put(0, 5, &[1; 6]).is_err(), "past the end");
        fills.put(0, 0, &[1; 5]).unwrap();
        assert!(fills.put(2, 0, &[1]).is_err(), "a file left as it is");
        assert!(fills.finish().is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let fills = Fills::new(vec![Some((empty.as_path(), 0))], Direct::Try);
        for pending in fills.finish().unwrap() {
            pending.unwrap().persist().unwrap();
        }
        assert_eq!(std::fs::read(&empty).unwrap(), b"");
    }
}
