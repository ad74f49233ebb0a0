//! The per-site catch-up queue: when a write through several sites fails at one of them while
//! `min_sites` still holds, the object's path is recorded in that site's queue file before the
//! write is acknowledged, so the site can be caught up later with no gap ([`drain`]), copying
//! from a site that has the object, in write order, hashes checked on arrival.
//!
//! Layout under the state folder (`<state>/queues/`):
//!
//! - `<site key>.queue`: append-only records, one a line, `<kind> <payload> <check>`, where
//!   `check` is the first 16 hex digits of the BLAKE3 hash of `<kind> <payload>`. Kinds: `+`
//!   (the site may lack this object path), `W` (a ledger entry a writer that died was storing:
//!   the site may lack it, and only the sites the writer sent it to can hold it; payload: the
//!   path, then those sites' [`holder_key`]s) and `F` (the site needs a full comparison with
//!   the others; payload: why). Every append is fsync'd (and the folder, when the file is new) before
//!   the write that caused it is acknowledged. A line that does not check (a torn append from a
//!   killed process) counts as `F`.
//! - `sessions/<id>`: one per process writing through several sites, listing their locations and
//!   locked (`flock`) for the process's lifetime. A process killed mid-write (SIGKILL) may have
//!   written objects to some sites but not yet to others, and had no chance to record them; its
//!   session file stays, no longer locked, and [`recover_sessions`] turns it into an `F` record
//!   for each of its sites. A clean end removes the file. Before a ledger entry goes out, the
//!   writer adds a line naming it and the sites it is sent to ([`Session::intend`]), so that a
//!   dead writer's entry is queued by name (`W`) for every site of its session: a site that
//!   lacks it is behind until the sites it was sent to have been asked (issue 19, a down site
//!   holding the only copy must not be written over).
//!
//! Appends and the rewrite after a drain take an exclusive lock on the queue file; an appender
//! that finds the file replaced after taking the lock reopens it, so no record is lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use embassy_core::engine::sync::write_stage;
use embassy_core::format::layout;
use embassy_core::format::spool::{FetchError, Spool};
use embassy_core::id::ObjectId;
use embassy_core::progress::Progress;
use embassy_core::site::{Put, Site, SiteError};
use embassy_core::{Error, Result};
use serde::Serialize;

use crate::ReplicatedSite;

mod drain;
pub use drain::{drain, drain_all, drain_from_some, DrainReport};

/// The queue folder under a state folder.
pub fn queue_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("queues")
}

/// The catch-up queue of one site (see the module documentation).
#[derive(Debug, Clone)]
pub struct SiteQueue {
    site: String,
    path: PathBuf,
}

/// One record of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The site may lack the object at this path.
    Missing(String),
    /// The site needs a full comparison with the others (why).
    FullSync(String),
    /// A ledger entry a writer that died was storing: the site may lack it, and only the sites
    /// it was sent to (their [`holder_key`]s) can hold it. Until each of them has been asked, a
    /// site lacking it may be behind a site that is down.
    InFlight(String, Vec<String>),
}

/// What a queue holds, read at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Object paths the site may lack, each once, in the order first recorded.
    pub paths: Vec<String>,
    /// Why a full comparison is needed (empty: the paths suffice).
    pub full_sync: Vec<String>,
    /// Of `paths`, the ledger entries a writer that died was storing, with the
    /// [`holder_key`]s of the only sites that can hold them ([`Record::InFlight`]).
    pub in_flight: std::collections::BTreeMap<String, Vec<String>>,
    /// Bytes of the file read (records after this offset were added later).
    read_len: u64,
}

impl Pending {
    /// Nothing to catch up.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.full_sync.is_empty()
    }

    /// Objects waiting (a full sync counts as one).
    pub fn depth(&self) -> usize {
        self.paths.len() + usize::from(!self.full_sync.is_empty())
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

/// A short file name for a site location: its readable part, then a hash of the whole location.
fn site_key(site: &str) -> String {
    let readable: String = site
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(48)
        .collect();
    let hash = ObjectId::of(site.as_bytes()).to_hex();
    format!("{readable}-{}", &hash[..16])
}

/// How a queue names a site that may hold an object ([`Record::InFlight`]): 16 hex digits of
/// the hash of its location, a folder by its absolute path (as [`SiteQueue::open`] keys it).
pub fn holder_key(site: &str) -> String {
    check(&normalized(site))
}

/// A location as queues key it: a folder by its absolute path, so `./a`, `a` and `file://a`
/// are one site.
fn normalized(site: &str) -> String {
    match site.strip_prefix("file://").unwrap_or(site) {
        s if s.contains("://") => s.to_string(),
        s => std::path::absolute(s)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| s.to_string()),
    }
}

fn check(body: &str) -> String {
    ObjectId::of(body.as_bytes()).to_hex()[..16].to_string()
}

fn encode(record: &Record) -> String {
    let body = match record {
        Record::Missing(path) => format!("+ {path}"),
        Record::FullSync(why) => format!("F {}", why.replace(['\n', '\r'], " ")),
        Record::InFlight(path, holders) => format!("W {path} {}", holders.join(",")),
    };
    let sum = check(&body);
    format!("{body} {sum}\n")
}

fn decode(line: &str) -> Option<Record> {
    let (body, sum) = line.rsplit_once(' ')?;
    if check(body) != sum {
        return None;
    }
    let (kind, payload) = body.split_once(' ')?;
    match kind {
        "+" => Some(Record::Missing(payload.to_string())),
        "F" => Some(Record::FullSync(payload.to_string())),
        "W" => {
            let (path, holders) = payload.rsplit_once(' ')?;
            let holders = holders
                .split(',')
                .filter(|h| !h.is_empty())
                .map(str::to_string)
                .collect();
            Some(Record::InFlight(path.to_string(), holders))
        }
        _ => None,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("syncing folder {}", dir.display())))
}

impl SiteQueue {
    /// The queue of `site` (a location as [`crate::open`] takes it, or as the site reports it)
    /// under `state_dir`. Nothing is created until the first record (readers need no writable
    /// state folder).
    pub fn open(state_dir: &Path, site: &str) -> Result<Self> {
        let dir = queue_dir(state_dir);
        // A folder is named by its absolute path, so `./a`, `a` and `file://a` share a queue.
        let key = normalized(site);
        Ok(Self {
            site: site.to_string(),
            path: dir.join(format!("{}.queue", site_key(&key))),
        })
    }

    /// The site this queue is for.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the drain lock of this queue (one drain per site at a time), or `None` when another
    /// drain holds it.
    fn drain_lock(&self) -> Result<Option<File>> {
        self.create_dir()?;
        let path = self.path.with_extension("drain");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
    }

    fn create_dir(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(format!(
            "creating the queue folder {} (the state folder must be writable; pass --state-dir)",
            dir.display()
        )))
    }

    /// Opens the queue file and locks it, reopening if it was replaced meanwhile.
    fn lock(&self, create: bool) -> Result<Option<File>> {
        if create {
            self.create_dir()?;
        }
        loop {
            let file = match OpenOptions::new()
                .read(true)
                .append(true)
                .create(create)
                .open(&self.path)
            {
                Ok(f) => f,
                Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(Error::io(
                        format!("opening the catch-up queue {}", self.path.display()),
                        e,
                    ))
                }
            };
            file.lock()
                .map_err(io(format!("locking {}", self.path.display())))?;
            let held = file
                .metadata()
                .map_err(io(format!("reading {}", self.path.display())))?;
            match std::fs::metadata(&self.path) {
                Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => {
                    return Ok(Some(file))
                }
                // Replaced or removed by a drain while we waited for the lock: open again.
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("reading {}", self.path.display()), e)),
            }
        }
    }

    /// Appends records durably (fsync'd before returning).
    pub fn append(&self, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let Some(mut file) = self.lock(true)? else {
            return Err(Error::invalid("queue file vanished while opening it"));
        };
        let ctx = || format!("appending to the catch-up queue {}", self.path.display());
        let len = file.metadata().map_err(io(ctx()))?.len();
        let mut text = String::new();
        if len > 0 {
            // A torn last line (a killed appender) gets its own line, so ours stay whole.
            let mut last = [0u8; 1];
            file.read_exact_at(&mut last, len - 1).map_err(io(ctx()))?;
            if last[0] != b'\n' {
                text.push('\n');
            }
        }
        for r in records {
            text.push_str(&encode(r));
        }
        file.write_all(text.as_bytes()).map_err(io(ctx()))?;
        file.sync_data().map_err(io(ctx()))?;
        if len == 0 {
            if let Some(dir) = self.path.parent() {
                sync_dir(dir)?;
            }
        }
        Ok(())
    }

    /// Records that the site may lack the object at `path`.
    pub fn record_missing(&self, path: &str) -> Result<()> {
        if path.contains(['\n', '\r']) {
            return self.record_full_sync(&format!("a write of an odd path failed: {path:?}"));
        }
        self.append(&[Record::Missing(path.to_string())])
    }

    /// Records that the site needs a full comparison with the others.
    pub fn record_full_sync(&self, why: &str) -> Result<()> {
        self.append(&[Record::FullSync(why.to_string())])
    }

    fn read_locked(&self, file: &mut File) -> Result<(Vec<u8>, Pending)> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io(format!("reading {}", self.path.display())))?;
        let mut pending = Pending {
            read_len: bytes.len() as u64,
            ..Pending::default()
        };
        let mut seen = std::collections::HashSet::new();
        let text = String::from_utf8_lossy(&bytes);
        for line in text.split_inclusive('\n') {
            let whole = line.ends_with('\n');
            match decode(line.trim_end_matches('\n')) {
                Some(Record::Missing(p)) if whole => {
                    if seen.insert(p.clone()) {
                        pending.paths.push(p);
                    }
                }
                Some(Record::FullSync(why)) if whole => pending.full_sync.push(why),
                Some(Record::InFlight(p, holders)) if whole => {
                    if seen.insert(p.clone()) {
                        pending.paths.push(p.clone());
                    }
                    pending.in_flight.insert(p, holders);
                }
                _ if line.trim().is_empty() => {}
                _ => pending
                    .full_sync
                    .push("a damaged or torn queue record (a writer was killed)".into()),
            }
        }
        Ok((bytes, pending))
    }

    /// What the queue holds now.
    pub fn pending(&self) -> Result<Pending> {
        match self.lock(false)? {
            None => Ok(Pending::default()),
            Some(mut f) => Ok(self.read_locked(&mut f)?.1),
        }
    }

    /// Marks the records read in `read` as done, except the paths in `keep` (and a full sync, if
    /// `keep_full`); records appended since stay. Removes the file when nothing is left. Only
    /// under the drain lock (nobody else rewrites the file between the read and this).
    fn resolve(&self, read: &Pending, keep: &[String], keep_full: bool) -> Result<()> {
        let Some(mut file) = self.lock(false)? else {
            return Ok(());
        };
        let ctx = || format!("rewriting the catch-up queue {}", self.path.display());
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io(ctx()))?;
        let later = bytes.get(read.read_len as usize..).unwrap_or_default();
        let mut text = String::new();
        if keep_full {
            for why in &read.full_sync {
                text.push_str(&encode(&Record::FullSync(why.clone())));
            }
        }
        for p in keep {
            let record = match read.in_flight.get(p) {
                Some(holders) => Record::InFlight(p.clone(), holders.clone()),
                None => Record::Missing(p.clone()),
            };
            text.push_str(&encode(&record));
        }
        let mut out = text.into_bytes();
        out.extend_from_slice(later);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if out.is_empty() {
            std::fs::remove_file(&self.path).map_err(io(ctx()))?;
        } else {
            embassy_core::fsutil::write_atomic(&self.path, &out).map_err(io(ctx()))?;
        }
        sync_dir(dir)?;
        drop(file);
        Ok(())
    }
}

// -------------------------------------------------------------------------------------------
// Writer sessions.

/// A process writing through several sites: a locked file under `queues/sessions/` naming them,
/// removed when the writer ends cleanly. See the module documentation.
#[derive(Debug)]
pub struct Session {
    path: PathBuf,
    file: File,
    /// Length of the file's site lines: what is left once no entry is in flight.
    sites_len: u64,
    /// Entries named ([`Session::intend`]) and not yet settled ([`Session::settle`]).
    in_flight: usize,
}

/// The mark of a session line that names a ledger entry being stored ([`Session::intend`]),
/// not a site: a location never starts with a tab.
const INTENT: char = '\t';

impl Session {
    /// Starts a session over `sites` (their locations) in `state_dir`.
    pub fn begin(state_dir: &Path, sites: &[String]) -> Result<Session> {
        let dir = queue_dir(state_dir).join("sessions");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let id = format!(
            "{}-{}-{:08x}",
            std::process::id(),
            embassy_core::format::config::now_unix_nanos(),
            rand::random::<u32>()
        );
        let path = dir.join(&id);
        let ctx = || format!("writing the session file {}", path.display());
        let mut file = embassy_core::fsutil::NewFile::beside(&path).map_err(io(ctx()))?;
        // Locked before it appears under its name: a visible, unlocked session is a dead one.
        file.file().lock().map_err(io(ctx()))?;
        let mut text = String::new();
        for s in sites {
            text.push_str(&s.replace(['\n', '\r'], " "));
            text.push('\n');
        }
        file.write_all(text.as_bytes()).map_err(io(ctx()))?;
        let file = file.persist().map_err(io(ctx()))?;
        Ok(Session {
            path,
            file,
            sites_len: text.len() as u64,
            in_flight: 0,
        })
    }

    /// Records, durably, that the ledger entry (or what names entries) at `path` is about to
    /// be sent to the sites `holders` (their locations). Should this writer die before the
    /// write is settled, [`recover_sessions`] queues the entry by name for every site of the
    /// session ([`Record::InFlight`]): a site that lacks it is behind until each of `holders`
    /// has been asked, so that no writer puts another entry at its place while the only copy
    /// sits at a site that is down.
    pub fn intend(&mut self, path: &str, holders: &[&str]) -> Result<()> {
        if path.contains(char::is_whitespace) {
            return Ok(()); // never a ledger path; the dead session's full comparison covers it
        }
        let keys: Vec<String> = holders.iter().map(|h| holder_key(h)).collect();
        let line = format!("{INTENT}{path} {}\n", keys.join(","));
        let ctx = || format!("writing the session file {}", self.path.display());
        // At the end of what is there (the file may have been cut back by `settle`).
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::End(0)).map_err(io(ctx()))?;
        self.file.write_all(line.as_bytes()).map_err(io(ctx()))?;
        self.file.sync_data().map_err(io(ctx()))?;
        self.in_flight += 1;
        Ok(())
    }

    /// Marks one entry named by [`Session::intend`] as settled: it reached its sites, or the
    /// sites that missed it have it queued. Once none is in flight the names are dropped, so a
    /// long-lived writer's session stays small and a dead one names only what it was storing.
    pub fn settle(&mut self) -> Result<()> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight > 0 {
            return Ok(());
        }
        let ctx = || format!("writing the session file {}", self.path.display());
        self.file.set_len(self.sites_len).map_err(io(ctx()))?;
        self.file.sync_data().map_err(io(ctx()))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Every failed write was recorded before it was acknowledged: nothing is left to say.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Turns the sessions of writers that died (their files no longer locked) into full-sync records
/// on each of their sites' queues; returns how many it found.
pub fn recover_sessions(state_dir: &Path) -> Result<usize> {
    remove_stale_temporaries(&queue_dir(state_dir));
    let dir = queue_dir(state_dir).join("sessions");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut found = 0;
    for entry in entries {
        let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
        let path = entry.path();
        let Ok(mut file) = File::open(&path) else {
            continue; // removed meanwhile by its clean end
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => continue, // its writer is alive
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("locking {}", path.display()), e))
            }
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            // Being set up right now, or left by a writer killed while setting it up (before
            // its first write): only the latter, a minute on, is removed.
            let young = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < std::time::Duration::from_secs(60));
            if young {
                continue;
            }
        } else {
            let mut text = String::new();
            file.read_to_string(&mut text)
                .map_err(io(format!("reading {}", path.display())))?;
            // Entries it was storing (a torn last line names none: the full comparison stays).
            let in_flight: Vec<Record> = text
                .split_inclusive('\n')
                .filter(|l| l.ends_with('\n'))
                .filter_map(|l| l.trim_end_matches('\n').strip_prefix(INTENT))
                .filter_map(|l| l.rsplit_once(' '))
                .map(|(p, holders)| {
                    Record::InFlight(
                        p.to_string(),
                        holders
                            .split(',')
                            .filter(|h| !h.is_empty())
                            .map(str::to_string)
                            .collect(),
                    )
                })
                .collect();
            for site in text
                .lines()
                .filter(|l| !l.is_empty() && !l.starts_with(INTENT))
            {
                let mut records = in_flight.clone();
                records.push(Record::FullSync(format!(
                    "a writer (session {name}) stopped without finishing: objects it was \
                     writing may be at some sites only"
                )));
                SiteQueue::open(state_dir, site)?.append(&records)?;
            }
            found += 1;
        }
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
    }
    if found > 0 {
        sync_dir(&dir)?;
    }
    Ok(found)
}

/// The queue of a site, keyed by the location the site reports (so that `./a`, `a` and
/// `file://a` share one queue); `location` as given when the site cannot be opened.
pub fn site_queue(
    state_dir: &Path,
    location: &str,
    site: Option<&Arc<dyn Site>>,
) -> Result<SiteQueue> {
    SiteQueue::open(state_dir, site.map_or(location, |s| s.location()))
}

/// How old a temporary file in the queue folder must be before it is taken for one a killed
/// process left: a queue's rewrite writes and renames its temporary file within moments.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes the temporary files (`fsutil::TEMP_SUFFIX`) in the queue folder that a process
/// killed while rewriting a queue left behind (older than [`STALE_TEMPORARY`]): nothing reads
/// them, and a long-running embassy would otherwise gather them for ever (issue 19's campaign).
/// Best effort: a file that cannot be looked at or removed stays for the next time.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let stale = name
            .to_string_lossy()
            .ends_with(embassy_core::fsutil::TEMP_SUFFIX)
            && entry
                .metadata()
                .ok()
                .filter(|m| m.is_file())
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= STALE_TEMPORARY);
        if stale {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Queue depth per site of `locations` (after recovering dead writers' sessions), for `status`.
pub fn depths(state_dir: &Path, locations: &[String]) -> Result<Vec<(String, Pending)>> {
    recover_sessions(state_dir)?;
    let mut out = Vec::new();
    for l in locations {
        let site = crate::open(l).ok();
        out.push((
            l.clone(),
            site_queue(state_dir, l, site.as_ref())?.pending()?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_caught() {
        for r in [
            Record::Missing("packs/ds/ab/abcdef".into()),
            Record::Missing("odd name with spaces".into()),
            Record::FullSync("why\nnot".into()),
        ] {
            let line = encode(&r);
            assert!(line.ends_with('\n'));
            let back = decode(line.trim_end_matches('\n')).unwrap();
            match (&r, back) {
                (Record::FullSync(_), Record::FullSync(w)) => assert_eq!(w, "why not"),
                (a, b) => assert_eq!(*a, b),
            }
            let mut torn = line.clone();
            torn.truncate(line.len() / 2);
            assert!(decode(&torn).is_none());
        }
        assert!(decode("+ packs/x 0000000000000000").is_none());
    }

    #[test]
    fn queue_appends_reads_and_resolves() {
        let dir = tempfile::tempdir().unwrap();
        let q = SiteQueue::open(dir.path(), "s3://bucket/v").unwrap();
        assert!(q.pending().unwrap().is_empty());
        assert!(
            !queue_dir(dir.path()).exists(),
            "a reader created the queue folder"
        );
        q.record_missing("packs/a").unwrap();
        q.record_missing("ledger/a").unwrap();
        q.record_missing("packs/a").unwrap();
        let p = q.pending().unwrap();
        assert_eq!(p.paths, ["packs/a", "ledger/a"]);
        assert_eq!(p.depth(), 2);
        // A record added after the read survives the resolution of what was read.
        q.record_missing("index/b").unwrap();
        q.resolve(&p, &["ledger/a".into()], false).unwrap();
        assert_eq!(q.pending().unwrap().paths, ["ledger/a", "index/b"]);
        let p = q.pending().unwrap();
        q.resolve(&p, &[], false).unwrap();
        assert!(q.pending().unwrap().is_empty());
        assert!(!q.path().exists());
        // A torn tail (a killed appender) asks for a full sync, and later records stay whole.
        q.record_missing("packs/c").unwrap();
        let mut f = OpenOptions::new().append(true).open(q.path()).unwrap();
        f.write_all(b"+ packs/tor").unwrap();
        q.record_missing("packs/d").unwrap();
        let p = q.pending().unwrap();
        assert_eq!(p.paths, ["packs/c", "packs/d"]);
        assert_eq!(p.full_sync.len(), 1, "{p:?}");
    }

    #[test]
    fn drain_copies_in_write_order_and_holds_back_what_depends_on_a_failure() {
        use crate::LocalSite;
        use embassy_core::progress::Silent;
        let dir = tempfile::tempdir().unwrap();
        let source = LocalSite::new(dir.path().join("src")).unwrap();
        let target = LocalSite::new(dir.path().join("dst")).unwrap();
        for s in [&source, &target] {
            s.put(layout::CONFIG, b"the same vault").unwrap();
        }
        let named = |prefix: &str, bytes: &[u8]| format!("{prefix}{}", ObjectId::of(bytes));
        let good_pack = named("packs/ds/00/", b"pack one");
        let bad_pack = named("packs/ds/01/", b"pack two");
        let entry = named("ledger/ds/0000000000000001-", b"entry");
        let nowhere = named("index/ds/", b"never written anywhere");
        source.put(&good_pack, b"pack one").unwrap();
        source.put(&bad_pack, b"damaged!").unwrap();
        source.put(&entry, b"entry").unwrap();
        let queue = SiteQueue::open(dir.path(), target.location()).unwrap();
        // Recorded in another order than the format writes them.
        for p in [&entry, &bad_pack, &nowhere, &good_pack] {
            queue.record_missing(p).unwrap();
        }
        let sources: Vec<Arc<dyn Site>> = vec![Arc::new(source)];
        // One drain per site at a time: a second one leaves the queue alone.
        let held = queue.drain_lock().unwrap().unwrap();
        let r = drain(&queue, &target, &sources, &Silent).unwrap();
        assert!(r.problems[0].contains("another drain"), "{r:?}");
        assert_eq!((r.copied, r.remaining), (0, 4));
        drop(held);
        let r = drain(&queue, &target, &sources, &Silent).unwrap();
        // The good pack arrives; the index and the entry wait for the pack that failed.
        assert_eq!((r.copied, r.nowhere, r.remaining), (1, 0, 3), "{r:?}");
        assert!(r.problems[0].contains("damaged copy"), "{r:?}");
        assert_eq!(target.get(&good_pack).unwrap(), b"pack one");
        assert!(
            matches!(target.get(&entry), Err(SiteError::NotFound { .. })),
            "a ledger entry arrived before a pack that failed"
        );
        assert_eq!(
            queue.pending().unwrap().paths,
            [bad_pack.clone(), nowhere.clone(), entry.clone()]
        );
        // The source is mended: the rest arrives, the queue is gone.
        let src = LocalSite::new(dir.path().join("src")).unwrap();
        src.delete(&bad_pack).unwrap();
        src.put(&bad_pack, b"pack two").unwrap();
        let r = drain(&queue, &target, &sources, &Silent).unwrap();
        assert_eq!((r.copied, r.nowhere, r.remaining), (2, 1, 0), "{r:?}");
        assert_eq!(target.get(&entry).unwrap(), b"entry");
        assert!(queue.pending().unwrap().is_empty());
        // A target that lost the vault is compared in full.
        let empty = LocalSite::new(dir.path().join("empty")).unwrap();
        let q2 = SiteQueue::open(dir.path(), empty.location()).unwrap();
        q2.record_missing(&entry).unwrap();
        let with_sig = sources.clone();
        with_sig[0]
            .put(layout::CONFIG_SIGNATURE, b"signature")
            .unwrap();
        let r = drain(&q2, &empty, &with_sig, &Silent);
        // The sources' config is not a real vault: the full comparison reports it and keeps the
        // queue.
        let r = r.unwrap();
        assert!(
            r.full_sync && r.remaining == 1 && !r.problems.is_empty(),
            "{r:?}"
        );
    }

    #[test]
    fn a_killed_rewrites_temporary_file_is_removed_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let queues = queue_dir(dir.path());
        std::fs::create_dir_all(&queues).unwrap();
        let suffix = embassy_core::fsutil::TEMP_SUFFIX;
        let old = queues.join(format!(".a.queue.0123456789abcdef.{suffix}"));
        let young = queues.join(format!(".b.queue.fedcba9876543210.{suffix}"));
        let queue = queues.join("a.queue");
        for p in [&old, &young, &queue] {
            std::fs::write(p, "+ x 0\n").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - STALE_TEMPORARY * 2;
        for p in [&old, &queue] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(long_ago)
                .unwrap();
        }
        recover_sessions(dir.path()).unwrap();
        assert!(!old.exists(), "a stale temporary file stayed");
        assert!(young.exists(), "a temporary file being written was removed");
        assert!(queue.exists(), "a queue was removed");
    }

    #[test]
    fn dead_sessions_become_full_sync_records_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sites = vec!["/a".to_string(), "/b".to_string()];
        let live = Session::begin(dir.path(), &sites).unwrap();
        assert_eq!(recover_sessions(dir.path()).unwrap(), 0);
        // A dead writer: its session file exists but nobody holds its lock.
        let dead = queue_dir(dir.path()).join("sessions/999-1-dead");
        std::fs::write(&dead, "/a\n/c\n").unwrap();
        assert_eq!(recover_sessions(dir.path()).unwrap(), 1);
        assert!(!dead.exists());
        for (site, full) in [("/a", true), ("/b", false), ("/c", true)] {
            let p = SiteQueue::open(dir.path(), site)
                .unwrap()
                .pending()
                .unwrap();
            assert_eq!(!p.full_sync.is_empty(), full, "{site}: {p:?}");
        }
        drop(live);
        assert_eq!(
            std::fs::read_dir(queue_dir(dir.path()).join("sessions"))
                .unwrap()
                .count(),
            0
        );
    }
}
