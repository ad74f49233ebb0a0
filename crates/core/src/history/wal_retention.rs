//! WAL retention (format version 4, `docs/design.md` *WAL retention*): which streamed WAL of a
//! PostgreSQL dataset no kept version and no point-in-time window needs. A pure function of the
//! accepted history, so that garbage collection, `verify` and `wal-fetch` compute the same
//! cut-off without keys.
//!
//! The rule: the cut-off is the start of the 16 MiB WAL segment holding the WAL start
//! (`wal_start`, signed in the `version_added` entry) of the *oldest kept* base backup, the
//! smallest start of any version the history still holds; lowered further to the first segment
//! of the WAL streamed within the point-in-time window (`wal_keep_secs`) of the newest retention
//! policy an accepted deletion applied. WAL objects (pieces and segments, on every timeline)
//! that end at or before the cut-off restore nothing: recovery from a base backup reads no WAL
//! before its start (on any timeline: a timeline starts where its parent's WAL was, so the
//! positions a restore reads only grow), and PostgreSQL reads the first page of the segment it
//! starts in, which the rounding keeps.
//!
//! Why entries cannot raise it: it is a minimum over every kept version, so an appended version
//! (a forged base backup claiming a high start, on any timeline, dated whenever) can only lower
//! it; a kept version that records no start (written before format 4, or by a writer that
//! omitted it) makes it 0 (nothing collected). Only accepted deletions (signed with the `delete`
//! right, following their rule) remove versions from the minimum or set the window; a deletion
//! that verifiers refused (a no-op) counts for nothing. Log ranges join the window's minimum
//! when either of their times is inside it, so a forged one dated before the window changes
//! nothing and one inside can only lower it.

use crate::history::ledger::{entry_at, Event, Record, WalStart};
use crate::history::numbering::versions_in;

/// The WAL segment size the format fixes (§9b: segment objects start at multiples of it).
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Why the cut-off is where it is, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutoffBasis {
    /// The history holds no version: nothing is collected.
    NoVersion,
    /// A kept version does not record where its WAL starts (a version from before format 4,
    /// or not a PostgreSQL base backup): nothing is collected while it is kept.
    UnknownStart {
        /// Its version number.
        version: u64,
    },
    /// The oldest kept base backup's start (its segment).
    OldestBaseBackup {
        /// Its version number.
        version: u64,
        /// Where its WAL starts.
        start: WalStart,
    },
    /// The point-in-time window: WAL streamed since `from_ns` stays.
    Window {
        /// The window's start (ns since the epoch): the policy's evaluation time minus it.
        from_ns: i64,
        /// The ledger entry (a deletion) whose policy sets it.
        seq: u64,
    },
}

/// The WAL cut-off of a dataset: every WAL object whose end is at or before `lsn` is one no
/// kept version and no window needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalCutoff {
    /// WAL position (a multiple of [`SEGMENT_BYTES`]); 0 collects nothing.
    pub lsn: u64,
    /// What set it.
    pub basis: CutoffBasis,
}

impl Default for WalCutoff {
    fn default() -> Self {
        Self::none()
    }
}

impl WalCutoff {
    /// No cut-off: every WAL object stays (vaults before format 4, datasets without versions).
    pub fn none() -> Self {
        Self {
            lsn: 0,
            basis: CutoffBasis::NoVersion,
        }
    }

    /// True when the WAL range `start..end` (of any timeline) lies wholly below the cut-off:
    /// garbage collection may remove it, and its absence is not damage.
    pub fn collects(&self, end: u64) -> bool {
        end <= self.lsn
    }

    /// The cut-off and what set it, for people.
    pub fn describe(&self) -> String {
        let at = format!("{:X}/{:X}", self.lsn >> 32, self.lsn & 0xffff_ffff);
        match &self.basis {
            CutoffBasis::NoVersion => "no cut-off (no version)".into(),
            CutoffBasis::UnknownStart { version } => {
                format!("no cut-off (version {version} does not record where its WAL starts)")
            }
            CutoffBasis::OldestBaseBackup { version, start } => format!(
                "{at}, the segment where the oldest kept base backup (version {version}, \
                 timeline {}) starts",
                start.timeline
            ),
            CutoffBasis::Window { from_ns, seq } => format!(
                "{at}, the first WAL streamed since {} (the point-in-time window of the \
                 retention policy of ledger entry {seq})",
                crate::time::utc(*from_ns)
            ),
        }
    }
}

fn segment_floor(lsn: u64) -> u64 {
    lsn - lsn % SEGMENT_BYTES
}

/// The WAL cut-off of `dataset` from its accepted history (see the module documentation).
pub fn wal_cutoff(dataset: &str, history: &[Record]) -> WalCutoff {
    let mut out: Option<WalCutoff> = None;
    for version in versions_in(dataset, history) {
        let start = entry_at(history, version.seq).and_then(|r| match &r.entry.event {
            Event::VersionAdded { wal_start, .. } => *wal_start,
            _ => None,
        });
        let Some(start) = start else {
            return WalCutoff {
                lsn: 0,
                basis: CutoffBasis::UnknownStart {
                    version: version.number,
                },
            };
        };
        let lsn = segment_floor(start.lsn);
        if out.as_ref().is_none_or(|c| lsn < c.lsn) {
            out = Some(WalCutoff {
                lsn,
                basis: CutoffBasis::OldestBaseBackup {
                    version: version.number,
                    start,
                },
            });
        }
    }
    let Some(mut cutoff) = out else {
        return WalCutoff::none();
    };
    if let Some((seq, from_ns)) = window(history) {
        let first = history
            .iter()
            .filter_map(|r| match &r.entry.event {
                Event::LogRangeAdded {
                    start,
                    captured_at_ns,
                    ..
                } if (*captured_at_ns).max(r.entry.time_ns) >= from_ns => Some(*start),
                _ => None,
            })
            .min();
        if let Some(first) = first.map(segment_floor) {
            if first < cutoff.lsn {
                cutoff = WalCutoff {
                    lsn: first,
                    basis: CutoffBasis::Window { from_ns, seq },
                };
            }
        }
    }
    cutoff
}

/// The point-in-time window of the newest retention policy an accepted (not refused) deletion
/// applied: its entry's sequence number and the window's start.
fn window(history: &[Record]) -> Option<(u64, i64)> {
    history
        .iter()
        .rev()
        .filter(|r| r.refused.is_none())
        .find_map(|r| match &r.entry.event {
            Event::VersionsDeleted {
                policy: Some(policy),
                as_of_ns,
                ..
            } => Some((r, policy, as_of_ns)),
            _ => None,
        })
        .and_then(|(r, policy, as_of_ns)| {
            (policy.wal_keep_secs > 0).then(|| {
                let at = as_of_ns.unwrap_or(r.entry.time_ns).min(r.entry.time_ns);
                let keep = i64::try_from(policy.wal_keep_secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000_000);
                (r.entry.seq, at.saturating_sub(keep))
            })
        })
}

#[cfg(test)]
#[path = "wal_retention_tests.rs"]
mod tests;
