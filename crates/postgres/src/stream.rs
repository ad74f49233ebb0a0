//! The WAL streamer: receive WAL over a physical replication slot, seal it into small log
//! objects at least every `max_delay` (and on size), and report the flush position to
//! PostgreSQL only once an object is durable on the sites the vault's policy requires, so the
//! slot keeps everything not yet safe.
//!
//! Restart resumes from the newest durable log object (no gap; a duplicate range after a crash
//! between "put" and "flush reported" is harmless: assembly takes either copy). Whole segments
//! are written as segment objects straight from memory (no reader key needed) and anchored in
//! the ledger with `LogRangeAdded`; while WAL flows, the newest piece is anchored at least every
//! `anchor_interval` too.
//!
//! Here: the receiving session (resume point, timelines, sealing pieces, flush reports);
//! [`background`]: the compaction and anchoring thread.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::wal_log::{LogKind, LogSpec};
use embassy_core::history::ledger;
use embassy_core::id::ObjectId;
use embassy_core::keys::DatasetKeys;
use embassy_core::site::Site;

use crate::error::{PgError, Result};
use crate::lsn::{Lsn, SEGMENT_SIZE};
use crate::replication::{ConnConfig, ReplicationConnection, ReplicationMessage};
use crate::wal;

mod background;
use background::{Background, Job};

/// How the streamer runs.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// The dataset the WAL belongs to.
    pub dataset: String,
    /// Where PostgreSQL is.
    pub conn: ConnConfig,
    /// The physical replication slot.
    pub slot: String,
    /// Create the slot (with RESERVE_WAL) when it does not exist.
    pub create_slot: bool,
    /// Seal buffered WAL at the latest this long after its first byte arrived.
    pub max_delay: Duration,
    /// Seal when this much WAL is buffered.
    pub seal_bytes: usize,
    /// Anchor the chain in the ledger at least this often while WAL flows.
    pub anchor_interval: Duration,
    /// Send a status update at least this often (well below `wal_sender_timeout`).
    pub status_interval: Duration,
    /// Stop reading from PostgreSQL while this much is buffered and not yet durable (the slot
    /// holds the rest on the server).
    pub max_buffer: usize,
    /// Write compacted whole-segment objects (and anchor them in the ledger).
    pub compact_segments: bool,
    /// Append `<end lsn> <unix ns>` for every durable object to this file (benchmarks).
    pub durable_log: Option<PathBuf>,
    /// Reconnect after connection failures instead of returning.
    pub reconnect: bool,
}

impl StreamConfig {
    /// Defaults: seal every 200 ms or 8 MiB, anchor every 60 s, status every 10 s.
    pub fn new(dataset: &str, conn: ConnConfig, slot: &str) -> Self {
        StreamConfig {
            dataset: dataset.to_string(),
            conn,
            slot: slot.to_string(),
            create_slot: false,
            max_delay: Duration::from_millis(200),
            seal_bytes: 8 * 1024 * 1024,
            anchor_interval: Duration::from_secs(60),
            status_interval: Duration::from_secs(10),
            max_buffer: 256 * 1024 * 1024,
            compact_segments: true,
            durable_log: None,
            reconnect: true,
        }
    }
}

/// Live figures of a running streamer (for status pages and the agent).
#[derive(Debug, Clone, Default)]
pub struct StreamProgress {
    /// Timeline being streamed.
    pub timeline: u32,
    /// End of WAL received from PostgreSQL.
    pub received: Lsn,
    /// End of WAL durable in the vault (and reported to PostgreSQL as flushed).
    pub durable: Lsn,
    /// The server's end of WAL, as it last said.
    pub server_end: Lsn,
    /// When the newest durable byte was received (ns since the Unix epoch).
    pub durable_captured_at_ns: i64,
    /// Log objects written.
    pub objects: u64,
    /// WAL bytes made durable.
    pub bytes: u64,
    /// The last error (site down, connection lost), if the newest attempt failed.
    pub last_error: Option<String>,
}

/// The WAL streamer.
pub struct WalStreamer;

/// Where a stream resumes.
#[derive(Debug, Clone, Copy)]
struct Resume {
    timeline: u32,
    pos: Lsn,
    prev: Option<ObjectId>,
}

/// Segment bytes collected in memory for compaction.
struct SegmentBuf {
    timeline: u32,
    start: u64,
    bytes: Vec<u8>,
    prev_segment: Option<ObjectId>,
}

struct Session<'a> {
    cfg: &'a StreamConfig,
    site: Arc<dyn Site>,
    keys: Arc<DatasetKeys>,
    signer: ed25519_dalek::SigningKey,
    progress: Arc<Mutex<StreamProgress>>,
    durable_log: Option<std::fs::File>,
    jobs: Option<std::sync::mpsc::SyncSender<Job>>,
    segment: Option<SegmentBuf>,
    keyring: &'a Keyring,
    signers: wal::WalSigners,
    system_id: Arc<AtomicU64>,
}

impl WalStreamer {
    /// Streams until `stop` is set (or, with `reconnect` off, until the connection fails).
    /// Configuration errors (password, slot, wal_level, ...) return at once whatever
    /// `reconnect` says: retrying cannot fix them.
    pub fn run(
        cfg: &StreamConfig,
        vault: &Vault,
        keyring: &Keyring,
        stop: &AtomicBool,
    ) -> Result<StreamProgress> {
        Self::run_with_progress(
            cfg,
            vault,
            keyring,
            stop,
            Arc::new(Mutex::new(StreamProgress::default())),
        )
    }

    /// [`WalStreamer::run`], publishing live figures into `progress`.
    pub fn run_with_progress(
        cfg: &StreamConfig,
        vault: &Vault,
        keyring: &Keyring,
        stop: &AtomicBool,
        progress: Arc<Mutex<StreamProgress>>,
    ) -> Result<StreamProgress> {
        embassy_core::format::layout::check_dataset_name(&cfg.dataset)?;
        crate::replication::check_slot_name(&cfg.slot)?;
        let history = vault.history_full(&cfg.dataset)?;
        // Anchoring after a gap or a fork would hide the entries beyond it for good.
        history.check_appendable(&cfg.dataset)?;
        let keys = keyring.dataset_at(&cfg.dataset, ledger::key_epoch(&history.records))?;
        let signer = keyring.signer()?;
        let signers = wal::WalSigners::new(vault.wal_authority(&history.records), &cfg.dataset);
        // The streamer's key must hold `stream_wal` at the head (WalAuthority knows the rights).
        if !signers
            .authority()
            .active_at_head(&signer.verifying_key().to_bytes())
        {
            return Err(PgError::Vault(embassy_core::Error::Refused {
                kind: embassy_core::ErrorKind::Keys,
                problem: format!(
                    "signing key {} may not add to dataset {}: it was revoked or never added; \
                     ask the root for a new sealing credential",
                    hex::encode(&signer.verifying_key().to_bytes()[..8]),
                    cfg.dataset
                ),
                way_out: embassy_core::error::WayOut::Grant {
                    dataset: cfg.dataset.clone(),
                    grant: embassy_core::error::Grant::Seal,
                },
            }));
        }
        let durable_log = match &cfg.durable_log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| PgError::Invalid(format!("durable log {}: {e}", p.display())))?,
            ),
            None => None,
        };
        let mut s = Session {
            cfg,
            site: vault.site().clone(),
            keys,
            signer,
            progress,
            durable_log,
            jobs: None,
            segment: None,
            keyring,
            signers,
            system_id: Arc::new(AtomicU64::new(0)),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(4);
        let background = Background {
            vault: vault.clone(),
            site: s.site.clone(),
            keys: s.keys.clone(),
            signer: s.signer.clone(),
            dataset: cfg.dataset.clone(),
            anchor_interval: cfg.anchor_interval,
            progress: s.progress.clone(),
            head: history.records.last().cloned(),
            rejected: history.rejected_ids(),
            // The first piece is anchored at once: after a switch of credentials, the previous
            // streamer's unanchored tail is covered while its key is still active.
            last_anchor: Instant::now()
                .checked_sub(cfg.anchor_interval)
                .unwrap_or_else(Instant::now),
            anchored_to: 0,
            pending: None,
            last_segment: None,
            system_id: s.system_id.clone(),
            history: None,
        };
        let worker = std::thread::Builder::new()
            .name("wal-compactor".into())
            .spawn(move || background.run(rx))
            .map_err(PgError::Io)?;
        s.jobs = Some(tx);
        let mut backoff = Duration::from_millis(500);
        loop {
            match s.stream_once(stop) {
                Ok(()) => break,
                Err(e) if cfg.reconnect && retryable(&e) && !stop.load(Ordering::Relaxed) => {
                    s.set_error(Some(e.to_string()));
                    eprintln!("embassy pg stream: {e}; reconnecting in {backoff:?}");
                    sleep_unless(stop, backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    s.jobs = None;
                    let _ = worker.join();
                    return Err(e);
                }
            }
        }
        // The background thread anchors what is pending and ends when its queue closes.
        s.jobs = None;
        let _ = worker.join();
        let p = s.progress.lock().map(|p| p.clone()).unwrap_or_default();
        Ok(p)
    }
}

fn retryable(e: &PgError) -> bool {
    matches!(
        e,
        PgError::Io(_) | PgError::Protocol(_) | PgError::Connect { .. } | PgError::Site(_)
    ) || matches!(e, PgError::Server { code, .. } if code.starts_with("57") || code.starts_with("08"))
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
    }
}

fn now_ns() -> i64 {
    embassy_core::format::config::now_unix_nanos()
}

impl Session<'_> {
    fn set_error(&self, e: Option<String>) {
        if let Ok(mut p) = self.progress.lock() {
            p.last_error = e;
        }
    }

    /// Where to resume: after the newest durable object, or at the slot's start.
    fn resume_point(
        &mut self,
        conn: &mut ReplicationConnection,
        server_timeline: u32,
    ) -> Result<Resume> {
        let listing = wal::list(self.site.as_ref(), &self.cfg.dataset)?;
        // Check the newest object before trusting its position: a forged name must not make the
        // stream skip WAL. An object no valid signer made (a revoked key's, noise) is passed
        // over, so it cannot stop the stream either.
        let mut newest_valid = None;
        let mut first_err = None;
        // WAL of a timeline that is not in this server's history (a fork made elsewhere, by a
        // thief's standby say, above the server's timeline or beside its lineage): asking for
        // it would be refused for good ("not in this server's history"), so the stream resumes
        // on the server's own lineage (red teams 12 and 13).
        let lineage: Vec<u32> = if server_timeline > 1 {
            let (_, history) = conn.timeline_history(server_timeline)?;
            crate::fork::history_edges(&String::from_utf8_lossy(&history))
                .into_iter()
                .map(|(timeline, _)| timeline)
                .chain(std::iter::once(server_timeline))
                .collect()
        } else {
            vec![1]
        };
        let mut elsewhere = None;
        for candidate in listing.newest_first() {
            if !lineage.contains(&candidate.name.timeline) {
                elsewhere.get_or_insert(candidate.name.timeline);
                continue;
            }
            match wal::read_checked(self.site.as_ref(), candidate, &self.signers) {
                Ok((h, _)) => {
                    newest_valid = Some((candidate, h));
                    break;
                }
                Err(e) => {
                    eprintln!("embassy pg stream: passing over {}: {e}", candidate.path);
                    first_err.get_or_insert(e);
                }
            }
        }
        if newest_valid.is_none() {
            if let Some(e) = first_err {
                return Err(e);
            }
        }
        if let Some(t) = elsewhere {
            eprintln!(
                "embassy pg stream: the vault holds WAL of timeline {t}, which is not in this \
                 server's history (timelines {lineage:?}): a fork made elsewhere; resuming on \
                 this server's lineage (a restore does not follow that fork unasked while it \
                 leaves out WAL of this one)"
            );
        }
        if let Some((newest, h)) = newest_valid {
            let server = self.system_id.load(Ordering::Relaxed);
            if h.system_id != 0 && h.system_id != server {
                return Err(PgError::OtherCluster {
                    dataset: self.cfg.dataset.clone(),
                    stored: h.system_id,
                    server,
                });
            }
            let resume = Resume {
                timeline: h.timeline,
                pos: Lsn(h.end),
                prev: Some(newest.name.id),
            };
            self.load_segment(&listing, resume);
            return Ok(resume);
        }
        let slot =
            conn.read_replication_slot(&self.cfg.slot)?
                .ok_or_else(|| PgError::MissingSlot {
                    slot: self.cfg.slot.clone(),
                })?;
        let restart = slot.restart_lsn.ok_or_else(|| {
            PgError::Vault(embassy_core::Error::Refused {
                kind: embassy_core::ErrorKind::Config,
                problem: format!(
                    "replication slot \"{}\" reserves no WAL yet (created without RESERVE_WAL and \
                     never used): drop it and let the streamer create it",
                    self.cfg.slot
                ),
                way_out: embassy_core::error::WayOut::PgCreateSlot {
                    slot: self.cfg.slot.clone(),
                },
            })
        })?;
        Ok(Resume {
            timeline: slot.restart_tli.unwrap_or(server_timeline),
            pos: restart.segment_start(),
            prev: None,
        })
    }

    /// After a restart mid-segment, reload the segment's pieces (needs the reader key) so the
    /// whole segment can still be compacted; without the key that segment stays in pieces.
    fn load_segment(&mut self, listing: &wal::WalListing, r: Resume) {
        if !self.cfg.compact_segments || !self.keyring.can_read(&self.cfg.dataset) {
            return;
        }
        // The previous segment object of the chain: one that checks out (a name a site
        // planted, chained to, would make verify report a missing object for ever: red team
        // 9), the furthest first.
        let mut earlier: Vec<&wal::WalObject> = listing
            .segments
            .iter()
            .filter(|o| o.name.timeline == r.timeline && o.name.end <= r.pos.segment_start().0)
            .collect();
        earlier.sort_by_key(|o| std::cmp::Reverse(o.name.end));
        let prev_segment = earlier
            .into_iter()
            .find(|o| wal::read_checked(self.site.as_ref(), o, &self.signers).is_ok())
            .map(|o| o.name.id);
        if r.pos.segment_offset() == 0 {
            self.segment = Some(SegmentBuf {
                timeline: r.timeline,
                start: r.pos.0,
                bytes: Vec::new(),
                prev_segment,
            });
            return;
        }
        if let Ok(Some(a)) = wal::assemble_segment(
            self.site.as_ref(),
            self.keyring,
            listing,
            r.timeline,
            r.pos.segment_no(),
            &self.signers,
        ) {
            if a.bytes.len() as u64 == r.pos.segment_offset() {
                self.segment = Some(SegmentBuf {
                    timeline: r.timeline,
                    start: r.pos.segment_start().0,
                    bytes: a.bytes,
                    prev_segment,
                });
            }
        }
    }

    /// Makes sure a valid history file of `timeline` is stored (above timeline 1) and gets it
    /// anchored by the next anchor on that timeline (format 8). Only an object that checks out
    /// counts as stored: a name a site planted (junk, or a signer's that is no longer valid)
    /// kept the real file from ever being stored (red team 9).
    fn ensure_history(&mut self, conn: &mut ReplicationConnection, timeline: u32) -> Result<()> {
        if timeline <= 1 {
            return Ok(());
        }
        let listing = wal::list_histories(self.site.as_ref(), &self.cfg.dataset, timeline)?;
        let mut stored = None;
        for h in listing
            .histories
            .iter()
            .filter(|h| h.name.timeline == timeline)
        {
            match wal::read_checked(self.site.as_ref(), h, &self.signers) {
                Ok(_) => {
                    stored = Some(h.name.id);
                    break;
                }
                Err(e) if wal::is_noise(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let id = match stored {
            Some(id) => id,
            None => {
                let (_name, content) = conn.timeline_history(timeline)?;
                let spec = LogSpec {
                    kind: LogKind::History,
                    timeline,
                    start: 0,
                    end: content.len() as u64,
                    prev: None,
                    captured_at_ns: now_ns(),
                    system_id: self.system_id.load(Ordering::Relaxed),
                };
                wal::put(
                    self.site.as_ref(),
                    &self.keys,
                    &self.signer,
                    &spec,
                    &content,
                )?
                .0
            }
        };
        if self.signers.authority().direct_anchor(&id).is_none() {
            if let Some(jobs) = &self.jobs {
                // Blocking: the anchor must not be dropped like a piece's (the next piece's
                // anchor replaces that one; nothing replaces this).
                let _ = jobs.send(Job::History { timeline, id });
            }
        }
        Ok(())
    }

    fn stream_once(&mut self, stop: &AtomicBool) -> Result<()> {
        let mut conn = ReplicationConnection::connect(&self.cfg.conn)?;
        let seg_size = conn.show("wal_segment_size")?;
        if seg_size != "16MB" {
            return Err(PgError::Invalid(format!(
                "the server's wal_segment_size is {seg_size}; only 16MB (the default) is supported"
            )));
        }
        let system = conn.identify_system()?;
        let system_id: u64 = system.system_id.parse().map_err(|_| {
            PgError::Protocol(format!(
                "system identifier '{}' is not a number",
                system.system_id
            ))
        })?;
        self.system_id.store(system_id, Ordering::Relaxed);
        match conn.read_replication_slot(&self.cfg.slot)? {
            Some(slot) if slot.kind != "physical" => {
                return Err(PgError::WrongSlotKind {
                    slot: self.cfg.slot.clone(),
                    kind: slot.kind,
                })
            }
            Some(_) => {}
            None if self.cfg.create_slot => conn.create_physical_slot(&self.cfg.slot)?,
            None => {
                return Err(PgError::MissingSlot {
                    slot: self.cfg.slot.clone(),
                })
            }
        }
        let mut resume = self.resume_point(&mut conn, system.timeline)?;
        if resume.timeline < system.timeline {
            resume = self.past_fork(&mut conn, resume, system.timeline)?;
        }
        loop {
            self.ensure_history(&mut conn, resume.timeline)?;
            if let Ok(mut p) = self.progress.lock() {
                p.timeline = resume.timeline;
                p.received = resume.pos;
                if p.durable < resume.pos {
                    p.durable = resume.pos;
                }
            }
            conn.start_replication(&self.cfg.slot, resume.pos, resume.timeline)?;
            match self.stream_timeline(&mut conn, &mut resume, stop)? {
                None => {
                    conn.close();
                    return Ok(());
                }
                Some((next_tl, next_start)) => {
                    resume = self.onto_timeline(resume, next_tl, next_start)
                }
            }
        }
    }

    /// Continues on timeline `next_tl` from the segment start of its switch point `switch`: the
    /// new timeline's segment file holds the old timeline's bytes before the switch point.
    fn onto_timeline(&mut self, r: Resume, next_tl: u32, switch: Lsn) -> Resume {
        let resume = Resume {
            timeline: next_tl,
            pos: switch.segment_start(),
            prev: r.prev,
        };
        self.segment = self.cfg.compact_segments.then(|| SegmentBuf {
            timeline: next_tl,
            start: resume.pos.0,
            bytes: Vec::new(),
            prev_segment: None,
        });
        resume
    }

    /// A promoted server's history may leave the vault's newest timeline before the vault's
    /// end of it: the old primary's last WAL ended mid-record (a crash; the standby replayed
    /// only whole records), or the standby was promoted short of it. Asking for the old
    /// timeline from the vault's end would be refused for good ("not in this server's
    /// history"); the stream goes on at the switch point on the next timeline instead. The
    /// old timeline's WAL past the switch point stays in the vault; no replay uses it.
    fn past_fork(
        &mut self,
        conn: &mut ReplicationConnection,
        r: Resume,
        server_timeline: u32,
    ) -> Result<Resume> {
        let (_, history) = conn.timeline_history(server_timeline)?;
        let history = String::from_utf8_lossy(&history);
        match crate::replication::timeline_fork(&history, r.timeline, server_timeline) {
            Some((next, switch)) if r.pos > switch => {
                eprintln!(
                    "embassy pg stream: the vault holds timeline {} to {}, past where this \
                     server left it ({switch}); streaming timeline {next} from there",
                    r.timeline, r.pos
                );
                Ok(self.onto_timeline(r, next, switch))
            }
            _ => Ok(r),
        }
    }

    /// Streams one timeline. Returns the next timeline when the server ends this one, None
    /// when stopped.
    fn stream_timeline(
        &mut self,
        conn: &mut ReplicationConnection,
        r: &mut Resume,
        stop: &AtomicBool,
    ) -> Result<Option<(u32, Lsn)>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = r.pos;
        let mut first_at: Option<Instant> = None;
        let mut received = r.pos;
        let mut durable = r.pos;
        let mut last_status = Instant::now() - self.cfg.status_interval;
        let mut retry_at: Option<Instant> = None;
        if self
            .segment
            .as_ref()
            .is_some_and(|s| s.timeline != r.timeline || s.start + s.bytes.len() as u64 != r.pos.0)
        {
            self.segment = None;
        }
        if self.segment.is_none() && self.cfg.compact_segments && r.pos.segment_offset() == 0 {
            self.segment = Some(SegmentBuf {
                timeline: r.timeline,
                start: r.pos.0,
                bytes: Vec::new(),
                prev_segment: None,
            });
        }
        loop {
            let stopping = stop.load(Ordering::Relaxed);
            // Seal what is due: on age, size, or a segment boundary (pieces never cross one).
            let due = !buf.is_empty()
                && (stopping
                    || first_at.is_some_and(|t| t.elapsed() >= self.cfg.max_delay)
                    || buf.len() >= self.cfg.seal_bytes
                    || (buf_start.0 + buf.len() as u64).div_ceil(SEGMENT_SIZE)
                        > buf_start.segment_no() + 1);
            if due && retry_at.is_none_or(|t| Instant::now() >= t) {
                match self.seal_all(r, &mut buf, &mut buf_start) {
                    Ok(()) => {
                        retry_at = None;
                        first_at = if buf.is_empty() {
                            None
                        } else {
                            Some(Instant::now())
                        };
                        if durable != buf_start {
                            durable = buf_start;
                            conn.send_status(received, durable, durable, false)?;
                            last_status = Instant::now();
                        }
                        self.set_error(None);
                    }
                    Err(e) => {
                        // Not durable on enough sites: keep the WAL, report no flush, retry.
                        self.set_error(Some(e.to_string()));
                        eprintln!(
                            "embassy pg stream: sealing WAL at {buf_start} failed, retrying: {e}"
                        );
                        retry_at = Some(Instant::now() + Duration::from_secs(1));
                    }
                }
            }
            if stopping && (buf.is_empty() || retry_at.is_some()) {
                let _ = conn.send_status(received, durable, durable, false);
                return Ok(None);
            }
            if last_status.elapsed() >= self.cfg.status_interval {
                conn.send_status(received, durable, durable, false)?;
                last_status = Instant::now();
            }
            if buf.len() >= self.cfg.max_buffer {
                // Back-pressure: PostgreSQL's slot keeps the rest.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            let wait = match first_at {
                Some(t) => self
                    .cfg
                    .max_delay
                    .saturating_sub(t.elapsed())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            match conn.recv(wait)? {
                Some(ReplicationMessage::XLogData {
                    start,
                    server_end,
                    data,
                    ..
                }) => {
                    if let Ok(mut p) = self.progress.lock() {
                        p.server_end = p.server_end.max(server_end);
                    }
                    if data.is_empty() {
                        continue;
                    }
                    let end = Lsn(start.0 + data.len() as u64);
                    if start > received {
                        return Err(PgError::Protocol(format!(
                            "the server sent WAL from {start} but the stream is at {received}: a gap"
                        )));
                    }
                    if end <= received {
                        continue;
                    }
                    let skip = (received.0 - start.0) as usize;
                    if buf.is_empty() {
                        first_at = Some(Instant::now());
                    }
                    buf.extend_from_slice(&data[skip..]);
                    received = end;
                    if let Ok(mut p) = self.progress.lock() {
                        p.received = received;
                    }
                }
                Some(ReplicationMessage::Keepalive {
                    server_end,
                    reply_requested,
                }) => {
                    if let Ok(mut p) = self.progress.lock() {
                        p.server_end = p.server_end.max(server_end);
                    }
                    if reply_requested {
                        conn.send_status(received, durable, durable, false)?;
                        last_status = Instant::now();
                    }
                }
                Some(ReplicationMessage::EndOfTimeline {
                    next_timeline,
                    next_start,
                }) => {
                    // Make everything of this timeline durable first.
                    while !buf.is_empty() {
                        if let Err(e) = self.seal_all(r, &mut buf, &mut buf_start) {
                            self.set_error(Some(e.to_string()));
                            sleep_unless(stop, Duration::from_secs(1));
                            if stop.load(Ordering::Relaxed) {
                                return Ok(None);
                            }
                        }
                    }
                    let next_tl = next_timeline.ok_or_else(|| {
                        PgError::Protocol("end of timeline without the next timeline".into())
                    })?;
                    let next_start = next_start.unwrap_or(received);
                    return Ok(Some((next_tl, next_start)));
                }
                None => {}
            }
        }
    }

    /// Seals and stores `buf` in pieces (≤ seal_bytes, never across a segment boundary).
    /// Stops at the first failure, keeping what is not durable in `buf`.
    fn seal_all(&mut self, r: &mut Resume, buf: &mut Vec<u8>, buf_start: &mut Lsn) -> Result<()> {
        let mut done = 0usize;
        let result = (|| {
            while done < buf.len() {
                let start = buf_start.0 + done as u64;
                let to_boundary = (SEGMENT_SIZE - start % SEGMENT_SIZE) as usize;
                let n = (buf.len() - done).min(self.cfg.seal_bytes).min(to_boundary);
                let payload = &buf[done..done + n];
                let captured = now_ns();
                let spec = LogSpec {
                    kind: LogKind::Piece,
                    timeline: r.timeline,
                    start,
                    end: start + n as u64,
                    prev: r.prev,
                    captured_at_ns: captured,
                    system_id: self.system_id.load(Ordering::Relaxed),
                };
                let (id, _path) =
                    wal::put(self.site.as_ref(), &self.keys, &self.signer, &spec, payload)?;
                r.prev = Some(id);
                r.pos = Lsn(spec.end);
                if let Some(f) = self.durable_log.as_mut() {
                    let _ = writeln!(f, "{} {}", spec.end, now_ns());
                }
                if let Ok(mut p) = self.progress.lock() {
                    p.durable = Lsn(spec.end);
                    p.durable_captured_at_ns = captured;
                    p.objects += 1;
                    p.bytes += n as u64;
                }
                if let Some(jobs) = &self.jobs {
                    let _ = jobs.try_send(Job::Piece {
                        id,
                        timeline: r.timeline,
                        start,
                        end: spec.end,
                        captured,
                    });
                }
                done += n;
                if let Err(e) = self.after_piece(r.timeline, start, &buf[done - n..done], captured)
                {
                    // The WAL is durable as pieces; only its compaction into one segment object
                    // failed (that segment stays in pieces, which wal-fetch assembles).
                    self.segment = None;
                    self.set_error(Some(format!("segment compaction: {e}")));
                }
            }
            Ok(())
        })();
        buf.drain(..done);
        *buf_start = Lsn(buf_start.0 + done as u64);
        result
    }

    /// Collects a piece into the in-memory segment; a completed segment goes to the background
    /// thread to be written as one object and anchored in the ledger.
    fn after_piece(
        &mut self,
        timeline: u32,
        start: u64,
        payload: &[u8],
        captured: i64,
    ) -> Result<()> {
        let end = start + payload.len() as u64;
        let Some(seg) = self.segment.as_mut() else {
            if self.cfg.compact_segments && end.is_multiple_of(SEGMENT_SIZE) {
                // The next segment starts clean.
                self.segment = Some(SegmentBuf {
                    timeline,
                    start: end,
                    bytes: Vec::new(),
                    prev_segment: None,
                });
            }
            return Ok(());
        };
        if seg.timeline != timeline || seg.start + seg.bytes.len() as u64 != start {
            self.segment = None;
            return Ok(());
        }
        seg.bytes.extend_from_slice(payload);
        if seg.bytes.len() as u64 == SEGMENT_SIZE {
            let job = Job::Segment {
                timeline,
                start: seg.start,
                bytes: std::mem::take(&mut seg.bytes),
                prev_hint: seg.prev_segment,
                captured,
            };
            self.segment = Some(SegmentBuf {
                timeline,
                start: end,
                bytes: Vec::with_capacity(SEGMENT_SIZE as usize),
                prev_segment: None,
            });
            if let Some(jobs) = &self.jobs {
                // Blocks only if four segments wait for the compactor (bounded memory).
                jobs.send(job)
                    .map_err(|_| PgError::Protocol("the compaction thread stopped".into()))?;
            }
        }
        Ok(())
    }
}
