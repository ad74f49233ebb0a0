//! An open vault: a site plus its verified configuration, and the keys that unlock it.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::VaultConfig;
use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::keys::{DatasetKeys, RootSecret};
use crate::layout;
use crate::ledger::{self, Event, Record};
use crate::manifest::{VersionKind, VersionStats};
use crate::site::Site;

/// A vault at one site. Opening it checks the configuration's signature; no keys are needed.
#[derive(Debug, Clone)]
pub struct Vault {
    site: Arc<dyn Site>,
    config: VaultConfig,
}

impl Vault {
    /// Creates a new vault on an empty site.
    pub fn create(site: Arc<dyn Site>, root: &RootSecret) -> Result<Self> {
        let config = VaultConfig::new(root);
        config.create(site.as_ref(), root)?;
        Ok(Self { site, config })
    }

    /// Opens the vault at a site.
    pub fn open(site: Arc<dyn Site>) -> Result<Self> {
        let config = VaultConfig::load(site.as_ref())?;
        Ok(Self { site, config })
    }

    /// The site.
    pub fn site(&self) -> &Arc<dyn Site> {
        &self.site
    }

    /// The verified configuration.
    pub fn config(&self) -> &VaultConfig {
        &self.config
    }

    /// Names of the datasets that have a ledger.
    pub fn datasets(&self) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        for info in self.site.list(layout::LEDGER_ROOT)? {
            if let Some((dataset, _, _)) = layout::parse_ledger_path(&info.path) {
                names.insert(dataset);
            }
        }
        Ok(names.into_iter().collect())
    }

    /// The verified history of a dataset.
    pub fn history(&self, dataset: &str) -> Result<Vec<Record>> {
        ledger::load_history(self.site.as_ref(), &self.config, dataset)
    }

    /// The versions of a dataset, oldest first.
    pub fn versions(&self, dataset: &str) -> Result<Vec<Version>> {
        Ok(self
            .history(dataset)?
            .iter()
            .map(|record| Version::from_record(dataset, record))
            .collect())
    }

    /// Finds a version: `None` or `latest` for the newest, a sequence number, or a prefix (at
    /// least 6 hex digits) of the manifest or ledger entry id.
    pub fn find_version(&self, dataset: &str, selector: Option<&str>) -> Result<Version> {
        let versions = self.versions(dataset)?;
        let not_found = |what: String| {
            Error::NotFound(format!(
                "dataset {dataset} has {what}; list them with `embassy versions {dataset}`"
            ))
        };
        match selector {
            None | Some("latest") => versions
                .last()
                .cloned()
                .ok_or_else(|| not_found("no versions in this vault".into())),
            Some(sel) => {
                if let Ok(seq) = sel.parse::<u64>() {
                    if sel.len() < 6 {
                        return versions
                            .into_iter()
                            .find(|v| v.seq == seq)
                            .ok_or_else(|| not_found(format!("no version {seq}")));
                    }
                }
                if sel.len() < 6 || !sel.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::invalid(format!(
                        "'{sel}' is not a version: use a sequence number, 'latest', or at least 6 hex digits of its id"
                    )));
                }
                let sel = sel.to_ascii_lowercase();
                let matches: Vec<Version> = versions
                    .into_iter()
                    .filter(|v| {
                        v.manifest.to_hex().starts_with(&sel)
                            || v.ledger_id.to_hex().starts_with(&sel)
                    })
                    .collect();
                match matches.len() {
                    1 => Ok(matches.into_iter().next().unwrap_or_else(|| unreachable!())),
                    0 => Err(not_found(format!("no version whose id starts with {sel}"))),
                    n => Err(Error::invalid(format!(
                        "{n} versions start with {sel}: give more digits"
                    ))),
                }
            }
        }
    }
}

/// One version as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The dataset.
    pub dataset: String,
    /// Its ledger sequence number.
    pub seq: u64,
    /// The ledger entry's id.
    pub ledger_id: ObjectId,
    /// The manifest's id.
    pub manifest: ObjectId,
    /// Tree or stream.
    pub kind: VersionKind,
    /// The recovery point: when the source was captured.
    pub captured_at_ns: i64,
    /// When the ledger entry was made.
    pub recorded_at_ns: i64,
    /// Counts.
    pub stats: VersionStats,
}

impl Version {
    /// The version a ledger record adds.
    pub fn from_record(dataset: &str, record: &Record) -> Self {
        let Event::VersionAdded {
            manifest,
            kind,
            captured_at_ns,
            stats,
        } = &record.entry.event;
        Self {
            dataset: dataset.to_string(),
            seq: record.entry.seq,
            ledger_id: record.id,
            manifest: *manifest,
            kind: *kind,
            captured_at_ns: *captured_at_ns,
            recorded_at_ns: record.entry.time_ns,
            stats: *stats,
        }
    }
}

/// The keys a process holds. Today: the root secret, from which all are derived.
pub struct Keyring {
    root: RootSecret,
}

impl Keyring {
    /// A keyring holding the root secret, checked against the vault.
    pub fn from_root(root: RootSecret, config: &VaultConfig) -> Result<Self> {
        config.check_root(&root)?;
        Ok(Self { root })
    }

    /// The keys of a dataset.
    pub fn dataset(&self, dataset: &str) -> Result<Arc<DatasetKeys>> {
        layout::check_dataset_name(dataset)?;
        Ok(Arc::new(self.root.dataset_keys(dataset, 0)))
    }

    /// The key that signs ledger entries.
    pub fn signer(&self) -> ed25519_dalek::SigningKey {
        self.root.writer_signing_key(0)
    }
}
