//! Typed errors of the PostgreSQL side, each naming the problem and what to change.

use thiserror::Error;

/// Errors of the replication client, the WAL streamer and `wal-fetch`.
#[derive(Debug, Error)]
pub enum PgError {
    /// The connection string could not be understood.
    #[error("connection string: {0}")]
    Conninfo(String),
    /// Nothing answered at the address (server down, wrong host or port).
    #[error(
        "cannot connect to PostgreSQL at {addr}: {message}: is the server running there? check \
         host= and port= in the connection string (and listen_addresses/port in postgresql.conf)"
    )]
    Connect {
        /// host:port or socket path.
        addr: String,
        /// The operating system's reason.
        message: String,
    },
    /// TLS could not be set up or the server's certificate was refused.
    #[error("TLS to PostgreSQL at {addr}: {message}")]
    Tls {
        /// host:port.
        addr: String,
        /// What failed and what to change.
        message: String,
    },
    /// The connection (or the way the server asks for the password) would expose the password
    /// or the WAL to the network, and the operator did not opt in.
    #[error("refusing an unprotected connection to PostgreSQL at {addr}: {message}")]
    Insecure {
        /// host:port.
        addr: String,
        /// Why and what to change.
        message: String,
    },
    /// The server refused the user's password (or the user does not exist).
    #[error(
        "PostgreSQL refused the password of user \"{user}\": {message}: check password= in the \
         connection string (or PGPASSWORD) and that the role exists with LOGIN"
    )]
    Auth {
        /// The role.
        user: String,
        /// The server's message.
        message: String,
    },
    /// pg_hba.conf has no line letting this client open a replication connection.
    #[error(
        "PostgreSQL refused the replication connection: {message}: add a line such as \
         `host replication {user} <client address>/32 scram-sha-256` to pg_hba.conf and reload"
    )]
    NotAllowedByHba {
        /// The role.
        user: String,
        /// The server's message.
        message: String,
    },
    /// The role lacks the REPLICATION attribute.
    #[error(
        "role \"{user}\" may not stream WAL: {message}: run `ALTER ROLE \"{user}\" REPLICATION;` \
         as a superuser (or connect as a role that has REPLICATION)"
    )]
    NoReplicationPrivilege {
        /// The role.
        user: String,
        /// The server's message.
        message: String,
    },
    /// `wal_level` is `minimal`: physical replication is impossible.
    #[error(
        "PostgreSQL's wal_level is {level}: set wal_level = replica (or logical) in \
         postgresql.conf and restart the server (and set max_wal_senders to at least 2)"
    )]
    WalLevelTooLow {
        /// The current value.
        level: String,
    },
    /// No WAL sender slot is free (`max_wal_senders` is 0 or all are in use).
    #[error(
        "PostgreSQL accepts no more replication connections: {message}: raise max_wal_senders \
         in postgresql.conf (it must be > 0, at least one more than the streaming clients) and \
         restart the server"
    )]
    NoWalSenders {
        /// The server's message.
        message: String,
    },
    /// The replication slot does not exist and creating it was not allowed.
    #[error(
        "replication slot \"{slot}\" does not exist on the server: create it with \
         `SELECT pg_create_physical_replication_slot('{slot}', true);` or pass --create-slot"
    )]
    MissingSlot {
        /// The slot name.
        slot: String,
    },
    /// The slot exists but is a logical slot.
    #[error("replication slot \"{slot}\" is a {kind} slot; WAL streaming needs a physical slot: use another slot name")]
    WrongSlotKind {
        /// The slot name.
        slot: String,
        /// Its type.
        kind: String,
    },
    /// The WAL the vault needs next is gone from the server (the slot was dropped or recreated).
    #[error(
        "PostgreSQL no longer has the WAL at {lsn} the vault needs next: {message}: the slot was \
         dropped or recreated, so WAL between the vault's last durable position and now is lost; \
         take a new base backup to start a new unbroken range"
    )]
    WalGone {
        /// The position asked for.
        lsn: String,
        /// The server's message.
        message: String,
    },
    /// The server is another cluster than the one whose WAL the dataset holds.
    #[error(
        "dataset {dataset} holds WAL of PostgreSQL cluster {stored}, but this server is cluster \
         {server}: point --conninfo at the dataset's own server, or use a new dataset name for \
         this cluster"
    )]
    OtherCluster {
        /// The dataset.
        dataset: String,
        /// System identifier in the vault.
        stored: u64,
        /// System identifier of the server.
        server: u64,
    },
    /// Any other error reported by the server.
    #[error("PostgreSQL: {message} (SQLSTATE {code}){}", detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Server {
        /// SQLSTATE.
        code: String,
        /// Message.
        message: String,
        /// Detail or hint, if any.
        detail: Option<String>,
    },
    /// The server sent something the replication protocol does not allow here.
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// The connection broke.
    #[error("connection to PostgreSQL lost: {0}")]
    Io(#[from] std::io::Error),
    /// The vault refused or failed an operation.
    #[error(transparent)]
    Vault(#[from] embassy_core::Error),
    /// A site failed.
    #[error(transparent)]
    Site(#[from] embassy_core::site::SiteError),
    /// A WAL file name or LSN could not be read.
    #[error("{0}")]
    Invalid(String),
    /// A base backup could not be taken or read (a damaged archive, missing backup_label).
    #[error("base backup: {0}")]
    BaseBackup(String),
    /// A site does not serve WAL that an accepted ledger entry says the vault stored.
    #[error(
        "WAL file {file} is not served whole by site {site}, though ledger entry {seq} anchors \
         WAL at {lsn} there: the site lost or hides it; restore from another site (--site) or \
         repair this one from another site"
    )]
    WalLost {
        /// The WAL file PostgreSQL asked for.
        file: String,
        /// The site's location.
        site: String,
        /// The first anchored position not served.
        lsn: String,
        /// The anchoring ledger entry.
        seq: u64,
    },
    /// WAL that an accepted ledger entry anchored lies below the dataset's WAL retention cut-off
    /// (`embassy_core::history::wal_retention`): garbage collection removed it on purpose, since
    /// no kept base backup and no point-in-time window needs it. Not damage.
    #[error(
        "WAL file {file} (at {lsn}) was collected by WAL retention: it lies below the cut-off \
         {cutoff}, and no kept base backup replays from there; restore a base backup the vault \
         still holds, to a time after its start"
    )]
    WalCollected {
        /// The WAL file PostgreSQL asked for.
        file: String,
        /// The first position asked for.
        lsn: String,
        /// The cut-off and what set it.
        cutoff: String,
    },
    /// A restore, standby or promotion could not be done (no usable base backup, a target
    /// folder in the way, PostgreSQL's tools failing).
    #[error("{0}")]
    Restore(String),
}

/// Result with [`PgError`].
pub type Result<T> = std::result::Result<T, PgError>;

impl PgError {
    /// What kind of failure this is (core's error policy, `embassy_core::error`): the vault's
    /// and the sites' errors keep their own kind; a site hiding anchored WAL is integrity; the
    /// server being unreachable or failing is the source's; what the operator must change on the
    /// server or in the connection string is configuration.
    pub fn kind(&self) -> embassy_core::ErrorKind {
        use embassy_core::ErrorKind;
        match self {
            PgError::Vault(e) => e.kind(),
            PgError::Site(e) => e.kind(),
            PgError::WalLost { .. } => ErrorKind::Integrity,
            PgError::WalCollected { .. } => ErrorKind::Config,
            PgError::Connect { .. }
            | PgError::Tls { .. }
            | PgError::Server { .. }
            | PgError::Protocol(_)
            | PgError::Io(_)
            | PgError::WalGone { .. }
            | PgError::BaseBackup(_) => ErrorKind::Source,
            PgError::Auth { .. } => ErrorKind::Keys,
            PgError::Conninfo(_)
            | PgError::Insecure { .. }
            | PgError::NotAllowedByHba { .. }
            | PgError::NoReplicationPrivilege { .. }
            | PgError::WalLevelTooLow { .. }
            | PgError::NoWalSenders { .. }
            | PgError::MissingSlot { .. }
            | PgError::WrongSlotKind { .. }
            | PgError::OtherCluster { .. }
            | PgError::Invalid(_)
            | PgError::Restore(_) => ErrorKind::Config,
        }
    }
}

impl From<PgError> for embassy_core::error::Problem {
    fn from(e: PgError) -> Self {
        embassy_core::error::Problem::new(e.kind(), e.to_string())
    }
}

/// The one conversion of PostgreSQL errors into the vault's error type, for front ends that
/// report [`embassy_core::Error`]s: vault and site errors stay themselves (so an integrity
/// problem stays one, and a site outage stays an outage), everything else is a failure of the
/// PostgreSQL source with its full message.
impl From<PgError> for embassy_core::Error {
    fn from(e: PgError) -> Self {
        // A site hiding anchored WAL is an integrity problem, and stays one.
        if let PgError::WalLost { file, .. } = &e {
            return embassy_core::Error::Corrupt {
                path: file.clone(),
                problem: e.to_string(),
            };
        }
        // WAL retention collected it: a request outside what the vault keeps, not damage.
        if let PgError::WalCollected { .. } = &e {
            return embassy_core::Error::Invalid(e.to_string());
        }
        // A restore that cannot be done records no version either: said as itself.
        if let PgError::Restore(problem) = &e {
            return embassy_core::Error::Invalid(problem.clone());
        }
        if let PgError::WalGone { .. } = &e {
            return embassy_core::Error::Refused {
                kind: e.kind(),
                problem: e.to_string(),
                way_out: embassy_core::error::WayOut::PgBaseBackup {
                    dataset: String::new(),
                },
            };
        }
        match e {
            PgError::Vault(e) => e,
            PgError::Site(e) => embassy_core::Error::Site(e),
            other => embassy_core::Error::Source {
                what: "PostgreSQL".into(),
                problem: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embassy_core::site::SiteError;

    #[test]
    fn pg_errors_become_vault_errors_keeping_their_kind() {
        let site = || SiteError::NotFound {
            site: "s3://vault".into(),
            path: "packs/ab".into(),
        };
        let e: embassy_core::Error = PgError::Site(site()).into();
        assert!(
            matches!(e, embassy_core::Error::Site(SiteError::NotFound { .. })),
            "{e:?}"
        );
        let e: embassy_core::Error = PgError::Vault(embassy_core::Error::Site(site())).into();
        assert!(
            matches!(e, embassy_core::Error::Site(SiteError::NotFound { .. })),
            "{e:?}"
        );
        let e: embassy_core::Error = PgError::Invalid("'12' is not an LSN".into()).into();
        match e {
            embassy_core::Error::Source { what, problem } => {
                assert_eq!(what, "PostgreSQL");
                assert!(problem.contains("'12' is not an LSN"), "{problem}");
            }
            other => panic!("{other:?}"),
        }
    }
}
