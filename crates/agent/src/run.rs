//! The agent's work: opening the vault at every configured site, one backup run of a dataset,
//! catching a lagging site up, keyless verification of a site. Each is a plain function the
//! scheduler ([`crate::agent`]) runs on a worker thread and tests can call directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use embassy_core::keyfile::{KeyFile, PURPOSE_READER, PURPOSE_SEALING};
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::progress::Silent;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};
use embassy_core::state::StateStore;
use embassy_core::vault::{Keyring, Vault};
use embassy_sources::{files, stream};
use zeroize::Zeroizing;

use crate::config::{Config, KeyConfig, PassphraseSource, Source};

/// A site that refuses every write once the agent abandons in-flight work (after SIGTERM and
/// its grace period). A refused write makes the backup fail before its ledger entry, so no
/// version is recorded: the objects already written are reused by the next run.
#[derive(Debug)]
pub struct CancellableSite {
    inner: Arc<dyn Site>,
    cancel: Arc<AtomicBool>,
}

impl CancellableSite {
    /// Wraps `inner`; writes fail once `cancel` is set.
    pub fn new(inner: Arc<dyn Site>, cancel: Arc<AtomicBool>) -> Self {
        Self { inner, cancel }
    }
}

impl Site for CancellableSite {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(SiteError::Permanent {
                site: self.inner.location().to_string(),
                operation: "put",
                path: path.to_string(),
                message: "the agent is shutting down: the run was abandoned before its version was recorded".into(),
            });
        }
        self.inner.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.inner.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.inner.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.inner.delete(path)
    }
    fn lagging(&self) -> Vec<(String, String)> {
        self.inner.lagging()
    }
}

/// Opens the vault at every configured site as one (writes count once `min_sites` hold them),
/// remembering verified heads in the agent's state folder. Writes fail once `cancel` is set.
pub fn open_vault(config: &Config, cancel: &Arc<AtomicBool>) -> Result<Vault, String> {
    let locations = config.locations();
    let site = embassy_sites::open_many(&locations, config.agent.min_sites, false)
        .map_err(|e| e.to_string())?;
    let site: Arc<dyn Site> = Arc::new(CancellableSite::new(site, cancel.clone()));
    let vault = Vault::open(site).map_err(|e| e.to_string())?;
    let state = StateStore::open(
        &config.agent.state_dir.join("vaults"),
        &vault.config().vault_id,
    )
    .map_err(|e| e.to_string())?;
    Ok(vault.with_state(state))
}

/// Reads the passphrase as configured.
fn passphrase(source: &PassphraseSource) -> Result<Zeroizing<String>, String> {
    match source {
        PassphraseSource::File(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read passphrase file {}: {e}", path.display()))?,
            );
            let first = Zeroizing::new(text.lines().next().unwrap_or("").to_string());
            if first.is_empty() {
                return Err(format!("passphrase file {} is empty", path.display()));
            }
            Ok(first)
        }
        PassphraseSource::Env(name) => match std::env::var(name) {
            Ok(v) if !v.is_empty() => Ok(Zeroizing::new(v)),
            _ => Err(format!(
                "the passphrase variable {name} is not set (or empty): set it, or use keys.passphrase_file"
            )),
        },
    }
}

/// Opens the configured key file for the vault (a root key or a sealing credential).
pub fn unlock(keys: &KeyConfig, vault: &Vault) -> Result<Keyring, String> {
    let path = &keys.file;
    let file = KeyFile::load(path).map_err(|e| e.to_string())?;
    let pass = passphrase(&keys.passphrase)?;
    if file.purpose == PURPOSE_SEALING || file.purpose == PURPOSE_READER {
        let payload = file
            .open_payload(pass.as_bytes(), path)
            .map_err(|e| e.to_string())?;
        let credential = Credential::from_bytes(&payload).map_err(|e| e.to_string())?;
        return Keyring::from_credential(credential, vault.config()).map_err(|e| e.to_string());
    }
    if file.vault_id != vault.config().vault_id {
        return Err(format!(
            "key file {} belongs to vault {}, but the sites hold vault {}",
            path.display(),
            file.vault_id,
            vault.config().vault_id
        ));
    }
    let root: RootSecret = file
        .open(pass.as_bytes(), path)
        .map_err(|e| e.to_string())?;
    Keyring::from_root(root, vault.config()).map_err(|e| e.to_string())
}

/// What one backup run stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The version number.
    pub seq: u64,
    /// Bytes in the version.
    pub bytes: u64,
    /// Bytes newly stored.
    pub new_bytes: u64,
    /// Files in the version.
    pub files: u64,
    /// Warnings (files that vanished, sites that missed writes).
    pub warnings: Vec<String>,
    /// Sites that missed writes (to catch up).
    pub lagging: Vec<String>,
}

/// One backup run of a dataset through the sources library; no version is recorded unless the
/// whole source was read and every object is at `min_sites` sites.
pub fn backup_dataset(
    config: &Config,
    keyring: &Keyring,
    dataset: &str,
    cancel: &Arc<AtomicBool>,
) -> Result<RunOutcome, String> {
    let d = config
        .dataset(dataset)
        .ok_or_else(|| format!("dataset {dataset} is not in the configuration"))?;
    let vault = open_vault(config, cancel)?;
    let (version, mut warnings) = match &d.source {
        Source::Files(paths) => {
            let b = files::backup(&vault, keyring, dataset, paths, &Silent)
                .map_err(|e| e.to_string())?;
            (b.version, b.warnings)
        }
        Source::Command(command) => (
            stream::backup_command(
                &vault,
                keyring,
                dataset,
                &in_config_dir(config, command),
                &Silent,
            )
            .map_err(|e| e.to_string())?,
            Vec::new(),
        ),
        Source::Postgres { .. } => {
            // INTEGRATION POINT (embassy-postgres): base backups of a PostgreSQL source go
            // through the postgres crate's library once it lands.
            return Err(
                "PostgreSQL sources are not integrated into the agent yet (embassy-postgres)"
                    .into(),
            );
        }
    };
    let mut lagging: Vec<String> = vault
        .site()
        .lagging()
        .into_iter()
        .map(|(s, why)| {
            warnings.push(format!("site {s} missed writes: {why}"));
            s
        })
        .collect();
    lagging.sort();
    lagging.dedup();
    Ok(RunOutcome {
        seq: version.seq,
        bytes: version.stats.bytes,
        new_bytes: version.stats.new_bytes_stored,
        files: version.stats.files,
        warnings,
        lagging,
    })
}

/// A shell command that runs `command` in the config file's folder.
pub fn in_config_dir(config: &Config, command: &str) -> String {
    let dir = config
        .base_dir()
        .display()
        .to_string()
        .replace('\'', "'\\''");
    format!("cd '{dir}' && {command}")
}

/// Copies to the site at `to` every object it lacks from the site at `from` (no keys).
pub fn catch_up(from: &str, to: &str) -> Result<u64, String> {
    let from_site = embassy_sites::open(from).map_err(|e| e.to_string())?;
    let to_site = embassy_sites::open(to).map_err(|e| e.to_string())?;
    let report = embassy_core::sync::sync(from_site.as_ref(), to_site.as_ref(), false, &Silent)
        .map_err(|e| e.to_string())?;
    if !report.problems.is_empty() {
        return Err(report.problems.join("; "));
    }
    Ok(report.copied)
}

/// Verifies the vault at one site without keys: (ok, one-line summary).
pub fn verify_site(location: &str) -> (bool, String) {
    let result = embassy_sites::open(location)
        .map_err(embassy_core::Error::from)
        .and_then(Vault::open)
        .and_then(|v| embassy_core::verify::verify(&v, None, &Silent));
    match result {
        Ok(r) if r.is_ok() => (
            true,
            format!(
                "{} objects ({} bytes), {} datasets verified",
                r.objects_checked,
                r.bytes_checked,
                r.datasets.len()
            ),
        ),
        Ok(r) => (
            false,
            format!(
                "{} problems, first: {}",
                r.problems.len(),
                r.problems.first().map(String::as_str).unwrap_or("")
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}
