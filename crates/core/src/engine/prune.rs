//! Prune: deleting versions, always as a signed ledger entry (`versions_deleted`). A deletion by
//! retention records the policy and the time it was evaluated, so any verifier can recompute it
//! from the ledger alone; a deletion outside the policy (an explicit `forget`, or a version
//! younger than the vault's pinned legal minimum age) must name approvals by
//! `config.approvals_required` distinct pinned approvers for each such version. Verifiers reject
//! a deletion entry that does neither ([`check_deletion`], called while loading every history),
//! so it has no effect: its versions stay, and deleting their objects is detected as damage.
//!
//! Deleting an entry removes nothing from the site: garbage collection ([`crate::engine::gc`])
//! removes the objects that no remaining version needs, later and safely.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::engine::vault::{versions_in, Keyring, Vault, Version};
use crate::error::{Error, Result};
use crate::history::ledger::{self, Entry, Event, Record};
use crate::history::retention::{self, Candidate, Decision, RetentionPolicy};
use crate::id::ObjectId;

/// How far (ns) an entry may be dated ahead of the verifier's clock before `verify` warns about
/// it. Only a warning: acceptance never reads the verifier's clock (a signer granted `delete` is
/// trusted for its clock, within the bounds of its predecessor's time).
pub const CLOCK_SKEW_NS: i64 = 10 * 60 * 1_000_000_000;

use crate::history::deletion::deletion_verdict;
pub use crate::history::deletion::{check_deletion, RACE_LOST};

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
    /// Numbers of the versions deleted (or that would be, in a dry run), oldest first, as
    /// `embassy versions` lists them.
    pub deleted: Vec<u64>,
    /// Their ledger sequence numbers, as the deletion entry records them.
    pub deleted_seqs: Vec<u64>,
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
    let authority = crate::history::rights::Authority::after(vault.config(), dataset, &history);
    let effective = policy.with_min_age_at_least(authority.min_age_secs());
    let candidates: Vec<Candidate> = live.iter().map(Candidate::from).collect();
    let decisions = retention::select(&candidates, &effective, now_ns);
    let mut deleted: Vec<(u64, u64)> = decisions
        .iter()
        .filter(|d| !d.keep())
        .map(|d| (d.seq, d.number))
        .collect();
    deleted.sort();
    Ok(PruneReport {
        dataset: dataset.to_string(),
        policy: Some(effective),
        as_of_ns: now_ns,
        decisions,
        deleted: deleted.iter().map(|(_, n)| *n).collect(),
        deleted_seqs: deleted.iter().map(|(s, _)| *s).collect(),
        entry: None,
        approvals: Vec::new(),
        warnings: Vec::new(),
    })
}

/// Applies a retention policy to a dataset: records, in one signed ledger entry, the deletion
/// of every version the policy does not keep at `now_ns`. The entry point for the agent after
/// each backup. Objects are removed later by [`crate::engine::gc::collect_garbage`].
pub fn apply_retention(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    policy: &RetentionPolicy,
    now_ns: i64,
) -> Result<PruneReport> {
    // A key that may not delete is refused before anything is planned or written.
    let signer = keyring.signer()?.verifying_key().to_bytes();
    let history = vault.history(dataset)?;
    check_may_delete(&vault.authority(dataset, &history), dataset, &signer)?;
    // A backup that lands between the plan and the entry is no reason to fail: plan again.
    let mut last_error = None;
    for _ in 0..3 {
        let mut report = plan_retention(vault, dataset, policy, now_ns)?;
        if report.deleted.is_empty() {
            return Ok(report);
        }
        let event = Event::VersionsDeleted {
            seqs: report.deleted_seqs.clone(),
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
/// `config.approvals_required` distinct pinned approvers. `numbers` are version numbers
/// ([`Version::number`]), as `embassy versions` lists them. `dry_run` checks without writing.
pub fn forget(
    vault: &Vault,
    keyring: Option<&Keyring>,
    dataset: &str,
    numbers: &[u64],
    reason: &str,
    dry_run: bool,
) -> Result<PruneReport> {
    if numbers.is_empty() {
        return Err(Error::invalid(
            "forget: name at least one version (DATASET@N)",
        ));
    }
    let now_ns = crate::format::config::now_unix_nanos();
    let history = vault.history(dataset)?;
    let (approvals, problems) = crate::history::approval::list_signed(
        vault.site().as_ref(),
        &vault.config().vault_id,
        dataset,
    )?;
    let live = versions_in(dataset, &history);
    // Ledger sequence number -> version number of each version to delete.
    let mut wanted: BTreeMap<u64, u64> = BTreeMap::new();
    for n in numbers {
        let v = live
            .iter()
            .find(|v| v.number == *n)
            .ok_or_else(|| Error::NoSuchVersion {
                dataset: dataset.to_string(),
                problem: crate::history::numbering::missing_version(dataset, &history, *n),
            })?;
        wanted.insert(v.seq, v.number);
    }
    let pinned = vault.config().approver_keys();
    // The approvals travel inside the entry: verifiers never read approvals/ again.
    let chosen: Vec<&(ObjectId, crate::history::approval::Approval, Vec<u8>)> = approvals
        .iter()
        .filter(|(_, a, _)| {
            pinned.contains(&a.approver)
                && a.min_age_secs.is_none()
                && wanted.contains_key(&a.seq)
                && live
                    .iter()
                    .any(|v| v.seq == a.seq && v.ledger_id == a.entry)
        })
        .collect();
    let ids: Vec<ObjectId> = chosen.iter().map(|(id, _, _)| *id).collect();
    let event = Event::VersionsDeleted {
        seqs: wanted.keys().copied().collect(),
        reason: format!("forget: {reason}"),
        policy: None,
        as_of_ns: None,
        approvals: chosen
            .iter()
            .map(|(_, _, bytes)| serde_bytes::ByteBuf::from(bytes.clone()))
            .collect(),
    };
    // Check first, with the error a person needs, before anything is written.
    let signer = keyring.map(|k| k.signer()).transpose()?;
    let authority = crate::history::rights::Authority::after(vault.config(), dataset, &history);
    if let Some(s) = &signer {
        check_may_delete(&authority, dataset, &s.verifying_key().to_bytes())?;
    }
    let probe = Entry {
        dataset: dataset.to_string(),
        seq: history.last().map_or(1, |r| r.entry.seq + 1),
        prev: history.last().map(|r| r.id),
        time_ns: now_ns.max(history.last().map_or(i64::MIN, |r| r.entry.time_ns)),
        signer: signer
            .as_ref()
            .map_or([0; 32], |s| s.verifying_key().to_bytes()),
        event: event.clone(),
    };
    let live_by_seq: BTreeMap<u64, Version> = live.iter().map(|v| (v.seq, v.clone())).collect();
    deletion_verdict(
        vault.config(),
        dataset,
        &live_by_seq,
        authority.min_age_secs(),
        &probe,
    )?;
    let mut report = PruneReport {
        dataset: dataset.to_string(),
        policy: None,
        as_of_ns: now_ns,
        decisions: Vec::new(),
        deleted: wanted.values().copied().collect(),
        deleted_seqs: wanted.keys().copied().collect(),
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
    history.check_appendable(dataset)?;
    let authority = vault.authority(dataset, &history.records);
    check_may_delete(&authority, dataset, &signer.verifying_key().to_bytes())?;
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

/// Refuses, before anything is written, a deletion by a key that may not delete.
fn check_may_delete(
    authority: &crate::history::rights::Authority,
    dataset: &str,
    signer: &[u8; 32],
) -> Result<()> {
    if !authority.is_signer(signer) {
        return Err(Error::WrongKey(format!(
            "signing key {} may not add to dataset {dataset}'s ledger: it was revoked, or never added",
            hex::encode(&signer[..8])
        )));
    }
    if !authority.may(signer, crate::history::rights::Right::Delete) {
        return Err(Error::Refused {
            kind: crate::ErrorKind::Keys,
            problem: format!(
                "this credential may not delete versions of {dataset}: the root grants that with \
                 a sealing credential that may delete (signing key {})",
                hex::encode(&signer[..8])
            ),
            way_out: crate::error::WayOut::Grant {
                dataset: dataset.to_string(),
                grant: crate::error::Grant::Delete,
            },
        });
    }
    Ok(())
}

fn check_now(now_ns: i64) -> Result<()> {
    let real = crate::format::config::now_unix_nanos();
    // The deletion entry is dated now (or later): an evaluation time after it is refused.
    if now_ns > real {
        return Err(Error::invalid(format!(
            "retention evaluated at {}, which is in the future (the clock says {}): verifiers \
             would reject the deletion",
            crate::time::utc(now_ns),
            crate::time::utc(real)
        )));
    }
    Ok(())
}

/// What a minimum-age change did.
#[derive(Debug, Clone, Serialize)]
pub struct MinAgeReport {
    /// The dataset.
    pub dataset: String,
    /// The minimum age in force before (seconds).
    pub before_secs: u64,
    /// The minimum age in force after (seconds).
    pub after_secs: u64,
    /// The `min_age_changed` entry written.
    pub entry: (u64, ObjectId),
    /// Approvals embedded (ids of the approval objects).
    pub approvals: Vec<ObjectId>,
    /// Problems that did not stop the change (no checkpoint written).
    pub warnings: Vec<String>,
}

/// Changes `dataset`'s legal minimum age (`embassy policy min-age`): a root-signed
/// `min_age_changed` entry. Raising needs only the root; lowering embeds the stored approvals of
/// exactly this change (`embassy approve --min-age`) and is refused, before anything is written,
/// unless `config.approvals_required` (at least 1) distinct pinned approvers approved it. The
/// configuration's minimum age stays a floor.
pub fn change_min_age(
    vault: &Vault,
    root: &crate::keys::RootSecret,
    dataset: &str,
    min_age_secs: u64,
) -> Result<MinAgeReport> {
    let history = vault.history_full(dataset)?;
    let authority = vault.authority(dataset, &history.records);
    let before_secs = authority.min_age_secs();
    let head = history.records.last();
    let pinned = vault.config().approver_keys();
    let (approvals, _) = crate::history::approval::list_signed(
        vault.site().as_ref(),
        &vault.config().vault_id,
        dataset,
    )?;
    let chosen: Vec<&(ObjectId, crate::history::approval::Approval, Vec<u8>)> = approvals
        .iter()
        .filter(|(_, a, _)| {
            pinned.contains(&a.approver)
                && a.min_age_secs == Some(min_age_secs)
                && head.is_some_and(|h| h.entry.seq == a.seq && h.id == a.entry)
        })
        .collect();
    let event = Event::MinAgeChanged {
        min_age_secs,
        approvals: chosen
            .iter()
            .map(|(_, _, b)| serde_bytes::ByteBuf::from(b.clone()))
            .collect(),
    };
    let root_key = root.root_signing_key();
    let probe = Entry {
        dataset: dataset.to_string(),
        seq: head.map_or(1, |r| r.entry.seq + 1),
        prev: head.map(|r| r.id),
        time_ns: crate::format::config::now_unix_nanos()
            .max(head.map_or(i64::MIN, |r| r.entry.time_ns)),
        signer: root_key.verifying_key().to_bytes(),
        event: event.clone(),
    };
    let live: BTreeMap<u64, Version> = versions_in(dataset, &history.records)
        .into_iter()
        .map(|v| (v.seq, v))
        .collect();
    let prev_time = head.map(|r| r.entry.time_ns);
    match authority.verdict(vault.config(), dataset, &live, prev_time, &probe) {
        crate::history::rights::Verdict::Accept => {}
        crate::history::rights::Verdict::Noop(why)
        | crate::history::rights::Verdict::Reject(why) => {
            return Err(Error::Refused {
                kind: crate::ErrorKind::Config,
                problem: format!(
                    "{why}: the pinned approvers approve lowering it first, then run this again"
                ),
                way_out: crate::error::WayOut::ApproveMinAge {
                    dataset: dataset.to_string(),
                },
            })
        }
    }
    let record = vault.append_root_event(root, dataset, event)?;
    let after = vault.history(dataset)?;
    if let Some(r) = after.iter().find(|r| r.id == record.id) {
        if let Some(why) = &r.refused {
            return Err(Error::History {
                dataset: dataset.to_string(),
                problem: format!(
                    "the min age change {} was stored but verifiers refuse it: {why}",
                    record.id.short()
                ),
            });
        }
    }
    let mut warnings = Vec::new();
    if let Err(e) = vault.write_checkpoint(&root_key) {
        warnings.push(format!("no checkpoint written: {e}"));
    }
    Ok(MinAgeReport {
        dataset: dataset.to_string(),
        before_secs,
        after_secs: vault.authority(dataset, &after).min_age_secs(),
        entry: (record.entry.seq, record.id),
        approvals: chosen.iter().map(|(id, _, _)| *id).collect(),
        warnings,
    })
}
