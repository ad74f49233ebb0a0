//! The streamer's background thread: compacts whole segments into one object each and anchors
//! the newest WAL in the dataset's ledger, off the path between receiving WAL and reporting it
//! flushed to PostgreSQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embassy_core::engine::vault::Vault;
use embassy_core::format::wal_log::{LogKind, LogSpec};
use embassy_core::history::ledger::{self, Event, Record};
use embassy_core::id::ObjectId;
use embassy_core::keys::DatasetKeys;
use embassy_core::site::Site;

use super::StreamProgress;
use crate::lsn::{Lsn, SEGMENT_SIZE};
use crate::wal;

/// Work for the background thread: segment compaction and ledger anchors, off the path
/// between receiving WAL and reporting it flushed.
pub(super) enum Job {
    /// A piece became durable (the newest head of the chain).
    Piece {
        id: ObjectId,
        timeline: u32,
        start: u64,
        end: u64,
        captured: i64,
    },
    /// The timeline's history file is stored (object `id`): the next anchor on that timeline
    /// names it.
    History { timeline: u32, id: ObjectId },
    /// A whole segment collected in memory: seal it as one object and anchor it.
    Segment {
        timeline: u32,
        start: u64,
        bytes: Vec<u8>,
        prev_hint: Option<ObjectId>,
        captured: i64,
    },
}

/// The background thread's state.
pub(super) struct Background {
    pub(super) vault: Vault,
    pub(super) site: Arc<dyn Site>,
    pub(super) keys: Arc<DatasetKeys>,
    pub(super) signer: ed25519_dalek::SigningKey,
    pub(super) dataset: String,
    pub(super) anchor_interval: Duration,
    pub(super) progress: Arc<Mutex<StreamProgress>>,
    pub(super) head: Option<Record>,
    pub(super) rejected: Vec<ObjectId>,
    pub(super) last_anchor: Instant,
    pub(super) anchored_to: u64,
    pub(super) pending: Option<(ObjectId, u32, u64, u64, i64)>,
    pub(super) last_segment: Option<(u32, u64, ObjectId)>,
    pub(super) system_id: Arc<AtomicU64>,
    /// A timeline's history file waiting for its anchor: (timeline, object).
    pub(super) history: Option<(u32, ObjectId)>,
}

impl Background {
    pub(super) fn run(mut self, rx: std::sync::mpsc::Receiver<Job>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(Job::Piece {
                    id,
                    timeline,
                    start,
                    end,
                    captured,
                }) => {
                    self.pending = Some((id, timeline, start, end, captured));
                }
                Ok(Job::Segment {
                    timeline,
                    start,
                    bytes,
                    prev_hint,
                    captured,
                }) => {
                    self.segment(timeline, start, &bytes, prev_hint, captured);
                }
                Ok(Job::History { timeline, id }) => {
                    // Anchored with the next piece at once: readers serve a history file only
                    // once an anchor names it.
                    self.history = Some((timeline, id));
                    self.last_anchor = Instant::now()
                        .checked_sub(self.anchor_interval)
                        .unwrap_or_else(Instant::now);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    self.anchor(true);
                    return;
                }
            }
            self.anchor(false);
        }
    }

    fn set_error(&self, e: String) {
        if let Ok(mut p) = self.progress.lock() {
            p.last_error = Some(e);
        }
    }

    /// Writes a whole segment object (chained to the previous segment) and anchors it. A
    /// failure leaves that segment in pieces, which wal-fetch assembles just as well.
    fn segment(
        &mut self,
        timeline: u32,
        start: u64,
        bytes: &[u8],
        prev_hint: Option<ObjectId>,
        captured: i64,
    ) {
        let prev = match self.last_segment {
            Some((tl, end, id)) if tl == timeline && end == start => Some(id),
            _ => prev_hint,
        };
        let spec = LogSpec {
            kind: LogKind::Segment,
            timeline,
            start,
            end: start + SEGMENT_SIZE,
            prev,
            captured_at_ns: captured,
            system_id: self.system_id.load(Ordering::Relaxed),
        };
        match wal::put(self.site.as_ref(), &self.keys, &self.signer, &spec, bytes) {
            Ok((id, _)) => {
                self.last_segment = Some((timeline, spec.end, id));
                self.pending = Some((id, timeline, spec.start, spec.end, captured));
                self.anchor(true);
            }
            Err(e) => self.set_error(format!("segment compaction at {}: {e}", Lsn(start))),
        }
    }

    /// Appends a `LogRangeAdded` entry for the pending head when forced (a whole segment) or
    /// when `anchor_interval` passed. Failures are reported and retried later: the WAL is
    /// already durable, only its ledger anchor waits.
    fn anchor(&mut self, force: bool) {
        let Some((id, timeline, start, end, captured)) = self.pending else {
            return;
        };
        if !force && self.last_anchor.elapsed() < self.anchor_interval {
            return;
        }
        let start = if self.anchored_to > 0 && self.anchored_to <= start {
            self.anchored_to
        } else {
            start
        };
        // The history file stored last (its timeline may be ahead of this piece's, at a switch).
        let history = self.history.map(|(_, h)| h);
        let event = Event::LogRangeAdded {
            manifest: id,
            timeline,
            start,
            end,
            captured_at_ns: captured,
            history,
        };
        for _ in 0..3 {
            match ledger::append_ignoring(
                self.site.as_ref(),
                &self.signer,
                &self.dataset,
                self.head.as_ref(),
                &self.rejected,
                event.clone(),
            ) {
                Ok(rec) => {
                    self.head = Some(rec);
                    self.pending = None;
                    if history.is_some() {
                        self.history = None;
                    }
                    self.anchored_to = end;
                    self.last_anchor = Instant::now();
                    return;
                }
                Err(embassy_core::Error::History { .. }) => {
                    // Another writer (a base backup) appended: reload the head and retry.
                    match self
                        .vault
                        .history_full(&self.dataset)
                        .and_then(|h| h.check_appendable(&self.dataset).map(|()| h))
                    {
                        Ok(h) => {
                            self.head = h.records.last().cloned();
                            self.rejected = h.rejected_ids();
                        }
                        Err(e) => {
                            self.set_error(format!("ledger anchor: {e}"));
                            break;
                        }
                    }
                }
                Err(e) => {
                    self.set_error(format!("ledger anchor: {e}"));
                    break;
                }
            }
        }
        self.last_anchor = Instant::now();
    }
}
