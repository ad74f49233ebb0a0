//! Whether the valid log objects holding one range of a timeline's WAL agree, and the bytes they
//! hold (`docs/format.md` §9b, "Objects that overlap"). WAL at an LSN of a timeline never
//! changes, so honest copies (a compacted segment beside its pieces, a write retried) hold the
//! same bytes. Objects that disagree are a fork inside the timeline, written by a key that signs
//! the dataset's WAL (red team 17: home's stolen, still valid credential stored an older copy's
//! WAL over an anchored range). Neither is chosen: the ledger's anchors cannot say which is
//! real (red team 18: a thief anchors first what the streamer has not written yet, or anchors
//! an honest piece again to lower its standing), so readers refuse the range, naming both.
//!
//! Pure: the caller reads and opens the objects.

use std::collections::BTreeMap;

/// Two objects that hold different bytes at the same LSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disagreement {
    /// Index of the object added first.
    pub kept: usize,
    /// Index of the object that differs from it.
    pub other: usize,
    /// The first LSN where they differ.
    pub at: u64,
}

/// The WAL a window's objects hold, all agreeing.
#[derive(Debug, Clone, Default)]
pub struct Merged {
    /// The bytes from the window's start up to the first byte no object holds.
    pub bytes: Vec<u8>,
    /// An object holding WAL past a byte no object holds (a gap): the one starting first, and
    /// where the gap begins.
    pub beyond: Option<(usize, u64)>,
}

/// Merges what `held` holds of the window `[from, to)` (`(start LSN, bytes)` per object), or
/// names the first two objects that disagree.
pub fn merge(window: (u64, u64), held: &[(u64, &[u8])]) -> Result<Merged, Disagreement> {
    let mut merger = Merger::new(window);
    for (i, (start, bytes)) in held.iter().enumerate() {
        merger.add(i, *start, bytes)?;
    }
    Ok(merger.finish())
}

/// [`merge`] one object at a time, so a caller holds one object's bytes at once.
#[derive(Debug)]
pub struct Merger {
    from: u64,
    to: u64,
    bytes: Vec<u8>,
    /// Runs of bytes set so far, by start: (end, owner); disjoint.
    runs: BTreeMap<u64, (u64, usize)>,
}

impl Merger {
    /// A merge of the window `[from, to)`.
    pub fn new((from, to): (u64, u64)) -> Self {
        let len = usize::try_from(to.saturating_sub(from)).unwrap_or(0);
        Self {
            from,
            to: from + len as u64,
            bytes: vec![0u8; len],
            runs: BTreeMap::new(),
        }
    }

    /// Adds object `index`, holding `bytes` from LSN `start`: compared with every byte already
    /// held, then copied in where no object holds bytes yet.
    pub fn add(&mut self, index: usize, start: u64, bytes: &[u8]) -> Result<(), Disagreement> {
        let (from, to) = (self.from, self.to);
        let begin = start.max(from);
        let end = start.saturating_add(bytes.len() as u64).min(to);
        if begin >= end {
            return Ok(());
        }
        let theirs = |a: u64, b: u64| &bytes[(a - start) as usize..(b - start) as usize];
        // The runs it overlaps (the one starting before `begin` too).
        let first = self
            .runs
            .range(..=begin)
            .next_back()
            .filter(|(_, &(e, _))| e > begin)
            .map(|(&s, _)| s)
            .unwrap_or(begin);
        let mut gaps = Vec::new();
        let mut pos = begin;
        for (&s, &(e, owner)) in self.runs.range(first..end) {
            let (a, b) = (s.max(begin), e.min(end));
            let ours = &self.bytes[(a - from) as usize..(b - from) as usize];
            if let Some(k) = theirs(a, b).iter().zip(ours).position(|(x, y)| x != y) {
                return Err(Disagreement {
                    kept: owner,
                    other: index,
                    at: a + k as u64,
                });
            }
            if s > pos {
                gaps.push((pos, s.min(end)));
            }
            pos = pos.max(e);
        }
        if pos < end {
            gaps.push((pos, end));
        }
        for (a, b) in gaps {
            self.bytes[(a - from) as usize..(b - from) as usize].copy_from_slice(theirs(a, b));
            self.runs.insert(a, (b, index));
        }
        Ok(())
    }

    /// The merged window: the contiguous prefix, and the first object past a gap.
    pub fn finish(self) -> Merged {
        let Merger {
            from,
            mut bytes,
            runs,
            ..
        } = self;
        let mut beyond = None;
        let mut reach = from;
        for (&s, &(e, owner)) in &runs {
            if s > reach {
                beyond = Some((owner, reach));
                break;
            }
            reach = reach.max(e);
        }
        bytes.truncate((reach - from) as usize);
        Merged { bytes, beyond }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_that_agree_merge_and_a_gap_is_named() {
        let wal: Vec<u8> = (0..100u8).collect();
        let objs: [(u64, &[u8]); 3] = [(1000, &wal[..40]), (1030, &wal[30..70]), (1000, &wal)];
        let m = merge((1000, 1100), &objs).unwrap();
        assert_eq!(m.bytes, wal);
        assert!(m.beyond.is_none());
        // Clipped to the window.
        let m = merge((1010, 1020), &objs).unwrap();
        assert_eq!(m.bytes, &wal[10..20]);
        // A gap: the prefix ends at it and the object past it is named.
        let objs: [(u64, &[u8]); 2] = [(1000, &wal[..40]), (1050, &wal[50..])];
        let m = merge((1000, 1100), &objs).unwrap();
        assert_eq!(m.bytes, &wal[..40]);
        assert_eq!(m.beyond, Some((1, 1040)));
        // Nothing at the window's start.
        let m = merge((1000, 1100), &objs[1..]).unwrap();
        assert!(m.bytes.is_empty());
        assert_eq!(m.beyond, Some((0, 1000)));
    }

    /// One differing byte anywhere an object overlaps another, in whichever order they come,
    /// also where a third object lies between them.
    #[test]
    fn objects_that_disagree_anywhere_are_named() {
        let wal: Vec<u8> = (0..100u8).collect();
        let mut forged = wal.clone();
        forged[35] ^= 1;
        let objs: [(u64, &[u8]); 2] = [(1000, &wal), (1010, &forged[10..50])];
        assert_eq!(
            merge((1000, 1100), &objs).unwrap_err(),
            Disagreement {
                kept: 0,
                other: 1,
                at: 1035
            }
        );
        let objs: [(u64, &[u8]); 3] = [(1000, &wal[..20]), (1030, &wal[30..]), (1000, &forged)];
        assert_eq!(
            merge((1000, 1100), &objs).unwrap_err(),
            Disagreement {
                kept: 1,
                other: 2,
                at: 1035
            }
        );
        // Where no other object holds the byte, there is nothing to disagree with.
        let objs: [(u64, &[u8]); 3] = [(1000, &wal[..20]), (1060, &wal[60..]), (1000, &forged)];
        assert_eq!(merge((1000, 1100), &objs).unwrap().bytes, forged);
    }

    #[test]
    fn odd_ranges_stay_inside_the_window() {
        let wal = [7u8; 10];
        let objs: [(u64, &[u8]); 3] = [(u64::MAX - 5, &wal), (0, &[]), (995, &wal)];
        let m = merge((1000, 1100), &objs).unwrap();
        assert_eq!(m.bytes, [7u8; 5]);
        assert!(merge((1100, 1000), &objs).unwrap().bytes.is_empty());
    }
}
