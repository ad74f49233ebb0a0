//! Named restore points (`pg_create_restore_point`): a consistency group marks the same moment
//! in each member cluster's WAL with one, and recovers each member to it by name
//! (`recovery_target_name`, see [`crate::restore::RecoveryTarget::RestorePoint`]).
//!
//! The connections are opened first ([`PointSession::open`]) and the points created after
//! ([`PointSession::create`]), so creating the points of several clusters costs one round trip
//! each, not a connection and an authentication each.

use crate::error::PgError;
use crate::lsn::Lsn;
use crate::replication::{ConnConfig, ReplicationConnection};

/// PostgreSQL's limit on a restore point's name (`MAXFNAMELEN - 1`).
pub const MAX_NAME_LEN: usize = 63;

/// A restore point created on a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestorePoint {
    /// Its name.
    pub name: String,
    /// The WAL position just after its record.
    pub lsn: Lsn,
    /// The server's timeline.
    pub timeline: u32,
}

/// An ordinary (non-replication) session on one server, ready to create a restore point.
pub struct PointSession {
    conn: ReplicationConnection,
}

impl PointSession {
    /// Connects to the server of `conninfo` (the dataset's connection string; its role needs
    /// `EXECUTE` on `pg_create_restore_point(text)`, which superusers have).
    pub fn open(conninfo: &str) -> Result<Self, PgError> {
        let cfg = ConnConfig::parse(conninfo)?;
        Ok(Self {
            conn: ReplicationConnection::connect_plain(&cfg)?,
        })
    }

    /// Creates the restore point `name` (at most [`MAX_NAME_LEN`] characters of `a-z`, `0-9`,
    /// `.`, `_` and `-`) and returns where it is.
    pub fn create(&mut self, name: &str) -> Result<RestorePoint, PgError> {
        let plain = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if name.is_empty() || name.len() > MAX_NAME_LEN || !plain {
            return Err(PgError::Invalid(format!(
                "{name:?} cannot name a restore point: use 1 to {MAX_NAME_LEN} characters a-z, \
                 0-9, '.', '_' or '-'"
            )));
        }
        let rows = self.conn.simple_query(&format!(
            "SELECT pg_create_restore_point('{name}'), \
             (SELECT timeline_id FROM pg_control_checkpoint())"
        ))?;
        let row = rows.first();
        let field = |i: usize| row.and_then(|r| r.get(i).cloned().flatten());
        let lsn = field(0)
            .ok_or_else(|| PgError::Protocol("pg_create_restore_point returned nothing".into()))?
            .parse::<Lsn>()?;
        let timeline = field(1)
            .and_then(|t| t.parse::<u32>().ok())
            .ok_or_else(|| PgError::Protocol("pg_control_checkpoint gave no timeline".into()))?;
        Ok(RestorePoint {
            name: name.to_string(),
            lsn,
            timeline,
        })
    }

    /// Closes the session.
    pub fn close(self) {
        self.conn.close();
    }
}
