//! S3 transfers without whole objects in memory (issue 18): a put sends the caller's bytes as
//! they are, a source not in memory goes out through one small buffer per request, and a read
//! in one piece is handed over without a second copy. Measured with a counting allocator (the
//! peak of bytes allocated in this process during the call), against the tests' S3 server.
//!
//! Also the failures of a streamed upload: a source that cannot be read, or changes, while it is
//! sent fails the put with a typed error and stores nothing (moto does not check `Content-MD5`:
//! the client itself holds back the last bytes of a body that no longer matches its digest).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use embassy_core::site::{ObjectSource, Put, Site, SiteError};
use embassy_sites::S3Site;
use embassy_testkit::random_bytes;
use embassy_testkit::s3::*;

const MIB: usize = 1024 * 1024;

/// Counts the bytes allocated now, and the most since the last [`reset_peak`].
struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = NOW.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        NOW.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests measure one process-wide peak: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The most bytes allocated at once while `f` ran, above what was allocated when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// A site on the tests' S3 server with 8 MiB parts, four at a time.
fn site(tag: &str) -> S3Site {
    let bucket = unique_bucket(tag);
    let mut cfg = target_config(&bucket, "vault");
    cfg.part_size = 8 * MIB;
    cfg.multipart_threshold = 8 * MIB;
    cfg.parallelism = 4;
    let site = S3Site::new(cfg).unwrap();
    assert!(site.create_bucket(false).expect("create bucket"));
    site
}

/// A source read from elsewhere (as a spool file is): it does not offer its bytes in memory.
#[derive(Debug)]
struct Spooled {
    bytes: Vec<u8>,
    /// Offsets read so far.
    read: Mutex<HashSet<u64>>,
    /// A second read at an offset at or past this one fails (or reads other bytes, with
    /// `change`): the first pass (the digests) reads the bytes as they are, the send not.
    fail_at: u64,
    change: bool,
    failed: AtomicBool,
}

impl Spooled {
    fn new(bytes: Vec<u8>) -> Spooled {
        Spooled {
            bytes,
            read: Mutex::new(HashSet::new()),
            fail_at: u64::MAX,
            change: false,
            failed: AtomicBool::new(false),
        }
    }
}

impl ObjectSource for Spooled {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        let bytes = self
            .bytes
            .get(at..at + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(bytes);
        let again = !self.read.lock().unwrap().insert(offset);
        if offset >= self.fail_at && again {
            self.failed.store(true, Ordering::Relaxed);
            if self.change {
                buf[0] ^= 0xff;
            } else {
                return Err(io::Error::other("the spool disk failed"));
            }
        }
        Ok(())
    }
}

#[test]
fn a_put_sends_the_callers_bytes_without_copying_them() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let site = site("mem-put");
    // Multipart (6 parts of 8 MiB, 4 at a time), and a single PutObject just under a part.
    for (name, size) in [("packs/multi", 48 * MIB), ("packs/single", 7 * MIB)] {
        let bytes = random_bytes(size, size as u64);
        let (put, peak) = peak_during(|| site.put(name, &bytes));
        assert_eq!(put.unwrap(), Put::Created);
        eprintln!(
            "put of {} MiB: peak {:.1} MiB allocated",
            size / MIB,
            peak as f64 / MIB as f64
        );
        // Copying a part per worker (or the whole object) would take 7 MiB and more.
        assert!(
            peak < 4 * MIB,
            "a put of {} MiB allocated {peak} bytes at its peak: the bytes were copied",
            size / MIB
        );
        assert_eq!(site.get(name).unwrap(), bytes);
    }
}

#[test]
fn a_source_not_in_memory_is_streamed_through_a_small_buffer() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let site = site("mem-put-from");
    for (name, size) in [("packs/multi", 48 * MIB), ("packs/single", 7 * MIB)] {
        let bytes = random_bytes(size, 7 + size as u64);
        let source: Arc<dyn ObjectSource> = Arc::new(Spooled::new(bytes.clone()));
        let (put, peak) = peak_during(|| site.put_from(name, source));
        assert_eq!(put.unwrap(), Put::Created);
        eprintln!(
            "put_from of {} MiB: peak {:.1} MiB allocated",
            size / MIB,
            peak as f64 / MIB as f64
        );
        // One buffer for the digests and one for the send per worker (1 MiB each), not a part
        // (8 MiB) per worker.
        assert!(
            peak < 10 * MIB,
            "a streamed put of {} MiB allocated {peak} bytes at its peak: parts were held whole",
            size / MIB
        );
        assert_eq!(site.get(name).unwrap(), bytes);
    }
}

#[test]
fn a_read_in_one_piece_is_not_copied_again() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let site = site("mem-get");
    let size = 7 * MIB;
    let bytes = random_bytes(size, 3);
    assert_eq!(site.put("packs/p", &bytes).unwrap(), Put::Created);
    let (got, peak) = peak_during(|| site.get("packs/p").unwrap());
    eprintln!(
        "get of 7 MiB: peak {:.1} MiB allocated",
        peak as f64 / MIB as f64
    );
    assert_eq!(got, bytes);
    // The answer's buffer is the object: a copy into another buffer would double it.
    assert!(
        peak < size + 2 * MIB,
        "a get of 7 MiB allocated {peak} bytes at its peak"
    );
    let (got, peak) = peak_during(|| site.get_range("packs/p", MIB as u64, 5 * MIB as u64));
    assert_eq!(got.unwrap(), &bytes[MIB..6 * MIB]);
    assert!(
        peak < 7 * MIB,
        "a range of 5 MiB allocated {peak} bytes at its peak"
    );
}

#[test]
fn a_source_failing_while_it_is_sent_fails_the_put_and_stores_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let site = site("mem-failing");
    // A single PutObject and a multipart upload; the source fails 3 MiB in, during the send.
    for (name, size) in [("packs/single", 7 * MIB), ("packs/multi", 20 * MIB)] {
        let mut source = Spooled::new(random_bytes(size, 11));
        source.fail_at = 3 * MIB as u64;
        let source = Arc::new(source);
        match site.put_from(name, source.clone()) {
            Err(SiteError::Permanent { message, .. }) => assert!(
                message.contains("the spool disk failed"),
                "{name}: the error does not name the source's failure: {message}"
            ),
            other => panic!("{name}: a put whose source failed mid-send: {other:?}"),
        }
        assert!(
            source.failed.load(Ordering::Relaxed),
            "{name}: the source never failed"
        );
        assert!(
            matches!(site.get(name), Err(SiteError::NotFound { .. })),
            "{name}: a put whose source failed left an object"
        );
    }
}

#[test]
fn a_source_changing_while_it_is_sent_is_refused_by_its_digest() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let site = site("mem-changing");
    for (name, size) in [("packs/single", 7 * MIB), ("packs/multi", 20 * MIB)] {
        let mut source = Spooled::new(random_bytes(size, 13));
        source.fail_at = 3 * MIB as u64;
        source.change = true;
        let source = Arc::new(source);
        let put = site.put_from(name, source.clone());
        assert!(
            source.failed.load(Ordering::Relaxed),
            "{name}: the source never changed"
        );
        match put {
            Err(SiteError::Permanent { message, .. }) => assert!(
                message.contains("changed while they were sent"),
                "{name}: the error does not say the source changed: {message}"
            ),
            other => panic!("{name}: bytes other than the digested ones were accepted: {other:?}"),
        }
        assert!(
            matches!(site.get(name), Err(SiteError::NotFound { .. })),
            "{name}: bytes other than the digested ones were stored"
        );
    }
}
