//! Which keys may sign a dataset's streamed WAL objects (`docs/format.md` §9b), judged from the
//! accepted history: the acceptance rule for WAL, kept apart from the log object format
//! ([`crate::format::wal_log`]).

use crate::history::ledger::{Event, Record, Right};
use crate::history::rights::Authority;
use crate::id::ObjectId;

/// One accepted `LogRangeAdded` entry of a dataset's history: it anchors WAL object `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of the anchoring ledger entry.
    pub seq: u64,
    /// The anchored log object (the newest piece or a whole segment).
    pub id: ObjectId,
    /// Timeline of the anchored range.
    pub timeline: u32,
    /// Start of the range since the previous anchor (as the entry says).
    pub start: u64,
    /// End of the anchored range.
    pub end: u64,
}

/// Who may have signed a dataset's WAL objects, judged at the time they were anchored (§9b of
/// `docs/format.md`): built from the *accepted* history only, it knows for each key the
/// sequence intervals in which it was an active signer, and which objects the ledger anchors.
///
/// A log object is valid when its signer is active at the head (the live tail, and anything the
/// current signers could write again anyway), or when an anchor covers it (names it, or reaches
/// it through the `prev` chain back to the previous anchored object) and its signer was active
/// at that anchor's sequence number. So revoking or rotating a streamer's key never invalidates
/// the WAL it streamed and anchored before, and a revoked key cannot add new WAL: nothing
/// accepted can anchor an object it signs after its revocation. An accepted `promoted` entry
/// naming the WAL its server replayed is an anchor too, for the writers active just before it:
/// the writers it fences keep that WAL and nothing else they sign unanchored.
#[derive(Debug, Clone, Default)]
pub struct WalAuthority {
    /// Per key: half-open intervals `(after, until)` of sequence numbers `s` with
    /// `after < s < until` at which the key could sign (`until = u64::MAX`: still active).
    intervals: std::collections::HashMap<[u8; 32], Vec<(u64, u64)>>,
    /// Sequence number of the accepted head (0: empty history).
    head: u64,
    /// Accepted anchors, in sequence order.
    anchors: Vec<Anchor>,
    /// Earliest anchoring sequence number per directly anchored object.
    direct: std::collections::HashMap<ObjectId, u64>,
    /// Sequence numbers of the accepted `promoted` entries that anchor the WAL they replayed.
    promoted_anchors: Vec<u64>,
    /// Timelines an accepted (authoritative) `promoted` entry names: takeovers decided them.
    decided: Vec<u32>,
}

impl WalAuthority {
    /// Builds the authority from the signers' rights before the dataset's first entry
    /// (`start`, see [`Authority`]) and its accepted history (`Vault::history`):
    /// the rights rules are replayed entry by entry (one home for who may sign: revocations,
    /// re-grants without `stream_wal` and key rotations all end a key's WAL interval).
    pub fn new(start: Authority, history: &[Record]) -> Self {
        let mut out = WalAuthority::default();
        let mut authority = start;
        let mut active = authority.holders(Right::StreamWal);
        for key in &active {
            out.intervals.entry(*key).or_default().push((0, u64::MAX));
        }
        for r in history {
            let seq = r.entry.seq;
            out.head = out.head.max(seq);
            authority.record(r);
            let now = authority.holders(Right::StreamWal);
            if let (None, Event::Promoted { timeline, .. }) = (&r.refused, &r.entry.event) {
                out.decided.push(*timeline);
            }
            if let (
                None,
                Event::Promoted {
                    replayed: Some(w), ..
                },
            ) = (&r.refused, &r.entry.event)
            {
                out.anchors.push(Anchor {
                    seq,
                    id: w.object,
                    timeline: w.timeline,
                    start: w.start,
                    end: w.end,
                });
                out.direct.entry(w.object).or_insert(seq);
                out.promoted_anchors.push(seq);
            }
            for key in now.iter().filter(|k| !active.contains(k)) {
                out.intervals.entry(*key).or_default().push((seq, u64::MAX));
            }
            for key in active.iter().filter(|k| !now.contains(k)) {
                if let Some(last) = out.intervals.get_mut(key).and_then(|v| v.last_mut()) {
                    last.1 = seq;
                }
            }
            active = now;
            if let Event::LogRangeAdded {
                manifest,
                timeline,
                start,
                end,
                history,
                ..
            } = &r.entry.event
            {
                // The timeline's history file the entry names is anchored with it (it has no
                // range and no chain: only directly).
                if let Some(h) = history {
                    out.direct.entry(*h).or_insert(seq);
                }
                out.anchors.push(Anchor {
                    seq,
                    id: *manifest,
                    timeline: *timeline,
                    start: *start,
                    end: *end,
                });
                out.direct.entry(*manifest).or_insert(seq);
            }
        }
        out
    }

    /// True when `key` could sign WAL at sequence number `seq` (it was added with the
    /// `stream_wal` right before `seq` and not revoked before it).
    pub fn active_at(&self, key: &[u8; 32], seq: u64) -> bool {
        self.intervals
            .get(key)
            .is_some_and(|v| v.iter().any(|&(after, until)| after < seq && seq < until))
    }

    /// True when `key` was ever a signer of the dataset's WAL (active at some sequence number):
    /// its objects may be a thief's, unlike a stranger's.
    pub fn ever_signed(&self, key: &[u8; 32]) -> bool {
        self.intervals
            .get(key)
            .is_some_and(|v| v.iter().any(|&(after, until)| after + 1 < until))
    }

    /// True when `key` is an active signer at the head (may add WAL now).
    pub fn active_at_head(&self, key: &[u8; 32]) -> bool {
        self.active_at(key, self.head.saturating_add(1))
    }

    /// The keys active at the head.
    pub fn head_signers(&self) -> Vec<[u8; 32]> {
        let mut out: Vec<[u8; 32]> = self
            .intervals
            .keys()
            .filter(|k| self.active_at_head(k))
            .copied()
            .collect();
        out.sort();
        out
    }

    /// The sequence number of the earliest accepted entry that names object `id`, if any.
    pub fn direct_anchor(&self, id: &ObjectId) -> Option<u64> {
        self.direct.get(id).copied()
    }

    /// Accepted anchors, in sequence order.
    pub fn anchors(&self) -> &[Anchor] {
        &self.anchors
    }

    /// True when an accepted (authoritative) `promoted` entry names `timeline`: a takeover
    /// decided to write on it, whatever WAL of its parent it leaves out.
    pub fn decided(&self, timeline: u32) -> bool {
        self.decided.contains(&timeline)
    }

    /// Whether a log object signed by `signer` is valid, given the sequence number of the
    /// anchor that covers it (None: no anchor covers it, the live tail). A `promoted` entry's
    /// anchor (the WAL the promoted server replayed) vouches for the writers active just before
    /// it, the ones it fences included: their WAL after the previous anchor up to the switch
    /// point stays valid, and nothing else they sign unanchored does (red team 8).
    pub fn allows(&self, signer: &[u8; 32], anchored_at: Option<u64>) -> bool {
        if self.active_at_head(signer) {
            return true;
        }
        let Some(seq) = anchored_at else {
            return false;
        };
        self.active_at(signer, seq)
            || (self.promoted_anchors.contains(&seq) && self.active_just_before(signer, seq))
    }

    /// True when `key` could sign WAL right before the entry at `seq` (its interval reaches
    /// `seq`, whether or not it ends there).
    fn active_just_before(&self, key: &[u8; 32], seq: u64) -> bool {
        self.intervals
            .get(key)
            .is_some_and(|v| v.iter().any(|&(after, until)| after < seq && seq <= until))
    }

    /// Which anchor covers each object, given every known object's `prev` (by id): walking
    /// anchors in sequence order, an anchor covers the object it names and the objects its
    /// `prev` chain reaches before an object an earlier anchor covers (or the chain ends, or
    /// an object is not known). Returns the anchoring sequence number per covered object.
    pub fn coverage(
        &self,
        prevs: &std::collections::HashMap<ObjectId, Option<ObjectId>>,
    ) -> std::collections::HashMap<ObjectId, u64> {
        let mut out = std::collections::HashMap::new();
        for a in &self.anchors {
            let mut cur = Some(a.id);
            let mut steps = 0usize;
            while let Some(id) = cur {
                if out.contains_key(&id) || steps > prevs.len() {
                    break;
                }
                out.insert(id, a.seq);
                steps += 1;
                cur = prevs.get(&id).copied().flatten();
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_signers_are_judged_when_anchored() {
        use crate::history::ledger::Entry;
        use std::collections::HashMap;
        let (k0, a, b) = ([0u8; 32], [1u8; 32], [2u8; 32]);
        let id = |t: &[u8]| ObjectId::of(t);
        let rec = |seq: u64, event: Event| {
            Record::new(
                id(&seq.to_le_bytes()),
                Entry {
                    dataset: "db".into(),
                    seq,
                    prev: None,
                    time_ns: 0,
                    signer: k0,
                    event,
                },
            )
        };
        let anchor = |seq: u64, obj: ObjectId| {
            rec(
                seq,
                Event::LogRangeAdded {
                    manifest: obj,
                    timeline: 1,
                    start: 0,
                    end: seq,
                    captured_at_ns: 0,
                    history: None,
                },
            )
        };
        let added = |seq, key| {
            rec(
                seq,
                Event::SignerAdded {
                    key,
                    role: "x".into(),
                    rights: Right::sealing(false),
                },
            )
        };
        let revoked = |seq, key| {
            rec(
                seq,
                Event::SignerRevoked {
                    key,
                    reason: "x".into(),
                },
            )
        };
        // A streams p1 <- p2 <- p3 (anchored at 3), then p4 (anchored at 5); B is added at 4,
        // A revoked at 6; B streams p5 (prev p4) anchored at 7; p6 by A after that: unanchored.
        let history = vec![
            added(1, a),
            rec(
                2,
                Event::SignerRevoked {
                    key: [9; 32],
                    reason: "never added".into(),
                },
            ),
            anchor(3, id(b"p3")),
            added(4, b),
            anchor(5, id(b"p4")),
            revoked(6, a),
            anchor(7, id(b"p5")),
        ];
        let auth = WalAuthority::new(Authority::pinned(k0, &[k0]), &history);
        assert!(auth.active_at(&k0, 1) && auth.active_at_head(&k0));
        assert!(!auth.active_at(&a, 1) && auth.active_at(&a, 2) && auth.active_at(&a, 5));
        assert!(!auth.active_at(&a, 6) && !auth.active_at(&a, 7) && !auth.active_at_head(&a));
        assert!(!auth.active_at(&b, 4) && auth.active_at(&b, 5) && auth.active_at_head(&b));
        assert_eq!(auth.head_signers(), vec![k0, b]);
        let prevs: HashMap<ObjectId, Option<ObjectId>> = [
            (id(b"p1"), None),
            (id(b"p2"), Some(id(b"p1"))),
            (id(b"p3"), Some(id(b"p2"))),
            (id(b"p4"), Some(id(b"p3"))),
            (id(b"p5"), Some(id(b"p4"))),
            (id(b"p6"), Some(id(b"p5"))),
        ]
        .into_iter()
        .collect();
        let cov = auth.coverage(&prevs);
        assert_eq!(cov.get(&id(b"p1")), Some(&3));
        assert_eq!(cov.get(&id(b"p3")), Some(&3));
        assert_eq!(cov.get(&id(b"p4")), Some(&5));
        assert_eq!(cov.get(&id(b"p5")), Some(&7));
        assert_eq!(cov.get(&id(b"p6")), None);
        // A history file an anchor names (format 8) is anchored directly with it.
        let mut with_history = history.clone();
        with_history.push(rec(
            8,
            Event::LogRangeAdded {
                manifest: id(b"p7"),
                timeline: 2,
                start: 0,
                end: 9,
                captured_at_ns: 0,
                history: Some(id(b"h2")),
            },
        ));
        // B, who stored it, is revoked afterwards: the history file stays valid (red team 9:
        // unanchored, it turned to noise and the timeline could no longer be restored); one B
        // signs without an anchor is not.
        with_history.push(revoked(9, b));
        let auth2 = WalAuthority::new(Authority::pinned(k0, &[k0]), &with_history);
        assert_eq!(auth2.direct_anchor(&id(b"h2")), Some(8));
        assert!(!auth2.active_at_head(&b));
        assert!(auth2.allows(&b, auth2.direct_anchor(&id(b"h2"))));
        assert!(!auth2.allows(&b, None));
        assert!(!auth2.allows(&a, auth2.direct_anchor(&id(b"h2"))));
        // A's anchored WAL stays valid after A's revocation; A's later WAL does not.
        assert!(auth.allows(&a, cov.get(&id(b"p1")).copied()));
        assert!(auth.allows(&a, cov.get(&id(b"p4")).copied()));
        assert!(!auth.allows(&a, cov.get(&id(b"p6")).copied()));
        // An object by A that B's post-revocation anchor covers is not A's to sign.
        assert!(!auth.allows(&a, Some(7)));
        // B's objects: valid at the head; a key never added: never.
        assert!(auth.allows(&b, None));
        assert!(!auth.allows(&[9; 32], Some(3)));
        assert_eq!(auth.direct_anchor(&id(b"p4")), Some(5));
    }
}
