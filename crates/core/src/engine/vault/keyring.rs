//! The keys a process holds: a vault's root secret or a credential for part of it (moved out of
//! `vault.rs`; reached as `engine::vault::Keyring`).

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::config::VaultConfig;
use crate::format::layout;
use crate::keys::{Credential, DatasetKeys, RootSecret};

/// How many key epochs a root key searches for a key id.
const MAX_EPOCH_SEARCH: u32 = 1024;

/// The keys a process holds: the vault's root secret (everything), or a credential for part of it.
pub struct Keyring {
    source: KeySource,
}

enum KeySource {
    Root(RootSecret),
    Credential(Credential),
}

impl Keyring {
    /// A keyring holding the root secret, checked against the vault.
    pub fn from_root(root: RootSecret, config: &VaultConfig) -> Result<Self> {
        config.check_root(&root)?;
        Ok(Self {
            source: KeySource::Root(root),
        })
    }

    /// A keyring holding a sealing or reader credential of this vault.
    pub fn from_credential(credential: Credential, config: &VaultConfig) -> Result<Self> {
        if credential.vault_id != config.vault_id {
            return Err(Error::WrongKey(format!(
                "this credential belongs to vault {}, but the site's configuration is vault {}: \
                 the wrong site, or a substituted configuration (nothing was written)",
                credential.vault_id, config.vault_id
            )));
        }
        Ok(Self {
            source: KeySource::Credential(credential),
        })
    }

    /// The keys of a dataset.
    pub fn dataset(&self, dataset: &str) -> Result<Arc<DatasetKeys>> {
        layout::check_dataset_name(dataset)?;
        match &self.source {
            KeySource::Root(root) => Ok(Arc::new(root.dataset_keys(dataset, 0))),
            KeySource::Credential(c) => c.dataset_keys(dataset).map(Arc::new).ok_or_else(|| {
                Error::WrongKey(format!(
                    "credential '{}' does not cover dataset {dataset} (it covers: {})",
                    c.label,
                    c.datasets
                        .iter()
                        .map(|d| d.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }),
        }
    }

    /// The keys of a dataset at a key epoch.
    pub fn dataset_at(&self, dataset: &str, epoch: u32) -> Result<Arc<DatasetKeys>> {
        layout::check_dataset_name(dataset)?;
        match &self.source {
            KeySource::Root(root) => Ok(Arc::new(root.dataset_keys(dataset, epoch))),
            KeySource::Credential(c) => {
                c.dataset_keys_at(dataset, epoch)
                    .map(Arc::new)
                    .ok_or_else(|| {
                        Error::WrongKey(format!(
                    "credential '{}' holds no keys of dataset {dataset} at key epoch {epoch} \
                     (the reader key was rotated since it was issued?): ask for a new credential",
                    c.label
                ))
                    })
            }
        }
    }

    /// The keys of a dataset whose reader key has id `key_id` (the id objects record).
    pub fn dataset_for_key_id(&self, dataset: &str, key_id: [u8; 8]) -> Result<Arc<DatasetKeys>> {
        layout::check_dataset_name(dataset)?;
        let found = match &self.source {
            KeySource::Root(root) => (0..=MAX_EPOCH_SEARCH)
                .map(|e| root.dataset_keys(dataset, e))
                .find(|k| k.key_id() == key_id),
            KeySource::Credential(c) => c
                .datasets
                .iter()
                .filter(|d| d.name == dataset)
                .filter_map(|d| c.dataset_keys_at(dataset, d.epoch))
                .find(|k| k.key_id() == key_id),
        };
        found.map(Arc::new).ok_or_else(|| {
            Error::WrongKey(format!(
                "no key at hand opens objects of dataset {dataset} sealed to reader key {}",
                hex::encode(key_id)
            ))
        })
    }

    /// The key that signs ledger entries.
    pub fn signer(&self) -> Result<ed25519_dalek::SigningKey> {
        match &self.source {
            KeySource::Root(root) => Ok(root.writer_signing_key(0)),
            KeySource::Credential(c) => c.signing_key().ok_or_else(|| {
                Error::WrongKey(format!(
                    "credential '{}' is a reader credential: it can read but not add versions",
                    c.label
                ))
            }),
        }
    }

    /// True when this keyring can decrypt (root or reader credential).
    pub fn can_read(&self, dataset: &str) -> bool {
        self.dataset(dataset)
            .is_ok_and(|k| k.reader_secret.is_some())
    }

    /// A reader credential for `dataset` alone, to hand to a process that must read that one
    /// dataset and nothing else (PostgreSQL's `restore_command` on a recovery host): every key
    /// epoch of it up to `current_epoch` this keyring can read, no other dataset, no signing
    /// key. From the root secret or from a reader credential covering the dataset; a sealing
    /// credential cannot read, so it is refused.
    pub fn reader_credential_for(
        &self,
        vault_id: &str,
        dataset: &str,
        label: &str,
        current_epoch: u32,
    ) -> Result<Credential> {
        layout::check_dataset_name(dataset)?;
        match &self.source {
            KeySource::Root(root) => Ok(Credential::at_epochs(
                root,
                vault_id,
                label,
                &[(dataset.to_string(), current_epoch)],
                true,
            )),
            KeySource::Credential(c) => {
                let datasets: Vec<_> = c
                    .datasets
                    .iter()
                    .filter(|d| d.name == dataset && d.reader_seed.is_some())
                    .cloned()
                    .collect();
                if datasets.is_empty() {
                    return Err(Error::Refused {
                        kind: crate::ErrorKind::Keys,
                        problem: format!(
                            "credential '{}' cannot read dataset {dataset} (a sealing \
                             credential, or a reader credential for other datasets): restore \
                             with the root key file or a reader credential of {dataset}, which \
                             the root issues",
                            c.label
                        ),
                        way_out: crate::error::WayOut::Grant {
                            dataset: dataset.to_string(),
                            grant: crate::error::Grant::Read,
                        },
                    });
                }
                Ok(Credential {
                    vault_id: vault_id.to_string(),
                    label: label.to_string(),
                    signing_seed: None,
                    datasets,
                })
            }
        }
    }

    /// The root secret, when held.
    pub fn root(&self) -> Option<&RootSecret> {
        match &self.source {
            KeySource::Root(root) => Some(root),
            KeySource::Credential(_) => None,
        }
    }
}

#[cfg(test)]
mod reader_credential_tests {
    use super::*;

    /// The credential a PostgreSQL restore hands to its restore_command: one dataset, readable,
    /// no signing key; narrowed from a wider reader credential; refused from a sealing one.
    #[test]
    fn reader_credential_for_one_dataset_only() {
        let root = RootSecret::from_bytes(&[5u8; 32]);
        let config = VaultConfig::new(&root);
        let id = config.vault_id.clone();
        let from_root = Keyring::from_root(RootSecret::from_bytes(&[5u8; 32]), &config)
            .unwrap()
            .reader_credential_for(&id, "db", "restore", 1)
            .unwrap();
        assert!(from_root.signing_key().is_none());
        assert!(from_root.datasets.iter().all(|d| d.name == "db"));
        assert_eq!(from_root.datasets.len(), 2, "epochs 0 and 1");
        let narrowed = Keyring::from_credential(from_root.clone(), &config).unwrap();
        assert!(narrowed.can_read("db"));
        assert!(narrowed.dataset("other").is_err());
        assert!(narrowed.signer().is_err());

        let wide = Credential::reader(&root, &id, "team", &["db".into(), "other".into()]);
        let one = Keyring::from_credential(wide, &config)
            .unwrap()
            .reader_credential_for(&id, "db", "restore", 0)
            .unwrap();
        assert_eq!(one.datasets.len(), 1);
        assert_eq!(one.datasets[0].name, "db");

        let sealing = Credential::sealing(&root, &id, "host", &["db".into()]);
        let err = Keyring::from_credential(sealing, &config)
            .unwrap()
            .reader_credential_for(&id, "db", "restore", 0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("cannot read dataset db"), "{err}");
    }
}
