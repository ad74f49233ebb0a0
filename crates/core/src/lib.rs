//! Data Embassy core: the vault format, its cryptography and the engine that writes, reads and
//! verifies versions. No async and no network: storage is reached only through the [`site::Site`]
//! trait, implemented in the `embassy-sites` crate.
//!
//! The on-disk format is specified in `docs/format.md`; the module docs here point at it.

pub mod approval;
pub mod checkpoint;
pub mod chunker;
pub mod config;
pub mod crypto;
pub mod custody;
pub mod duration;
pub mod error;
pub mod fsutil;
pub mod gc;
pub mod history;
pub mod id;
pub mod index;
pub mod keyfile;
pub mod keys;
pub mod layout;
pub mod ledger;
pub mod manifest;
pub mod numbering;
pub mod pack;
pub mod progress;
pub mod prune;
pub mod reader;
pub mod retention;
pub mod rights;
pub mod site;
pub mod spool;
pub mod state;
pub mod sync;
pub mod text;
pub mod time;
pub mod tree;
pub mod vault;
pub mod verify;
pub mod wal_log;
pub mod writer;

mod cbor;
mod framing;

pub use error::{Error, ErrorKind, Result};

/// zstd level used for chunk compression. Chosen by measurement on the registry corpus
/// (see `bench/README.md`): level 3 compresses database pages well at a cost the pipeline absorbs.
pub const COMPRESSION_LEVEL: i32 = 3;
