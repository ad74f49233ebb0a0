//! Opening a vault: its sites (one, or several as one with catch-up queues), the pins of the
//! vault id each site held on first contact, the verified heads this machine remembers, and a
//! cancellation switch that refuses every later write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::history::state::StateStore;
use embassy_core::site::{ObjectInfo, ObjectSink, ObjectSource, Put, Site, SiteError};
use embassy_core::{Error, Result};

/// Where a vault is and how this machine opens it.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The sites' locations (folder paths or `s3://bucket/prefix`).
    pub locations: Vec<String>,
    /// How many sites must hold each object before a write counts (None: all).
    pub min_sites: Option<usize>,
    /// The state folder: ledger locks, site pins, catch-up queues.
    pub state_dir: PathBuf,
    /// Where the verified heads of each vault are remembered (the command line keeps them in
    /// the state folder itself, the agent in its `vaults` subfolder).
    pub heads_dir: PathBuf,
    /// The vault id the sites must hold (`--vault-id`), already parsed.
    pub expected_vault_id: Option<String>,
    /// Replace the pins of these sites with the vault they hold now.
    pub forget_site_pin: bool,
    /// Once set, every write fails (the agent abandoning in-flight work); None: never.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl OpenOptions {
    /// Options with the heads kept in the state folder itself and nothing else set.
    pub fn new(locations: Vec<String>, state_dir: PathBuf) -> Self {
        Self {
            locations,
            min_sites: None,
            heads_dir: state_dir.clone(),
            state_dir,
            expected_vault_id: None,
            forget_site_pin: false,
            cancel: None,
        }
    }
}

/// Opens the sites as one; `creating` for `init`. Missed writes of a site among several are
/// queued in `queue_dir` for catch-up.
pub fn open_sites(
    locations: &[String],
    min_sites: Option<usize>,
    creating: bool,
    queue_dir: Option<&Path>,
) -> Result<Arc<dyn Site>> {
    if locations.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH or set EMBASSY_SITE",
        ));
    }
    let min = min_sites.unwrap_or(locations.len());
    let queue_dir = queue_dir.filter(|_| locations.len() > 1);
    embassy_sites::open_many_queued(locations, min, creating, queue_dir)
}

/// Opens the vault at the sites: writers on this host take turns at each ledger through lock
/// files in the state folder; the vault id must be the expected one and the one each site held
/// on first contact (sites met for the first time are pinned); verified heads are remembered.
pub fn open_vault(options: &OpenOptions) -> Result<Vault> {
    let site = open_sites(
        &options.locations,
        options.min_sites,
        false,
        Some(&options.state_dir),
    )?;
    let site: Arc<dyn Site> = match &options.cancel {
        Some(cancel) => Arc::new(CancellableSite::new(site, cancel.clone())),
        None => site,
    };
    let vault = Vault::open(site)?;
    embassy_core::history::ledger::use_lock_folder(options.state_dir.join("locks"));
    let vault_id = &vault.config().vault_id;
    if let Some(expected) = &options.expected_vault_id {
        if expected != vault_id {
            return Err(Error::SubstitutedConfig {
                site: vault.site().location().to_string(),
                problem: format!(
                    "it holds vault {vault_id}, but vault {expected} was expected (--vault-id)"
                ),
            });
        }
    }
    for location in &options.locations {
        embassy_core::history::state::pin_site(
            &options.state_dir,
            location,
            vault_id,
            options.forget_site_pin,
        )?;
    }
    let state = StateStore::open(&options.heads_dir, vault_id)?;
    Ok(vault.with_state(state))
}

/// The vault id given by the operator (32 hex digits or the grouped fingerprint), parsed.
pub fn parse_expected_vault_id(text: Option<&str>) -> Result<Option<String>> {
    text.filter(|v| !v.trim().is_empty())
        .map(|text| {
            embassy_core::format::config::parse_vault_id(text).ok_or_else(|| {
                Error::invalid(format!(
                    "--vault-id {text} is not a vault id: give the 32 hex digits (or the grouped \
                     fingerprint) that `embassy init` printed"
                ))
            })
        })
        .transpose()
}

/// A site that refuses every write once its owner abandons in-flight work (the agent after
/// SIGTERM and its grace period). A refused write makes a backup fail before its ledger entry,
/// so no version is recorded: the objects already written are reused by the next run.
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

impl CancellableSite {
    /// The error every write gets once the owner abandoned in-flight work.
    fn refuse_once_cancelled(&self, path: &str) -> std::result::Result<(), SiteError> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(SiteError::Permanent {
                site: self.inner.location().to_string(),
                operation: "put",
                path: path.to_string(),
                message: "the agent is shutting down: the run was abandoned before its version was recorded".into(),
            });
        }
        Ok(())
    }
}

impl Site for CancellableSite {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> std::result::Result<Put, SiteError> {
        self.refuse_once_cancelled(path)?;
        self.inner.put(path, bytes)
    }
    fn put_from(
        &self,
        path: &str,
        source: Arc<dyn ObjectSource>,
    ) -> std::result::Result<Put, SiteError> {
        self.refuse_once_cancelled(path)?;
        self.inner.put_from(path, source)
    }
    fn get(&self, path: &str) -> std::result::Result<Vec<u8>, SiteError> {
        self.inner.get(path)
    }
    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> std::result::Result<u64, SiteError> {
        self.inner.get_to(path, sink)
    }
    fn get_range(
        &self,
        path: &str,
        offset: u64,
        len: u64,
    ) -> std::result::Result<Vec<u8>, SiteError> {
        self.inner.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> std::result::Result<Vec<ObjectInfo>, SiteError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> std::result::Result<(), SiteError> {
        self.inner.delete(path)
    }
    fn lagging(&self) -> Vec<(String, String)> {
        self.inner.lagging()
    }
    fn members(&self) -> Vec<Arc<dyn Site>> {
        // Each member wrapped too, so a cancelled run stops writing there as well.
        self.inner
            .members()
            .into_iter()
            .map(|m| Arc::new(CancellableSite::new(m, self.cancel.clone())) as Arc<dyn Site>)
            .collect()
    }
}
