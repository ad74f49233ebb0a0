//! Witnessing: a witness key made, and a vault verified without keys (streamed WAL included)
//! and its newest checkpoint cosigned, but only when nothing was found wrong and everything
//! could be checked. The command line (`embassy witness`, `embassy witness-key`) and any
//! scheduler call these, so a witness vouches by one rule.

use std::path::{Path, PathBuf};

use embassy_core::engine::vault::Vault;
use embassy_core::keys::keyfile::{KdfParams, KeyFile, PURPOSE_WITNESS};
use embassy_core::keys::RootSecret;
use embassy_core::progress::Progress;
use embassy_core::{Error, Result};
use serde::Serialize;

use crate::unlock::Passphrase;
use crate::verify::Verification;

/// The `vault_id` an unbound witness key file carries (it may witness any vault).
pub const UNBOUND: &str = "witness";

/// A witness key made.
#[derive(Debug, Clone, Serialize)]
pub struct WitnessKeyReport {
    /// The key file written.
    pub key_file: PathBuf,
    /// Its public key (hex), to pin in a vault (`init --witness`).
    pub public_key: String,
}

/// Makes a witness key at `out`, sealed with a new passphrase; bound to vault `bound` when
/// given (it then refuses to witness any other).
pub fn make_key(
    out: &Path,
    passphrase: &Passphrase,
    bound: Option<&str>,
) -> Result<WitnessKeyReport> {
    let secret = RootSecret::generate();
    let public = hex::encode(
        embassy_core::history::checkpoint::witness_signing_key(&secret)
            .verifying_key()
            .to_bytes(),
    );
    let pass = passphrase.read(true)?;
    KeyFile::seal_payload(
        secret.expose(),
        PURPOSE_WITNESS,
        bound.unwrap_or(UNBOUND),
        pass.as_bytes(),
        KdfParams::DEFAULT,
    )?
    .store(out)?;
    Ok(WitnessKeyReport {
        key_file: out.to_path_buf(),
        public_key: public,
    })
}

/// What a witness run found and did.
pub enum WitnessReport {
    /// Everything checked and sound: the newest checkpoint was cosigned.
    Cosigned {
        /// The verification (its `noise` is worth showing).
        verification: Box<Verification>,
        /// The checkpoint cosigned (hex id).
        checkpoint: String,
        /// Its short id, for people.
        checkpoint_short: String,
        /// Its time (ns since the epoch).
        checkpoint_time_ns: i64,
        /// The witness's public key (hex).
        witness: String,
    },
    /// Some objects could not be read or checked this time (an outage, not damage): nothing
    /// was cosigned; run again once the sites answer.
    NotChecked(Box<Verification>),
    /// Damage or tampering found: nothing was cosigned.
    Damaged(Box<Verification>),
}

/// Opens the witness key at `key_path` with the passphrase, checks it may witness `vault`,
/// verifies the vault as `embassy verify` does (streamed WAL included, so a witness never
/// vouches for a vault whose site withholds or damages WAL) and, when all is sound, cosigns
/// the newest valid checkpoint.
pub fn witness(
    vault: &Vault,
    key_path: &Path,
    passphrase: &Passphrase,
    progress: &dyn Progress,
) -> Result<WitnessReport> {
    let file = KeyFile::load(key_path)?;
    file.expect_purpose(PURPOSE_WITNESS, key_path)?;
    let pass = passphrase.read(false)?;
    let seed = file.open_payload(pass.as_bytes(), key_path)?;
    let seed = RootSecret::from_slice(&seed)
        .ok_or_else(|| Error::invalid("witness key file holds a secret of the wrong length"))?;
    let key = embassy_core::history::checkpoint::witness_signing_key(&seed);
    if file.vault_id != UNBOUND && file.vault_id != vault.config().vault_id {
        return Err(Error::SubstitutedConfig {
            site: vault.site().location().to_string(),
            problem: format!(
                "it holds vault {}, but witness key {} was made for vault {}",
                vault.config().vault_id,
                key_path.display(),
                file.vault_id
            ),
        });
    }
    let verification = Box::new(crate::verify::verify(vault, None, progress)?);
    if !verification.is_ok() && !verification.found_damage() {
        return Ok(WitnessReport::NotChecked(verification));
    }
    if !verification.is_ok() {
        return Ok(WitnessReport::Damaged(verification));
    }
    let (histories, _) = vault.histories()?;
    // The newest valid checkpoint (signed by the root or a pinned writer key, dated sanely);
    // the verification proved that the served histories extend every valid one.
    let (checkpoints, _) = vault.checkpoints(&histories)?;
    let newest = checkpoints
        .last()
        .ok_or_else(|| Error::NotFound("the vault has no valid checkpoint to cosign yet".into()))?;
    embassy_core::history::checkpoint::cosign(vault.site().as_ref(), &newest.id, &key)?;
    Ok(WitnessReport::Cosigned {
        verification,
        checkpoint: newest.id.to_hex(),
        checkpoint_short: newest.id.short(),
        checkpoint_time_ns: newest.checkpoint.time_ns,
        witness: hex::encode(key.verifying_key().to_bytes()),
    })
}
