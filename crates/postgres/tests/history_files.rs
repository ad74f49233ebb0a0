//! Timeline history files (format 8): PostgreSQL acts on a history file at once and for good (a
//! standby switches its target timeline, a promotion takes the next number), so readers serve
//! only one a ledger anchor names, never one a writer's key merely signed (red team 10: home's
//! credential planted one before a takeover, the embassy's standby followed it, and after the
//! takeover it was noise while PostgreSQL's choices stood). Keyless verification reports a
//! timeline number below the newest one stored without a valid history file. Against a real
//! vault in a local folder, without a server.

mod common;

use common::{anchor, put, setup, DS};
use embassy_core::engine::vault::Vault;
use embassy_core::format::wal_log::LogKind;
use embassy_postgres::fetch::{self, FetchOptions, Fetched};
use embassy_postgres::wal;

#[test]
fn a_history_file_is_served_only_once_anchored_and_a_missing_timeline_number_is_reported() {
    let (dir, vault, keyring) = setup();
    let fetch_history = |timeline: u32| {
        let name = format!("{timeline:08X}.history");
        let dest = dir.path().join(&name);
        let got =
            fetch::fetch(&vault, &keyring, DS, &name, &dest, &FetchOptions::default()).unwrap();
        (got, std::fs::read(&dest).ok())
    };
    // Timeline 1's WAL, anchored.
    let seg = 16 * 1024 * 1024;
    let p1 = put(&vault, &keyring, LogKind::Piece, 1, seg, &[1u8; 4096]);
    anchor(&vault, &keyring, p1, 1, seg, seg + 4096, None);
    // A history file of timeline 2 signed by an active writer, no anchor: not served.
    let content = b"1\t0/1001000\tno recovery target specified\n".to_vec();
    let h2 = put(&vault, &keyring, LogKind::History, 2, 0, &content);
    assert_eq!(fetch_history(2).0, Fetched::NotFound);
    // Once an anchor names it, it is.
    let p2 = put(
        &vault,
        &keyring,
        LogKind::Piece,
        2,
        seg + 4096,
        &[2u8; 4096],
    );
    anchor(&vault, &keyring, p2, 2, seg + 4096, seg + 8192, Some(h2));
    assert_eq!(fetch_history(2), (Fetched::Complete, Some(content)));
    assert!(wal::verify(&vault, DS).unwrap().is_ok());
    // Timeline 4 stored with its history file, timeline 3's missing: verify says so.
    let h4 = put(
        &vault,
        &keyring,
        LogKind::History,
        4,
        0,
        b"3\t0/1003000\tx\n",
    );
    let p4 = put(
        &vault,
        &keyring,
        LogKind::Piece,
        4,
        seg + 8192,
        &[4u8; 4096],
    );
    anchor(&vault, &keyring, p4, 4, seg + 8192, seg + 12288, Some(h4));
    let report = wal::verify(&vault, DS).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("timeline 3 has no valid timeline history file")),
        "{:?}",
        report.problems
    );
}

/// Red team 11, break 1: home's stolen credential, still valid, promoted an older copy of the
/// database and streamed its new timeline from a switch point below the WAL the ledger had
/// already anchored on timeline 1; every reader followed the new timeline and the acknowledged
/// commits after the switch point were gone from the latest restore, with verify saying OK.
/// Keyless verification now reports a timeline that leaves out its parent's anchored WAL past
/// the segment of its switch point unless an authoritative promotion names it; a timeline that
/// leaves out only the segment of its switch point (a crashed primary's last, cut record) is
/// not reported.
#[test]
fn a_new_timeline_leaving_out_anchored_wal_without_a_takeover_is_reported() {
    let seg: u64 = 16 * 1024 * 1024;
    // Timeline 1 anchored up to `tl1_end`; timeline 2 from the start of segment 1.
    let fork = |tl1_end: u64| {
        let (dir, vault, keyring) = setup();
        let p1 = put(&vault, &keyring, LogKind::Piece, 1, seg, &[1u8; 4096]);
        anchor(&vault, &keyring, p1, 1, seg, seg + 4096, None);
        let tail = put(
            &vault,
            &keyring,
            LogKind::Piece,
            1,
            tl1_end - 4096,
            &[1u8; 4096],
        );
        anchor(&vault, &keyring, tail, 1, tl1_end - 4096, tl1_end, None);
        let h2 = put(
            &vault,
            &keyring,
            LogKind::History,
            2,
            0,
            b"1\t0/1001000\tno recovery target specified\n",
        );
        let p2 = put(&vault, &keyring, LogKind::Piece, 2, seg, &[2u8; 4096]);
        anchor(&vault, &keyring, p2, 2, seg, seg + 4096, Some(h2));
        (dir, vault)
    };
    let abandons = |vault: &Vault| {
        wal::verify(vault, DS)
            .unwrap()
            .problems
            .into_iter()
            .filter(|p| p.contains("leaves out acknowledged WAL of timeline 1"))
            .collect::<Vec<_>>()
    };
    // Timeline 1 anchored two segments past the switch: reported, naming the anchor's end.
    let (_dir, vault) = fork(3 * seg + 8192);
    let found = abandons(&vault);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("0/3002000"), "{found:?}");
    // Only inside the switch point's segment: not reported.
    let (_dir, vault) = fork(seg + 65536);
    assert!(abandons(&vault).is_empty());
}
