//! Tests of the WAL cut-off rule, the attacker's cases first.

use proptest::prelude::*;

use super::*;
use crate::format::manifest::VersionKind;
use crate::history::ledger::Entry;
use crate::history::retention::RetentionPolicy;
use crate::id::ObjectId;

const SEG: u64 = SEGMENT_BYTES;
const S: i64 = 1_000_000_000;
const DAY: i64 = 86_400 * S;

/// Builds a history entry by entry (sequence numbers and times in order).
#[derive(Default)]
struct H(Vec<Record>);

impl H {
    fn push(&mut self, time_ns: i64, event: Event) -> u64 {
        let seq = self.0.len() as u64 + 1;
        self.0.push(Record {
            id: ObjectId::of(format!("entry {seq}").as_bytes()),
            entry: Entry {
                dataset: "db".into(),
                seq,
                prev: None,
                time_ns,
                event,
                signer: [7; 32],
            },
            refused: None,
        });
        seq
    }
    /// A base backup on `timeline` starting at `lsn`, captured at `at`.
    fn backup(&mut self, at: i64, timeline: u32, lsn: u64) -> u64 {
        self.version(at, Some(WalStart { timeline, lsn }))
    }
    fn version(&mut self, at: i64, wal_start: Option<WalStart>) -> u64 {
        self.push(
            at,
            Event::VersionAdded {
                manifest: ObjectId::of(format!("manifest {at}").as_bytes()),
                kind: VersionKind::Tree,
                captured_at_ns: at,
                stats: Default::default(),
                wal_start,
            },
        )
    }
    fn range(&mut self, at: i64, timeline: u32, start: u64, end: u64) -> u64 {
        self.push(
            at,
            Event::LogRangeAdded {
                manifest: ObjectId::of(format!("piece {start}").as_bytes()),
                timeline,
                start,
                end,
                captured_at_ns: at,
                history: None,
            },
        )
    }
    fn prune(&mut self, at: i64, seqs: Vec<u64>, wal_keep_secs: u64) -> u64 {
        self.push(
            at,
            Event::VersionsDeleted {
                seqs,
                reason: "retention".into(),
                policy: Some(RetentionPolicy {
                    keep_last: 2,
                    wal_keep_secs,
                    ..Default::default()
                }),
                as_of_ns: Some(at),
                approvals: Vec::new(),
            },
        )
    }
    fn cutoff(&self) -> WalCutoff {
        wal_cutoff("db", &self.0)
    }
}

/// Three base backups one day apart, WAL streamed between them, the first one pruned.
fn honest() -> H {
    let mut h = H::default();
    let first = h.backup(DAY, 1, SEG + 40);
    h.range(DAY + S, 1, SEG, 3 * SEG);
    h.backup(2 * DAY, 1, 3 * SEG + 40);
    h.range(2 * DAY + S, 1, 3 * SEG, 5 * SEG);
    h.backup(3 * DAY, 1, 5 * SEG + 8192);
    h.range(3 * DAY + S, 1, 5 * SEG, 6 * SEG);
    h.prune(3 * DAY + 2 * S, vec![first], 0);
    h
}

#[test]
fn the_cut_off_is_the_segment_of_the_oldest_kept_base_backup() {
    let h = honest();
    let c = h.cutoff();
    assert_eq!(c.lsn, 3 * SEG);
    assert!(matches!(
        c.basis,
        CutoffBasis::OldestBaseBackup { version: 2, .. }
    ));
    // The segment the oldest kept backup starts in stays whole; the ones before it go.
    assert!(c.collects(3 * SEG));
    assert!(!c.collects(3 * SEG + 1));
    // Before the prune, the first backup was kept: its segment was the cut-off.
    assert_eq!(wal_cutoff("db", &h.0[..6]).lsn, SEG);
    // No version, no cut-off.
    assert_eq!(wal_cutoff("db", &[]).lsn, 0);
}

#[test]
fn a_forged_base_backup_claiming_a_high_start_and_an_old_date_does_not_raise_it() {
    // A stolen sealing credential appends a base backup dated before every real one, claiming
    // to start far ahead. "The oldest kept" is the smallest start, not the oldest date.
    let mut h = honest();
    h.backup(DAY / 2, 1, 1000 * SEG);
    assert_eq!(h.cutoff().lsn, 3 * SEG);
    // Two of them, on a timeline of their own, dated now: still the real oldest.
    h.backup(4 * DAY, 9, 2000 * SEG);
    h.backup(4 * DAY, 9, 2001 * SEG);
    assert_eq!(h.cutoff().lsn, 3 * SEG);
}

#[test]
fn a_kept_version_without_a_recorded_start_keeps_every_wal_object() {
    // A version from before format 4 (or a forged one that omits the start): nothing is known
    // about where its replay begins, so nothing goes.
    let mut h = honest();
    h.version(4 * DAY, None);
    let c = h.cutoff();
    assert_eq!(c.lsn, 0);
    assert_eq!(c.basis, CutoffBasis::UnknownStart { version: 4 });
}

#[test]
fn a_refused_deletion_keeps_its_versions_in_the_minimum_and_sets_no_window() {
    let mut h = honest();
    let before = h.cutoff().lsn;
    // A deletion of the oldest kept backup that verifiers refused (it broke its rule): a
    // no-op, so that backup's WAL stays.
    h.prune(4 * DAY, vec![3], 0);
    h.0.last_mut().unwrap().refused = Some("breaks the minimum age".into());
    assert_eq!(h.cutoff().lsn, before);
}

#[test]
fn the_window_keeps_the_wal_streamed_within_it() {
    let mut h = honest();
    // The newest policy keeps 60 hours of WAL: the range streamed after the pruned backup
    // (day 1) stays although no kept backup needs it.
    h.prune(3 * DAY + 3 * S, vec![], 60 * 3600);
    let c = h.cutoff();
    assert_eq!(c.lsn, SEG);
    assert!(matches!(c.basis, CutoffBasis::Window { .. }));
    // A window shorter than the backups' distance changes nothing.
    h.prune(3 * DAY + 4 * S, vec![], 3600);
    assert_eq!(h.cutoff().lsn, 3 * SEG);
}

#[test]
fn a_forged_log_range_dated_before_the_window_does_not_raise_it() {
    let mut h = honest();
    h.prune(3 * DAY + 3 * S, vec![], 2 * 86_400);
    let before = h.cutoff().lsn;
    // Ranges claiming high positions, dated before the window or inside it: the minimum over
    // the ranges within the window cannot rise.
    h.range(DAY / 2, 1, 900 * SEG, 901 * SEG);
    h.range(3 * DAY + 5 * S, 7, 950 * SEG, 951 * SEG);
    assert_eq!(h.cutoff().lsn, before);
}

#[test]
fn the_cut_off_ignores_timelines() {
    // A restore to an earlier point was promoted: timeline 2 starts at 2 SEG, below where
    // timeline 1 went on. Its base backup is the oldest kept by position: timeline 1's WAL
    // above 2 SEG stays too (positions, not timelines, decide).
    let mut h = H::default();
    let a = h.backup(DAY, 1, 5 * SEG + 10);
    h.range(DAY + S, 1, 5 * SEG, 9 * SEG);
    h.backup(2 * DAY, 2, 2 * SEG + 10);
    h.prune(2 * DAY + S, vec![a], 0);
    assert_eq!(h.cutoff().lsn, 2 * SEG);
}

proptest! {
    /// Whatever entries a signer appends (base backups with any start, timeline and date,
    /// versions without a start, log ranges with any position and date), the cut-off never
    /// rises, and it never passes the start of a kept base backup.
    #[test]
    fn appended_entries_never_raise_the_cut_off(
        starts in prop::collection::vec(0u64..64 * SEG, 1..6),
        pruned in prop::collection::vec(any::<bool>(), 6),
        keep in prop_oneof![Just(0u64), 1u64..10 * 86_400],
        appended in prop::collection::vec(
            (0u8..3, 0u64..200 * SEG, 0i64..20 * DAY, 1u32..4), 1..6),
    ) {
        let mut h = H::default();
        let mut seqs = Vec::new();
        for (i, s) in starts.iter().enumerate() {
            seqs.push(h.backup((i as i64 + 1) * DAY, 1, *s));
            h.range((i as i64 + 1) * DAY + S, 1, *s, *s + SEG);
        }
        // Prune some, never the newest.
        let gone: Vec<u64> = seqs[..seqs.len() - 1]
            .iter()
            .zip(&pruned)
            .filter(|(_, p)| **p)
            .map(|(s, _)| *s)
            .collect();
        let now = 10 * DAY;
        h.prune(now, gone.clone(), keep);
        let before = h.cutoff();
        for (start, s) in starts.iter().zip(&seqs) {
            if !gone.contains(s) {
                prop_assert!(before.lsn <= *start);
            }
        }
        for (kind, lsn, at, tl) in appended {
            match kind {
                0 => { h.backup(at, tl, lsn); }
                1 => { h.version(at, None); }
                _ => { h.range(at, tl, lsn, lsn + SEG); }
            }
            prop_assert!(h.cutoff().lsn <= before.lsn);
        }
    }
}
