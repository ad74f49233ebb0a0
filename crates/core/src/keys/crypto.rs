//! Cryptographic building blocks, all from reviewed crates (RustCrypto, BLAKE3, HPKE RFC 9180).
//!
//! - Symmetric objects (index bodies, key files): XChaCha20-Poly1305 with a random 24-byte nonce.
//! - Objects sealed to a dataset's reader (packs, manifests): HPKE base mode
//!   (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, export-only) yields a fresh 32-byte key per object;
//!   the writer forgets it, so it cannot read back what it wrote (invariant 5). Blobs inside are
//!   ChaCha20-Poly1305 under that key with counter nonces.

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hpke::{Deserializable, Kem as _, Serializable};
use rand::RngCore;
use zeroize::Zeroizing;

/// HPKE KEM used for sealing to readers.
pub type ReaderKem = hpke::kem::X25519HkdfSha256;
/// A reader's public key: anyone who writes to the dataset holds it.
pub type ReaderPublicKey = <ReaderKem as hpke::Kem>::PublicKey;
/// A reader's private key: only readers hold it.
pub type ReaderSecretKey = <ReaderKem as hpke::Kem>::PrivateKey;

/// Length of the HPKE encapsulated key stored in sealed objects.
pub const ENCAPSULATED_LEN: usize = 32;
/// Length of an AEAD tag.
pub const TAG_LEN: usize = 16;
/// Length of an XChaCha20 nonce.
pub const XNONCE_LEN: usize = 24;

/// AEAD failure: wrong key, or bytes that were altered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unauthentic;

/// 32 random bytes from the operating system's CSPRNG.
pub fn random_32() -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(out.as_mut());
    out
}

/// Encrypts with XChaCha20-Poly1305 under a random nonce; output is `nonce || ciphertext`.
pub fn seal_symmetric(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; XNONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_else(|_| unreachable!("XChaCha20-Poly1305 encryption has no failure mode"));
    let mut out = Vec::with_capacity(XNONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Decrypts `nonce || ciphertext` made by [`seal_symmetric`].
pub fn open_symmetric(
    key: &[u8; 32],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Unauthentic> {
    if sealed.len() < XNONCE_LEN + TAG_LEN {
        return Err(Unauthentic);
    }
    let (nonce, ciphertext) = sealed.split_at(XNONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            nonce.into(),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Unauthentic)
}

/// A per-object key shared through HPKE with a dataset's reader.
pub struct ObjectKey {
    cipher: ChaCha20Poly1305,
}

impl ObjectKey {
    /// Makes a fresh key for one object sealed to `reader`; returns it with the encapsulated key
    /// to store in the object's header. `info` binds the key to the object's kind and dataset.
    pub fn seal_to(reader: &ReaderPublicKey, info: &[u8]) -> (Self, [u8; ENCAPSULATED_LEN]) {
        let mut rng = rand::rngs::OsRng;
        let (encapped, context) = hpke::setup_sender::<
            hpke::aead::ExportOnlyAead,
            hpke::kdf::HkdfSha256,
            ReaderKem,
            _,
        >(&hpke::OpModeS::Base, reader, info, &mut rng)
        .unwrap_or_else(|_| unreachable!("X25519 encapsulation to a valid public key cannot fail"));
        let mut key = Zeroizing::new([0u8; 32]);
        context
            .export(b"object key", key.as_mut())
            .unwrap_or_else(|_| unreachable!("exporting 32 bytes is within HKDF's limit"));
        let mut enc = [0u8; ENCAPSULATED_LEN];
        enc.copy_from_slice(&encapped.to_bytes());
        (Self::from_key(&key), enc)
    }

    /// Recovers the key of an object from its encapsulated key, with the reader's private key.
    pub fn open_with(
        reader: &ReaderSecretKey,
        encapsulated: &[u8; ENCAPSULATED_LEN],
        info: &[u8],
    ) -> Result<Self, Unauthentic> {
        let encapped = <ReaderKem as hpke::Kem>::EncappedKey::from_bytes(encapsulated)
            .map_err(|_| Unauthentic)?;
        let context = hpke::setup_receiver::<
            hpke::aead::ExportOnlyAead,
            hpke::kdf::HkdfSha256,
            ReaderKem,
        >(&hpke::OpModeR::Base, reader, &encapped, info)
        .map_err(|_| Unauthentic)?;
        let mut key = Zeroizing::new([0u8; 32]);
        context
            .export(b"object key", key.as_mut())
            .map_err(|_| Unauthentic)?;
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(key.into()),
        }
    }

    /// Encrypts the `counter`-th message under this key. Each counter must be used once.
    pub fn encrypt(&self, counter: u64, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.cipher
            .encrypt(
                (&counter_nonce(counter)).into(),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 encryption has no failure mode"))
    }

    /// Encrypts `buffer` in place as the `counter`-th message; returns the tag to append.
    pub fn encrypt_in_place(&self, counter: u64, aad: &[u8], buffer: &mut [u8]) -> [u8; TAG_LEN] {
        self.cipher
            .encrypt_in_place_detached((&counter_nonce(counter)).into(), aad, buffer)
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 encryption has no failure mode"))
            .into()
    }

    /// Decrypts `ciphertext || tag` in place; on success the first `len - TAG_LEN` bytes are
    /// the plaintext.
    pub fn decrypt_in_place(
        &self,
        counter: u64,
        aad: &[u8],
        sealed: &mut [u8],
    ) -> Result<(), Unauthentic> {
        if sealed.len() < TAG_LEN {
            return Err(Unauthentic);
        }
        let (body, tag) = sealed.split_at_mut(sealed.len() - TAG_LEN);
        self.cipher
            .decrypt_in_place_detached((&counter_nonce(counter)).into(), aad, body, (&*tag).into())
            .map_err(|_| Unauthentic)
    }

    /// Decrypts the `counter`-th message.
    pub fn decrypt(
        &self,
        counter: u64,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, Unauthentic> {
        self.cipher
            .decrypt(
                (&counter_nonce(counter)).into(),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| Unauthentic)
    }
}

fn counter_nonce(counter: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&counter.to_le_bytes());
    nonce
}

/// Derives a reader key pair deterministically from 32 secret bytes (RFC 9180 DeriveKeyPair).
pub fn reader_keypair_from(seed: &[u8; 32]) -> (ReaderSecretKey, ReaderPublicKey) {
    ReaderKem::derive_keypair(seed)
}

/// Encodes a reader public key.
pub fn reader_public_bytes(key: &ReaderPublicKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&key.to_bytes());
    out
}

/// Decodes a reader public key.
pub fn reader_public_from(bytes: &[u8]) -> Option<ReaderPublicKey> {
    ReaderPublicKey::from_bytes(bytes).ok()
}

/// Constant-time equality of two byte strings (for secrets and MACs).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_object_key_opens_only_with_the_reader_key() {
        let (secret, public) = reader_keypair_from(&[7u8; 32]);
        let (other_secret, _) = reader_keypair_from(&[8u8; 32]);
        let (key, enc) = ObjectKey::seal_to(&public, b"info");
        let ct = key.encrypt(3, b"aad", b"hello");
        let opened = ObjectKey::open_with(&secret, &enc, b"info").unwrap();
        assert_eq!(opened.decrypt(3, b"aad", &ct).unwrap(), b"hello");
        assert!(opened.decrypt(4, b"aad", &ct).is_err());
        assert!(opened.decrypt(3, b"other", &ct).is_err());
        let wrong = ObjectKey::open_with(&other_secret, &enc, b"info").unwrap();
        assert!(wrong.decrypt(3, b"aad", &ct).is_err());
        let wrong_info = ObjectKey::open_with(&secret, &enc, b"other info").unwrap();
        assert!(wrong_info.decrypt(3, b"aad", &ct).is_err());
    }

    #[test]
    fn symmetric_round_trip_and_tamper() {
        let key = [1u8; 32];
        let mut sealed = seal_symmetric(&key, b"a", b"secret");
        assert_eq!(&open_symmetric(&key, b"a", &sealed).unwrap()[..], b"secret");
        assert!(open_symmetric(&key, b"b", &sealed).is_err());
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(open_symmetric(&key, b"a", &sealed).is_err());
        assert!(open_symmetric(&key, b"a", &sealed[..10]).is_err());
    }
}
