//! The versions a dataset's accepted history holds: what each `version_added` entry adds, less
//! what accepted `versions_deleted` entries removed.

use std::collections::BTreeSet;

use crate::format::manifest::{VersionKind, VersionStats};
use crate::history::ledger::{Event, Record};
use crate::history::retention::Candidate;
use crate::id::ObjectId;

/// One version as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The dataset.
    pub dataset: String,
    /// Its ledger sequence number.
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
    /// The version a ledger record adds, if it adds one.
    pub fn from_record(dataset: &str, record: &Record) -> Option<Self> {
        let Event::VersionAdded {
            manifest,
            kind,
            captured_at_ns,
            stats,
        } = &record.entry.event
        else {
            return None;
        };
        Some(Self {
            dataset: dataset.to_string(),
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

/// The versions a verified history still holds, oldest first.
pub fn versions_in(dataset: &str, history: &[Record]) -> Vec<Version> {
    let deleted: BTreeSet<u64> = history
        .iter()
        .filter(|r| r.refused.is_none())
        .filter_map(|r| match &r.entry.event {
            Event::VersionsDeleted { seqs, .. } => Some(seqs.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect();
    history
        .iter()
        .filter(|r| !deleted.contains(&r.entry.seq))
        .filter_map(|r| Version::from_record(dataset, r))
        .collect()
}

impl From<&Version> for Candidate {
    fn from(v: &Version) -> Self {
        Self {
            seq: v.seq,
            captured_at_ns: v.captured_at_ns,
            recorded_at_ns: v.recorded_at_ns,
        }
    }
}
