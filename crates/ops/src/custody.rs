//! Custody of the keys: custodian shares of the root key (split, recover), credentials for
//! source hosts and readers (issue), a dataset's reader key rotated, a signing key revoked, and a
//! key file's passphrase changed. Each returns a typed report; the front end asks for
//! passphrases and shares and renders the report.

use std::path::{Path, PathBuf};

use embassy_core::engine::vault::Vault;
use embassy_core::format::config::VaultConfig;
use embassy_core::history::ledger::{self, Event};
use embassy_core::keys::keyfile::{KdfParams, KeyFile, PURPOSE_READER, PURPOSE_SEALING};
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::{Error, Result};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::unlock::Passphrase;

/// The root key split into custodian shares.
pub struct SplitReport {
    /// The vault whose root key was split.
    pub vault_id: String,
    /// Shares needed to recover (K).
    pub threshold: u8,
    /// Shares made (N).
    pub count: u8,
    /// The share texts, one per custodian (secret: wiped when dropped).
    pub shares: Vec<Zeroizing<String>>,
}

/// Splits the vault's root key into `count` custodian shares, any `threshold` of which recover
/// it.
pub fn split(vault: &Vault, root: &RootSecret, threshold: u8, count: u8) -> Result<SplitReport> {
    let shares = embassy_core::keys::custody::split(root, threshold, count)?
        .into_iter()
        .map(Zeroizing::new)
        .collect();
    Ok(SplitReport {
        vault_id: vault.config().vault_id.clone(),
        threshold,
        count,
        shares,
    })
}

/// What is known of a split from the shares given so far: the front end uses it to say how
/// many are still needed while it asks for them one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareCount {
    /// Shares needed to recover (K), as the first share says.
    pub threshold: u8,
    /// Shares made (N).
    pub count: u8,
}

/// Checks one share text as it is given (its checksum catches a typing mistake at once) and
/// tells what split it belongs to; `label` names it in errors ("share 2").
pub fn check_share(text: &str, label: &str) -> Result<ShareCount> {
    let share = embassy_core::keys::custody::parse(text, label)?;
    Ok(ShareCount {
        threshold: share.threshold,
        count: share.count,
    })
}

/// The root key recovered from custodian shares into a new key file.
#[derive(Debug, Clone, Serialize)]
pub struct RecoverReport {
    /// The vault whose root key was recovered.
    pub vault_id: String,
    /// The new key file.
    pub key_file: PathBuf,
}

/// Recombines the shares, checks that they give this vault's root key (not another vault's),
/// and writes it to a new key file at `out` under a new passphrase (read only once the shares
/// proved good, and held to [`crate::unlock::check_new_passphrase`]).
pub fn recover(
    config: &VaultConfig,
    shares: &[Zeroizing<String>],
    new_passphrase: &Passphrase,
    out: &Path,
) -> Result<RecoverReport> {
    let texts: Vec<String> = shares.iter().map(|s| s.to_string()).collect();
    let texts = Zeroizing::new(texts);
    let root = embassy_core::keys::custody::recover(&texts)?;
    config.check_root(&root).map_err(|_| {
        Error::WrongKey(format!(
            "the shares recombine correctly, but to the root key of another vault, not {}",
            config.vault_id
        ))
    })?;
    let pass = new_passphrase.read(true)?;
    KeyFile::seal(&root, &config.vault_id, pass.as_bytes(), KdfParams::DEFAULT)?.store(out)?;
    Ok(RecoverReport {
        vault_id: config.vault_id.clone(),
        key_file: out.to_path_buf(),
    })
}

/// What credential to issue.
pub struct IssueRequest<'a> {
    /// A sealing credential (adds versions, streams WAL) when true, else a reader credential.
    pub sealing: bool,
    /// A sealing credential may also delete versions (within the policy).
    pub may_delete: bool,
    /// The datasets it covers.
    pub datasets: &'a [String],
    /// Who or what it is for.
    pub label: &'a str,
    /// Where to write it.
    pub out: &'a Path,
}

/// A credential issued.
#[derive(Debug, Clone, Serialize)]
pub struct IssueReport {
    /// The credential file written.
    pub credential: PathBuf,
    /// Its purpose (`sealing-credential` or `reader-credential`).
    pub purpose: &'static str,
    /// The public half of a sealing credential's signing key (hex), added to each dataset's
    /// ledger; none for a reader.
    pub signer: Option<String>,
}

/// Issues a credential sealed with `passphrase`, at each dataset's current key epoch (a reader
/// also gets every earlier epoch's, so old versions stay readable); a sealing credential's
/// signing key is added to each dataset's ledger.
pub fn issue(
    vault: &Vault,
    root: &RootSecret,
    request: &IssueRequest,
    passphrase: &[u8],
) -> Result<IssueReport> {
    for d in request.datasets {
        embassy_core::format::layout::check_dataset_name(d)?;
    }
    let vault_id = vault.config().vault_id.clone();
    let mut epochs = Vec::new();
    for d in request.datasets {
        epochs.push((d.clone(), ledger::key_epoch(&vault.history(d)?)));
    }
    let credential =
        Credential::at_epochs(root, &vault_id, request.label, &epochs, !request.sealing);
    let purpose = if request.sealing {
        PURPOSE_SEALING
    } else {
        PURPOSE_READER
    };
    KeyFile::seal_payload(
        &credential.to_bytes(),
        purpose,
        &vault_id,
        passphrase,
        KdfParams::DEFAULT,
    )?
    .store(request.out)?;
    let mut signer = None;
    if let Some(key) = credential.signing_key() {
        let public = key.verifying_key().to_bytes();
        for d in request.datasets {
            let event = Event::SignerAdded {
                key: public,
                role: request.label.to_string(),
                rights: embassy_core::history::rights::Right::sealing(request.may_delete),
            };
            vault.append_root_event(root, d, event)?;
        }
        vault.write_checkpoint(&root.root_signing_key())?;
        signer = Some(hex::encode(public));
    }
    Ok(IssueReport {
        credential: request.out.to_path_buf(),
        purpose,
        signer,
    })
}

/// One dataset's reader key rotated.
#[derive(Debug, Clone, Serialize)]
pub struct Rotated {
    /// The dataset.
    pub dataset: String,
    /// Its new key epoch.
    pub epoch: u32,
    /// The new reader key's id (hex).
    pub key_id: String,
}

/// Rotates the datasets' reader keys: new versions are sealed to the new key, old ones stay
/// readable with the old.
pub fn rotate(vault: &Vault, root: &RootSecret, datasets: &[String]) -> Result<Vec<Rotated>> {
    let mut rotated = Vec::new();
    for d in datasets {
        let epoch = ledger::key_epoch(&vault.history(d)?) + 1;
        let keys = root.dataset_keys(d, epoch);
        let event = Event::ReaderKeyRotated {
            epoch,
            reader_public: embassy_core::keys::crypto::reader_public_bytes(&keys.reader_public),
        };
        vault.append_root_event(root, d, event)?;
        rotated.push(Rotated {
            dataset: d.clone(),
            epoch,
            key_id: hex::encode(keys.key_id()),
        });
    }
    vault.write_checkpoint(&root.root_signing_key())?;
    Ok(rotated)
}

/// A signing key given as text (64 hex digits), parsed; `what` names it in the error.
pub fn parse_signer(text: &str, what: &str) -> Result<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key)
        .map_err(|_| Error::invalid(format!("{what} {text} is not a 64-digit hex public key")))?;
    Ok(key)
}

/// Revokes a signing key for the datasets: its later ledger entries are rejected by every
/// verifier.
pub fn revoke(
    vault: &Vault,
    root: &RootSecret,
    signer: &[u8; 32],
    datasets: &[String],
    reason: &str,
) -> Result<()> {
    for d in datasets {
        let event = Event::SignerRevoked {
            key: *signer,
            reason: reason.to_string(),
        };
        vault.append_root_event(root, d, event)?;
    }
    vault.write_checkpoint(&root.root_signing_key())?;
    Ok(())
}

/// A key file's passphrase changed.
#[derive(Debug, Clone, Serialize)]
pub struct PasswdReport {
    /// The key file.
    pub key_file: PathBuf,
    /// What it holds (root key, credential, witness or approver key).
    pub purpose: String,
    /// The vault it belongs to (or `witness` for an unbound witness key).
    pub vault_id: String,
}

/// Changes the passphrase of the key file at `key_file` (any purpose): opened with the old
/// passphrase, sealed again under the new one (held to
/// [`crate::unlock::check_new_passphrase`]) with the default KDF settings, and put in place
/// atomically ([`KeyFile::replace`]). The secret inside is unchanged, so the vault's keys, its
/// shares and every backup stay as they were; the old passphrase no longer opens the file.
pub fn change_passphrase(
    key_file: &Path,
    old: &Passphrase,
    new: &Passphrase,
) -> Result<PasswdReport> {
    let file = KeyFile::load(key_file)?;
    let old_pass = old.read(false)?;
    let payload = file.open_payload(old_pass.as_bytes(), key_file)?;
    let new_pass = new.read(true)?;
    if embassy_core::keys::crypto::ct_eq(old_pass.as_bytes(), new_pass.as_bytes()) {
        return Err(Error::invalid(
            "the new passphrase is the same as the old one; nothing was changed",
        ));
    }
    KeyFile::seal_payload(
        &payload,
        &file.purpose,
        &file.vault_id,
        new_pass.as_bytes(),
        KdfParams::DEFAULT,
    )?
    .replace(key_file)?;
    Ok(PasswdReport {
        key_file: key_file.to_path_buf(),
        purpose: file.purpose.clone(),
        vault_id: file.vault_id.clone(),
    })
}
