//! Typed errors of the core library. Each variant names the object or input at fault and, where
//! there is one, the way out; the CLI renders them for people and maps them to exit codes.

use std::path::PathBuf;

use crate::site::SiteError;

/// Result of core operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the core library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A site operation failed.
    #[error(transparent)]
    Site(#[from] SiteError),

    /// A stored object's bytes are damaged, truncated, foreign, or do not match its name.
    #[error("object {path} is corrupt: {problem}")]
    Corrupt {
        /// Where the object lives on the site.
        path: String,
        /// What is wrong with it.
        problem: String,
    },

    /// An object that another object references is not on the site.
    #[error("object {path} is missing from site {site} (referenced by {referenced_by})")]
    Missing {
        /// Expected location.
        path: String,
        /// The site asked.
        site: String,
        /// Who needs it.
        referenced_by: String,
    },

    /// The passphrase does not open the key file.
    #[error("wrong passphrase for key file {}: it does not decrypt (or the file was altered)", path.display())]
    WrongPassphrase {
        /// The key file.
        path: PathBuf,
    },

    /// A key file cannot be used.
    #[error("key file {}: {problem}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why it cannot be used, and what to do.
        problem: String,
    },

    /// The keys at hand are not the keys of this vault or dataset.
    #[error("wrong key: {0}")]
    WrongKey(String),

    /// No vault exists at the site.
    #[error("no vault at site {site}: create one with `embassy init --site {site}`")]
    NoVault {
        /// The site asked.
        site: String,
    },

    /// A vault already exists where one was to be created.
    #[error("site {site} already holds a vault ({vault_id}); refusing to overwrite it")]
    VaultExists {
        /// The site asked.
        site: String,
        /// The vault found there.
        vault_id: String,
    },

    /// The configuration a site serves is not the vault's: its vault id does not belong to its
    /// root key, or it is not the vault this client, key or credential pins for that site.
    #[error(
        "the configuration at {site}: {problem}: a substituted configuration; do not trust this \
         site: compare the vault id with the fingerprint `embassy init` printed, and copy the \
         genuine `config` and `config.sig` from another site"
    )]
    SubstitutedConfig {
        /// The site that serves it.
        site: String,
        /// What does not match, naming both vault ids.
        problem: String,
    },

    /// A site now holds another vault than the one this client remembered there.
    #[error(
        "site {site} held vault {pinned}, it now holds vault {served}: a substituted \
         configuration or another vault at the same place; if the vault was legitimately \
         replaced, pass --forget-site-pin once to pin the new one"
    )]
    SitePinMismatch {
        /// The site location.
        site: String,
        /// The vault id remembered for it.
        pinned: String,
        /// The vault id it serves now.
        served: String,
    },

    /// The requested dataset or version is not in the vault.
    #[error("{0}")]
    NotFound(String),

    /// The history of a dataset is inconsistent: a sign of tampering or of a damaged site.
    #[error("dataset {dataset}: history does not verify: {problem}")]
    History {
        /// The dataset.
        dataset: String,
        /// What was found.
        problem: String,
    },

    /// A source could not be read completely; no version was recorded.
    #[error("source {what}: {problem}; no version was recorded")]
    Source {
        /// The file, stream or command.
        what: String,
        /// What failed.
        problem: String,
    },

    /// Local I/O failed (restore target, source file, key file).
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// An argument or input value is not acceptable.
    #[error("{0}")]
    Invalid(String),

    /// A deletion outside the retention policy lacks the approvals the vault requires.
    #[error(
        "dataset {dataset}: deleting version(s) {versions:?} is outside the retention policy and needs \
         {need} approvals each from distinct pinned approvers; {have} valid (missing {missing}): {detail}",
        missing = need.saturating_sub(*have)
    )]
    NotApproved {
        /// The dataset.
        dataset: String,
        /// The versions short of approvals.
        versions: Vec<u64>,
        /// Valid distinct approvals found for the worst of them.
        have: usize,
        /// Approvals required (0: the vault pins no approvers).
        need: usize,
        /// What was wrong with the approvals given, and the way out.
        detail: String,
    },
}

impl Error {
    /// An invalid-input error with this message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }

    /// A corrupt-object error.
    pub fn corrupt(path: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            problem: problem.into(),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the error shows damage or tampering rather than an operational failure.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. }
                | Error::Missing { .. }
                | Error::History { .. }
                | Error::SubstitutedConfig { .. }
                | Error::SitePinMismatch { .. }
        )
    }
}
