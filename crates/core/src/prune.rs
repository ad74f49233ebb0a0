//! Prune: deleting versions, always as a signed ledger entry (`versions_deleted`). A deletion by
//! retention records the policy and the time it was evaluated, so any verifier can recompute it
//! from the ledger alone; a deletion outside the policy (an explicit `forget`, or a version
//! younger than the vault's pinned legal minimum age) must name approvals by
//! `config.approvals_required` distinct pinned approvers for each such version. Verifiers reject
//! a deletion entry that does neither ([`check_deletion`], called while loading every history),
//! so it has no effect: its versions stay, and deleting their objects is detected as damage.
//!
//! Deleting an entry removes nothing from the site: garbage collection ([`crate::gc`]) removes
//! the objects that no remaining version needs, later and safely.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::config::VaultConfig;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::ledger::{self, Entry, Event, Record};
use crate::retention::{self, Candidate, Decision, RetentionPolicy};
use crate::site::Site;
use crate::vault::{versions_in, Keyring, Vault, Version};

/// How far in the future (ns) a deletion entry's own time or its evaluation time may be from the
/// verifier's clock: clocks differ a little; more is a forged time that would age versions early.
pub const CLOCK_SKEW_NS: i64 = 10 * 60 * 1_000_000_000;

/// Words in the reason of a deletion rejected because a version took its sequence number.
pub const RACE_LOST: &str = "was added at the same sequence at the same time";

/// What a prune decided and did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// The dataset.
    pub dataset: String,
    /// The policy applied, with the vault's legal minimum age folded in (none for `forget`).
    pub policy: Option<RetentionPolicy>,
    /// When it was evaluated.
    pub as_of_ns: i64,
    /// Every version considered, newest first, with why it is kept (empty reasons: deleted).
    pub decisions: Vec<Decision>,
    /// Sequence numbers deleted (or that would be, in a dry run), oldest first.
    pub deleted: Vec<u64>,
    /// The ledger entry recording the deletion; none in a dry run or when nothing is deleted.
    pub entry: Option<(u64, ObjectId)>,
    /// Approvals the entry names.
    pub approvals: Vec<ObjectId>,
    /// Problems that did not stop the prune (no checkpoint written, damaged approvals).
    pub warnings: Vec<String>,
}

/// Which versions `policy` keeps now: the plan of [`apply_retention`], without writing anything.
/// The vault's pinned legal minimum age for the dataset raises the policy's.
pub fn plan_retention(
    vault: &Vault,
    dataset: &str,
    policy: &RetentionPolicy,
    now_ns: i64,
) -> Result<PruneReport> {
    policy.check()?;
    check_now(now_ns)?;
    let history = vault.history(dataset)?;
    let live = versions_in(dataset, &history);
    let effective = policy.with_min_age_at_least(vault.config().min_age_of(dataset));
    let candidates: Vec<Candidate> = live.iter().map(Candidate::from).collect();
    let decisions = retention::select(&candidates, &effective, now_ns);
    let mut deleted: Vec<u64> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| d.seq)
        .collect();
    deleted.sort();
    Ok(PruneReport {
        dataset: dataset.to_string(),
        policy: Some(effective),
        as_of_ns: now_ns,
        decisions,
        deleted,
        entry: None,
        approvals: Vec::new(),
        warnings: Vec::new(),
    })
}

/// Applies a retention policy to a dataset: records, in one signed ledger entry, the deletion
/// of every version the policy does not keep at `now_ns`. The entry point for the agent after
/// each backup. Objects are removed later by [`crate::gc::collect_garbage`].
pub fn apply_retention(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    policy: &RetentionPolicy,
    now_ns: i64,
) -> Result<PruneReport> {
    // A backup that lands between the plan and the entry is no reason to fail: plan again.
    let mut last_error = None;
    for _ in 0..3 {
        let mut report = plan_retention(vault, dataset, policy, now_ns)?;
        if report.deleted.is_empty() {
            return Ok(report);
        }
        let event = Event::VersionsDeleted {
            seqs: report.deleted.clone(),
            reason: format!("retention: {}", report.policy.unwrap_or(*policy)),
            policy: report.policy,
            as_of_ns: Some(now_ns),
            approvals: Vec::new(),
        };
        match append_deletion(vault, keyring, dataset, event) {
            Ok((record, warnings)) => {
                report.entry = Some((record.entry.seq, record.id));
                report.warnings = warnings;
                return Ok(report);
            }
            Err(e) if is_race(&e) => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| Error::invalid("prune did not settle")))
}

/// Deletes the given versions outside the retention policy (`embassy forget`): the entry names
/// every stored approval of each version, and is refused unless each has approvals by
/// `config.approvals_required` distinct pinned approvers. `dry_run` checks without writing.
pub fn forget(
    vault: &Vault,
    keyring: Option<&Keyring>,
    dataset: &str,
    seqs: &[u64],
    reason: &str,
    dry_run: bool,
) -> Result<PruneReport> {
    if seqs.is_empty() {
        return Err(Error::invalid(
            "forget: name at least one version (DATASET@N)",
        ));
    }
    let now_ns = crate::config::now_unix_nanos();
    let history = vault.history(dataset)?;
    let (approvals, problems) =
        crate::approval::list(vault.site().as_ref(), &vault.config().vault_id, dataset)?;
    let live = versions_in(dataset, &history);
    let wanted: BTreeSet<u64> = seqs.iter().copied().collect();
    let pinned = vault.config().approver_keys();
    let ids: Vec<ObjectId> = approvals
        .iter()
        .filter(|(_, a)| {
            pinned.contains(&a.approver)
                && wanted.contains(&a.seq)
                && live
                    .iter()
                    .any(|v| v.seq == a.seq && v.ledger_id == a.entry)
        })
        .map(|(id, _)| *id)
        .collect();
    let event = Event::VersionsDeleted {
        seqs: wanted.iter().copied().collect(),
        reason: format!("forget: {reason}"),
        policy: None,
        as_of_ns: None,
        approvals: ids.clone(),
    };
    // Check first, with the error a person needs, before anything is written.
    let signer = keyring.map(|k| k.signer()).transpose()?;
    let probe = Entry {
        dataset: dataset.to_string(),
        seq: history.last().map_or(1, |r| r.entry.seq + 1),
        prev: history.last().map(|r| r.id),
        time_ns: now_ns,
        signer: signer
            .as_ref()
            .map_or([0; 32], |s| s.verifying_key().to_bytes()),
        event: event.clone(),
    };
    let live_by_seq: BTreeMap<u64, Version> = live.iter().map(|v| (v.seq, v.clone())).collect();
    deletion_verdict(
        vault.site().as_ref(),
        vault.config(),
        dataset,
        &live_by_seq,
        &probe,
    )?;
    let mut report = PruneReport {
        dataset: dataset.to_string(),
        policy: None,
        as_of_ns: now_ns,
        decisions: Vec::new(),
        deleted: wanted.iter().copied().collect(),
        entry: None,
        approvals: ids,
        warnings: problems,
    };
    if dry_run {
        return Ok(report);
    }
    let keyring = keyring.ok_or_else(|| {
        Error::WrongKey("forget needs a key that may sign the dataset's ledger".into())
    })?;
    let (record, warnings) = append_deletion(vault, keyring, dataset, event)?;
    report.entry = Some((record.entry.seq, record.id));
    report.warnings.extend(warnings);
    Ok(report)
}

fn is_race(e: &Error) -> bool {
    matches!(e, Error::History { problem, .. } if problem.contains("another writer"))
}

/// Appends a deletion entry after the dataset's verified head and writes a checkpoint.
fn append_deletion(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    event: Event,
) -> Result<(Record, Vec<String>)> {
    let signer = keyring.signer()?;
    let history = vault.history_full(dataset)?;
    if !vault
        .active_signers(&history.records)
        .contains(&signer.verifying_key().to_bytes())
    {
        return Err(Error::WrongKey(format!(
            "signing key {} may not add to dataset {dataset}'s ledger: it was revoked, or never added",
            hex::encode(&signer.verifying_key().to_bytes()[..8])
        )));
    }
    let record = ledger::append_ignoring(
        vault.site().as_ref(),
        &signer,
        dataset,
        history.records.last(),
        &history.rejected_ids(),
        event,
    )?;
    // Read it back as every verifier will: a deletion they would reject must not pass silently.
    let after = vault.history_full(dataset)?;
    if let Some(r) = after.rejected.iter().find(|r| r.id == record.id) {
        return Err(Error::History {
            dataset: dataset.to_string(),
            problem: if r.reason.contains(RACE_LOST) {
                // Retried by apply_retention.
                format!(
                    "another writer added entry {} at the same time; the deletion lost the race \
                     and has no effect",
                    record.entry.seq
                )
            } else {
                format!(
                    "the deletion entry {} was stored but verifiers reject it: {}",
                    record.id.short(),
                    r.reason
                )
            },
        });
    }
    let mut warnings = Vec::new();
    // A sealing credential may not sign checkpoints: it writes none.
    match vault
        .may_checkpoint(&signer)
        .then(|| vault.write_checkpoint(&signer))
    {
        None => {}
        Some(Ok((_, left_out))) => warnings.extend(
            left_out
                .into_iter()
                .map(|e| format!("checkpoint leaves out a dataset: {e}")),
        ),
        Some(Err(e)) => warnings.push(format!("no checkpoint written: {e}")),
    }
    Ok((record, warnings))
}

fn check_now(now_ns: i64) -> Result<()> {
    let real = crate::config::now_unix_nanos();
    if now_ns > real + CLOCK_SKEW_NS {
        return Err(Error::invalid(format!(
            "retention evaluated at {}, which is in the future (the clock says {}): verifiers \
             would reject the deletion",
            crate::time::utc(now_ns),
            crate::time::utc(real)
        )));
    }
    Ok(())
}

/// The rule every verifier applies to a `versions_deleted` entry signed by an authorised key,
/// given the versions live before it (by sequence number): `Ok` when it is valid (other events
/// always are), else why it is rejected. Keyless: it reads only the ledger, the configuration
/// and approvals.
pub fn check_deletion(
    site: &dyn Site,
    config: &VaultConfig,
    dataset: &str,
    live: &BTreeMap<u64, Version>,
    entry: &Entry,
) -> std::result::Result<(), String> {
    deletion_verdict(site, config, dataset, live, entry).map_err(|e| match e {
        Error::Invalid(m) => m,
        other => other.to_string(),
    })
}

fn deletion_verdict(
    site: &dyn Site,
    config: &VaultConfig,
    dataset: &str,
    by_seq: &BTreeMap<u64, Version>,
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
    let now = crate::config::now_unix_nanos();
    if entry.time_ns > now + CLOCK_SKEW_NS {
        return refuse(format!(
            "versions deleted: the entry is dated {}, in the future",
            crate::time::utc(entry.time_ns)
        ));
    }
    let live: Vec<&Version> = by_seq.values().collect();
    let mut seen = BTreeSet::new();
    for s in seqs {
        if !seen.insert(*s) {
            return refuse(format!("versions deleted: version {s} is named twice"));
        }
        if !by_seq.contains_key(s) {
            return refuse(format!(
                "versions deleted: version {s} does not exist or was already deleted"
            ));
        }
    }
    // What the recorded policy deletes by itself, recomputed from the ledger.
    let mut in_policy = BTreeSet::new();
    if let (Some(policy), Some(as_of)) = (policy, as_of_ns) {
        if *as_of > entry.time_ns + CLOCK_SKEW_NS {
            return refuse(format!(
                "versions deleted: the policy was evaluated at {}, after the entry was made",
                crate::time::utc(*as_of)
            ));
        }
        let effective = policy.with_min_age_at_least(config.min_age_of(dataset));
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
    let mut valid: Vec<crate::approval::Approval> = Vec::new();
    let mut problems = Vec::new();
    for id in approvals {
        match crate::approval::load(site, &config.vault_id, dataset, id) {
            Ok(a) if pinned.contains(&a.approver) => valid.push(a),
            Ok(a) => problems.push(format!(
                "approval {} is by {}, which is not a pinned approver",
                id.short(),
                hex::encode(&a.approver[..8])
            )),
            Err(e) => problems.push(format!("approval {}: {e}", id.short())),
        }
    }
    let mut worst: Option<(u64, usize)> = None;
    for s in &outside {
        let version = &by_seq[s];
        let approvers: BTreeSet<[u8; 32]> = valid
            .iter()
            .filter(|a| a.seq == *s && a.entry == version.ledger_id)
            .map(|a| a.approver)
            .collect();
        if approvers.len() < need && worst.is_none_or(|(_, n)| approvers.len() < n) {
            worst = Some((*s, approvers.len()));
        }
    }
    match worst {
        None => Ok(()),
        Some((_, have)) => {
            let short: Vec<u64> = outside
                .iter()
                .copied()
                .filter(|s| {
                    let version = &by_seq[s];
                    valid
                        .iter()
                        .filter(|a| a.seq == *s && a.entry == version.ledger_id)
                        .map(|a| a.approver)
                        .collect::<BTreeSet<_>>()
                        .len()
                        < need
                })
                .collect();
            Err(Error::NotApproved {
                dataset: dataset.to_string(),
                versions: short,
                have,
                need,
                detail: if problems.is_empty() {
                    format!(
                        "get {} more with `embassy approve --approver-key FILE {dataset}@N`",
                        need - have
                    )
                } else {
                    format!(
                        "{}; get {} more with `embassy approve --approver-key FILE {dataset}@N`",
                        problems.join("; "),
                        need - have
                    )
                },
            })
        }
    }
}
