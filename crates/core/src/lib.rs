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
