//! Forks inside a timeline (red team 17): a key that signs a dataset's WAL stores objects over
//! WAL the ledger anchored, holding other bytes, and anchors them too. What keyless verification
//! can see of it (two segment objects of one segment, two anchored pieces over the same WAL, an
//! unanchored overlap as a notice), what only a reader key can (`wal::forks`: a forged
//! compaction over anchored pieces), and that `wal-fetch` serves neither copy. Against a real
//! vault in a local folder, without a server.

mod common;

use common::{anchor, put, setup, DS};
use embassy_core::format::wal_log::LogKind;
use embassy_postgres::fetch::{self, FetchOptions};
use embassy_postgres::lsn::segment_file_name;
use embassy_postgres::wal;

const SEG: u64 = 16 * 1024 * 1024;

/// WAL as every honest copy holds it: the byte at LSN `x` is `x % 251`.
fn honest(start: u64, len: u64) -> Vec<u8> {
    (start..start + len).map(|x| (x % 251) as u8).collect()
}

#[test]
fn a_forged_compaction_is_reported_with_a_key_and_never_served() {
    let (dir, vault, keyring) = setup();
    let s = 3 * SEG;
    // The streamer: two pieces of segment 3, anchored.
    let p1 = put(&vault, &keyring, LogKind::Piece, 1, s, &honest(s, 4096));
    let p2 = put(
        &vault,
        &keyring,
        LogKind::Piece,
        1,
        s + 4096,
        &honest(s + 4096, 8192),
    );
    anchor(&vault, &keyring, p1, 1, s, s + 4096, None);
    anchor(&vault, &keyring, p2, 1, s + 4096, s + 12288, None);
    let report = wal::verify(&vault, DS).unwrap();
    assert!(
        report.is_ok() && report.overlapping.is_empty(),
        "{report:?}"
    );
    assert!(wal::forks(&vault, &keyring, DS).unwrap().is_empty());

    // The thief: a whole segment of other bytes over them, anchored after them.
    let mut other = honest(s, SEG);
    other[5000] ^= 0x40;
    let forged = put(&vault, &keyring, LogKind::Segment, 1, s, &other);
    anchor(&vault, &keyring, forged, 1, s, s + SEG, None);
    // Keyless verification cannot tell it from a compaction: nothing to report.
    let report = wal::verify(&vault, DS).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    // With the reader key it is named, and wal-fetch serves neither copy of the segment.
    let forks = wal::forks(&vault, &keyring, DS).unwrap();
    assert_eq!(forks.len(), 1, "{forks:?}");
    assert!(
        forks[0].contains("hold different bytes at 0/3001388")
            && forks[0].contains(&forged.to_hex()),
        "{forks:?}"
    );
    let name = segment_file_name(1, 3);
    let dest = dir.path().join(&name);
    for partial in [false, true] {
        let err = fetch::fetch(
            &vault,
            &keyring,
            DS,
            &name,
            &dest,
            &FetchOptions { partial },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("a fork inside the timeline")
                && err.contains("embassy keys revoke")
                && err.contains("restore to a point before 0/3000000 (`--lsn`, `--time`)"),
            "{err}"
        );
        assert!(!dest.exists());
    }

    // The honest compaction as well: two valid segment objects of one segment, a problem
    // keyless verification reports.
    let compacted = put(&vault, &keyring, LogKind::Segment, 1, s, &honest(s, SEG));
    anchor(&vault, &keyring, compacted, 1, s, s + SEG, None);
    let report = wal::verify(&vault, DS).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("two valid segment objects of timeline 1")),
        "{:?}",
        report.problems
    );
}

#[test]
fn overlapping_pieces_are_a_problem_when_both_are_anchored_and_a_notice_when_not() {
    let (dir, vault, keyring) = setup();
    let s = 3 * SEG;
    let p1 = put(&vault, &keyring, LogKind::Piece, 1, s, &honest(s, 4096));
    anchor(&vault, &keyring, p1, 1, s, s + 4096, None);
    // A write retried leaves an unanchored copy; a thief's unanchored piece looks the same.
    let mut bent = honest(s + 100, 200);
    bent[7] ^= 1;
    let unanchored = put(&vault, &keyring, LogKind::Piece, 1, s + 100, &bent);
    let report = wal::verify(&vault, DS).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.overlapping.len(), 1, "{:?}", report.overlapping);
    assert!(report.overlapping[0].contains(&unanchored.to_hex()));
    let forks = wal::forks(&vault, &keyring, DS).unwrap();
    assert!(
        forks.len() == 1 && forks[0].contains(&unanchored.to_hex()),
        "{forks:?}"
    );
    // Revoked, its unanchored piece would be noise; while its key is valid nothing is served.
    assert!(fetch::fetch(
        &vault,
        &keyring,
        DS,
        &segment_file_name(1, 3),
        &dir.path().join("seg"),
        &FetchOptions { partial: true }
    )
    .is_err());
    // Anchored too: a problem without a key.
    anchor(&vault, &keyring, unanchored, 1, s + 100, s + 300, None);
    let report = wal::verify(&vault, DS).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("two valid pieces of timeline 1") && p.contains("both anchored")),
        "{:?}",
        report.problems
    );
}
