//! Approvals: signed statements by an approver (a person whose public key the root-signed vault
//! configuration pins) that one version of a dataset may be deleted outside the retention policy.
//! A deletion outside the policy must name, in its ledger entry, approvals by at least
//! `config.approvals_required` distinct pinned approvers for every such version; every verifier
//! checks that without keys (the deletion rules, `history::deletion`).
//!
//! ```text
//! approvals/<dataset>/<id>:
//!   "EMBAPPR1" | u32 LE length | CBOR Approval | Ed25519 signature over "data-embassy approval v1\0" | CBOR
//! ```

/// How long an approval of a takeover counts (48 hours): a `promoted` entry dated more than this
/// after the approval's `time_ns` does not count it (format 9). Approvers allow a takeover for
/// the crisis at hand; one nobody used must not stay a standing licence for the key it names.
/// The entry's date cannot be set back to fit: entries are dated no earlier than the entry
/// before them, so an approval is dead once the dataset's history has moved past its lifetime.
pub const PROMOTION_APPROVAL_LIFETIME_NS: i64 = 48 * 3600 * 1_000_000_000;

/// The key type approvers sign with (Ed25519).
pub use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::layout;
use crate::id::ObjectId;
use crate::keys::RootSecret;
use crate::site::Site;

pub(crate) const MAGIC: &[u8; 8] = b"EMBAPPR1";
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
    /// When it was signed, ns since the epoch (for a promotion, no earlier than entry `seq`'s
    /// own `time_ns`: its lifetime runs from here).
    pub time_ns: i64,
    /// When present, the approval is not for deleting a version but for lowering the dataset's
    /// legal minimum age to this many seconds by a `min_age_changed` entry right after entry
    /// `seq` (whose id is `entry`). Omitted for deletions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_secs: Option<u64>,
    /// When present, the approval is for promoting the dataset's standby on this host (a
    /// `promoted` entry naming it) after entry `seq` (id `entry`), which must be at or after the
    /// dataset's last authoritative promotion: one approval serves one takeover
    /// (`history::promotion`). Omitted otherwise (format 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote_host: Option<String>,
    /// With `promote_host`: the public key (Ed25519) of the credential that will sign the
    /// `promoted` entry, the embassy's. Only a promotion signed by exactly this key counts the
    /// approval, so a stolen credential that reads it at the site (and claims the host's name)
    /// cannot use it (format 5; an approval without it approves no promotion).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub promote_key: Option<[u8; 32]>,
}

impl Approval {
    /// What it approves, in words, for messages.
    pub fn what(&self) -> String {
        match (&self.min_age_secs, &self.promote_host) {
            (_, Some(host)) => format!("a promotion on {host}"),
            (Some(_), None) => "a minimum-age change".into(),
            (None, None) => format!("deleting version entry {}", self.seq),
        }
    }
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

/// Encodes and signs an approval (the stored bytes; their hash is the approval's id).
pub fn encode(approval: &Approval, key: &SigningKey) -> Vec<u8> {
    crate::format::framing::encode_signed(MAGIC, LABEL, approval, key)
}

/// Reads approval `id` of `dataset`: it must hash to its name, carry a valid signature by the key
/// it names, and belong to this vault and dataset. Whether its approver is pinned is the
/// caller's question.
pub fn load(site: &dyn Site, vault_id: &str, dataset: &str, id: &ObjectId) -> Result<Approval> {
    Ok(load_signed(site, vault_id, dataset, id)?.0)
}

/// [`load`] with the approval's stored bytes (what a deletion entry embeds).
pub fn load_signed(
    site: &dyn Site,
    vault_id: &str,
    dataset: &str,
    id: &ObjectId,
) -> Result<(Approval, Vec<u8>)> {
    let p = path(dataset, id);
    let bytes = crate::format::object::get_checked(site, &p, id, "the approvals listing")?;
    Ok((decode(vault_id, dataset, &p, &bytes)?, bytes))
}

/// Decodes approval bytes (stored at `where_`, or embedded in a ledger entry): a valid signature
/// by the key it names, this vault and dataset. Whether its approver is pinned is the caller's
/// question.
pub fn decode(vault_id: &str, dataset: &str, where_: &str, bytes: &[u8]) -> Result<Approval> {
    let p = where_;
    let approval: Approval = crate::format::framing::decode_signed(
        MAGIC,
        LABEL,
        "an approval",
        p,
        bytes,
        |a: &Approval| a.approver,
    )?;
    if approval.vault_id != vault_id {
        return Err(Error::corrupt(
            p,
            format!("approval for vault {}, not this one", approval.vault_id),
        ));
    }
    if approval.dataset != dataset {
        return Err(Error::corrupt(
            p,
            format!("approval for dataset {}, not {dataset}", approval.dataset),
        ));
    }
    Ok(approval)
}

/// Problems found on the way, one line each.
pub type Problems = Vec<String>;

/// An approval with its id and its stored bytes.
pub type SignedApproval = (ObjectId, Approval, Vec<u8>);

/// Every readable approval stored for `dataset`, with its id; damaged ones are skipped (they
/// would not count anyway) and returned as problems.
pub fn list(
    site: &dyn Site,
    vault_id: &str,
    dataset: &str,
) -> Result<(Vec<(ObjectId, Approval)>, Problems)> {
    let (found, problems) = list_signed(site, vault_id, dataset)?;
    Ok((
        found.into_iter().map(|(id, a, _)| (id, a)).collect(),
        problems,
    ))
}

/// [`list`] with each approval's stored bytes.
pub fn list_signed(
    site: &dyn Site,
    vault_id: &str,
    dataset: &str,
) -> Result<(Vec<SignedApproval>, Problems)> {
    layout::check_dataset_name(dataset)?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for info in site.list(&prefix(dataset))? {
        let Some(id) = layout::id_in_path(&info.path) else {
            problems.push(format!("{}: unexpected object", info.path));
            continue;
        };
        match load_signed(site, vault_id, dataset, &id) {
            Ok((a, bytes)) => out.push((id, a, bytes)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    out.sort_by_key(|(_, a, _)| (a.seq, a.time_ns));
    Ok((out, problems))
}
