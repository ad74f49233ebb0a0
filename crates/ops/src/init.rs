//! Creating a vault: its configuration at the sites (witnesses, approvers, the legal minimum
//! age pinned in it), its root key sealed in a passphrase-protected key file, and this machine's
//! pins of the sites. Only `embassy init` creates vaults (the agent refuses a site without one);
//! the operation lives here with the others so that the rules it shares with opening (the sites
//! as one, the pins, the key file's place) have one home.

use std::path::PathBuf;

use embassy_core::format::config::{fingerprint, VaultConfig, DEFAULT_MIN_AGE_SECS};
use embassy_core::keys::keyfile::{KdfParams, KeyFile};
use embassy_core::keys::RootSecret;
use embassy_core::{Error, Result};

use crate::unlock::Passphrase;

/// What the new vault is and where it goes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The sites' locations (folder paths or `s3://bucket/prefix`).
    pub locations: Vec<String>,
    /// How many sites must hold each object before a write counts (None: all).
    pub min_sites: Option<usize>,
    /// The state folder: site pins and catch-up queues.
    pub state_dir: PathBuf,
    /// Where to write the key file (None: the default place for the new vault's id).
    pub key_file: Option<PathBuf>,
    /// Witnesses' public keys (64 hex digits) whose cosignatures restores count.
    pub witnesses: Vec<String>,
    /// How many witness cosignatures a checkpoint needs before restores trust it.
    pub witness_quorum: u32,
    /// Approvers' public keys (64 hex digits) whose approvals count for deletions outside the
    /// retention policy.
    pub approvers: Vec<String>,
    /// How many distinct approvers must approve each such deletion.
    pub approvals_required: u32,
    /// How many distinct approvers must approve a promotion (`embassy promote`) before it
    /// fences the dataset's earlier writers; 0: no promotion policy.
    pub promotion_approvals: u32,
    /// The legal minimum age of every version, in seconds (None: the default, 30 days).
    pub min_age_secs: Option<u64>,
    /// The key derivation settings for the key file.
    pub kdf: KdfParams,
}

impl InitOptions {
    /// A vault at `locations` with no witnesses or approvers and the default minimum age.
    pub fn new(locations: Vec<String>, state_dir: PathBuf) -> Self {
        Self {
            locations,
            min_sites: None,
            state_dir,
            key_file: None,
            witnesses: Vec::new(),
            witness_quorum: 0,
            approvers: Vec::new(),
            approvals_required: 0,
            promotion_approvals: 0,
            min_age_secs: None,
            kdf: KdfParams::DEFAULT,
        }
    }
}

/// The vault created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// Its id (32 hex digits).
    pub vault_id: String,
    /// The grouped fingerprint of its id, to record away from this machine.
    pub fingerprint: String,
    /// The sites as one (their location).
    pub site: String,
    /// The key file written.
    pub key_file: PathBuf,
    /// What a site's store lacks (create-only writes, Object Lock), one note per site and gap.
    pub notes: Vec<String>,
    /// The legal minimum age pinned, in seconds (0: turned off).
    pub min_age_secs: u64,
}

/// Creates a vault at the sites: checks each store can hold one, refuses a site that already
/// holds a vault and a key file that exists, writes the key file (sealed with the passphrase,
/// asked twice where a person is asked) before the configuration, so that a vault never exists
/// without a way to open it, and pins the sites to the new vault.
pub fn init(options: &InitOptions, passphrase: &Passphrase) -> Result<InitReport> {
    if options.locations.is_empty() {
        return Err(Error::invalid("no site given"));
    }
    // What each store lacks is found before anything is written.
    let mut notes = Vec::new();
    for location in &options.locations {
        let caps = embassy_sites::check_capabilities(location)?;
        caps.ensure_usable()?;
        for w in &caps.warnings {
            notes.push(format!("{location}: {w}"));
        }
    }
    let site = crate::open::open_sites(
        &options.locations,
        options.min_sites,
        true,
        Some(&options.state_dir),
    )?;
    if let Some(existing) = VaultConfig::try_load(site.as_ref())? {
        return Err(Error::VaultExists {
            site: site.location().to_string(),
            vault_id: existing.vault_id,
        });
    }
    let root = RootSecret::generate();
    let mut config = VaultConfig::new(&root);
    config.witnesses = public_keys("witness", &options.witnesses)?;
    if options.witness_quorum as usize > config.witnesses.len() {
        return Err(Error::invalid(format!(
            "a witness quorum of {} is more than the {} witnesses given",
            options.witness_quorum,
            config.witnesses.len()
        )));
    }
    config.witness_quorum = options.witness_quorum;
    let mut approvers = public_keys("approver", &options.approvers)?;
    approvers.sort();
    approvers.dedup();
    if options.approvals_required as usize > approvers.len() {
        return Err(Error::invalid(format!(
            "{} approvals required is more than the {} distinct approvers given",
            options.approvals_required,
            approvers.len()
        )));
    }
    if options.promotion_approvals as usize > approvers.len() {
        return Err(Error::invalid(format!(
            "{} promotion approvals required is more than the {} distinct approvers given",
            options.promotion_approvals,
            approvers.len()
        )));
    }
    if !approvers.is_empty() && options.approvals_required == 0 && options.promotion_approvals == 0
    {
        return Err(Error::invalid(
            "approvers given but 0 approvals required: say how many must approve each deletion \
             outside the policy",
        ));
    }
    config.approvers = approvers;
    config.approvals_required = options.approvals_required;
    config.promotion_approvals = options.promotion_approvals;
    config.min_age_secs = options.min_age_secs.unwrap_or(DEFAULT_MIN_AGE_SECS);
    let key_file = crate::unlock::key_path(options.key_file.as_deref(), &config.vault_id)?;
    if key_file.exists() {
        return Err(Error::invalid(format!(
            "key file {} already exists; choose another place for the new one (existing keys \
             are never overwritten)",
            key_file.display()
        )));
    }
    let pass = passphrase.read(true)?;
    // Key file first: a vault must never exist without a way to open it.
    KeyFile::seal(&root, &config.vault_id, pass.as_bytes(), options.kdf)?.store(&key_file)?;
    if let Err(e) = config.create(site.as_ref(), &root) {
        let _ = std::fs::remove_file(&key_file);
        return Err(e);
    }
    for location in &options.locations {
        embassy_core::history::state::pin_site(
            &options.state_dir,
            location,
            &config.vault_id,
            true,
        )?;
    }
    Ok(InitReport {
        fingerprint: fingerprint(&config.vault_id),
        vault_id: config.vault_id,
        site: site.location().to_string(),
        key_file,
        notes,
        min_age_secs: config.min_age_secs,
    })
}

/// Public keys given as 64 hex digits, lowercased; `role` names them in the error.
fn public_keys(role: &str, keys: &[String]) -> Result<Vec<String>> {
    keys.iter()
        .map(|k| {
            if k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
                Ok(k.to_ascii_lowercase())
            } else {
                Err(Error::invalid(format!(
                    "{role} key {k} is not a 64-digit hex public key (as its key file's maker \
                     printed it)"
                )))
            }
        })
        .collect()
}
