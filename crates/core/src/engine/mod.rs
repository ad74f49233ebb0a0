//! Layer 5, engine: the operations on a vault. [`vault`] opens one (configuration, accepted
//! histories, keyring, checkpoints); [`writer`] adds versions, [`reader`] restores them,
//! [`verify`] checks a vault, [`sync`] copies one between sites, [`prune`] deletes versions by
//! signed ledger entries, [`approve`] signs approvals and [`gc`] removes what no version needs.
//!
//! May import every layer below: [`crate::history`], [`crate::format`], [`crate::keys`] and the
//! top-level vocabulary. Inside, from the bottom up: `vault`, `reader`, `approve`, `sync`, `gc`,
//! `prune`, `writer`, `verify`.

pub mod approve;
pub mod gc;
pub mod prune;
pub mod reader;
pub mod sync;
pub mod vault;
pub mod verify;
pub mod writer;
