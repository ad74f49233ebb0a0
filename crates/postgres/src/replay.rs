//! Fast replay: one long-lived fetch helper per restore. The first `wal-fetch` of a restore
//! starts it; it opens the vault and unlocks its key once, then fetches whole WAL segments in
//! parallel a bounded number ahead of where PostgreSQL is into a private spool folder (mode
//! 0700, files 0600) under the restore's state folder. Each later `wal-fetch` renames its
//! segment out of the spool (no vault open, no unlock) when the helper is alive, and falls back
//! to the direct path (as without a helper) for anything else: history files, the newest
//! partial segment, an absent one, a segment the helper could not fetch or verify, or a helper
//! that is gone. The spool holds registry data in plain text (never key material): the helper
//! deletes it when the restore is over (recovery ended), when idle, or when a new helper starts
//! after one was killed.
//!
//! The helper and `wal-fetch` talk through files in the spool: `want` (the segment PostgreSQL
//! needs next, rewritten atomically), `<segment>` (a complete segment, verified against the
//! vault like a direct fetch, renamed into place whole) and `<segment>.none` (the helper does
//! not serve this one: ask the vault directly). The helper holds an exclusive `flock` on the
//! spool's lock file for its whole life, so a `wal-fetch` knows whether it runs; a helper
//! killed with SIGKILL drops it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use embassy_core::engine::vault::{Keyring, Vault};

use crate::error::{PgError, Result};
use crate::lsn::{parse_wal_file_name, segment_file_name, WalFile};
use crate::wal;

/// The spool of one restore's fetch helper: a private folder and the lock file beside it.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    lock: PathBuf,
}

/// What a `wal-fetch` found in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromSpool {
    /// The segment was moved to its destination: serve it.
    Served,
    /// The helper runs but does not serve this file: fetch it directly.
    Direct,
    /// No helper runs (never started, idle, killed): start one and fetch directly.
    NoHelper,
}

/// How a helper runs.
#[derive(Debug, Clone)]
pub struct HelperOptions {
    /// Complete segments kept fetched ahead of PostgreSQL (the spool's bound: twice this many
    /// 16 MiB files at most).
    pub ahead: usize,
    /// Segments fetched at once (each holds one segment in memory).
    pub parallel: usize,
    /// Stop after this long without a request.
    pub idle: Duration,
}

/// What a helper did, for its log line.
#[derive(Debug, Clone, Default)]
pub struct HelperReport {
    /// Segments put into the spool.
    pub spooled: u64,
    /// Segments it refused or could not fetch (left to the direct path).
    pub declined: u64,
    /// Why it stopped.
    pub stopped: String,
}

/// A segment: timeline and segment number.
type Seg = (u32, u64);

const WANT: &str = "want";
const NONE: &str = ".none";

impl Spool {
    /// The spool in folder `dir` (created by the helper), its lock file `<dir>.lock`.
    pub fn new(dir: &Path) -> Self {
        let mut lock = dir.as_os_str().to_os_string();
        lock.push(".lock");
        Spool {
            dir: dir.to_path_buf(),
            lock: PathBuf::from(lock),
        }
    }

    /// The spool folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when a helper holds the lock (it runs).
    pub fn helper_running(&self) -> bool {
        let Ok(file) = File::open(&self.lock) else {
            return false;
        };
        // SAFETY: flock on a descriptor we own; released when `file` closes.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        r != 0
    }

    /// True when the folder is ours alone: a real folder (no link), owned by this user, mode
    /// 0700. A spool that is not private is never served from.
    fn private(&self) -> bool {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        std::fs::symlink_metadata(&self.dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == uid && m.mode() & 0o077 == 0)
    }

    /// Tells the helper that PostgreSQL needs segment `name` next (atomic rewrite; its mtime
    /// is the helper's sign of life of the restore).
    pub fn want(&self, name: &str) {
        if self.private() {
            let _ = embassy_core::fsutil::write_atomic(&self.dir.join(WANT), name.as_bytes());
        }
    }

    /// Serves WAL file `name` to `dest` from the spool when a helper runs: moves the segment
    /// out when it is there, or else waits (at most `wait`) while the helper fetches it.
    pub fn serve(&self, name: &str, dest: &Path, wait: Duration) -> FromSpool {
        let Ok(WalFile::Segment { timeline, segno }) = parse_wal_file_name(name) else {
            return FromSpool::Direct;
        };
        if !self.helper_running() {
            return FromSpool::NoHelper;
        }
        if !self.private() {
            return FromSpool::Direct;
        }
        let next = segment_file_name(timeline, segno + 1);
        let start = Instant::now();
        let mut asked = false;
        loop {
            let spooled = self.dir.join(name);
            if spooled.is_file() {
                // Ask for the next one first: the helper never removes a segment just below
                // what is wanted, so this one stays until it is moved.
                self.want(&next);
                if self.take(&spooled, dest) {
                    return FromSpool::Served;
                }
            }
            if self.dir.join(format!("{name}{NONE}")).exists() {
                return FromSpool::Direct;
            }
            if !asked {
                self.want(name);
                asked = true;
            }
            if start.elapsed() > wait || !self.helper_running() {
                return FromSpool::Direct;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Moves a spooled segment to `dest` (a rename; a copy across file systems).
    fn take(&self, spooled: &Path, dest: &Path) -> bool {
        match std::fs::rename(spooled, dest) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let copy = || -> std::io::Result<()> {
                    let mut from = File::open(spooled)?;
                    let mut to = embassy_core::fsutil::NewFile::beside(dest)?;
                    std::io::copy(&mut from, &mut to)?;
                    to.persist().map(drop)
                };
                let ok = copy().is_ok();
                let _ = std::fs::remove_file(spooled);
                ok
            }
            Err(_) => false,
        }
    }

    /// Takes the helper's lock, retrying briefly (a `wal-fetch` checking it holds it shared
    /// for a moment). None when another helper holds it.
    pub fn lock(&self) -> Result<Option<File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.lock)
            .map_err(|e| io_err(&self.lock, e))?;
        for _ in 0..40 {
            // SAFETY: flock on a descriptor we own; held until the file closes.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(file));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(None)
    }

    /// Empties (or creates) the spool folder, mode 0700: what a killed helper left is dropped.
    fn reset(&self) -> Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| io_err(&self.dir, e))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(&self.dir, e))
    }

    /// Deletes the spool folder and everything in it.
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The wanted segment and when it was last asked for.
    fn wanted(&self) -> Option<(u32, u64, SystemTime)> {
        let path = self.dir.join(WANT);
        let name = std::fs::read_to_string(&path).ok()?;
        let at = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        match parse_wal_file_name(name.trim()).ok()? {
            WalFile::Segment { timeline, segno } => Some((timeline, segno, at)),
            _ => None,
        }
    }

    /// Segments in the spool (complete ones), and those marked `.none` with their age.
    fn contents(&self) -> (BTreeSet<Seg>, BTreeMap<Seg, Duration>) {
        let mut have = BTreeSet::new();
        let mut none = BTreeMap::new();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let Some(n) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let (base, marked) = match n.strip_suffix(NONE) {
                Some(b) => (b.to_string(), true),
                None => (n, false),
            };
            if let Ok(WalFile::Segment { timeline, segno }) = parse_wal_file_name(&base) {
                if marked {
                    let age = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .unwrap_or_default();
                    none.insert((timeline, segno), age);
                } else {
                    have.insert((timeline, segno));
                }
            }
        }
        (have, none)
    }
}

/// A `.none` marker older than this is dropped and its segment tried again (a standby's next
/// segment completes later).
const RETRY_DECLINED: Duration = Duration::from_secs(2);

/// Runs the fetch helper of `dataset` on `spool` (its lock held in `_lock`), starting at
/// segment `first`, until the restore is over: `restore_over` says so (recovery ended), `stop` is set, or nothing was asked for
/// during `opts.idle`. Deletes the spool when it stops. `note` gets one line per segment it
/// declines (not complete in the vault, or unreadable or failing verification).
#[allow(clippy::too_many_arguments)]
pub fn run_helper(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    spool: &Spool,
    _lock: &File,
    opts: &HelperOptions,
    first: Option<&str>,
    restore_over: &dyn Fn() -> bool,
    stop: &AtomicBool,
    note: &(dyn Fn(&str) + Sync),
) -> Result<HelperReport> {
    spool.reset()?;
    if let Some(first) = first {
        spool.want(first);
    }
    let report = helper_loop(
        vault,
        keyring,
        dataset,
        spool,
        opts,
        restore_over,
        stop,
        note,
    );
    spool.remove();
    report
}

#[allow(clippy::too_many_arguments)]
fn helper_loop(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    spool: &Spool,
    opts: &HelperOptions,
    restore_over: &dyn Fn() -> bool,
    stop: &AtomicBool,
    note: &(dyn Fn(&str) + Sync),
) -> Result<HelperReport> {
    let signers = Mutex::new(std::sync::Arc::new(wal::dataset_signers(vault, dataset)?));
    let mut report = HelperReport::default();
    let started = SystemTime::now();
    let (jobs_tx, jobs_rx) = mpsc::channel::<(u32, u64)>();
    let jobs_rx = Mutex::new(jobs_rx);
    let (done_tx, done_rx) = mpsc::channel::<((u32, u64), bool)>();
    let quit = AtomicBool::new(false);
    let fetch_one = |timeline: u32, segno: u64| -> Result<bool> {
        let site = vault.site().as_ref();
        let name = segment_file_name(timeline, segno);
        let listing = wal::list_segment(site, dataset, timeline, segno)?;
        let current = signers
            .lock()
            .map(|s| std::sync::Arc::clone(&s))
            .map_err(|_| PgError::Protocol("the fetch helper's signer list was poisoned".into()))?;
        match wal::assemble_segment(site, keyring, &listing, timeline, segno, &current)? {
            Some(a) if a.complete => {
                let target = spool.dir.join(&name);
                let mut f = embassy_core::fsutil::NewFile::beside(&target)
                    .map_err(|e| io_err(&target, e))?;
                f.write_all(&a.bytes).map_err(|e| io_err(&target, e))?;
                f.persist_unsynced().map_err(|e| io_err(&target, e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    std::thread::scope(|s| {
        for _ in 0..opts.parallel.max(1) {
            let jobs_rx = &jobs_rx;
            let done_tx = done_tx.clone();
            let quit = &quit;
            let fetch_one = &fetch_one;
            s.spawn(move || loop {
                let job = match jobs_rx.lock() {
                    Ok(rx) => rx.recv_timeout(Duration::from_millis(100)),
                    Err(_) => return,
                };
                match job {
                    Ok(_) if quit.load(Ordering::SeqCst) => return,
                    Ok((timeline, segno)) => {
                        let ok = match fetch_one(timeline, segno) {
                            Ok(true) => true,
                            Ok(false) => false,
                            Err(e) => {
                                note(&format!(
                                    "declined {}: {e}",
                                    segment_file_name(timeline, segno)
                                ));
                                false
                            }
                        };
                        if done_tx.send(((timeline, segno), ok)).is_err() {
                            return;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) if !quit.load(Ordering::SeqCst) => {}
                    Err(_) => return,
                }
            });
        }
        drop(done_tx);
        let mut in_flight: BTreeSet<(u32, u64)> = BTreeSet::new();
        // Where the vault's complete segments end for now (nothing is asked beyond it).
        let mut end: Option<(u32, u64)> = None;
        let mut last_signers = Instant::now();
        let mut noted: Option<(u32, u64)> = None;
        let stopped = loop {
            while let Ok(((t, n), ok)) = done_rx.try_recv() {
                in_flight.remove(&(t, n));
                if ok {
                    report.spooled += 1;
                } else {
                    report.declined += 1;
                    let marker = spool.dir.join(format!("{}{NONE}", segment_file_name(t, n)));
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(marker);
                    if noted != Some((t, n)) {
                        noted = Some((t, n));
                        note(&format!(
                            "declined {}: not complete in the vault, or not readable; \
                             wal-fetch asks the vault directly",
                            segment_file_name(t, n)
                        ));
                    }
                    if end.is_none_or(|e| (t, n) < e) {
                        end = Some((t, n));
                    }
                }
            }
            if stop.load(Ordering::SeqCst) {
                break "stopped by a signal".to_string();
            }
            if restore_over() {
                break "the restore is over".to_string();
            }
            if !spool.dir.is_dir() {
                break "its spool was removed".to_string();
            }
            let wanted = spool.wanted();
            let last_ask = wanted.map_or(started, |w| w.2);
            if last_ask.elapsed().unwrap_or_default() > opts.idle && in_flight.is_empty() {
                break format!("idle for {} s", opts.idle.as_secs());
            }
            let (have, none) = spool.contents();
            for (&(t, n), age) in &none {
                if *age > RETRY_DECLINED {
                    let _ = std::fs::remove_file(
                        spool.dir.join(format!("{}{NONE}", segment_file_name(t, n))),
                    );
                    if end == Some((t, n)) {
                        end = None;
                    }
                }
            }
            if end.is_none() && last_signers.elapsed() > Duration::from_secs(10) {
                // New WAL signers (a standby following a new stream) show in the ledger.
                if let Ok(fresh) = wal::dataset_signers(vault, dataset) {
                    if let Ok(mut s) = signers.lock() {
                        *s = std::sync::Arc::new(fresh);
                    }
                }
                last_signers = Instant::now();
            }
            if let Some((timeline, want, _)) = wanted {
                // PostgreSQL got past a declined segment (a direct fetch served it): go on.
                if end.is_some_and(|e| e < (timeline, want)) {
                    end = None;
                }
                // Forget segments far behind PostgreSQL (it moved on, or took another path).
                for &(t, n) in &have {
                    if t != timeline || n + (opts.ahead as u64) < want {
                        let _ = std::fs::remove_file(spool.dir.join(segment_file_name(t, n)));
                    }
                }
                for n in want..want + opts.ahead as u64 {
                    let key = (timeline, n);
                    if end.is_some_and(|e| key >= e) {
                        break;
                    }
                    if have.contains(&key) || in_flight.contains(&key) || none.contains_key(&key) {
                        continue;
                    }
                    if in_flight.len() >= opts.parallel.max(1) * 2 {
                        break;
                    }
                    if jobs_tx.send(key).is_ok() {
                        in_flight.insert(key);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(if in_flight.is_empty() {
                50
            } else {
                5
            }));
        };
        quit.store(true, Ordering::SeqCst);
        report.stopped = stopped;
    });
    Ok(report)
}

fn io_err(path: &Path, e: std::io::Error) -> PgError {
    PgError::Vault(embassy_core::Error::io(
        format!("writing {}", path.display()),
        e,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: &str = "000000010000000000000005";

    fn spool_with_segment(dir: &Path) -> Spool {
        let spool = Spool::new(&dir.join("replay-spool"));
        spool.reset().unwrap();
        std::fs::write(spool.dir().join(SEG), b"verified bytes").unwrap();
        spool
    }

    /// No helper holding the lock: nothing is served from the spool (what a killed helper or
    /// a crash left there is never trusted), whatever it holds.
    #[test]
    fn without_a_running_helper_nothing_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_with_segment(dir.path());
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(
            spool.serve(SEG, &dest, Duration::from_secs(1)),
            FromSpool::NoHelper
        );
        assert!(!dest.exists());
        assert!(!spool.helper_running());
    }

    /// With the helper's lock held: the segment is moved out, the next one asked for; a
    /// history file is never served; a spool others can read is never served from.
    #[test]
    fn a_running_helper_serves_from_a_private_spool_only() {
        let dir = tempfile::tempdir().unwrap();
        let spool = spool_with_segment(dir.path());
        let lock = spool.lock().unwrap().expect("the lock is free");
        assert!(spool.helper_running());
        let dest = dir.path().join("RECOVERYXLOG");
        assert_eq!(
            spool.serve(SEG, &dest, Duration::from_secs(1)),
            FromSpool::Served
        );
        assert_eq!(std::fs::read(&dest).unwrap(), b"verified bytes");
        assert!(!spool.dir().join(SEG).exists());
        assert_eq!(
            std::fs::read_to_string(spool.dir().join(WANT)).unwrap(),
            "000000010000000000000006"
        );
        assert_eq!(
            spool.serve("00000002.history", &dest, Duration::from_secs(1)),
            FromSpool::Direct
        );
        // Declined by the helper: straight to the direct path, no waiting.
        std::fs::write(spool.dir().join(format!("{SEG}{NONE}")), b"").unwrap();
        let t = Instant::now();
        assert_eq!(
            spool.serve(SEG, &dest, Duration::from_secs(30)),
            FromSpool::Direct
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        // Readable by others: never served from.
        std::fs::write(spool.dir().join(SEG), b"verified bytes").unwrap();
        std::fs::set_permissions(spool.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_file(&dest).unwrap();
        assert_eq!(
            spool.serve(SEG, &dest, Duration::from_secs(1)),
            FromSpool::Direct
        );
        assert!(!dest.exists());
        drop(lock);
        assert!(!spool.helper_running());
    }
}
