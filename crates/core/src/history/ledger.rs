//! The ledger: each dataset's signed, hash-chained, append-only history. A version exists only
//! once its ledger entry is stored; the entry is written last (invariant 7) and names the
//! manifest by hash, so a site cannot substitute, reorder or silently drop versions (invariant 4).
//!
//! ```text
//! "EMBLEDG1" | u32 LE length | CBOR Entry | Ed25519 signature (64) over "data-embassy ledger v1\0" | CBOR
//! path: ledger/<dataset>/<seq, 16 digits>-<object id>
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::layout;
use crate::format::manifest::{VersionKind, VersionStats};
use crate::id::ObjectId;
use crate::site::{Site, SiteError};

/// Magic at the start of every ledger entry.
pub const MAGIC: &[u8; 8] = b"EMBLEDG1";
const SIGNATURE_LABEL: &[u8] = b"data-embassy ledger v1";

/// What happened to the dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new version was stored.
    VersionAdded {
        /// Its manifest.
        manifest: ObjectId,
        /// Tree or stream.
        kind: VersionKind,
        /// When the source was captured: the version's recovery point.
        captured_at_ns: i64,
        /// Its counts.
        stats: VersionStats,
        /// Where a PostgreSQL base backup's WAL replay starts (format version 4): signed and
        /// readable without keys, so that garbage collection, `verify` and `wal-fetch` agree on
        /// which streamed WAL no kept version needs (`history::wal_retention`). Absent for
        /// other versions and for base backups written before format 4.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wal_start: Option<WalStart>,
    },
    /// A range of continuous changes (for example PostgreSQL WAL) after a version was stored.
    LogRangeAdded {
        /// The manifest of the stored range.
        manifest: ObjectId,
        /// Timeline (PostgreSQL) or 0.
        timeline: u32,
        /// First position covered (for example an LSN).
        start: u64,
        /// Position just after the last byte covered.
        end: u64,
        /// Capture time of the newest change in the range.
        captured_at_ns: i64,
        /// A timeline history file (a `wal/` log object of kind history, format 8), named by
        /// the first anchor a streamer makes after storing it: it anchors that object like the
        /// range's, so the history file stays valid after its signer is revoked or fenced (red
        /// team 9), and readers serve only anchored history files (red team 10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        history: Option<ObjectId>,
    },
    /// Versions were removed by retention or by an approved `forget`; their entries stay in the
    /// history. It takes effect only when its signer holds the `delete` right and every version
    /// it deletes is one the recorded `policy` does not keep at `as_of_ns` (with the dataset's
    /// legal minimum age in force), or carries approvals by `config.approvals_required` distinct
    /// pinned approvers (the deletion rules, `history::deletion`); otherwise it is a no-op.
    VersionsDeleted {
        /// Sequence numbers of the removed versions' entries.
        seqs: Vec<u64>,
        /// Why (the retention rule or the approval).
        reason: String,
        /// The retention policy applied, when the deletion is retention's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<crate::history::retention::RetentionPolicy>,
        /// When the policy was evaluated (ns since the epoch); not after the entry's time.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        as_of_ns: Option<i64>,
        /// The full signed bytes of the approval objects (`approvals/<dataset>/<id>`) for
        /// versions deleted outside the policy: verifiers judge them from the entry alone.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvals: Vec<serde_bytes::ByteBuf>,
    },
    /// The dataset's legal minimum age changes to `min_age_secs` (the configuration's stays a
    /// floor). Signed by the root key; lowering it also needs `approvals` (full signed approval
    /// objects) by `config.approvals_required` distinct pinned approvers.
    MinAgeChanged {
        /// The new minimum age in seconds.
        min_age_secs: u64,
        /// Approvals of a lowering (their full signed bytes); empty when raising.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvals: Vec<serde_bytes::ByteBuf>,
    },
    /// A key may sign this dataset's entries from now on. Signed by the root key.
    SignerAdded {
        /// Ed25519 public key.
        #[serde(with = "serde_bytes")]
        key: [u8; 32],
        /// What the key is for (a host name, "agent", ...).
        role: String,
        /// What the key may sign ([`Right`]).
        rights: Vec<Right>,
    },
    /// The dataset's reader key moved to a new epoch: new objects are sealed to `reader_public`;
    /// old ones stay readable with the old epoch's key. Signed by the root key.
    ReaderKeyRotated {
        /// The new key epoch.
        epoch: u32,
        /// The new reader public key.
        #[serde(with = "serde_bytes")]
        reader_public: [u8; 32],
    },
    /// A key may no longer sign this dataset's entries. Signed by the root key.
    SignerRevoked {
        /// Ed25519 public key.
        #[serde(with = "serde_bytes")]
        key: [u8; 32],
        /// Why.
        reason: String,
    },
    /// A standby restored from this dataset (PostgreSQL) was promoted and now accepts writes
    /// on a new timeline: the dataset's history forks there.
    Promoted {
        /// The timeline the promoted server writes on.
        timeline: u32,
        /// Where its new timeline forks: the end of the WAL it replayed before promotion.
        lsn: u64,
        /// The host it runs on.
        host: String,
        /// Its data directory.
        data_dir: String,
        /// Set only when the operator promoted it short of the WAL the ledger anchored
        /// (`--accept-data-loss`): the anchored end, so WAL from `lsn` to here was lost to it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data_lost_to: Option<u64>,
        /// Approvals of this promotion (their full signed bytes, format 4): with
        /// `config.promotion_approvals` of them it is authoritative and fences the dataset's
        /// earlier writers (`history::promotion`). Empty when none were needed or given.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        approvals: Vec<serde_bytes::ByteBuf>,
        /// The WAL log object of the older timeline the promoted server replayed up to its
        /// switch point (format 8): it anchors that WAL, the only WAL of writers the promotion
        /// fences that stays valid without an anchor of their own (`docs/format.md` §9b).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replayed: Option<ReplayedWal>,
    },
    /// A restore drill ran (format version 3): the newest version was restored into a scratch
    /// place and checked. Needs the `drill` right, which sealing credentials never hold.
    DrillRecorded(Box<DrillResult>),
    /// A consistency group's restore point (format 3): its member datasets' positions at one
    /// moment, so a restore can bring every member back to the same instant. Stored in the
    /// group's own ledger ([`crate::format::layout::group_ledger`]), never in a member's.
    GroupPoint(GroupPoint),
}

/// Where a PostgreSQL base backup's WAL replay starts: the `START WAL LOCATION` of its
/// `backup_label` and the timeline it was taken on. Recovery from the backup reads no WAL
/// before `lsn` (on any timeline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalStart {
    /// The timeline the base backup was taken on.
    pub timeline: u32,
    /// The WAL position replay starts at (the checkpoint's redo point).
    pub lsn: u64,
}

/// What a `group_point` entry records: the group, its point's number and when it was taken, and
/// where each member stood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPoint {
    /// The group's name (as in embassy.toml).
    pub group: String,
    /// The point's number in the group, from 1 (in its restore point names).
    pub number: u64,
    /// When the restore points were created (ns since the Unix epoch): the moment the point
    /// stands for.
    pub taken_at_ns: i64,
    /// Each member, in the group's order.
    pub members: Vec<GroupMember>,
}

/// Where one member of a consistency group stood at a group point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GroupMember {
    /// A PostgreSQL dataset: a named restore point in its WAL.
    Postgres {
        /// The dataset.
        dataset: String,
        /// The restore point's name (`pg_create_restore_point`), recovery's target.
        restore_point: String,
        /// The WAL position just after the restore point's record.
        lsn: u64,
        /// The server's timeline then.
        timeline: u32,
    },
    /// A file tree or stream dataset: the version current at the point.
    Version {
        /// The dataset.
        dataset: String,
        /// The version's ledger entry (its identity).
        entry: ObjectId,
        /// Its number, for people.
        number: u64,
    },
}

impl GroupMember {
    /// The member's dataset.
    pub fn dataset(&self) -> &str {
        match self {
            GroupMember::Postgres { dataset, .. } | GroupMember::Version { dataset, .. } => dataset,
        }
    }
}

/// What a restore drill found, as signed into the ledger (`drill_recorded`, format §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillResult {
    /// Sequence number of the version's `version_added` entry the drill restored.
    pub version_seq: u64,
    /// That version's manifest.
    pub manifest: ObjectId,
    /// PostgreSQL: the WAL position the restored server reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    /// When the drill started (ns since the epoch).
    pub started_ns: i64,
    /// Recovery time: from the start until the tree was complete or the database accepted a
    /// write, in milliseconds.
    pub rto_ms: u64,
    /// Recovery point: how far the data restored lies behind the newest data the ledger
    /// acknowledged when the drill started, in milliseconds.
    pub rpo_ms: u64,
    /// Every check run, in order.
    pub checks: Vec<DrillCheck>,
    /// True when every check passed.
    pub passed: bool,
    /// The host the drill ran on.
    pub host: String,
    /// The program that ran it (`embassy 0.x.y`).
    pub tool: String,
}

/// One check of a drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillCheck {
    /// What was checked (`bytes`, `pg_amcheck`, `sql:<name>`, ...).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it found, in a line.
    pub detail: String,
}

/// The WAL log object a promoted server replayed last on the timeline it left (named by a
/// `promoted` entry, format 8): the newest piece or segment holding the switch point, which
/// anchors it and, through `prev`, the WAL after the previous anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedWal {
    /// The log object's id.
    pub object: ObjectId,
    /// Its timeline (the one the promotion left).
    pub timeline: u32,
    /// First LSN it holds.
    pub start: u64,
    /// The LSN just after its last byte (at or past the switch point).
    pub end: u64,
}

impl Event {
    /// True for events only the root key may sign.
    pub fn needs_root(&self) -> bool {
        matches!(
            self,
            Event::SignerAdded { .. }
                | Event::SignerRevoked { .. }
                | Event::ReaderKeyRotated { .. }
                | Event::MinAgeChanged { .. }
        )
    }

    /// A short name for people.
    pub fn name(&self) -> &'static str {
        match self {
            Event::VersionAdded { .. } => "version added",
            Event::LogRangeAdded { .. } => "log range added",
            Event::VersionsDeleted { .. } => "versions deleted",
            Event::SignerAdded { .. } => "signer added",
            Event::SignerRevoked { .. } => "signer revoked",
            Event::ReaderKeyRotated { .. } => "reader key rotated",
            Event::Promoted { .. } => "promoted",
            Event::MinAgeChanged { .. } => "min age changed",
            Event::DrillRecorded(_) => "drill recorded",
            Event::GroupPoint(_) => "group point",
        }
    }
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The dataset.
    pub dataset: String,
    /// Position in the history, from 1.
    pub seq: u64,
    /// Id of entry `seq - 1` (none for the first).
    pub prev: Option<ObjectId>,
    /// When the entry was made, ns since the Unix epoch.
    pub time_ns: i64,
    /// Ed25519 public key of the signer; must be pinned in the vault configuration.
    #[serde(with = "serde_bytes")]
    pub signer: [u8; 32],
    /// What happened.
    pub event: Event,
}

/// The entry with sequence number `seq` in a verified history (entries are numbered from 1,
/// so it is `history[seq - 1]`); `None` for sequence 0, which no entry has, and beyond the end.
pub fn entry_at(history: &[Record], seq: u64) -> Option<&Record> {
    let index = usize::try_from(seq.checked_sub(1)?).ok()?;
    history.get(index)
}

/// A verified entry with where it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Object id of the entry.
    pub id: ObjectId,
    /// The entry.
    pub entry: Entry,
    /// Why verifiers refused its effect, when it is a no-op (a deletion or minimum-age change
    /// that breaks the rules: see `rights::Verdict::Noop`): it holds its sequence
    /// number, entries continuing it count, but it changes nothing.
    pub refused: Option<String>,
}

impl Record {
    /// An accepted entry with its effect.
    pub fn new(id: ObjectId, entry: Entry) -> Self {
        Self {
            id,
            entry,
            refused: None,
        }
    }
}

/// Encodes and signs an entry.
pub fn encode(entry: &Entry, key: &ed25519_dalek::SigningKey) -> Vec<u8> {
    crate::format::framing::encode_signed(MAGIC, SIGNATURE_LABEL, entry, key)
}

/// The key epoch a verified history is at (0 until the first rotation).
pub fn key_epoch(history: &[Record]) -> u32 {
    history
        .iter()
        .filter_map(|r| match r.entry.event {
            Event::ReaderKeyRotated { epoch, .. } => Some(epoch),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Bytes of encoded entries this process keeps decoded, at most ([`decoded`]). A long-running
/// agent reads a dataset's whole ledger at every backup, retention and collection; without the
/// cache every entry was fetched again each time (one GET per entry from an S3 site, for ever
/// more entries). Once full, further entries are decoded and not kept (no eviction: the oldest
/// entries, which every load reads, stay), so memory stays bounded whatever the ledger's length.
pub const DECODED_CACHE_BYTES: usize = 8 << 20;

/// The entries decoded in this process while [`CachedReads`] was on, by site and object id.
struct DecodedCache {
    entries: std::collections::HashMap<(String, ObjectId), Entry>,
    bytes: usize,
}

fn decoded_cache() -> &'static std::sync::Mutex<DecodedCache> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<DecodedCache>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        std::sync::Mutex::new(DecodedCache {
            entries: std::collections::HashMap::new(),
            bytes: 0,
        })
    })
}

std::thread_local! {
    static CACHED_READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// While alive, history loads on this thread reuse the entries this process decoded before
/// from the same site (and keep what they decode). Only a writer's own paths take it (the
/// agent's backups, retention and collection): they need the true history, which an entry
/// decoded from bytes that hashed to its id is. Anything that judges a site (`verify`,
/// `status`, sync, repair) reads every entry from that site, so that a copy damaged or replaced
/// after this process decoded a good one is still found (the reverted process-wide cache hid a
/// tampered copy from `status`).
pub struct CachedReads(());

impl CachedReads {
    /// Starts cached reads on this thread until the returned guard is dropped.
    pub fn begin() -> CachedReads {
        CACHED_READS.with(|f| f.set(f.get().saturating_add(1)));
        CachedReads(())
    }
}

impl Drop for CachedReads {
    fn drop(&mut self) {
        CACHED_READS.with(|f| f.set(f.get().saturating_sub(1)));
    }
}

/// True while a [`CachedReads`] guard lives on this thread.
pub fn reads_cached() -> bool {
    CACHED_READS.with(|f| f.get() > 0)
}

/// The entry whose encoded bytes, read from `site`, hashed to `id`, when this process decoded
/// it under [`CachedReads`] before. An object id is the hash of the object's bytes, so that
/// entry is what the copy named `id` decoded to; what the entry may do is judged afresh by
/// every load.
pub fn decoded(site: &str, id: &ObjectId) -> Option<Entry> {
    let cache = decoded_cache().lock().unwrap_or_else(|e| e.into_inner());
    cache.entries.get(&(site.to_string(), *id)).cloned()
}

/// Decodes `bytes` read from `site`, which the caller checked hash to `id` ([`decode`]), and
/// keeps the entry for [`decoded`] while the cache has room.
pub fn decode_and_keep(site: &str, id: &ObjectId, path: &str, bytes: &[u8]) -> Result<Entry> {
    let entry = decode(path, bytes)?;
    let mut cache = decoded_cache().lock().unwrap_or_else(|e| e.into_inner());
    let key = (site.to_string(), *id);
    if cache.bytes + bytes.len() <= DECODED_CACHE_BYTES && !cache.entries.contains_key(&key) {
        cache.bytes += bytes.len();
        cache.entries.insert(key, entry.clone());
    }
    Ok(entry)
}

/// Decodes an entry and checks that it is signed by the key it names. Whether that key may sign
/// is decided by the acceptance rules (`history::accept`), which know the signer set at that
/// point of the chain.
pub fn decode(path: &str, bytes: &[u8]) -> Result<Entry> {
    crate::format::framing::decode_signed(
        MAGIC,
        SIGNATURE_LABEL,
        "a ledger entry",
        path,
        bytes,
        |e: &Entry| e.signer,
    )
}

// The history's acceptance rules live in their own module; these names stay here for callers.
/// One right the root grants a signer of a dataset's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    /// Sign `version_added`, `promoted` and `group_point` entries.
    AddVersions,
    /// Sign `log_range_added` entries (streamed WAL anchors).
    StreamWal,
    /// Sign `versions_deleted` entries (still bound by the policy, minimum age and approvals).
    Delete,
    /// Sign `drill_recorded` entries (format version 3). Never a sealing credential's: a key
    /// that cannot read must not vouch that the data reads back.
    Drill,
}

impl Right {
    /// Every right (what the keys in `config.signers` hold).
    pub const ALL: [Right; 4] = [
        Right::AddVersions,
        Right::StreamWal,
        Right::Delete,
        Right::Drill,
    ];

    /// The rights of a sealing credential: add versions and stream WAL, plus delete when the
    /// root says so (`embassy keys issue --sealing --may-delete`).
    pub fn sealing(may_delete: bool) -> Vec<Right> {
        let mut rights = vec![Right::AddVersions, Right::StreamWal];
        if may_delete {
            rights.push(Right::Delete);
        }
        rights
    }

    /// The right's name as stored.
    pub fn name(self) -> &'static str {
        match self {
            Right::AddVersions => "add_versions",
            Right::StreamWal => "stream_wal",
            Right::Delete => "delete",
            Right::Drill => "drill",
        }
    }

    /// The right an event needs, or `None` for events only the root key signs.
    pub fn needed_for(event: &Event) -> Option<Right> {
        match event {
            Event::VersionAdded { .. } | Event::Promoted { .. } | Event::GroupPoint(_) => {
                Some(Right::AddVersions)
            }
            Event::LogRangeAdded { .. } => Some(Right::StreamWal),
            Event::VersionsDeleted { .. } => Some(Right::Delete),
            Event::DrillRecorded(_) => Some(Right::Drill),
            _ => None,
        }
    }
}

impl std::fmt::Display for Right {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The folder of this host's ledger locks, once set by [`use_lock_folder`].
static LOCK_FOLDER: std::sync::RwLock<Option<std::path::PathBuf>> = std::sync::RwLock::new(None);

/// Environment variable: how long an append waits for another writer's ledger lock, in seconds
/// (default [`DEFAULT_LOCK_TIMEOUT_SECS`]).
pub const LOCK_TIMEOUT_ENV: &str = "EMBASSY_LEDGER_LOCK_TIMEOUT";

/// How long an append waits for another writer's ledger lock unless [`LOCK_TIMEOUT_ENV`] says.
pub const DEFAULT_LOCK_TIMEOUT_SECS: u64 = 600;

/// Keeps this process's ledger locks in `dir` (the CLI and the agent use `<state folder>/locks`,
/// so a CLI run with the agent's state folder takes turns with the agent). Without it, the
/// default state folder's `locks` is used.
pub fn use_lock_folder(dir: std::path::PathBuf) {
    *LOCK_FOLDER.write().unwrap_or_else(|p| p.into_inner()) = Some(dir);
}

/// The folder of the ledger locks: the one set with [`use_lock_folder`], else `locks` in the
/// default state folder.
pub fn lock_folder() -> Option<std::path::PathBuf> {
    LOCK_FOLDER
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .or_else(|| crate::fsutil::default_state_dir().map(|d| d.join("locks")))
}

/// A host-wide advisory lock (flock) on one dataset's ledger at one site, held while an entry
/// is appended: writers running at the same time on one host (an agent's streamer and its
/// base backups) never race for a sequence number. The lock file lives in the lock folder
/// ([`lock_folder`], private to its user: created 0700, never chmod'ed), is opened without
/// following links, and holds the pid of the writer holding it. A writer waits at most
/// [`LOCK_TIMEOUT_ENV`] seconds, then fails naming the holder. Best effort: without a lock
/// folder (no home, no permission) appends proceed as before, guarded only by the
/// list-put-list check. Writers on different hosts are not covered: one writer host per dataset;
/// should two race all the same, the list-put-list check fails the one that sees the other's
/// entry after its put, and that one withdraws its own ([`append_ignoring`]).
struct HostLedgerLock(Option<std::fs::File>);

impl HostLedgerLock {
    fn take(location: &str, dataset: &str) -> Result<Self> {
        use std::io::{Read, Seek, Write};
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        use std::os::unix::io::AsRawFd;
        let Some(dir) = lock_folder() else {
            return Ok(HostLedgerLock(None));
        };
        if std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .is_err()
        {
            return Ok(HostLedgerLock(None));
        }
        // A folder someone else created (or made writable) would let them own the lock: refuse
        // it, naming the way out. Existing folders are never chmod'ed.
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(&dir)
                .map_err(|e| Error::io(format!("reading the lock folder {}", dir.display()), e))?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
                return Err(Error::invalid(format!(
                    "the ledger lock folder {} is not a private folder of this user (owner uid \
                     {}, mode {:o}): another user could hold or jam the lock; remove it (it is \
                     made again, mode 0700) or use a private --state-dir",
                    dir.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                )));
            }
        }
        let name = blake3::hash(format!("{location}\0{dataset}").as_bytes()).to_hex();
        let path = dir.join(format!("{}.lock", &name[..32]));
        let mut file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .mode(0o600)
            .open(&path)
        {
            // A FIFO or device there would make the pid write below block for ever.
            Ok(f) if !f.metadata().is_ok_and(|m| m.is_file()) => {
                return Err(Error::invalid(format!(
                    "the ledger lock {} is not a regular file: remove it",
                    path.display()
                )))
            }
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(Error::invalid(format!(
                    "the ledger lock {} is a symbolic link, which is never followed: remove it",
                    path.display()
                )))
            }
            Err(_) => return Ok(HostLedgerLock(None)),
        };
        let wait = std::env::var(LOCK_TIMEOUT_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map_or(
                std::time::Duration::from_secs(DEFAULT_LOCK_TIMEOUT_SECS),
                std::time::Duration::from_secs_f64,
            );
        let started = std::time::Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own, without blocking.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => {}
                _ => return Ok(HostLedgerLock(None)),
            }
            if started.elapsed() >= wait {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "an unknown pid".to_string()
                } else {
                    format!("pid {}", crate::text::escape(holder))
                };
                return Err(Error::Locked {
                    what: format!("dataset {dataset}: the ledger lock {}", path.display()),
                    holder: format!("another writer on this host ({holder})"),
                    waited_secs: wait.as_secs_f64(),
                    way_out: format!(
                        "wait for it to finish or stop it ({LOCK_TIMEOUT_ENV} sets the wait, in \
                         seconds)"
                    ),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Name the holder for whoever waits next.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "{}", std::process::id());
        Ok(HostLedgerLock(Some(file)))
    }
}

/// The host ledger locks an append through `site` takes: one per site it writes to (each member
/// of a site that stands for several), by the site's location (a folder by its absolute path),
/// in one order. So two writers of one dataset on this host take turns whenever they share a
/// site, whatever else they write to and in whatever order their sites were given (an agent
/// writing to A and B, and `embassy backup --site B --site A` or `--site A` beside it); keyed by
/// the whole "A + B" they did not.
fn host_ledger_locks(site: &dyn Site, dataset: &str) -> Result<Vec<HostLedgerLock>> {
    let members = site.members();
    let mut locations: Vec<String> = if members.is_empty() {
        vec![site.location().to_string()]
    } else {
        members.iter().map(|m| m.location().to_string()).collect()
    };
    for l in &mut locations {
        let folder = l.strip_prefix("file://").unwrap_or(l);
        if !folder.contains("://") {
            if let Ok(absolute) = std::path::absolute(folder) {
                *l = absolute.display().to_string();
            }
        }
    }
    locations.sort();
    locations.dedup();
    locations
        .iter()
        .map(|l| HostLedgerLock::take(l, dataset))
        .collect()
}

impl Drop for HostLedgerLock {
    fn drop(&mut self) {
        if let Some(f) = &self.0 {
            use std::os::unix::io::AsRawFd;
            // SAFETY: unlocking our own descriptor (closing it would too).
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        }
    }
}

/// Appends an entry after `head` (the last verified record, if any) and returns it.
pub fn append(
    site: &dyn Site,
    key: &ed25519_dalek::SigningKey,
    dataset: &str,
    head: Option<&Record>,
    event: Event,
) -> Result<Record> {
    append_ignoring(site, key, dataset, head, &[], event)
}

/// [`append`], ignoring rejected entries (see [`History::rejected_ids`]) at the new sequence.
pub fn append_ignoring(
    site: &dyn Site,
    key: &ed25519_dalek::SigningKey,
    dataset: &str,
    head: Option<&Record>,
    ignore: &[ObjectId],
    event: Event,
) -> Result<Record> {
    // Writers of one dataset on this host (the WAL streamer, base backups, promotion, prune)
    // take turns: two appends at the same sequence number would fork the history for good.
    let _turn = host_ledger_locks(site, dataset)?;
    let seq = head.map_or(1, |h| h.entry.seq + 1);
    let entry = Entry {
        dataset: dataset.to_string(),
        seq,
        prev: head.map(|h| h.id),
        // Never before the predecessor: verifiers refuse an entry dated before the one it follows.
        time_ns: crate::format::config::now_unix_nanos()
            .max(head.map_or(i64::MIN, |h| h.entry.time_ns)),
        signer: key.verifying_key().to_bytes(),
        event,
    };
    let bytes = encode(&entry, key);
    let id = ObjectId::of(&bytes);
    let seq_prefix = format!("{}{seq:016}-", layout::ledger_prefix(dataset));
    let others = |site: &dyn Site| -> Result<Vec<String>, SiteError> {
        Ok(site
            .list(&seq_prefix)?
            .into_iter()
            .map(|i| i.path)
            .filter(|p| {
                layout::id_in_path(p).is_some_and(|other| other != id && !ignore.contains(&other))
            })
            .collect())
    };
    let concurrent = |paths: Vec<String>| {
        Error::History {
        dataset: dataset.into(),
        problem: format!(
            "another writer added entry {seq} at the same time ({}); only one writer per dataset may run",
            paths.join(", ")
        ),
    }
    };
    let before = others(site)?;
    if !before.is_empty() {
        return Err(concurrent(before));
    }
    let ours = layout::ledger_entry(dataset, seq, &id);
    site.put(&ours, &bytes)?;
    let after = others(site)?;
    if !after.is_empty() {
        // A version (or any other entry) that raced a deletion to this sequence number wins:
        // verifiers reject the deletion (see `crate::history`).
        let ours_wins = !matches!(entry.event, Event::VersionsDeleted { .. })
            && after.iter().all(|p| {
                site.get(p)
                    .ok()
                    .and_then(|b| decode(p, &b).ok())
                    .is_some_and(|e| matches!(e.event, Event::VersionsDeleted { .. }))
            });
        if !ours_wins {
            // Another writer's entry took this sequence number too (a writer this host's lock
            // does not reach: another host, another state folder). Ours is not acknowledged, so
            // it is withdrawn: left there, two acceptable entries at one sequence number are a
            // fork no rule decides (two entries of one signer), which would end every fresh
            // reader's history before them, the other writer's acknowledged version with it.
            // Whichever writer sees the other after its own put withdraws, so at most one of
            // two racing entries stays (none, when both saw each other: both writers fail).
            // The withdrawal is signed first (format 6): a site that keeps the entry all the
            // same holds noise every reader recognises, not a fork (`history::withdrawal`).
            let lost_to: Vec<ObjectId> =
                after.iter().filter_map(|p| layout::id_in_path(p)).collect();
            let mut e = concurrent(after);
            let signed = crate::history::withdrawal::write(site, key, dataset, seq, id, lost_to);
            if let Err(why) = site.delete(&ours) {
                if let Error::History { problem, .. } = &mut e {
                    problem.push_str(&match &signed {
                        Ok(_) => format!(
                            "; this writer's own entry {ours} could not be deleted ({why}), but \
                             its withdrawal is stored: readers take it for noise"
                        ),
                        Err(not) => format!(
                            "; this writer's own entry {ours} could not be withdrawn (deleting \
                             it: {why}; storing its withdrawal: {not}): the history is forked \
                             at entry {seq} until it is removed"
                        ),
                    });
                }
            }
            return Err(e);
        }
    }
    Ok(Record::new(id, entry))
}
