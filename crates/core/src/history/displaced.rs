//! Rule 3d of ledger acceptance (docs/format.md §9): what a decided fork leaves out that must
//! be reported rather than taken for noise. An entry on a losing branch was validly signed on
//! its own branch; only a signer the winning branch removed (revoked or rotated out there: a
//! rogue, decided by the root) signs noise. The root's own entries, entries of signers still
//! trusted at the end of the winning branch and entries of keys the root granted on the losing
//! branch are real history a site withheld from a writer (or a race left out): an integrity
//! problem. Called from the acceptance walk (module accept) only.

use crate::history::ledger::{Event, Record};
use crate::id::ObjectId;

/// A fork a rule decided, as the report needs it.
pub struct Fork<'a> {
    /// The sequence number the branches compete at.
    pub seq: u64,
    /// Why the winner won, for people.
    pub rule: &'a str,
    /// The root key.
    pub root: [u8; 32],
    /// The winning competing entry.
    pub winner: ObjectId,
    /// When a takeover decided the fork: its `promoted` entry's sequence number and date.
    pub takeover: Option<(u64, i64)>,
    /// The active signers just before the fork.
    pub at_fork: Vec<[u8; 32]>,
    /// The accepted entries of the winning branch, from the competing entry on.
    pub winning: &'a [Record],
    /// The active signers at the end of the winning branch.
    pub signers_at_end: &'a [[u8; 32]],
    /// The accepted entries of each losing branch, from its competing entry on.
    pub losing: &'a [&'a [Record]],
}

/// What a decided fork leaves out in good faith.
#[derive(Default)]
pub struct Displaced {
    /// One problem line per losing branch that holds such entries, naming them and what to do.
    pub lines: Vec<String>,
    /// The entries themselves: reported as a problem, so never listed as noise as well.
    pub ids: Vec<ObjectId>,
}

/// The entries of each losing branch signed in good faith, and a problem line per branch;
/// empty when every left-out entry is a rogue's.
pub fn report(f: &Fork<'_>) -> Displaced {
    let mut out = Displaced::default();
    // Entries on a losing branch that were validly signed there are real history a
    // site withheld or a race left out: the root's own entries, entries of signers the
    // accepted history still trusts, and entries of keys granted on that branch. Only
    // a signer the winning branch removed (revoked or rotated out: a rogue, decided by
    // the root) signs noise. Leaving them out is a problem to report, never noise.
    // Keys the winning branch granted or revoked itself (a revocation there decides
    // that the key is rogue, even for a key granted only on the losing branch).
    let named_on_winner: Vec<[u8; 32]> = f
        .winning
        .iter()
        .filter_map(|r| match &r.entry.event {
            Event::SignerAdded { key, .. } | Event::SignerRevoked { key, .. } => Some(*key),
            _ => None,
        })
        .collect();
    let removed_by_winner = |k: &[u8; 32]| {
        (f.at_fork.contains(k) || named_on_winner.contains(k)) && !f.signers_at_end.contains(k)
    };
    // A takeover fences the writers it beats, but the history on their side of the fork dated
    // more than an approval's lifetime after the takeover was not a race with it: a takeover
    // made long after its approvals were given (the promoting key forked the history back to
    // the entry they name, dated inside their lifetime) or a split brain that went on for days.
    // Either needs people to decide, so it is reported and kept, never left out in silence.
    let after_takeover = |r: &Record| {
        f.takeover.is_some_and(|(_, at)| {
            r.entry.time_ns
                > at.saturating_add(crate::history::approval::PROMOTION_APPROVAL_LIFETIME_NS)
        })
    };
    // A takeover removes the writers it fences without a word from the root, so their entries
    // on the losing side are left-out history, not a rogue's noise, until the root revokes the
    // key on the accepted history (red team 12: a rogue embassy forked back to old approvals
    // and home's acknowledged entries were listed as noise that "may be removed").
    let revoked_by_winner: Vec<[u8; 32]> = f
        .winning
        .iter()
        .filter_map(|r| match &r.entry.event {
            Event::SignerRevoked { key, .. } if r.entry.signer == f.root => Some(*key),
            _ => None,
        })
        .collect();
    let fenced_not_revoked = |k: &[u8; 32]| f.takeover.is_some() && !revoked_by_winner.contains(k);
    for records in f.losing {
        let displaced: Vec<&Record> = records
            .iter()
            .filter(|r| {
                r.entry.signer == f.root
                    || f.signers_at_end.contains(&r.entry.signer)
                    || !removed_by_winner(&r.entry.signer)
                    || fenced_not_revoked(&r.entry.signer)
                    || after_takeover(r)
            })
            .collect();
        if displaced.is_empty() {
            continue;
        }
        out.ids.extend(displaced.iter().map(|r| r.id));
        let root_signed = displaced.iter().any(|r| r.entry.signer == f.root);
        let late = displaced.iter().filter(|r| after_takeover(r)).count();
        let what = displaced
            .iter()
            .map(|r| {
                format!(
                    "entry {} {} ({}, signed by {})",
                    r.entry.seq,
                    r.id.short(),
                    r.entry.event.name(),
                    if r.entry.signer == f.root {
                        "the root key".to_string()
                    } else {
                        hex::encode(r.entry.signer)[..16].to_string()
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        out.lines.push(format!(
            "fork at entry {}: the accepted history follows {} ({}), which leaves \
             out {} entries validly signed on their own branch{}: {what}; a site \
             withheld them from a writer, or two writers raced. Their data is still \
             stored and garbage collection keeps this dataset whole: compare this \
             site's ledger with the other sites'{}",
            f.seq,
            f.winner.short(),
            f.rule,
            displaced.len(),
            if root_signed {
                " (the root's own among them)"
            } else {
                ""
            },
            if root_signed {
                "; a left-out root entry (a revocation, a grant, a policy) has no effect \
                 until the root signs it again on the accepted history"
            } else {
                ", and have the root revoke the signer only if it is rogue"
            }
        ));
        if let (Some((at_seq, at)), true) = (f.takeover, late > 0) {
            out.lines.push(format!(
                "fork at entry {}: {late} of the entries the takeover at entry {at_seq} (dated \
                 {}) leaves out are dated more than 48 hours after it: the other side went on \
                 for days, so this was not a race with the takeover. Either the takeover was \
                 made with approvals given long before (its key forked the history back to the \
                 entry they name) or home and the embassy both wrote for days (a split brain): \
                 the custodians must decide which history stands; nothing is deleted meanwhile",
                f.seq,
                crate::time::utc(at)
            ));
        }
    }
    out
}
