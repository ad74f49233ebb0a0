//! The key hierarchy (see `docs/format.md`, "Keys").
//!
//! One 32-byte **root secret** per vault. Everything else is derived from it with BLAKE3's
//! key-derivation mode, each under its own context string, so that later issues can hand out
//! parts of it: a **sealing credential** (chunk-id key, index key, reader public key, signing
//! key) for source hosts that must add data but not read it; a **reader key** per dataset;
//! and the **root signing key** that pins the vault's configuration. Key epochs leave room for
//! rotation without rewriting stored data.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

use crate::keys::crypto::{self, ReaderPublicKey, ReaderSecretKey};

const CONTEXT_ROOT_SIGNING: &str = "data-embassy 2026 root signing key v1";
const CONTEXT_WRITER_SIGNING: &str = "data-embassy 2026 writer signing key v1";
const CONTEXT_CHUNK_ID: &str = "data-embassy 2026 dataset chunk-id key v1";
const CONTEXT_INDEX: &str = "data-embassy 2026 dataset index key v1";
const CONTEXT_READER: &str = "data-embassy 2026 dataset reader key v1";
const CONTEXT_CHUNKER_SEED: &str = "data-embassy 2026 dataset chunker seed v1";

/// The vault's root secret: can derive every other key. Zeroized on drop.
pub struct RootSecret(Zeroizing<[u8; 32]>);

impl RootSecret {
    /// A fresh random root secret.
    pub fn generate() -> Self {
        Self(crypto::random_32())
    }

    /// Wraps existing secret bytes (from a key file or recovered shares).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self(Zeroizing::new(*bytes))
    }

    /// Wraps secret bytes given as a slice (an unwrapped key file, combined shares); `None`
    /// unless exactly 32 bytes. Copied straight into zeroized storage.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(<&[u8; 32]>::try_from(bytes).ok()?);
        Some(Self(secret))
    }

    /// The secret bytes, for wrapping into a key file or splitting into shares.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn derive(&self, context: &str, parts: &[&[u8]]) -> Zeroizing<[u8; 32]> {
        // The hasher's state holds the root secret, its output a key: both are wiped.
        let mut hasher = Zeroizing::new(blake3::Hasher::new_derive_key(context));
        hasher.update(self.0.as_ref());
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let hash = Zeroizing::new(hasher.finalize());
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(hash.as_bytes());
        out
    }

    /// The key that signs the vault configuration and its signer list.
    pub fn root_signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.derive(CONTEXT_ROOT_SIGNING, &[]))
    }

    /// The default writer key that signs ledger entries (epoch 0).
    pub fn writer_signing_key(&self, epoch: u32) -> SigningKey {
        SigningKey::from_bytes(&self.derive(CONTEXT_WRITER_SIGNING, &[&epoch.to_le_bytes()]))
    }

    /// The seed of a dataset's reader key pair.
    pub fn reader_seed(&self, dataset: &str, epoch: u32) -> Zeroizing<[u8; 32]> {
        self.derive(CONTEXT_READER, &[dataset.as_bytes(), &epoch.to_le_bytes()])
    }

    /// All keys of one dataset at a key epoch (0 until the first rotation).
    pub fn dataset_keys(&self, dataset: &str, epoch: u32) -> DatasetKeys {
        let e = epoch.to_le_bytes();
        let parts: [&[u8]; 2] = [dataset.as_bytes(), &e];
        let reader_seed = self.derive(CONTEXT_READER, &parts);
        let (secret, public) = crypto::reader_keypair_from(&reader_seed);
        let seed_bytes = self.derive(CONTEXT_CHUNKER_SEED, &parts);
        let mut chunker_seed = [0u8; 8];
        chunker_seed.copy_from_slice(&seed_bytes[..8]);
        DatasetKeys {
            dataset: dataset.to_string(),
            epoch,
            chunk_id_key: self.derive(CONTEXT_CHUNK_ID, &parts),
            index_key: self.derive(CONTEXT_INDEX, &parts),
            chunker_seed: u64::from_le_bytes(chunker_seed),
            reader_public: public,
            reader_secret: Some(secret),
        }
    }
}

/// The keys of one dataset. A sealing credential has no `reader_secret`.
pub struct DatasetKeys {
    /// The dataset these keys belong to.
    pub dataset: String,
    /// Key epoch; objects record it so rotation keeps old versions readable.
    pub epoch: u32,
    /// Keys BLAKE3 for chunk ids, so that equal chunks dedup but a site cannot test guesses.
    pub chunk_id_key: Zeroizing<[u8; 32]>,
    /// Encrypts index bodies (writers need them to dedup; they reveal ids and sizes only).
    pub index_key: Zeroizing<[u8; 32]>,
    /// Seeds the chunker's gear table, so cut points do not fingerprint content across vaults.
    pub chunker_seed: u64,
    /// Packs and manifests are sealed to this key.
    pub reader_public: ReaderPublicKey,
    /// Opens packs and manifests; absent in a sealing credential.
    pub reader_secret: Option<ReaderSecretKey>,
}

impl DatasetKeys {
    /// The chunk id of some plaintext.
    pub fn chunk_id(&self, data: &[u8]) -> crate::id::ChunkId {
        crate::id::ChunkId(*blake3::keyed_hash(&self.chunk_id_key, data).as_bytes())
    }

    /// Short identifier of the reader key, stored in object headers.
    pub fn key_id(&self) -> [u8; 8] {
        let digest = blake3::hash(&crypto::reader_public_bytes(&self.reader_public));
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest.as_bytes()[..8]);
        out
    }

    /// The reader secret, or an error saying this credential may only seal.
    pub fn reader(&self) -> crate::error::Result<&ReaderSecretKey> {
        self.reader_secret.as_ref().ok_or_else(|| {
            crate::error::Error::WrongKey(format!(
                "the key for dataset {} is a sealing credential: it can add data but not read it; \
                 use a reader key or the root key",
                self.dataset
            ))
        })
    }
}

/// Signs `message` under a domain-separation label.
pub fn sign(key: &SigningKey, label: &[u8], message: &[u8]) -> [u8; 64] {
    key.sign(&labelled(label, message)).to_bytes()
}

/// Checks a signature made by [`sign`].
pub fn verify_signature(key: &[u8; 32], label: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(key) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(&labelled(label, message), &signature)
        .is_ok()
}

fn labelled(label: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + 1 + message.len());
    out.extend_from_slice(label);
    out.push(0);
    out.extend_from_slice(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivation_separates_datasets_and_epochs() {
        let root = RootSecret::from_bytes(&[9u8; 32]);
        let a = root.dataset_keys("a", 0);
        let b = root.dataset_keys("b", 0);
        let a1 = root.dataset_keys("a", 1);
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_ne!(a.key_id(), b.key_id());
        assert_ne!(a.key_id(), a1.key_id());
        assert_eq!(a.key_id(), root.dataset_keys("a", 0).key_id());
    }

    #[test]
    fn signatures_are_bound_to_label_and_key() {
        let root = RootSecret::from_bytes(&[3u8; 32]);
        let key = root.root_signing_key();
        let public = key.verifying_key().to_bytes();
        let sig = sign(&key, b"label", b"msg");
        assert!(verify_signature(&public, b"label", b"msg", &sig));
        assert!(!verify_signature(&public, b"other", b"msg", &sig));
        assert!(!verify_signature(&public, b"label", b"msg2", &sig));
        let other = root.writer_signing_key(0).verifying_key().to_bytes();
        assert!(!verify_signature(&other, b"label", b"msg", &sig));
    }
}

/// Keys of one dataset handed out in a [`Credential`].
#[derive(Clone, serde::Serialize, serde::Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct DatasetCredential {
    /// The dataset.
    pub name: String,
    /// Key epoch.
    pub epoch: u32,
    /// Chunk-id key.
    #[serde(with = "serde_bytes")]
    pub chunk_id_key: [u8; 32],
    /// Index key.
    #[serde(with = "serde_bytes")]
    pub index_key: [u8; 32],
    /// Chunker seed.
    pub chunker_seed: u64,
    /// Seed of the reader key pair: present in reader credentials only.
    #[serde(default, with = "serde_bytes")]
    pub reader_seed: Option<[u8; 32]>,
    /// The reader public key (what sealing needs).
    #[serde(with = "serde_bytes")]
    pub reader_public: [u8; 32],
}

/// A credential for part of a vault: a **sealing** credential (source hosts: add data and sign
/// ledger entries, never read) or a **reader** credential (one registry's operators: read
/// some datasets, never sign).
#[derive(Clone, serde::Serialize, serde::Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Credential {
    /// The vault.
    pub vault_id: String,
    /// Who or what it is for (a host name, a team).
    pub label: String,
    /// Ed25519 seed of the credential's own signing key (sealing credentials).
    #[serde(default, with = "serde_bytes")]
    pub signing_seed: Option<[u8; 32]>,
    /// The datasets it covers.
    pub datasets: Vec<DatasetCredential>,
}

impl Credential {
    /// Issues a sealing credential for `datasets`, with a fresh signing key. Its public key must
    /// be added to each dataset's ledger (a root-signed entry) before its entries verify.
    pub fn sealing(root: &RootSecret, vault_id: &str, label: &str, datasets: &[String]) -> Self {
        Self::issue(root, vault_id, label, datasets, false)
    }

    /// Issues a reader credential for `datasets`.
    pub fn reader(root: &RootSecret, vault_id: &str, label: &str, datasets: &[String]) -> Self {
        Self::issue(root, vault_id, label, datasets, true)
    }

    /// Like [`Credential::sealing`] and [`Credential::reader`], for datasets at their current
    /// key epochs: a sealing credential holds the current epoch's keys, a reader credential
    /// every epoch's up to the current one (so old versions stay readable).
    pub fn at_epochs(
        root: &RootSecret,
        vault_id: &str,
        label: &str,
        datasets: &[(String, u32)],
        read: bool,
    ) -> Self {
        let mut out = Self::issue(root, vault_id, label, &[], read);
        for (name, current) in datasets {
            let epochs = if read {
                0..=*current
            } else {
                *current..=*current
            };
            for epoch in epochs {
                out.datasets
                    .push(Self::dataset_entry(root, name, epoch, read));
            }
        }
        out
    }

    fn dataset_entry(root: &RootSecret, name: &str, epoch: u32, read: bool) -> DatasetCredential {
        let keys = root.dataset_keys(name, epoch);
        DatasetCredential {
            name: name.to_string(),
            epoch,
            chunk_id_key: *keys.chunk_id_key,
            index_key: *keys.index_key,
            chunker_seed: keys.chunker_seed,
            reader_seed: read.then(|| *root.reader_seed(name, epoch)),
            reader_public: crypto::reader_public_bytes(&keys.reader_public),
        }
    }

    fn issue(
        root: &RootSecret,
        vault_id: &str,
        label: &str,
        datasets: &[String],
        read: bool,
    ) -> Self {
        let datasets = datasets
            .iter()
            .map(|name| {
                let keys = root.dataset_keys(name, 0);
                let reader_seed = read.then(|| *root.reader_seed(name, 0));
                DatasetCredential {
                    name: name.clone(),
                    epoch: 0,
                    chunk_id_key: *keys.chunk_id_key,
                    index_key: *keys.index_key,
                    chunker_seed: keys.chunker_seed,
                    reader_seed,
                    reader_public: crypto::reader_public_bytes(&keys.reader_public),
                }
            })
            .collect();
        Self {
            vault_id: vault_id.to_string(),
            label: label.to_string(),
            signing_seed: (!read).then(|| *crypto::random_32()),
            datasets,
        }
    }

    /// The credential's signing key, if it may sign.
    pub fn signing_key(&self) -> Option<SigningKey> {
        self.signing_seed.as_ref().map(SigningKey::from_bytes)
    }

    /// The keys of one dataset at its newest epoch held, if covered.
    pub fn dataset_keys(&self, dataset: &str) -> Option<DatasetKeys> {
        let newest = self
            .datasets
            .iter()
            .filter(|d| d.name == dataset)
            .map(|d| d.epoch)
            .max()?;
        self.dataset_keys_at(dataset, newest)
    }

    /// The keys of one dataset at one epoch, if held.
    pub fn dataset_keys_at(&self, dataset: &str, epoch: u32) -> Option<DatasetKeys> {
        let d = self
            .datasets
            .iter()
            .find(|d| d.name == dataset && d.epoch == epoch)?;
        let reader_public = crypto::reader_public_from(&d.reader_public)?;
        let reader_secret = d
            .reader_seed
            .as_ref()
            .map(|seed| crypto::reader_keypair_from(seed).0);
        Some(DatasetKeys {
            dataset: d.name.clone(),
            epoch: d.epoch,
            chunk_id_key: Zeroizing::new(d.chunk_id_key),
            index_key: Zeroizing::new(d.index_key),
            chunker_seed: d.chunker_seed,
            reader_public,
            reader_secret,
        })
    }

    /// Serialized form (sealed into a key file by the caller).
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(crate::cbor::to_vec(self))
    }

    /// Parses the serialized form.
    pub fn from_bytes(bytes: &[u8]) -> crate::error::Result<Self> {
        crate::cbor::from_slice(bytes)
            .map_err(|e| crate::error::Error::invalid(format!("credential: {e}")))
    }
}
