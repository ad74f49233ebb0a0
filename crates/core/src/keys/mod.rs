//! Layer 2, keys: the cryptographic primitives ([`crypto`]), the key hierarchy derived from a
//! vault's root secret ([`hierarchy`], whose items this module hands on as `keys::X`), key files
//! sealed under a passphrase ([`keyfile`]) and the custody of the root secret in shares
//! ([`custody`]). See `docs/keys.md`.
//!
//! May import: the top-level vocabulary (`error`, `id`, `cbor`, ...). Nothing above: a key knows no
//! object format, no ledger and no vault.

pub mod crypto;
pub mod custody;
pub mod hierarchy;
pub mod keyfile;

pub use hierarchy::*;
