//! A dataset's history and the rules that accept it (docs/format.md §9): which ledger objects
//! count, which are noise a site (or an attacker) added, how a fork is resolved and what is
//! damage. The record format itself (entries, events, signatures, appending) is
//! [`crate::history::ledger`]'s; the deletion rules are
//! [`crate::history::deletion::check_deletion`]'s, called from here only.
//!
//! Acceptance in short:
//! - every object under `ledger/<dataset>/` that does not parse, does not hash to its name, is
//!   not a validly signed entry of this dataset at the sequence its path names, is signed by a
//!   key that may not sign at that point, or continues such an object, is *noise*: reported,
//!   never fatal;
//! - the accepted history is the chain of acceptable entries from 1; where several acceptable
//!   entries compete at one sequence number (a fork), an entry its own signer withdrew (a writer
//!   that lost the race for the number, `history::withdrawal`) that nothing continues and no
//!   trusted head names is noise; of the others, the branch that holds an authoritative
//!   promotion (`history::promotion`) wins, else the branch that holds a trusted head
//!   (checkpointed by the root or a pinned signer, or remembered by this client) wins, else the
//!   branch holding a root-signed entry wins, else the fork is unresolved: the history ends
//!   before it and appends are refused until the root revokes the rogue signer;
//! - a missing entry with later entries by signers of this dataset beyond it is *damage* (a
//!   gap): the history ends before it, and verify fails.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::format::config::VaultConfig;
use crate::format::layout;
use crate::history::ledger::{self, Entry, Event, Record};
use crate::history::numbering::VersionNumbering;
use crate::history::version::Version;
use crate::id::ObjectId;
use crate::site::{Site, SiteError, LISTED_NOT_HELD};

/// A ledger object that is not part of the accepted history: well-formed or not, it has no
/// effect, and verifiers report it as noise with its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The sequence number its path names.
    pub seq: u64,
    /// The id its path names.
    pub id: ObjectId,
    /// Where it is stored.
    pub path: String,
    /// Why it was rejected.
    pub reason: String,
}

/// An object under a dataset's ledger folder whose path is not a ledger entry's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Noise {
    /// Where it is stored.
    pub path: String,
    /// Why it is noise.
    pub reason: String,
}

/// One side of an unresolved fork: the competing entry and the acceptable entries after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Accepted entries along the branch, from the competing entry on.
    pub records: Vec<Record>,
    /// Ids of every entry on the branch and under it (nested forks, rejected continuations).
    pub subtree: Vec<ObjectId>,
}

impl Branch {
    /// The competing entry at the fork.
    pub fn first(&self) -> &Record {
        &self.records[0]
    }
}

/// Acceptable entries competing at one sequence number that no rule decides between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The sequence number they compete at; the accepted history ends before it.
    pub seq: u64,
    /// The competing branches.
    pub branches: Vec<Branch>,
}

impl Conflict {
    /// The conflict for people, with the way out.
    pub fn describe(&self, dataset: &str) -> String {
        let who = self
            .branches
            .iter()
            .map(|b| {
                format!(
                    "{} ({}, signed by {}, {} entries)",
                    b.first().id.short(),
                    b.first().entry.event.name(),
                    hex::encode(b.first().entry.signer),
                    b.records.len()
                )
            })
            .collect::<Vec<_>>()
            .join(" and ");
        format!(
            "fork: entries {who} compete at sequence {}, and neither a checkpoint, this client's \
             remembered head nor a root-signed entry decides; versions before {} stay readable. \
             If one signer is rogue, the root revokes it for dataset {dataset} and the fork \
             resolves",
            self.seq, self.seq
        )
    }
}

/// A verified history with what was left out of it.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Accepted entries, from 1 to the head (the longest prefix that can be proved).
    pub records: Vec<Record>,
    /// Ledger entries that are not part of it (noise): unauthorised, foreign, damaged, on a
    /// losing branch, or continuing one of these.
    pub rejected: Vec<Rejected>,
    /// Objects in the ledger folder that are not ledger entries at all.
    pub noise: Vec<Noise>,
    /// Damage to the history (a missing entry with later ones beyond it): integrity failures.
    pub damage: Vec<String>,
    /// An unresolved fork after the accepted history.
    pub conflict: Option<Conflict>,
    /// Forks a rule decided against a branch holding entries validly signed there by the
    /// root, by signers the accepted history still trusts or by keys the root granted on that
    /// branch (a site withheld entries from a writer, or writers raced): integrity failures,
    /// since what that branch holds is real and no longer in the history. Garbage collection
    /// leaves such a dataset alone ([`History::check_collectable`]).
    pub displaced: Vec<String>,
    /// The entries those forks left out (also in `rejected`, as every entry off the
    /// accepted history is): reported by `displaced`, so never listed as noise.
    pub displaced_ids: Vec<ObjectId>,
    /// Entries a fork left out because their own signer withdrew them (rule 3w: a writer that
    /// lost a race for the sequence number): noise (also in `rejected`), kept here whole so
    /// that garbage collection keeps what they reference, whoever withdrew them.
    pub withdrawn: Vec<Record>,
}

impl History {
    /// Ids of every entry a writer may step over when it appends after the accepted head
    /// (rejected entries; branches of an unresolved fork).
    pub fn rejected_ids(&self) -> Vec<ObjectId> {
        let mut ids: Vec<ObjectId> = self.rejected.iter().map(|r| r.id).collect();
        if let Some(c) = &self.conflict {
            ids.extend(c.branches.iter().flat_map(|b| b.subtree.iter().copied()));
        }
        ids
    }

    /// Integrity failures (damage, an unresolved fork, history a fork displaced), one line
    /// each.
    pub fn problems(&self, dataset: &str) -> Vec<String> {
        let mut out = self.damage.clone();
        if let Some(c) = &self.conflict {
            out.push(c.describe(dataset));
        }
        out.extend(self.displaced.iter().cloned());
        out
    }

    /// True when entries beyond the accepted history exist that could not be accepted because
    /// of damage or an unresolved fork: the newest accepted version may not be the newest.
    pub fn is_truncated(&self) -> bool {
        !self.damage.is_empty() || self.conflict.is_some()
    }

    /// What the site holds at `seq` that was not accepted, for messages about a missing entry:
    /// empty, or ` (in its place the site holds only <path>: <why>; ...)`.
    pub fn in_place(&self, seq: u64) -> String {
        let held: Vec<String> = self
            .rejected
            .iter()
            .filter(|r| r.seq == seq)
            .map(|r| format!("{}: {}", r.path, r.reason))
            .collect();
        if held.is_empty() {
            return String::new();
        }
        format!(" (in its place the site holds only {})", held.join("; "))
    }

    /// Every noise object, `(path, reason)`.
    pub fn all_noise(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .rejected
            .iter()
            .filter(|r| !self.displaced_ids.contains(&r.id))
            .map(|r| (r.path.clone(), r.reason.clone()))
            .chain(
                self.noise
                    .iter()
                    .map(|n| (n.path.clone(), n.reason.clone())),
            )
            .collect();
        out.sort();
        out
    }

    /// Refuses garbage collection of a dataset whose accepted history is not the whole
    /// history: beyond a gap or an unresolved fork ([`History::check_appendable`]), and while
    /// a fork leaves out validly signed entries ([`History::displaced`]), whose versions are
    /// real and reference objects the accepted history does not.
    pub fn check_collectable(&self, dataset: &str) -> Result<()> {
        self.check_appendable(dataset)?;
        if !self.displaced.is_empty() {
            return Err(Error::History {
                dataset: dataset.into(),
                problem: format!(
                    "the versions a fork left out still reference their objects: {}",
                    self.displaced.join("; ")
                ),
            });
        }
        Ok(())
    }

    /// Refuses an append when the accepted history is not the whole history: a new entry after
    /// a gap or a fork would hide the entries beyond it for good.
    pub fn check_appendable(&self, dataset: &str) -> Result<()> {
        if self.damage.is_empty() && self.conflict.is_some() {
            // An unresolved fork alone: revoking the rogue signer decides it.
            return Err(Error::Refused {
                kind: crate::ErrorKind::Integrity,
                problem: format!(
                    "dataset {dataset}: history does not verify: nothing can be added after \
                     entry {}: {}",
                    self.records.len(),
                    self.problems(dataset).join("; ")
                ),
                way_out: crate::error::WayOut::RevokeSigner {
                    dataset: dataset.into(),
                },
            });
        }
        if self.is_truncated() {
            return Err(Error::History {
                dataset: dataset.into(),
                problem: format!(
                    "nothing can be added after entry {}: {}",
                    self.records.len(),
                    self.problems(dataset).join("; ")
                ),
            });
        }
        Ok(())
    }
}

/// What acceptance knows at one point of a chain.
#[derive(Clone)]
struct Judge {
    /// Signers with their rights, and the legal minimum age ([`crate::history::rights`]).
    authority: crate::history::rights::Authority,
    /// Time of the last accepted entry: an entry may not be dated before it.
    head_time: Option<i64>,
    /// Live versions so far, kept up to date entry by entry: deletions are judged against them
    /// without rescanning the history.
    live: BTreeMap<u64, Version>,
    /// Version numbers so far.
    numbering: VersionNumbering,
}

impl Judge {
    fn apply(&mut self, dataset: &str, record: &Record) {
        self.head_time = Some(record.entry.time_ns);
        // A no-op (a refused deletion or minimum-age change, an informational promotion)
        // changes nothing.
        self.authority.record(record);
        if record.refused.is_none() {
            if let Event::VersionsDeleted { seqs, .. } = &record.entry.event {
                for s in seqs {
                    self.live.remove(s);
                }
            }
        }
        if let Some(v) = self.numbering.numbered(dataset, record) {
            self.live.insert(v.seq, v);
        }
    }
}

struct Candidate {
    id: ObjectId,
    entry: Entry,
}

/// A candidate that the rules accept, with why its effect is refused when it is a no-op.
type Acceptable<'a> = (&'a Candidate, Option<String>);

struct Ctx<'a> {
    site: &'a dyn Site,
    config: &'a VaultConfig,
    dataset: &'a str,
    root: [u8; 32],
    /// Decoded entries by sequence number, then by the entry they continue.
    by_seq: BTreeMap<u64, Vec<Candidate>>,
    paths: HashMap<ObjectId, String>,
    remembered: Option<(u64, ObjectId)>,
    checkpointed: OnceLock<Vec<(u64, ObjectId)>>,
}

impl Ctx<'_> {
    /// Heads this client trusts: remembered here, or named by a checkpoint that the root or a
    /// pinned signer signed. Checkpoints are read only when a fork needs them.
    fn trusted_heads(&self) -> Vec<(u64, ObjectId)> {
        let checkpointed = self.checkpointed.get_or_init(|| {
            let mut signers = vec![self.root];
            signers.extend(self.config.signer_keys());
            crate::history::checkpoint::load_all(self.site, &self.config.vault_id, &signers)
                .map(|(cps, _)| {
                    cps.iter()
                        .filter_map(|cp| cp.checkpoint.heads.get(self.dataset))
                        .map(|h| (h.seq, h.id))
                        .collect()
                })
                .unwrap_or_default()
        });
        checkpointed
            .iter()
            .copied()
            .chain(self.remembered)
            .collect()
    }

    fn path(&self, seq: u64, id: &ObjectId) -> String {
        self.paths
            .get(id)
            .cloned()
            .unwrap_or_else(|| layout::ledger_entry(self.dataset, seq, id))
    }

    fn reject(&self, seq: u64, id: ObjectId, reason: String) -> Rejected {
        Rejected {
            seq,
            id,
            path: self.path(seq, &id),
            reason,
        }
    }
}

/// The accepted continuation from one point of the chain.
#[derive(Default)]
struct Walk {
    records: Vec<Record>,
    rejected: Vec<Rejected>,
    conflict: Option<Conflict>,
    signers_at_end: Vec<[u8; 32]>,
    /// Forks decided against branches that hold entries signed in good faith (not by a
    /// signer the winning branch removed): one problem line each, and those entries.
    displaced: crate::history::displaced::Displaced,
    /// Withdrawals read at forks that withdraw nothing (forged, by another key, of another
    /// entry): noise.
    noise: Vec<Noise>,
    /// Entries left out because their signer withdrew them (rule 3w).
    withdrawn: Vec<Record>,
}

impl Walk {
    /// Takes in what a branch walk found beside its records (rejected entries, noise,
    /// withdrawn entries, displaced history).
    fn absorb_side(&mut self, b: &mut Walk) {
        self.rejected.append(&mut b.rejected);
        self.noise.append(&mut b.noise);
        self.withdrawn.append(&mut b.withdrawn);
        self.displaced.lines.append(&mut b.displaced.lines);
        self.displaced.ids.append(&mut b.displaced.ids);
    }
}

impl Walk {
    /// Every entry id on this walk and its unresolved branches, with its seq and signer.
    fn entries(&self) -> Vec<(u64, ObjectId, [u8; 32])> {
        let mut out: Vec<_> = self
            .records
            .iter()
            .map(|r| (r.entry.seq, r.id, r.entry.signer))
            .collect();
        if let Some(c) = &self.conflict {
            for b in &c.branches {
                out.extend(
                    b.records
                        .iter()
                        .map(|r| (r.entry.seq, r.id, r.entry.signer)),
                );
            }
        }
        out
    }
}

/// Follows the chain from `head` (the last accepted entry, if any), judging each sequence
/// number's candidates with `judge`.
fn walk(ctx: &Ctx<'_>, mut judge: Judge, mut head: Option<(u64, ObjectId)>) -> Walk {
    let mut out = Walk::default();
    loop {
        let seq = head.map_or(1, |(s, _)| s + 1);
        let prev = head.map(|(_, id)| id);
        let Some(candidates) = ctx.by_seq.get(&seq) else {
            break;
        };
        let mut acceptable: Vec<Acceptable<'_>> = Vec::new();
        for c in candidates.iter().filter(|c| c.entry.prev == prev) {
            // Signer, rights, time and the deletion rules (crate::history::rights).
            match judge.authority.verdict(
                ctx.config,
                ctx.dataset,
                &judge.live,
                judge.head_time,
                &c.entry,
            ) {
                crate::history::rights::Verdict::Accept => acceptable.push((c, None)),
                crate::history::rights::Verdict::Noop(why) => acceptable.push((c, Some(why))),
                crate::history::rights::Verdict::Reject(reason) => {
                    out.rejected.push(ctx.reject(seq, c.id, reason))
                }
            }
        }
        // A no-op (refused deletion or minimum-age change) beside exactly one entry with its
        // effect loses the sequence number: it could not have changed anything anyway.
        if acceptable.len() > 1 && acceptable.iter().filter(|(_, r)| r.is_none()).count() == 1 {
            acceptable.retain(|(c, refused)| match refused {
                None => true,
                Some(why) => {
                    out.rejected.push(ctx.reject(
                        seq,
                        c.id,
                        format!("{why}; another entry took its sequence number"),
                    ));
                    false
                }
            });
        }
        // A deletion that raced a version to the same sequence number loses: it is rejected
        // and has no effect (its writer retries after the version).
        let not_deletions: Vec<ObjectId> = acceptable
            .iter()
            .filter(|(c, _)| !matches!(c.entry.event, Event::VersionsDeleted { .. }))
            .map(|(c, _)| c.id)
            .collect();
        if acceptable.len() > 1 && not_deletions.len() == 1 {
            let winner = not_deletions[0];
            acceptable.retain(|(c, _)| {
                if c.id == winner {
                    return true;
                }
                out.rejected.push(ctx.reject(
                    seq,
                    c.id,
                    format!(
                        "versions deleted, but entry {} {}; the deletion has no effect",
                        winner.short(),
                        crate::history::deletion::RACE_LOST
                    ),
                ));
                false
            });
        }
        match acceptable.len() {
            0 => break,
            1 => {
                let (c, refused) = acceptable.remove(0);
                let record = Record {
                    id: c.id,
                    entry: c.entry.clone(),
                    refused,
                };
                judge.apply(ctx.dataset, &record);
                head = Some((seq, c.id));
                out.records.push(record);
            }
            _ => {
                resolve_fork(ctx, &judge, seq, &acceptable, &mut out);
                return out;
            }
        }
    }
    out.signers_at_end = judge.authority.keys();
    out
}

/// Rule 3w: leaves out the competing entries at `seq` that their own signer withdrew (a writer
/// that lost the race for the sequence number, `ledger::append_ignoring`), and returns the
/// other branches. A withdrawal counts only for an entry that competes with another one at its
/// sequence number, that nothing acceptable continues, and that no trusted head names; it must
/// hash to its name, be signed by the entry's own signer, name the entry's id, dataset and
/// sequence number, and name among the entries it lost to one that competes here
/// (`history::withdrawal::applies`). So a site cannot forge one, one signer cannot withdraw
/// another's entry, a withdrawal cannot be moved onto another entry, and no signer can withdraw
/// an entry that history continues or that a reader has seen as a head.
fn leave_out_withdrawn(ctx: &Ctx<'_>, seq: u64, branches: Vec<Walk>, out: &mut Walk) -> Vec<Walk> {
    let alone = |b: &Walk| b.records.len() == 1 && b.conflict.is_none();
    if !branches.iter().any(alone) {
        return branches;
    }
    let (found, bad) = crate::history::withdrawal::load_at(ctx.site, ctx.dataset, seq);
    out.noise
        .extend(bad.into_iter().map(|(path, reason)| Noise { path, reason }));
    if found.is_empty() {
        return branches;
    }
    let ids: Vec<ObjectId> = branches.iter().map(|b| b.records[0].id).collect();
    let trusted = ctx.trusted_heads();
    let mut used: Vec<&str> = Vec::new();
    let mut kept = Vec::new();
    for mut b in branches {
        let first = &b.records[0];
        let competing: Vec<ObjectId> = ids.iter().copied().filter(|i| *i != first.id).collect();
        let by = (alone(&b) && !trusted.contains(&(seq, first.id)))
            .then(|| {
                found.iter().find(|(_, w)| {
                    crate::history::withdrawal::applies(
                        w,
                        ctx.dataset,
                        seq,
                        &first.id,
                        &first.entry.signer,
                        &competing,
                    )
                    .is_none()
                })
            })
            .flatten();
        match by {
            Some((path, w)) => {
                used.push(path);
                out.rejected.push(ctx.reject(
                    seq,
                    first.id,
                    format!(
                        "withdrawn by its own signer ({path}): it lost the race for entry {seq} \
                         to {} and was never acknowledged",
                        w.lost_to
                            .iter()
                            .map(|o| o.short())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
                out.withdrawn.push(first.clone());
                out.absorb_side(&mut b);
            }
            None => kept.push(b),
        }
    }
    // Withdrawals here that withdraw nothing: say why.
    for (path, w) in &found {
        if used.contains(&path.as_str()) {
            continue;
        }
        let Some(b) = kept.iter().find(|b| b.records[0].id == w.entry) else {
            if !ids.contains(&w.entry) {
                out.noise.push(Noise {
                    path: path.clone(),
                    reason: format!(
                        "a withdrawal that withdraws nothing: it names entry {} {}, which does \
                         not compete at entry {seq}",
                        w.seq,
                        w.entry.short()
                    ),
                });
            }
            continue;
        };
        let first = &b.records[0];
        let competing: Vec<ObjectId> = ids.iter().copied().filter(|i| *i != first.id).collect();
        let why = crate::history::withdrawal::applies(
            w,
            ctx.dataset,
            seq,
            &first.id,
            &first.entry.signer,
            &competing,
        )
        .unwrap_or_else(|| {
            if alone(b) {
                "a checkpoint or this client's remembered head names the entry".into()
            } else {
                "entries continue it".into()
            }
        });
        out.noise.push(Noise {
            path: path.clone(),
            reason: format!(
                "a withdrawal of entry {seq} {} that withdraws nothing: {why}",
                first.id.short()
            ),
        });
    }
    kept
}

/// Why a fork went to the branch holding an authoritative promotion, in the fork report.
const PROMOTION_RULE: &str = "the other branch holds an authoritative promotion (a takeover)";

/// Several acceptable entries at `seq`: follow each branch, leave out those their own signer
/// withdrew (rule 3w), then pick the one that holds an authoritative promotion, a trusted head,
/// else the one that holds a root-signed entry, else leave the fork unresolved.
fn resolve_fork(
    ctx: &Ctx<'_>,
    judge: &Judge,
    seq: u64,
    competing: &[Acceptable<'_>],
    out: &mut Walk,
) {
    let branches: Vec<Walk> = competing
        .iter()
        .map(|(c, refused)| {
            let record = Record {
                id: c.id,
                entry: c.entry.clone(),
                refused: refused.clone(),
            };
            let mut judge = judge.clone();
            judge.apply(ctx.dataset, &record);
            let mut rest = walk(ctx, judge, Some((seq, c.id)));
            rest.records.insert(0, record);
            rest
        })
        .collect();
    let mut branches = leave_out_withdrawn(ctx, seq, branches, out);
    if branches.len() <= 1 {
        // Every other competing entry was withdrawn: what is left is the history (or nothing
        // is, when every racing writer withdrew its own).
        match branches.pop() {
            Some(mut w) => {
                out.absorb_side(&mut w);
                out.records.append(&mut w.records);
                out.conflict = w.conflict;
                out.signers_at_end = w.signers_at_end;
            }
            None => out.signers_at_end = judge.authority.keys(),
        }
        return;
    }
    let trusted = ctx.trusted_heads();
    let holds_head = |w: &Walk| {
        w.entries()
            .iter()
            .any(|(s, id, _)| trusted.contains(&(*s, *id)))
    };
    let holds_root = |w: &Walk| w.entries().iter().any(|(_, _, signer)| *signer == ctx.root);
    let mut left: Vec<usize> = (0..branches.len()).collect();
    let mut rule = "";
    // The root itself signed one of the competing entries (a revocation placed at the fork's
    // sequence number by `keys revoke`): the root decided this sequence number.
    let root_signed: Vec<usize> = left
        .iter()
        .copied()
        .filter(|i| branches[*i].records[0].entry.signer == ctx.root)
        .collect();
    if root_signed.len() == 1 {
        left = root_signed;
        rule = "the root signed the competing entry at this sequence number itself";
    }
    // A branch holding an authoritative promotion (a takeover approved by the configured
    // quorum, or decided by the root or a configured signer) wins over branches without one:
    // an old primary cannot undo a takeover by forking the history below it, whatever sequence
    // numbers and times it chooses. It comes before remembered heads: the old primary's own
    // client remembers its own branch.
    let fencing = ctx.config.format_version >= crate::format::config::FENCING_SINCE;
    let holds_promotion = |w: &Walk| {
        fencing
            && w.records
                .iter()
                .any(|r| r.refused.is_none() && matches!(r.entry.event, Event::Promoted { .. }))
    };
    let promoted: Vec<usize> = left
        .iter()
        .copied()
        .filter(|i| holds_promotion(&branches[*i]))
        .collect();
    if !promoted.is_empty() && promoted.len() < left.len() {
        left = promoted;
        rule = PROMOTION_RULE;
    }
    let with_head: Vec<usize> = left
        .iter()
        .copied()
        .filter(|i| holds_head(&branches[*i]))
        .collect();
    if !with_head.is_empty() && with_head.len() < left.len() {
        left = with_head;
        rule = "the other branch holds a checkpointed or remembered head";
    }
    if left.len() > 1 {
        let with_root: Vec<usize> = left
            .iter()
            .copied()
            .filter(|i| holds_root(&branches[*i]))
            .collect();
        if !with_root.is_empty() && with_root.len() < left.len() {
            left = with_root;
            rule = "the other branch holds an entry signed by the root key";
        }
    }
    if left.len() == 1 {
        let winner_index = left[0];
        let winner_id = branches[winner_index].records[0].id;
        // The takeover that decided the fork, when one did (its date bounds what it may leave
        // out in silence: rule 3d).
        let takeover = (rule == PROMOTION_RULE)
            .then(|| {
                branches[winner_index].records.iter().find(|r| {
                    r.refused.is_none() && matches!(r.entry.event, Event::Promoted { .. })
                })
            })
            .flatten()
            .map(|r| (r.entry.seq, r.entry.time_ns));
        let mut winner = None;
        let mut losers = Vec::new();
        for (i, mut b) in branches.into_iter().enumerate() {
            if i == winner_index {
                winner = Some(b);
                continue;
            }
            for (s, id, _) in b.entries() {
                out.rejected.push(ctx.reject(
                    s,
                    id,
                    format!(
                        "on a losing branch of the fork at entry {seq} (won by {}: {rule})",
                        winner_id.short()
                    ),
                ));
            }
            out.rejected.extend(std::mem::take(&mut b.rejected));
            out.noise.append(&mut b.noise);
            out.withdrawn.append(&mut b.withdrawn);
            losers.push(b);
        }
        if let Some(w) = winner {
            let losing: Vec<&[Record]> = losers.iter().map(|b| b.records.as_slice()).collect();
            let left_out = crate::history::displaced::report(&crate::history::displaced::Fork {
                seq,
                rule,
                root: ctx.root,
                winner: winner_id,
                takeover,
                at_fork: judge.authority.keys(),
                winning: &w.records,
                signers_at_end: &w.signers_at_end,
                losing: &losing,
            });
            out.displaced.lines.extend(left_out.lines);
            out.displaced.ids.extend(left_out.ids);
            out.records.extend(w.records);
            out.rejected.extend(w.rejected);
            out.conflict = w.conflict;
            out.signers_at_end = w.signers_at_end;
            out.displaced.lines.extend(w.displaced.lines);
            out.displaced.ids.extend(w.displaced.ids);
            out.noise.extend(w.noise);
            out.withdrawn.extend(w.withdrawn);
        }
        return;
    }
    out.signers_at_end = judge.authority.keys();
    out.conflict = Some(Conflict {
        seq,
        branches: branches
            .into_iter()
            .map(|mut b| {
                out.noise.append(&mut b.noise);
                out.withdrawn.append(&mut b.withdrawn);
                let mut subtree: Vec<ObjectId> = b.entries().iter().map(|(_, id, _)| *id).collect();
                subtree.extend(b.rejected.iter().map(|r| r.id));
                out.rejected.extend(b.rejected);
                Branch {
                    records: b.records,
                    subtree,
                }
            })
            .collect(),
    });
}

/// Loads a dataset's history and judges it (see the module documentation). `remembered` is
/// the head this client verified before, if any: a fork below it resolves to its chain.
/// Errors only when the site cannot be listed or read; everything else is reported in the
/// returned [`History`].
pub fn load(
    site: &dyn Site,
    config: &VaultConfig,
    dataset: &str,
    remembered: Option<(u64, ObjectId)>,
) -> Result<History> {
    layout::check_dataset_name(dataset)?;
    let mut history = History::default();
    let mut listed = Vec::new();
    for info in site.list(&layout::ledger_prefix(dataset))? {
        match layout::parse_ledger_path(&info.path) {
            Some((ds, seq, id)) if ds == dataset && seq > 0 => listed.push((seq, id, info.path)),
            _ => history.noise.push(Noise {
                path: info.path,
                reason: "not a ledger entry's name".into(),
            }),
        }
    }
    // The listing order is the site's: sort, so that every client judges the same way.
    listed.sort();
    listed.dedup();
    let cached = ledger::reads_cached();
    let location = site.location();
    let fetched: Vec<Result<std::result::Result<Candidate, Rejected>>> = listed
        .par_iter()
        .map(|(seq, id, path)| {
            let reject = |reason: String| {
                Ok(Err(Rejected {
                    seq: *seq,
                    id: *id,
                    path: path.clone(),
                    reason,
                }))
            };
            // A writer's own load (`ledger::CachedReads`) does not fetch again an entry this
            // process decoded from the same site before (its id is the hash of its bytes).
            let entry = match cached.then(|| ledger::decoded(location, id)).flatten() {
                Some(entry) => entry,
                None => {
                    let bytes = match site.get(path) {
                        Ok(bytes) => bytes,
                        // Listed, yet no site produces it (a listing that names what is not
                        // there, or an object lost between listing and reading): judged like a
                        // damaged copy, noise unless the accepted history needs it.
                        Err(SiteError::NotFound { .. }) => return reject(LISTED_NOT_HELD.into()),
                        Err(e) => return Err(e.into()),
                    };
                    if ObjectId::of(&bytes) != *id {
                        return reject("bytes do not hash to the object's name".into());
                    }
                    let decoded = if cached {
                        ledger::decode_and_keep(location, id, path, &bytes)
                    } else {
                        ledger::decode(path, &bytes)
                    };
                    match decoded {
                        Ok(e) => e,
                        Err(e) => return reject(format!("not a validly signed ledger entry: {e}")),
                    }
                }
            };
            if entry.dataset != dataset {
                return reject(format!("an entry of dataset {}", entry.dataset));
            }
            if entry.seq != *seq {
                return reject(format!("holds sequence {}, not {seq}", entry.seq));
            }
            Ok(Ok(Candidate { id: *id, entry }))
        })
        .collect();
    let mut ctx = Ctx {
        site,
        config,
        dataset,
        root: config.root_key()?,
        by_seq: BTreeMap::new(),
        paths: listed.iter().map(|(_, id, p)| (*id, p.clone())).collect(),
        remembered,
        checkpointed: OnceLock::new(),
    };
    for item in fetched {
        match item? {
            Ok(c) => ctx.by_seq.entry(c.entry.seq).or_default().push(c),
            Err(r) => history.rejected.push(r),
        }
    }
    let judge = Judge {
        authority: crate::history::rights::Authority::new(config, dataset)?,
        head_time: None,
        live: BTreeMap::new(),
        numbering: VersionNumbering::default(),
    };
    let walked = walk(&ctx, judge, None);
    // Everything the walk did not reach: continuations of noise are noise; entries below the
    // end of the accepted history that do not chain to it are noise; entries beyond it by keys
    // that may sign there prove that entries are missing (damage); the rest is noise.
    let mut seen: BTreeSet<ObjectId> = walked.entries().iter().map(|(_, id, _)| *id).collect();
    // Only entries that decoded count as continued: an object that does not hash to its name
    // claims an id it does not have (it may be a damaged copy of a needed entry).
    let mut noise_ids: BTreeSet<ObjectId> = walked.rejected.iter().map(|r| r.id).collect();
    seen.extend(noise_ids.iter().copied());
    let end = walked
        .conflict
        .as_ref()
        .map_or(walked.records.len() as u64, |c| c.seq.saturating_sub(1));
    let mut known = walked.signers_at_end.clone();
    known.push(ctx.root);
    let mut beyond: Vec<(u64, ObjectId)> = Vec::new();
    let mut leftover_rejected = Vec::new();
    for (seq, candidates) in &ctx.by_seq {
        for c in candidates.iter().filter(|c| !seen.contains(&c.id)) {
            let reason = if let Some(prev) = c.entry.prev.filter(|p| noise_ids.contains(p)) {
                format!("continues rejected entry {}", prev.short())
            } else if *seq <= end + 1 {
                format!(
                    "does not chain to the accepted history (it continues {}, which is not entry {} of it)",
                    c.entry.prev.map_or("nothing".into(), |p| p.short()),
                    seq.saturating_sub(1)
                )
            } else if known.contains(&c.entry.signer) {
                beyond.push((*seq, c.id));
                continue;
            } else {
                format!(
                    "{} signed by {}, which is not a signer of this dataset",
                    c.entry.event.name(),
                    hex::encode(&c.entry.signer[..8])
                )
            };
            noise_ids.insert(c.id);
            leftover_rejected.push(ctx.reject(*seq, c.id, reason));
        }
    }
    if let (Some(first), Some(last)) = (beyond.first(), beyond.last()) {
        // What the site holds in the missing entry's place, if anything: a damaged copy of it.
        let in_place: Vec<String> = history
            .rejected
            .iter()
            .chain(&walked.rejected)
            .chain(&leftover_rejected)
            .filter(|r| r.seq == end + 1)
            .map(|r| format!("{}: {}", r.path, r.reason))
            .collect();
        history.damage.push(format!(
            "gap: entry {} is missing{}, but entries {}..{} (first {}) signed by signers of this \
             dataset exist beyond it: the site lost, damaged or deleted history; versions up to \
             entry {end} stay readable, newer ones need the missing entry (repair this site from \
             another)",
            end + 1,
            if in_place.is_empty() {
                String::new()
            } else {
                format!(
                    " (in its place the site holds only {})",
                    in_place.join("; ")
                )
            },
            first.0,
            last.0,
            first.1.short(),
        ));
    }
    history.records = walked.records;
    history.rejected.extend(walked.rejected);
    history.rejected.extend(leftover_rejected);
    history
        .rejected
        .sort_by(|a, b| (a.seq, &a.path).cmp(&(b.seq, &b.path)));
    history.conflict = walked.conflict;
    history.displaced = walked.displaced.lines;
    history.displaced_ids = walked.displaced.ids;
    history.noise.extend(walked.noise);
    history.withdrawn = walked.withdrawn;
    Ok(history)
}

/// Loads and verifies a dataset's whole history (see [`load`]), without remembered heads.
pub fn load_history_full(site: &dyn Site, config: &VaultConfig, dataset: &str) -> Result<History> {
    load(site, config, dataset, None)
}

/// The accepted entries of [`load_history_full`].
pub fn load_history(site: &dyn Site, config: &VaultConfig, dataset: &str) -> Result<Vec<Record>> {
    Ok(load_history_full(site, config, dataset)?.records)
}
