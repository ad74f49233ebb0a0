//! The promotion rule (`docs/format.md` §9c): when a `promoted` entry is *authoritative*, that is
//! a decision the dataset's earlier writers must obey. It is when its signer is the root key or
//! a key of `config.signers`, or when it embeds approvals by `config.promotion_approvals`
//! distinct pinned approvers, each for a promotion on exactly the host the entry names and by
//! exactly the key that signed it (the embassy's credential: a stolen credential that reads the
//! approvals at the site cannot use them), made after an accepted entry at or after the
//! dataset's last authoritative promotion (so an approval serves one takeover and cannot be
//! replayed for a later one), given at most 48 hours before the entry's date (format 9: an
//! approval nobody used expires), and when its signer is not a writer the takeover fences (one that
//! added versions or WAL since the last takeover: home's primary). A `promoted` entry
//! that is not authoritative stays in the history as information and fences no one: a stolen
//! sealing credential cannot lock out the legitimate writers by forging one.
//!
//! What an authoritative promotion does (the fence) is the `rights` module's; this
//! module only judges the entry, from its signed bytes, the configuration and the ids of the
//! accepted entries before it (no site reads, no clock).

use std::collections::BTreeSet;

use crate::format::config::VaultConfig;
use crate::history::approval;
use crate::history::ledger::{Entry, Event};
use crate::id::ObjectId;

/// What the rule needs to know of the accepted history before the entry.
#[derive(Debug, Clone, Copy)]
pub struct Before<'a> {
    /// The vault's root key.
    pub root: &'a [u8; 32],
    /// The keys of `config.signers`.
    pub pinned: &'a [[u8; 32]],
    /// Ids of the accepted entries, entry `s` at index `s - 1`.
    pub chain: &'a [ObjectId],
    /// Sequence number of the last authoritative promotion (0: none).
    pub last_promotion: u64,
    /// The dataset's current writers: keys that signed an accepted `version_added` or
    /// `log_range_added` since the last authoritative promotion (and that promotion's signer).
    /// A takeover fences them, so none of them can be the key approvals make authoritative.
    pub writers: &'a [[u8; 32]],
}

/// True when approval `a` is too old for the promotion `entry` (format 9, applied to vaults of
/// every version: an unused approval is a standing licence there too).
fn expired(a: &approval::Approval, entry: &Entry) -> bool {
    entry.time_ns
        > a.time_ns
            .saturating_add(approval::PROMOTION_APPROVAL_LIFETIME_NS)
}

/// `Ok` when `entry` is an authoritative `promoted` entry (other events: always `Ok`), else why
/// it is not (it then stays informational and fences no one).
pub fn check(
    config: &VaultConfig,
    dataset: &str,
    before: Before<'_>,
    entry: &Entry,
) -> std::result::Result<(), String> {
    let Event::Promoted {
        host, approvals, ..
    } = &entry.event
    else {
        return Ok(());
    };
    if entry.signer == *before.root || before.pinned.contains(&entry.signer) {
        return Ok(());
    }
    let who = hex::encode(&entry.signer[..8]);
    let need = config.promotion_approvals as usize;
    if need == 0 {
        return Err(format!(
            "promoted signed by {who}, a sealing credential: in a vault without a promotion \
             policy (promotion_approvals) only the root key or a configured signer makes a \
             takeover authoritative; recorded as information, it fences no writer"
        ));
    }
    let approvers = config.approver_keys();
    let mut counted = BTreeSet::new();
    let mut problems = Vec::new();
    for (i, bytes) in approvals.iter().enumerate() {
        let label = format!("approval {i}");
        let a = match approval::decode(&config.vault_id, dataset, &label, bytes) {
            Ok(a) => a,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        let named = a
            .seq
            .checked_sub(1)
            .and_then(|i| before.chain.get(i as usize));
        if !approvers.contains(&a.approver) {
            problems.push(format!(
                "{label} is by {}, not a pinned approver",
                hex::encode(&a.approver[..8])
            ));
        } else if a.promote_host.as_deref() != Some(host.as_str()) {
            problems.push(format!(
                "{label} approves {}, not a promotion on {host}",
                a.what()
            ));
        } else if a.promote_key != Some(entry.signer) {
            problems.push(format!(
                "{label} approves a promotion signed by {}, not by {who}",
                a.promote_key
                    .map_or_else(|| "no named key".to_string(), |k| hex::encode(&k[..8]))
            ));
        } else if a.seq < before.last_promotion {
            problems.push(format!(
                "{label} was given after entry {}, before the last takeover (entry {}): it \
                 served that one and cannot be replayed",
                a.seq, before.last_promotion
            ));
        } else if a.seq >= entry.seq || named != Some(&a.entry) {
            problems.push(format!(
                "{label} names entry {} ({}), which is not an accepted entry before this one",
                a.seq,
                a.entry.short()
            ));
        } else if expired(&a, entry) {
            problems.push(format!(
                "{label} was given at {} and expired 48 hours later, before this promotion \
                 (dated {}): an approval serves a takeover within 48 hours; ask the approvers \
                 again",
                crate::time::utc(a.time_ns),
                crate::time::utc(entry.time_ns)
            ));
        } else {
            counted.insert(a.approver);
        }
    }
    if counted.len() >= need {
        if before.writers.contains(&entry.signer) {
            return Err(format!(
                "promoted signed by {who}, a current writer of the dataset (it added versions or WAL \
                 since the last takeover): approvals make a takeover by another key authoritative, \
                 never one by the writer it fences; recorded as information, it is not authoritative \
                 and fences no writer"
            ));
        }
        return Ok(());
    }
    Err(format!(
        "promoted signed by {who}, a sealing credential, with {} of the {need} approvals by \
         distinct pinned approvers the vault's promotion policy needs{}: recorded as \
         information, it is not authoritative and fences no writer",
        counted.len(),
        if problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", problems.join("; "))
        }
    ))
}
