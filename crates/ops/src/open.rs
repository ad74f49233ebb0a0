//! Opening a vault: its sites (one, or several as one with catch-up queues), the pins of the
//! vault id each site held on first contact, the verified heads this machine remembers, and a
//! cancellation switch that refuses every later write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::history::state::{Queued, StateStore};
use embassy_core::site::{ObjectInfo, ObjectSink, ObjectSource, Put, Site, SiteError};
use embassy_core::{Error, Result};
use embassy_sites::{RetryPolicy, WithoutVault};

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
    /// Once set, every write fails (the agent abandoning in-flight work, an interrupted
    /// backup); None: never.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Counts the objects this process stores at the sites (what an interrupted run leaves
    /// for the next one to reuse); None: not counted.
    pub tally: Option<Arc<WriteTally>>,
    /// A site that holds no vault while others hold it: refused (the command line), or left
    /// out of the run and never filled (the agent).
    pub without_vault: WithoutVault,
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
            tally: None,
            without_vault: WithoutVault::Refuse,
        }
    }
}

/// Opens the sites as one; `creating` for `init`. Missed writes of a site among several are
/// queued in `queue_dir` for catch-up. Each site retries transient failures (the one retry
/// layer, `embassy_sites::RetryingSite`).
pub fn open_sites(
    locations: &[String],
    min_sites: Option<usize>,
    creating: bool,
    queue_dir: Option<&Path>,
) -> Result<Arc<dyn Site>> {
    open_sites_with(
        locations,
        min_sites,
        creating,
        queue_dir,
        &RetryPolicy::default(),
        WithoutVault::Refuse,
    )
}

/// [`open_sites`], each site retrying as `retry` says (with the run's cancellation switch), a
/// site without a vault refused or left out as `without_vault` says.
pub fn open_sites_with(
    locations: &[String],
    min_sites: Option<usize>,
    creating: bool,
    queue_dir: Option<&Path>,
    retry: &RetryPolicy,
    without_vault: WithoutVault,
) -> Result<Arc<dyn Site>> {
    if locations.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH or set EMBASSY_SITE",
        ));
    }
    let min = min_sites.unwrap_or(locations.len());
    let queue_dir = queue_dir.filter(|_| locations.len() > 1);
    embassy_sites::open_many_queued_with(locations, min, creating, queue_dir, retry, without_vault)
}

/// Opens the vault at the sites: writers on this host take turns at each ledger through lock
/// files in the state folder; the vault id must be the expected one and the one each site held
/// on first contact (sites met for the first time are pinned); verified heads are remembered.
pub fn open_vault(options: &OpenOptions) -> Result<Vault> {
    // A cancelled run also stops retrying (and wakes from a retry's wait).
    let retry = RetryPolicy::default().with_cancel(options.cancel.clone());
    let site = open_sites_with(
        &options.locations,
        options.min_sites,
        false,
        Some(&options.state_dir),
        &retry,
        options.without_vault,
    )?;
    let site: Arc<dyn Site> = if options.cancel.is_some() || options.tally.is_some() {
        let cancel = options.cancel.clone().unwrap_or_default();
        Arc::new(CancellableSite::new(site, cancel).counting(options.tally.clone()))
    } else {
        site
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
    let state = StateStore::open(&options.heads_dir, vault_id)?
        .with_lagging_sites(queued_for(&options.state_dir, &options.locations));
    Ok(vault.with_state(state))
}

/// The sites of `locations` with writes waiting in their catch-up queues under `state_dir`
/// (a history they serve short of what this machine verified lags, rather than being rolled
/// back, only when these writes hold every entry it lacks; after a write, the sites it was
/// queued for).
pub fn lagging_sites(state_dir: &Path, locations: &[String]) -> Vec<String> {
    queued_for(state_dir, locations)
        .into_iter()
        .map(|q| q.site)
        .collect()
}

/// What this machine's catch-up queues under `state_dir` hold for each site of `locations`
/// that has writes waiting (the remembered heads' one rule, [`Queued::covers`], decides with
/// it whether a site's shorter history lags or was rolled back).
pub fn queued_for(state_dir: &Path, locations: &[String]) -> Vec<Queued> {
    locations
        .iter()
        .filter_map(|location| {
            let site = embassy_sites::open(location).ok();
            let pending = embassy_sites::queue::site_queue(state_dir, location, site.as_ref())
                .and_then(|q| q.pending())
                .ok()?;
            (!pending.is_empty()).then(|| Queued {
                site: location.clone(),
                full_sync: !pending.full_sync.is_empty(),
                paths: pending.paths,
            })
        })
        .collect()
}

/// Opens the vault at the sites given and at every other site of it this machine has met
/// (pinned in the state folder): for a record that must reach every site, such as a
/// promotion. Writes go to every site that answers and are queued for the rest (`embassy sync
/// --pending` catches them up); they count once `min_sites` (default: one) hold them. A
/// pinned site that holds no vault any more is left out and queued, never filled. Returns the
/// vault and every site location it was opened at.
pub fn open_vault_everywhere(options: &OpenOptions) -> Result<(Vault, Vec<String>)> {
    let vault = open_vault(options)?;
    let given: Vec<String> = options
        .locations
        .iter()
        .map(|l| embassy_core::history::state::pin_spelling(l))
        .collect();
    let extra: Vec<String> =
        embassy_core::history::state::pinned_sites(&options.state_dir, &vault.config().vault_id)
            .into_iter()
            .filter(|l| !given.contains(l))
            .collect();
    if extra.is_empty() && options.locations.len() == 1 {
        return Ok((vault, options.locations.clone()));
    }
    drop(vault);
    let mut locations = options.locations.clone();
    locations.extend(extra);
    let vault = open_vault(&OpenOptions {
        min_sites: Some(options.min_sites.unwrap_or(1)),
        without_vault: WithoutVault::LeaveOut,
        locations: locations.clone(),
        ..options.clone()
    })?;
    Ok((vault, locations))
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

/// Where index objects live (`embassy_core::format::layout::index`).
const INDEX_ROOT: &str = "index/";
/// Where packs live (`embassy_core::format::layout::pack`).
const PACKS_ROOT: &str = "packs/";

/// The objects a process stored at the sites (created, not found already there), counted as
/// they are written.
#[derive(Debug, Default)]
pub struct WriteTally {
    objects: AtomicU64,
    packs: AtomicU64,
    bytes: AtomicU64,
    recording: AtomicBool,
}

impl WriteTally {
    /// Objects stored.
    pub fn objects(&self) -> u64 {
        self.objects.load(Ordering::SeqCst)
    }

    /// Packs among them (the stored chunks; the rest is bookkeeping).
    pub fn packs(&self) -> u64 {
        self.packs.load(Ordering::SeqCst)
    }

    /// Their bytes (as stored: compressed and encrypted).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// True once a ledger entry's write began (a version may be recorded). Once the site is
    /// cancelled and this is still false, no version of this run can be recorded any more.
    pub fn began_recording(&self) -> bool {
        self.recording.load(Ordering::SeqCst)
    }

    fn add(&self, path: &str, put: &Put, bytes: u64) {
        if matches!(put, Put::Created) {
            self.objects.fetch_add(1, Ordering::SeqCst);
            if path.starts_with(PACKS_ROOT) {
                self.packs.fetch_add(1, Ordering::SeqCst);
            }
            self.bytes.fetch_add(bytes, Ordering::SeqCst);
        }
    }
}

/// A site that refuses every write (but the index of a pack already stored) once its owner
/// abandons in-flight work (the agent after SIGTERM and its grace period, `embassy backup`
/// after Ctrl-C). A refused write makes a backup fail before its ledger entry, so no version is recorded: the objects already written are
/// reused by the next run. It may also count what is written ([`WriteTally`]).
#[derive(Debug)]
pub struct CancellableSite {
    inner: Arc<dyn Site>,
    cancel: Arc<AtomicBool>,
    tally: Option<Arc<WriteTally>>,
}

impl CancellableSite {
    /// Wraps `inner`; writes fail once `cancel` is set.
    pub fn new(inner: Arc<dyn Site>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            cancel,
            tally: None,
        }
    }

    /// The same, counting the objects stored through it in `tally` (when given).
    pub fn counting(mut self, tally: Option<Arc<WriteTally>>) -> Self {
        self.tally = tally;
        self
    }

    /// Checks the write may go ahead, and notes a ledger entry's write before it begins.
    fn admit(&self, path: &str) -> std::result::Result<(), SiteError> {
        self.refuse_once_cancelled(path)?;
        if let Some(tally) = &self.tally {
            if path.starts_with(embassy_core::format::layout::LEDGER_ROOT) {
                tally.recording.store(true, Ordering::SeqCst);
            }
        }
        Ok(())
    }

    fn count(&self, path: &str, put: &Put, bytes: u64) {
        if let Some(tally) = &self.tally {
            tally.add(path, put, bytes);
        }
    }
}

impl CancellableSite {
    /// The error every write gets once the owner abandoned in-flight work; except an index,
    /// which describes a pack already stored (written right after it): without it the next
    /// run could not find the pack's chunks and would store them again.
    fn refuse_once_cancelled(&self, path: &str) -> std::result::Result<(), SiteError> {
        let describes_a_stored_pack = path.starts_with(INDEX_ROOT);
        if self.cancel.load(Ordering::SeqCst) && !describes_a_stored_pack {
            return Err(SiteError::Permanent {
                site: self.inner.location().to_string(),
                operation: "put",
                path: path.to_string(),
                message: "the run was cancelled (interrupted, or the agent shutting down) before \
                          its version was recorded"
                    .into(),
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
        self.admit(path)?;
        let put = self.inner.put(path, bytes)?;
        self.count(path, &put, bytes.len() as u64);
        Ok(put)
    }
    fn put_from(
        &self,
        path: &str,
        source: Arc<dyn ObjectSource>,
    ) -> std::result::Result<Put, SiteError> {
        self.admit(path)?;
        let len = source.len();
        let put = self.inner.put_from(path, source)?;
        self.count(path, &put, len);
        Ok(put)
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
        // Each member wrapped too, so a cancelled run stops writing there as well (not
        // counted: a write through the whole is counted once, above).
        self.inner
            .members()
            .into_iter()
            .map(|m| Arc::new(CancellableSite::new(m, self.cancel.clone())) as Arc<dyn Site>)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embassy_testkit::memory::MemorySite;

    #[test]
    fn once_cancelled_only_the_index_of_a_stored_pack_is_written_and_writes_are_counted() {
        let cancel = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(WriteTally::default());
        let site = CancellableSite::new(Arc::new(MemorySite::default()), cancel.clone())
            .counting(Some(tally.clone()));
        site.put("packs/reg/ab/ab01", &[1; 100]).unwrap();
        site.put("packs/reg/ab/ab01", &[1; 100]).unwrap(); // already there: not counted
        assert_eq!((tally.objects(), tally.packs(), tally.bytes()), (1, 1, 100));
        assert!(!tally.began_recording());
        cancel.store(true, Ordering::SeqCst);
        assert!(site.put("packs/reg/cd/cd02", &[2; 10]).is_err());
        assert!(site.put("ledger/reg/0000000002", &[3; 10]).is_err());
        assert!(
            !tally.began_recording(),
            "a refused entry is not being recorded"
        );
        // The index of the pack stored before the cancellation still goes up, so that the next
        // run finds the pack's chunks.
        site.put("index/reg/ab01", &[4; 20]).unwrap();
        assert_eq!((tally.objects(), tally.packs(), tally.bytes()), (2, 1, 120));
        let tally = Arc::new(WriteTally::default());
        let site = CancellableSite::new(Arc::new(MemorySite::default()), Arc::default())
            .counting(Some(tally.clone()));
        site.put("ledger/reg/0000000001", &[5; 10]).unwrap();
        assert!(tally.began_recording());
    }
}
