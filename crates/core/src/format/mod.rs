//! Layer 3, format: the bytes of every stored object and where it lives (`docs/format.md`): the
//! vault configuration, paths and size limits, chunking, packs, indexes, manifests, trees, WAL
//! log objects, the two framings around CBOR, and reading one object checked against its name.
//! Pure encoding and decoding: no judgement of a history, no vault handle.
//!
//! May import: [`crate::keys`] and the top-level vocabulary. Nothing from `history` or `engine`.

pub mod chunker;
pub mod config;
pub(crate) mod framing;
pub mod index;
pub mod layout;
pub mod manifest;
pub mod object;
pub mod pack;
pub mod spool;
pub mod tree;
pub mod wal_log;
