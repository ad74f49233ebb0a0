//! Data Embassy for PostgreSQL: a physical replication client, continuous WAL streaming into
//! the vault as small sealed log objects, `wal-fetch` for PostgreSQL's `restore_command`, and
//! (helper modules) base backups, point-in-time restore and standby.
//!
//! Everything here is synchronous (std TCP / Unix sockets, no async runtime), like the rest of
//! the workspace.

pub mod base_backup;
pub mod error;
pub mod fetch;
pub mod fork;
pub mod lsn;
/// Giving restored files to the database's owner.
mod owner;
pub mod promote_check;
pub mod replay;
pub mod replication;
pub mod restore;
pub mod restore_point;
pub mod restored_conf;
pub mod scratch;
pub mod standby;
pub mod status;
pub mod stream;
pub mod tablespace;
pub mod target;
pub mod tls;
pub mod wal;
pub mod walend;
pub mod witnessed;

pub use error::PgError;
pub use lsn::Lsn;
