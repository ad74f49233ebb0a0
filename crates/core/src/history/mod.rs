//! Layer 4, history: a dataset's ledger and the rules that accept it (`docs/format.md` §9). The
//! record format ([`ledger`]: entries, events, rights, signatures, appending) stands apart from the
//! acceptance rules that judge records ([`accept`] with [`rights`], [`deletion`], [`promotion`]
//! and [`wal_authority`]); which bytes overlapping WAL objects agree on ([`wal_merge`]); which streamed WAL retention collects ([`wal_retention`]); the versions a history holds ([`version`]), retention policies
//! ([`retention`]), approvals ([`approval`]), checkpoints ([`checkpoint`]) and what this host
//! remembers of heads ([`state`]) sit beside them. Judging needs no keys and no vault handle:
//! everything here works from a site, the vault configuration and signed bytes.
//!
//! May import: [`crate::format`], [`crate::keys`] and the top-level vocabulary. Nothing from
//! `engine`. Inside, from the bottom up: `retention`, `withdrawal`, `ledger`, `version`, `numbering`, `state`,
//! `approval`, `deletion`, `promotion`, `rights`, `wal_authority`, `wal_merge`, `wal_retention`, `checkpoint`,
//! `displaced`, `accept`; a module imports only those before it.

pub mod accept;
pub mod approval;
pub mod checkpoint;
pub mod deletion;
pub mod displaced;
pub mod ledger;
pub mod numbering;
pub mod promotion;
pub mod retention;
pub mod rights;
pub mod state;
pub mod version;
pub mod wal_authority;
pub mod wal_merge;
pub mod wal_retention;
pub mod withdrawal;

pub use accept::{
    load, load_history, load_history_full, Branch, Conflict, History, Noise, Rejected,
};
