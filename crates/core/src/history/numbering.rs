//! Version numbers: a dataset's versions are numbered 1, 2, 3 in the order its history added
//! them (docs/format.md §9, *Version numbers*), apart from the ledger sequence numbers that
//! every entry takes. This module is the rule's one home; listings and selectors
//! (`DATASET@N`) use it through the engine's vault.

use std::collections::BTreeMap;

use crate::history::ledger::{Event, Record};
use crate::history::version::Version;

/// The one home of the version-numbering rule (docs/format.md §9, *Version numbers*): a
/// dataset's version N is the N-th `version_added` entry of its accepted history, in ledger
/// order. Deleted versions keep their numbers (their entries stay in the history), so a number
/// names the same version for good; other entries (key changes, log ranges, deletions) take
/// ledger sequence numbers but no version number. Feed it every record of a history in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VersionNumbering {
    added: u64,
}

impl VersionNumbering {
    /// The numbering after every record of `history`.
    pub fn after(history: &[Record]) -> Self {
        let mut numbering = Self::default();
        for record in history {
            numbering.version(record);
        }
        numbering
    }

    /// The number the next version added will have.
    pub fn next_number(&self) -> u64 {
        self.added + 1
    }

    /// Counts `record` (the next record of the history) and returns the number it gives its
    /// version, if it adds one.
    pub fn version(&mut self, record: &Record) -> Option<u64> {
        if !matches!(record.entry.event, Event::VersionAdded { .. }) {
            return None;
        }
        self.added += 1;
        Some(self.added)
    }

    /// Counts `record` and returns the version it adds, numbered, if it adds one.
    pub fn numbered(&mut self, dataset: &str, record: &Record) -> Option<Version> {
        let number = self.version(record)?;
        Version::from_record(dataset, record, number)
    }
}

/// Every version a verified history ever added, deleted ones too, numbered, oldest first.
pub fn all_versions_in(dataset: &str, history: &[Record]) -> Vec<Version> {
    let mut numbering = VersionNumbering::default();
    history
        .iter()
        .filter_map(|r| numbering.numbered(dataset, r))
        .collect()
}

/// Why a verified history holds no live version `number`, for people, with the way out: it
/// was deleted (by which entry, why), or there never was one.
pub fn missing_version(dataset: &str, history: &[Record], number: u64) -> String {
    let deleted = deleted_in(history);
    let by = all_versions_in(dataset, history)
        .into_iter()
        .find(|v| v.number == number)
        .and_then(|v| deleted.get(&v.seq).copied());
    match by {
        Some(by) => {
            let reason = match &by.entry.event {
                Event::VersionsDeleted { reason, .. } => reason.as_str(),
                _ => "",
            };
            format!(
                "version {number} of dataset {dataset} was deleted by ledger entry {} ({reason}); \
                 choose one of the versions it still holds",
                by.entry.seq
            )
        }
        None => format!("dataset {dataset} has no version {number}"),
    }
}

/// The version number of each `version_added` entry of a verified history, by its ledger
/// sequence number: for listings that show both (`embassy history`).
pub fn numbers_by_seq(dataset: &str, history: &[Record]) -> BTreeMap<u64, u64> {
    all_versions_in(dataset, history)
        .iter()
        .map(|v| (v.seq, v.number))
        .collect()
}

/// The ledger sequence numbers of the versions a verified history deleted (by accepted
/// `versions_deleted` entries), with the entry that deleted each.
fn deleted_in(history: &[Record]) -> BTreeMap<u64, &Record> {
    history
        .iter()
        .filter(|r| r.refused.is_none())
        .filter_map(|r| match &r.entry.event {
            Event::VersionsDeleted { seqs, .. } => Some(seqs.iter().map(move |s| (*s, r))),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The versions a verified history still holds, numbered, oldest first.
pub fn versions_in(dataset: &str, history: &[Record]) -> Vec<Version> {
    let deleted = deleted_in(history);
    all_versions_in(dataset, history)
        .into_iter()
        .filter(|v| !deleted.contains_key(&v.seq))
        .collect()
}
