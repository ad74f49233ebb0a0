//! The agent's typed errors. Its work ([`crate::run`]) returns [`RunError`], which wraps the
//! libraries' errors as they are and knows their [`ErrorKind`] (core's error policy,
//! `embassy_core::error`). What the agent remembers or shows of a failure is a [`Problem`]: the
//! kind, decided while the typed error is at hand, and the message. That is how alarms, the
//! dashboard, `/status.json` and `/metrics` tell a site that was tampered with from one that is
//! down.

use embassy_core::site::SiteError;
use embassy_core::ErrorKind;
use embassy_postgres::PgError;

/// A failure of the agent's work: a backup, a catch-up, a verification, a stream.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The vault refused or failed the operation.
    #[error(transparent)]
    Core(#[from] embassy_core::Error),
    /// A site failed.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// The PostgreSQL side failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// The agent's configuration does not allow the work (a dataset that is not configured, a
    /// passphrase variable that is not set).
    #[error("{0}")]
    Config(String),
    /// The configured key file is not this vault's.
    #[error("{0}")]
    Keys(String),
    /// A catch-up left objects uncopied; the report's problems name them (they are text in
    /// `embassy_core::engine::sync`; damage at the source shows in that site's verification).
    #[error("the catch-up is not complete: {}", problems.join("; "))]
    CatchUp {
        /// One line per object not copied.
        problems: Vec<String>,
    },
    /// A keyless verification found damage at a site.
    #[error(
        "{} found (the site is damaged or was tampered with), first: {}",
        embassy_core::text::count(problems.len() as u64, "problem", "problems"),
        problems.first().map(String::as_str).unwrap_or("")
    )]
    Damaged {
        /// Everything wrong, one line each, naming the object.
        problems: Vec<String>,
    },
    /// A keyless verification could not read or check some objects this time (the site busy
    /// or down): no damage found, verified again on the next interval.
    #[error(
        "{} objects could not be read or checked (the site is unreachable or busy; no damage \
         found), first: {}",
        unreadable.len(),
        unreadable.first().map(String::as_str).unwrap_or("")
    )]
    Unreadable {
        /// What could not be read, one line each, naming the object.
        unreadable: Vec<String>,
    },
}

impl RunError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RunError::Core(e) => e.kind(),
            RunError::Site(e) => e.kind(),
            RunError::Postgres(e) => e.kind(),
            RunError::Config(_) => ErrorKind::Config,
            RunError::Keys(_) => ErrorKind::Keys,
            RunError::CatchUp { .. } => ErrorKind::Outage,
            RunError::Damaged { .. } => ErrorKind::Integrity,
            RunError::Unreadable { .. } => ErrorKind::Outage,
        }
    }

    /// What the agent records of it.
    pub fn problem(&self) -> Problem {
        Problem::new(self.kind(), self.to_string())
    }
}

/// A failure as the agent records and shows it: its kind and its message (core's).
pub use embassy_core::error::Problem;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_wrapped_errors() {
        let corrupt = RunError::from(embassy_core::Error::corrupt("packs/ab", "bad hash"));
        assert_eq!(corrupt.kind(), ErrorKind::Integrity);
        let down = RunError::from(SiteError::Retryable {
            site: "s3://b".into(),
            operation: "get",
            path: "config".into(),
            message: "connection refused".into(),
        });
        assert_eq!(down.kind(), ErrorKind::Outage);
        let lost = RunError::from(PgError::WalLost {
            file: "000000010000000000000001".into(),
            site: "/srv".into(),
            lsn: "0/1000000".into(),
            seq: 3,
        });
        assert_eq!(lost.kind(), ErrorKind::Integrity);
        let wrapped = RunError::from(PgError::Vault(embassy_core::Error::WrongKey("x".into())));
        assert_eq!(wrapped.kind(), ErrorKind::Keys);
        assert!(RunError::Damaged {
            problems: vec!["packs/ab: bytes do not hash to its name".into()]
        }
        .problem()
        .is_integrity());
        // The kind survives the state file.
        let p = down.problem();
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"outage\""), "{json}");
        assert_eq!(serde_json::from_str::<Problem>(&json).unwrap(), p);
    }
}

/// The agent's failure to start or to keep going.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The configuration is not usable.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// Something needed to start is missing or broken.
    #[error("{0}")]
    Start(String),
    /// Another agent holds the lock on the state folder.
    #[error("{0}")]
    Locked(String),
    /// The vault could not be opened or unlocked at the configured sites.
    #[error("{context}: {error}{}", hint.as_deref().map(|h| format!("\n  ({h})")).unwrap_or_default())]
    Open {
        /// What was being done.
        context: &'static str,
        /// Why it failed, typed.
        error: Box<RunError>,
        /// What to type, when there is a command that helps.
        hint: Option<String>,
    },
    /// Some runs of a `--once` cycle failed.
    #[error("{0}")]
    Failed(String),
}

impl AgentError {
    /// True when the agent refused to start because a site's vault is damaged or was tampered
    /// with (the CLI exits 3 for it, as for any integrity error).
    pub fn is_integrity(&self) -> bool {
        matches!(self, AgentError::Open { error, .. } if error.kind() == ErrorKind::Integrity)
    }

    /// True when another process holds a lock the agent needs (the CLI exits 11 for it).
    pub fn is_locked(&self) -> bool {
        matches!(self, AgentError::Locked(_))
    }
}
