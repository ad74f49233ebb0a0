//! One version as a dataset's accepted history records it. Which versions a history holds, and
//! their numbers, is the rule of `history::numbering`.

use crate::format::manifest::{VersionKind, VersionStats};
use crate::history::ledger::{Event, Record};
use crate::history::retention::Candidate;
use crate::id::ObjectId;

/// One version as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The dataset.
    pub dataset: String,
    /// Its version number, what people name it by (`DATASET@N`): 1, 2, 3 in the order the
    /// dataset's history added its versions, deleted ones counted, so it never changes
    /// (`history::numbering`).
    pub number: u64,
    /// Its ledger sequence number: the position of its entry among all of the dataset's ledger
    /// entries (key changes, log ranges and deletions take sequence numbers too).
    pub seq: u64,
    /// The ledger entry's id.
    pub ledger_id: ObjectId,
    /// The manifest's id.
    pub manifest: ObjectId,
    /// Tree or stream.
    pub kind: VersionKind,
    /// The recovery point: when the source was captured.
    pub captured_at_ns: i64,
    /// When the ledger entry was made.
    pub recorded_at_ns: i64,
    /// Counts.
    pub stats: VersionStats,
}

impl Version {
    /// The version a ledger record adds, if it adds one, with the number `number`.
    pub(crate) fn from_record(dataset: &str, record: &Record, number: u64) -> Option<Self> {
        let Event::VersionAdded {
            manifest,
            kind,
            captured_at_ns,
            stats,
            ..
        } = &record.entry.event
        else {
            return None;
        };
        Some(Self {
            dataset: dataset.to_string(),
            number,
            seq: record.entry.seq,
            ledger_id: record.id,
            manifest: *manifest,
            kind: *kind,
            captured_at_ns: *captured_at_ns,
            recorded_at_ns: record.entry.time_ns,
            stats: *stats,
        })
    }
}

impl From<&Version> for Candidate {
    fn from(v: &Version) -> Self {
        Self {
            number: v.number,
            seq: v.seq,
            captured_at_ns: v.captured_at_ns,
            recorded_at_ns: v.recorded_at_ns,
        }
    }
}
