//! Signing approvals: an approver (a key the vault configuration pins) consents to deleting one
//! version, or to lowering a dataset's legal minimum age, and the signed approval is stored at
//! the vault's site. The approval format and the rules that count approvals are the history's
//! ([`crate::history::approval`], [`crate::history::deletion`]).

use crate::engine::vault::{Vault, Version};
use crate::error::{Error, Result};
use crate::history::approval::{encode, path, Approval, SigningKey};
use crate::history::ledger::Record;
use crate::id::ObjectId;

/// Signs and stores an approval to delete `version`; returns its id.
pub fn approve(
    vault: &Vault,
    key: &SigningKey,
    version: &Version,
    reason: &str,
) -> Result<ObjectId> {
    check_pinned(vault, key)?;
    let approver = key.verifying_key().to_bytes();
    let approval = Approval {
        vault_id: vault.config().vault_id.clone(),
        dataset: version.dataset.clone(),
        seq: version.seq,
        entry: version.ledger_id,
        reason: reason.to_string(),
        approver,
        time_ns: crate::format::config::now_unix_nanos(),
        min_age_secs: None,
        promote_host: None,
        promote_key: None,
    };
    store(vault, key, &approval)
}

fn check_pinned(vault: &Vault, key: &SigningKey) -> Result<()> {
    let approver = key.verifying_key().to_bytes();
    if !vault.config().approver_keys().contains(&approver) {
        return Err(Error::WrongKey(format!(
            "approver key {} is not pinned in vault {} (its approvers: {}); approvals by other keys \
             do not count",
            hex::encode(&approver[..8]),
            vault.config().vault_id,
            if vault.config().approvers.is_empty() {
                "none".to_string()
            } else {
                vault
                    .config()
                    .approvers
                    .iter()
                    .map(|a| a[..16.min(a.len())].to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    Ok(())
}

/// Signs and stores an approval to lower `dataset`'s legal minimum age to `min_age_secs` by the
/// root's next entry, which must follow `head` (the dataset's current last entry); returns its
/// id. `embassy policy min-age` embeds it.
pub fn approve_min_age(
    vault: &Vault,
    key: &SigningKey,
    dataset: &str,
    head: &Record,
    min_age_secs: u64,
    reason: &str,
) -> Result<ObjectId> {
    check_pinned(vault, key)?;
    let approval = Approval {
        vault_id: vault.config().vault_id.clone(),
        dataset: dataset.to_string(),
        seq: head.entry.seq,
        entry: head.id,
        reason: reason.to_string(),
        approver: key.verifying_key().to_bytes(),
        time_ns: crate::format::config::now_unix_nanos(),
        min_age_secs: Some(min_age_secs),
        promote_host: None,
        promote_key: None,
    };
    store(vault, key, &approval)
}

fn store(vault: &Vault, key: &SigningKey, approval: &Approval) -> Result<ObjectId> {
    let bytes = encode(approval, key);
    let id = ObjectId::of(&bytes);
    vault.site().put(&path(&approval.dataset, &id), &bytes)?;
    Ok(id)
}

/// Signs and stores an approval to promote `dataset`'s standby on `host` (an `embassy promote`
/// there, whose `promoted` entry embeds it) after the newest entry of `history` (the dataset's
/// accepted history), by the credential whose public key is `promoter` (the embassy's; only a
/// `promoted` entry that key signs counts the approval); returns its id. It counts for one
/// promotion only: the next authoritative promotion after that entry (`history::promotion`).
/// Refused when `promoter` may not sign a promotion there, or is a current writer of the
/// dataset (a takeover fences it, so approvals cannot make its promotion authoritative).
pub fn approve_promotion(
    vault: &Vault,
    key: &SigningKey,
    dataset: &str,
    history: &[Record],
    host: &str,
    promoter: &[u8; 32],
    reason: &str,
) -> Result<ObjectId> {
    check_pinned(vault, key)?;
    if host.is_empty() {
        return Err(Error::invalid("a promotion approval must name the host"));
    }
    let head = history
        .last()
        .ok_or_else(|| Error::invalid(format!("dataset {dataset} has no history to promote")))?;
    let authority = vault.authority(dataset, history);
    let who = hex::encode(promoter);
    if !authority.may(promoter, crate::history::ledger::Right::AddVersions) {
        return Err(Error::invalid(format!(
            "key {who} may not sign a promotion of {dataset} (it is not an active signer holding \
             add_versions): approve the public key of the embassy's credential, as printed \
             when the root issued it"
        )));
    }
    if authority.is_current_writer(promoter) {
        return Err(Error::invalid(format!(
            "key {who} is a current writer of {dataset} (it added versions or WAL since the last \
             takeover): a takeover fences it, so it cannot be the key that promotes; approve the \
             embassy's credential"
        )));
    }
    let approval = Approval {
        vault_id: vault.config().vault_id.clone(),
        dataset: dataset.to_string(),
        seq: head.entry.seq,
        entry: head.id,
        reason: reason.to_string(),
        approver: key.verifying_key().to_bytes(),
        // Its lifetime runs from no earlier than the head's date (an entry dated ahead by a wrong
        // clock must not make a fresh approval look expired).
        time_ns: crate::format::config::now_unix_nanos().max(head.entry.time_ns),
        min_age_secs: None,
        promote_host: Some(host.to_string()),
        promote_key: Some(*promoter),
    };
    store(vault, key, &approval)
}
