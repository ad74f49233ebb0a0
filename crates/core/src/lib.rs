//! Data Embassy core: the vault format, its cryptography and the engine that writes, reads and
//! verifies versions. No async and no network: storage is reached only through the [`site::Site`]
//! trait, implemented in the `embassy-sites` crate.
//!
//! The on-disk format is specified in `docs/format.md`; the module docs here point at it.
//!
//! The modules stand in layers, and a layer imports only the layers below it
//! (`docs/ARCHITECTURE.md`, "core"):
//!
//! 1. the vocabulary at the top level: [`error`], [`site`], [`id`], [`time`], [`duration`],
//!    [`text`], [`fsutil`], [`progress`];
//! 2. [`keys`]: cryptographic primitives and the key hierarchy;
//! 3. [`format`]: the bytes of every stored object and where it lives;
//! 4. [`history`]: the ledger's records and the rules that accept a dataset's history;
//! 5. [`engine`]: the operations on a vault (open, write, read, verify, copy, prune, collect).

pub mod duration;
pub mod error;
pub mod fsutil;
pub mod id;
pub mod progress;
pub mod site;
pub mod text;
pub mod time;

mod cbor;

pub mod engine;
pub mod format;
pub mod history;
pub mod keys;

pub use error::{Error, ErrorKind, Result};
pub use format::pack::COMPRESSION_LEVEL;

// Flat paths kept while the workspace moves to the layered ones
// (`scripts/rewrite-core-paths` rewrites a crate to the layered paths; then these go).
pub use engine::{gc, prune, reader, sync, vault, verify, writer};
pub use format::{chunker, config, index, layout, manifest, pack, spool, tree};
pub use history::{checkpoint, numbering, retention, rights, state};
pub use keys::{crypto, custody, keyfile};
/// Flat path of [`history::ledger`], with the history loaders it used to hand on.
pub mod ledger {
    pub use crate::history::ledger::*;
    pub use crate::history::{load_history, load_history_full, History, Rejected};
}
/// Flat path of [`history::approval`], with the approving operations now in [`engine::approve`].
pub mod approval {
    pub use crate::engine::approve::{approve, approve_min_age};
    pub use crate::history::approval::*;
}
/// Flat path of [`format::wal_log`], with the WAL signer rules now in [`history::wal_authority`].
pub mod wal_log {
    pub use crate::format::wal_log::*;
    pub use crate::history::wal_authority::{Anchor, WalAuthority};
}
