//! Approvals: signed statements by an approver (a person whose public key the root-signed vault
//! configuration pins) that one version of a dataset may be deleted outside the retention policy.
//! A deletion outside the policy must name, in its ledger entry, approvals by at least
//! `config.approvals_required` distinct pinned approvers for every such version; every verifier
//! checks that without keys (see [`crate::prune::check_deletion`]).
//!
//! ```text
//! approvals/<dataset>/<id>:
//!   "EMBAPPR1" | u32 LE length | CBOR Approval | Ed25519 signature over "data-embassy approval v1\0" | CBOR
//! ```

/// The key type approvers sign with (Ed25519).
pub use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::keys::RootSecret;
use crate::layout;
use crate::site::{with_retry, Site};
use crate::vault::{Vault, Version};

const MAGIC: &[u8; 8] = b"EMBAPPR1";
const LABEL: &[u8] = b"data-embassy approval v1";
/// Prefix of all approvals.
pub const APPROVALS: &str = "approvals/";
/// The `vault_id` an approver key file carries (an approver key is not tied to one vault).
pub const APPROVER_KEY_ID: &str = "approver";

/// One approver's consent to delete one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// The vault.
    pub vault_id: String,
    /// The dataset.
    pub dataset: String,
    /// The version's sequence number.
    pub seq: u64,
    /// The id of the version's ledger entry: binds the approval to exactly that version.
    pub entry: ObjectId,
    /// Why, for the record.
    pub reason: String,
    /// The approver's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub approver: [u8; 32],
    /// When it was signed, ns since the epoch.
    pub time_ns: i64,
}

/// Prefix of a dataset's approvals.
pub fn prefix(dataset: &str) -> String {
    format!("{APPROVALS}{dataset}/")
}

/// Where an approval is stored.
pub fn path(dataset: &str, id: &ObjectId) -> String {
    format!("{APPROVALS}{dataset}/{id}")
}

/// An approver's signing key from the 32 secret bytes of its key file.
pub fn approver_signing_key(secret: &RootSecret) -> SigningKey {
    SigningKey::from_bytes(&blake3::derive_key(
        "data-embassy 2026 approver signing key v1",
        secret.expose(),
    ))
}

/// Signs and stores an approval to delete `version`; returns its id.
pub fn approve(
    vault: &Vault,
    key: &SigningKey,
    version: &Version,
    reason: &str,
) -> Result<ObjectId> {
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
    let approval = Approval {
        vault_id: vault.config().vault_id.clone(),
        dataset: version.dataset.clone(),
        seq: version.seq,
        entry: version.ledger_id,
        reason: reason.to_string(),
        approver,
        time_ns: crate::config::now_unix_nanos(),
    };
    let bytes = encode(&approval, key);
    let id = ObjectId::of(&bytes);
    with_retry(|| vault.site().put(&path(&version.dataset, &id), &bytes))?;
    Ok(id)
}

/// Encodes and signs an approval (the stored bytes; their hash is the approval's id).
pub fn encode(approval: &Approval, key: &SigningKey) -> Vec<u8> {
    crate::framing::encode_signed(MAGIC, LABEL, approval, key)
}

/// Reads approval `id` of `dataset`: it must hash to its name, carry a valid signature by the key
/// it names, and belong to this vault and dataset. Whether its approver is pinned is the
/// caller's question.
pub fn load(site: &dyn Site, vault_id: &str, dataset: &str, id: &ObjectId) -> Result<Approval> {
    let p = path(dataset, id);
    let bytes = crate::reader::get_checked(site, &p, id, "a deletion's ledger entry")?;
    let approval: Approval =
        crate::framing::decode_signed(MAGIC, LABEL, "an approval", &p, &bytes, |a: &Approval| {
            a.approver
        })?;
    if approval.vault_id != vault_id {
        return Err(Error::corrupt(
            &p,
            format!("approval for vault {}, not this one", approval.vault_id),
        ));
    }
    if approval.dataset != dataset {
        return Err(Error::corrupt(
            &p,
            format!("approval for dataset {}, not {dataset}", approval.dataset),
        ));
    }
    Ok(approval)
}

/// Problems found on the way, one line each.
pub type Problems = Vec<String>;

/// Every readable approval stored for `dataset`, with its id; damaged ones are skipped (they
/// would not count anyway) and returned as problems.
pub fn list(
    site: &dyn Site,
    vault_id: &str,
    dataset: &str,
) -> Result<(Vec<(ObjectId, Approval)>, Problems)> {
    layout::check_dataset_name(dataset)?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for info in with_retry(|| site.list(&prefix(dataset)))? {
        let Some(id) = layout::id_in_path(&info.path) else {
            problems.push(format!("{}: unexpected object", info.path));
            continue;
        };
        match load(site, vault_id, dataset, &id) {
            Ok(a) => out.push((id, a)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    out.sort_by_key(|(_, a)| (a.seq, a.time_ns));
    Ok((out, problems))
}
