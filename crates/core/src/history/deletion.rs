//! The deletion rules (`docs/format.md` §9): when a `versions_deleted` entry takes effect. A
//! deletion by retention is recomputed from the policy it records; a deletion outside the policy
//! (an explicit `forget`, or a version younger than the legal minimum age) needs approvals by
//! `config.approvals_required` distinct pinned approvers, embedded in the entry. Applied while
//! loading every history (by `rights::Authority::verdict`); writing deletions is
//! the engine's (`prune`).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{Error, Result};
use crate::format::config::VaultConfig;
use crate::history::approval;
use crate::history::ledger::{Entry, Event};
use crate::history::retention::{self, Candidate};
use crate::history::version::Version;

/// Words in the reason of a deletion rejected because a version took its sequence number.
pub const RACE_LOST: &str = "was added at the same sequence at the same time";

/// The rule every verifier applies to a `versions_deleted` entry whose signer holds the `delete`
/// right, given the versions live before it (by sequence number) and the dataset's legal minimum
/// age in force there: `Ok` when it is valid (other events always are), else why it is refused
/// (it is then a no-op). A pure function of the entry's signed bytes and the configuration: it
/// reads nothing from a site and no clock.
pub fn check_deletion(
    config: &VaultConfig,
    dataset: &str,
    live: &BTreeMap<u64, Version>,
    min_age_secs: u64,
    entry: &Entry,
) -> std::result::Result<(), String> {
    deletion_verdict(config, dataset, live, min_age_secs, entry).map_err(|e| match e {
        Error::Invalid(m) => m,
        other => other.to_string(),
    })
}

/// [`check_deletion`] with the typed error (`forget` refuses with it before writing).
pub(crate) fn deletion_verdict(
    config: &VaultConfig,
    dataset: &str,
    by_seq: &BTreeMap<u64, Version>,
    min_age_secs: u64,
    entry: &Entry,
) -> Result<()> {
    let Event::VersionsDeleted {
        seqs,
        policy,
        as_of_ns,
        approvals,
        ..
    } = &entry.event
    else {
        return Ok(());
    };
    let refuse = |m: String| Err(Error::invalid(m));
    if seqs.is_empty() {
        return refuse("versions deleted: the entry names no version".into());
    }
    let live: Vec<&Version> = by_seq.values().collect();
    let mut seen = BTreeSet::new();
    for s in seqs {
        if !seen.insert(*s) {
            return refuse(format!("versions deleted: ledger entry {s} is named twice"));
        }
        if !by_seq.contains_key(s) {
            return refuse(format!(
                "versions deleted: ledger entry {s} is not a version, or its version was already deleted"
            ));
        }
    }
    // What the recorded policy deletes by itself, recomputed from the ledger.
    let mut in_policy = BTreeSet::new();
    if let (Some(policy), Some(as_of)) = (policy, as_of_ns) {
        if *as_of > entry.time_ns {
            return refuse(format!(
                "versions deleted: the policy was evaluated at {}, after the entry was made ({})",
                crate::time::utc(*as_of),
                crate::time::utc(entry.time_ns)
            ));
        }
        let effective = policy.with_min_age_at_least(min_age_secs);
        let candidates: Vec<Candidate> = live.iter().map(|v| Candidate::from(*v)).collect();
        for d in retention::select(&candidates, &effective, *as_of) {
            if !d.keep() {
                in_policy.insert(d.seq);
            }
        }
    }
    let outside: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| !in_policy.contains(s))
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    let need = config.approvals_required as usize;
    if need == 0 {
        return Err(Error::NotApproved {
            dataset: dataset.to_string(),
            versions: outside,
            have: 0,
            need: 0,
            detail: "this vault pins no approvers, so deletions outside the retention policy \
                     (explicit forget, or versions younger than the legal minimum age) are refused"
                .into(),
        });
    }
    let pinned = config.approver_keys();
    let mut valid: Vec<approval::Approval> = Vec::new();
    let mut problems = Vec::new();
    for (i, bytes) in approvals.iter().enumerate() {
        let label = format!("approval {i} of entry {}", entry.seq);
        match approval::decode(&config.vault_id, dataset, &label, bytes) {
            Ok(a) if !pinned.contains(&a.approver) => problems.push(format!(
                "{label} is by {}, which is not a pinned approver",
                hex::encode(&a.approver[..8])
            )),
            Ok(a) if a.min_age_secs.is_some() || a.promote_host.is_some() => {
                problems.push(format!("{label} approves {}, not a deletion", a.what()))
            }
            Ok(a) => valid.push(a),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let approvers_of = |s: u64| -> BTreeSet<[u8; 32]> {
        let version = &by_seq[&s];
        valid
            .iter()
            .filter(|a| a.seq == s && a.entry == version.ledger_id)
            .map(|a| a.approver)
            .collect()
    };
    let short: Vec<u64> = outside
        .iter()
        .copied()
        .filter(|s| approvers_of(*s).len() < need)
        .collect();
    let Some(have) = short.iter().map(|s| approvers_of(*s).len()).min() else {
        return Ok(());
    };
    Err(Error::NotApproved {
        dataset: dataset.to_string(),
        versions: short,
        have,
        need,
        detail: if problems.is_empty() {
            format!("get {} more from pinned approvers", need - have)
        } else {
            format!(
                "{}; get {} more from pinned approvers",
                problems.join("; "),
                need - have
            )
        },
    })
}
