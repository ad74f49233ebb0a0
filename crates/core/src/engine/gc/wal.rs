//! Garbage collection of streamed WAL: pieces (`wal/<dataset>/<tl>/p/...`) go once a segment
//! object that the ledger anchors, and whose bytes, header and signer check out, covers them
//! and, read with the dataset's reader key, every object holding WAL of that segment agrees
//! with it byte for byte; pieces and segments of every timeline go once they end at or before
//! the dataset's WAL retention cut-off (`history::wal_retention`: no kept base backup and no
//! point-in-time window needs them). Timeline history files always stay.
//!
//! Why the comparison: a key that signs the dataset's WAL (home's stolen credential) can store
//! and anchor a segment object holding other bytes over anchored pieces. Readers refuse WAL whose
//! objects disagree ([`crate::history::wal_merge`]); deleting the pieces on the word of such a
//! segment would leave only the thief's bytes, and nothing to disagree with. A collector without the reader key cannot
//! compare, so it leaves pieces to the retention cut-off.

use std::collections::{HashMap, HashSet};

use crate::engine::vault::Keyring;
use crate::format::wal_log::{self, LogKind, LogName};
use crate::history::ledger::{Event, Record};
use crate::history::wal_authority::WalAuthority;
use crate::history::wal_merge;
use crate::history::wal_retention::WalCutoff;
use crate::id::ObjectId;
use crate::site::Site;

/// A WAL segment object a verified ledger entry anchors: `LogRangeAdded` naming its id, on its
/// timeline, ending where it ends.
pub(super) fn anchored_segments<'a>(
    names: &'a [(String, LogName)],
    history: &[Record],
) -> Vec<&'a (String, LogName)> {
    let anchors: HashSet<(ObjectId, u32, u64)> = history
        .iter()
        .filter_map(|r| match &r.entry.event {
            Event::LogRangeAdded {
                manifest,
                timeline,
                end,
                ..
            } => Some((*manifest, *timeline, *end)),
            _ => None,
        })
        .collect();
    names
        .iter()
        .filter(|(_, n)| n.kind == LogKind::Segment && anchors.contains(&(n.id, n.timeline, n.end)))
        .collect()
}

/// Coverage logic of WAL collection: for each piece (path and parsed name), the index into
/// `segments` of an anchored segment object whose range contains the piece's whole range on
/// the same timeline. A piece no segment covers (the streamer's live tail beyond the newest
/// anchored segment, a segment whose compaction failed, another timeline) gets `None` and is
/// kept. Pieces never cross a segment boundary, so one segment covers a piece or none does.
pub fn wal_pieces_covered(pieces: &[&LogName], segments: &[&LogName]) -> Vec<Option<usize>> {
    pieces
        .iter()
        .map(|p| {
            segments.iter().position(|s| {
                s.kind == LogKind::Segment
                    && p.kind == LogKind::Piece
                    && s.dataset == p.dataset
                    && s.timeline == p.timeline
                    && s.start <= p.start
                    && p.end <= s.end
                    && p.start < p.end
            })
        })
        .collect()
}

/// The WAL objects of `dataset` that garbage collection may remove now: pieces and segments
/// that end at or before `cutoff` (judged by their names alone: deleting a wrongly named
/// object frees nothing a restore reads), and pieces whose whole range a segment object covers
/// that a verified `LogRangeAdded` entry anchors and whose bytes, header and signature check
/// out, when `keyring` reads the dataset and every object holding WAL of that segment agrees
/// with it (see [`segment_agrees`]). Everything else under `wal/` stays.
pub(super) fn wal_collectable(
    site: &dyn Site,
    dataset: &str,
    history: &[Record],
    authority: &WalAuthority,
    cutoff: &WalCutoff,
    listing: &[crate::site::ObjectInfo],
    keyring: Option<&Keyring>,
) -> HashSet<String> {
    let prefix = wal_log::prefix(dataset);
    let names: Vec<(String, LogName)> = listing
        .iter()
        .filter(|i| i.path.starts_with(&prefix))
        .filter_map(|i| wal_log::parse_path(&i.path).map(|n| (i.path.clone(), n)))
        .filter(|(_, n)| n.dataset == dataset)
        .collect();
    let mut out: HashSet<String> = names
        .iter()
        .filter(|(_, n)| n.kind != LogKind::History && cutoff.collects(n.end))
        .map(|(p, _)| p.clone())
        .collect();
    let Some(keyring) = keyring.filter(|k| k.can_read(dataset)) else {
        return out;
    };
    let anchored = anchored_segments(&names, history);
    let segment_names: Vec<&LogName> = anchored.iter().map(|(_, n)| n).collect();
    let pieces: Vec<&(String, LogName)> = names
        .iter()
        .filter(|(_, n)| n.kind == LogKind::Piece)
        .collect();
    let piece_names: Vec<&LogName> = pieces.iter().map(|(_, n)| n).collect();
    let mut agreed: HashMap<usize, bool> = HashMap::new();
    for (piece, cover) in pieces
        .iter()
        .zip(wal_pieces_covered(&piece_names, &segment_names))
    {
        let Some(i) = cover else { continue };
        let ok = *agreed
            .entry(i)
            .or_insert_with(|| segment_agrees(site, keyring, authority, &names, &anchored[i].1));
        if ok {
            out.insert(piece.0.clone());
        }
    }
    out
}

/// True when `segment` checks out (its bytes hash to the id in its name, the signed header
/// matches the name, its signer was active when the ledger anchored it or is active now: a
/// later revocation of the streamer's key does not make its compacted segments untrustworthy)
/// and opens, and every other object holding WAL of its range on its timeline (pieces,
/// segments) that opens with the dataset's keys and was signed by a key that ever signed the
/// dataset's WAL holds the same bytes where they overlap. Objects that do not open, or a
/// stranger signed, are noise to readers and do not count; a read that fails (site, key) counts
/// as a disagreement: nothing goes on a guess. Each object is read once, one held at a time.
fn segment_agrees(
    site: &dyn Site,
    keyring: &Keyring,
    authority: &WalAuthority,
    names: &[(String, LogName)],
    segment: &LogName,
) -> bool {
    let mut merger = wal_merge::Merger::new((segment.start, segment.end));
    let mut segment_sound = false;
    for (i, (path, name)) in names
        .iter()
        .filter(|(_, n)| {
            n.kind != LogKind::History
                && n.timeline == segment.timeline
                && n.start < segment.end
                && n.end > segment.start
        })
        .enumerate()
    {
        let Ok(bytes) = site.get(path) else {
            return false;
        };
        let Ok(parsed) = wal_log::parse(path, &bytes) else {
            continue;
        };
        let signer = parsed.header.signer;
        let is_segment = name.id == segment.id;
        if ObjectId::of(&bytes) != name.id
            || !name.matches(&parsed.header)
            || !authority.ever_signed(&signer)
            || is_segment && !authority.allows(&signer, authority.direct_anchor(&name.id))
        {
            continue;
        }
        let Ok(keys) = keyring.dataset_for_key_id(&parsed.header.dataset, parsed.header.key_id)
        else {
            return false;
        };
        let Ok((header, payload)) = wal_log::open(&keys, path, &bytes) else {
            continue;
        };
        segment_sound |= is_segment;
        if merger.add(i, header.start, &payload).is_err() {
            return false;
        }
    }
    segment_sound
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    fn name(kind: LogKind, timeline: u32, start: u64, end: u64, tag: &[u8]) -> LogName {
        LogName {
            dataset: "db".into(),
            timeline,
            kind,
            start,
            end,
            id: ObjectId::of(tag),
        }
    }

    #[test]
    fn pieces_are_covered_only_inside_a_segment_of_their_timeline() {
        let s1 = name(LogKind::Segment, 1, SEG, 2 * SEG, b"s1");
        let s2 = name(LogKind::Segment, 1, 2 * SEG, 3 * SEG, b"s2");
        let pieces = [
            name(LogKind::Piece, 1, SEG, SEG + 100, b"a"), // start of s1
            name(LogKind::Piece, 1, 2 * SEG - 10, 2 * SEG, b"b"), // end of s1
            name(LogKind::Piece, 1, 2 * SEG, 2 * SEG + 5, b"c"), // in s2
            name(LogKind::Piece, 1, 3 * SEG, 3 * SEG + 5, b"tail"), // beyond: live tail
            name(LogKind::Piece, 2, SEG, SEG + 100, b"tl2"), // other timeline
            name(LogKind::Piece, 1, 0, 100, b"before"),    // no segment compacted there
            name(LogKind::Piece, 1, 3 * SEG - 5, 3 * SEG + 5, b"cross"), // reaches past s2
        ];
        let refs: Vec<&LogName> = pieces.iter().collect();
        let got = wal_pieces_covered(&refs, &[&s1, &s2]);
        assert_eq!(got, vec![Some(0), Some(0), Some(1), None, None, None, None]);
        // Without segments nothing is covered; a piece is never a covering segment.
        assert!(wal_pieces_covered(&refs, &[]).iter().all(Option::is_none));
        assert!(wal_pieces_covered(&refs, &[&pieces[0]])
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn only_segments_anchored_by_the_ledger_count() {
        use crate::history::ledger::Entry;
        let seg = name(LogKind::Segment, 1, SEG, 2 * SEG, b"s1");
        let other = name(LogKind::Segment, 1, 2 * SEG, 3 * SEG, b"s2");
        let names = vec![
            ("wal/db/00000001/s/a".to_string(), seg.clone()),
            ("wal/db/00000001/s/b".to_string(), other.clone()),
        ];
        let record = |event: Event| Record {
            id: ObjectId::of(b"entry"),
            entry: Entry {
                dataset: "db".into(),
                seq: 1,
                prev: None,
                time_ns: 0,
                event,
                signer: [0; 32],
            },
            refused: None,
        };
        let anchor = |id: ObjectId, timeline: u32, end: u64| {
            record(Event::LogRangeAdded {
                manifest: id,
                timeline,
                start: SEG,
                end,
                captured_at_ns: 0,
                history: None,
            })
        };
        // Anchored by id, timeline and end.
        let got = anchored_segments(&names, &[anchor(seg.id, 1, 2 * SEG)]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, seg);
        // The wrong timeline or end, or no entry at all, anchor nothing.
        assert!(anchored_segments(&names, &[anchor(seg.id, 2, 2 * SEG)]).is_empty());
        assert!(anchored_segments(&names, &[anchor(seg.id, 1, 3 * SEG)]).is_empty());
        assert!(anchored_segments(&names, &[]).is_empty());
    }
}
