//! Typed errors of the core library. Each variant names the object or input at fault and, where
//! there is one, the way out; the CLI renders them for people and maps them to exit codes.
//!
//! # Error policy
//!
//! These rules hold for every library crate (core, sites, sources, postgres, the agent's work);
//! they follow rustic_core's "error handling rules".
//!
//! 1. **Typed, with context.** A library returns a `thiserror` enum, never a `String`, so
//!    that the callers above it can still decide what happened. A message names the object or
//!    input at fault (site, path, dataset, key file) and what is wrong with it. Errors are
//!    wrapped (`#[from]`, `#[source]`) as they travel up, never flattened with `to_string()`
//!    until a front end renders them.
//! 2. **Every error has a kind** ([`ErrorKind`], from [`Error::kind`], `SiteError::kind`,
//!    `PgError::kind`, the agent's `RunError::kind`). The kinds are what the product exists to
//!    tell apart:
//!    - [`ErrorKind::Integrity`]: the stored data is damaged or was tampered with (a corrupt or
//!      missing object, a history that does not verify, a substituted configuration, a site
//!      hiding WAL its ledger anchors). Retrying does not help; another site or an older
//!      version does.
//!    - [`ErrorKind::Outage`]: a site could not be reached or used (timeout, connection
//!      refused, permissions, full disk). Nothing is known to be wrong with the data; retrying
//!      later may succeed (`SiteError::Retryable` is the transient subset).
//!    - [`ErrorKind::Source`]: what is being backed up could not be read (a file tree, a
//!      command, a PostgreSQL server): no version was recorded.
//!    - [`ErrorKind::Config`]: bad input or configuration: an argument, `embassy.toml`, a
//!      dataset or version that is not there, a policy that refuses the request.
//!    - [`ErrorKind::Keys`]: the keys at hand do not open or do not fit: a wrong passphrase, a
//!      damaged key file, another vault's key, a credential without the right.
//! 3. **How a kind travels.** To the CLI: `is_integrity()` (kind Integrity) exits with status
//!    3, every other error with 1 (`config check` problems with 2; `embassy agent` refusing to
//!    start on a damaged or substituted vault with 3 too); `--json` errors carry `"integrity"`,
//!    `"kind"` and `"hint"`; a few errors have their own code (`NoVault` 10, `Locked` 11,
//!    `WrongPassphrase` 12: the CLI's `exit.rs`). (Reports that find problems rather than fail —
//!    `verify`, `status` — exit 3 on their own; `status --config` exits 4 for a red dataset, 3
//!    when damage is among the reasons, and its JSON says the kind.) To the agent: its work functions (`embassy_agent::run`) return `RunError`; the kind
//!    is kept beside the message wherever the agent records a problem
//!    (`embassy_agent::error::Problem`), so alarms (`EMBASSY_ALARM_KIND`, `"problem_kind"` in
//!    the webhook), the dashboard, `/status.json` (`"problem_kind"`), `/metrics`
//!    (`embassy_integrity_problems`, `embassy_site_problem`, `embassy_dataset_problem`) and the
//!    log (`[integrity]`, `[outage]`, ... before a failure's message) say "damaged or tampered
//!    with" for Integrity and "unreachable" for Outage. A new variant gets its kind here, in one
//!    `match` without a catch-all, so the compiler asks for it.
//! 4. **No panics** on input or I/O: no `unwrap`/`expect` reachable by either.
//! 5. **Hints naming CLI syntax belong to the front ends.** A library message says the way out
//!    in words ("repair it from another site"); the command to type is the front end's to add,
//!    since the agent (embassy.toml) and the CLI spell it differently. New hints go to the
//!    front end: the CLI's live in `crates/cli/src/hints.rs`, chosen by variant (NoVault,
//!    SiteWithoutVault, NoKeyFile, UnknownDataset, NoSuchVersion, Unwitnessed, NotApproved,
//!    SubstitutedConfig, SitePinMismatch), the agent's in `crates/agent/src/hints.rs` (in terms
//!    of embassy.toml). A refusal whose way out needs data is an [`Error::Refused`] carrying a
//!    typed [`WayOut`] (a credential to grant, approvals of a lower minimum age, a rogue signer
//!    to revoke, a PostgreSQL base backup, stream or slot), which each front end spells. A
//!    note in a report rather than an error (a restore's unwitnessed note) gets its hint where
//!    the front end prints the note. Library messages that still name CLI syntax: ops
//!    `open.rs` (`--vault-id`, the CLI's flag; the agent has no such setting) and `unlock.rs`
//!    (`--key-file`, where the agent always names a file); both are reached only from the
//!    CLI's flags so far. The format's `specification` text in a vault's configuration names
//!    `embassy verify`: it is documentation stored in the vault, not a message. Without a
//!    hint yet, in words only: a local site's object that is not a regular file or lies behind
//!    a link (a `SiteError::Permanent`, which has other causes too) and gc's skipped datasets
//!    say "repair this site from another one".

use std::path::PathBuf;

use crate::site::SiteError;

/// Result of core operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of [`Error::SiteWithoutVault`].
fn site_without_vault(sites: &[String], holding: &[String]) -> String {
    let others = match holding {
        [] => "no site that answered holds it".to_string(),
        [one] => format!("{one} holds it"),
        many => format!("{} hold it", many.join(", ")),
    };
    format!(
        "site {} holds no vault, while {others}: a site without the vault is not created or \
         filled unless asked (is its disk mounted? is its path right?); if it is a new site, \
         seed it from a site that holds the vault",
        sites.join(", ")
    )
}

/// The message of [`Error::UnknownDataset`].
fn unknown_dataset(dataset: &str, known: &[String]) -> String {
    if known.is_empty() {
        return format!("no dataset {dataset} in this vault: it holds no dataset yet");
    }
    let nearest = nearest(dataset, known)
        .map(|n| format!("did you mean {n}? "))
        .unwrap_or_default();
    format!(
        "no dataset {dataset} in this vault: {nearest}the datasets are {}",
        known.join(", ")
    )
}

/// The name in `known` nearest to `name` by edit distance, when it is near enough to be a typo
/// (at most a third of the name's length, at least 1; a name that only differs in case always).
pub fn nearest<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    known
        .iter()
        .map(|k| {
            let d = if k.eq_ignore_ascii_case(name) {
                0
            } else {
                edit_distance(name, k)
            };
            (d, k)
        })
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, k)| (*d, k.as_str()))
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance between `a` and `b`, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The way out of an [`Error::Refused`], in typed terms each front end spells in its own
/// syntax (the CLI's `hints.rs`, the agent's `hints.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WayOut {
    /// The keys at hand lack a right on `dataset` (empty: the whole vault): the root grants it
    /// with a new credential.
    Grant {
        /// The dataset.
        dataset: String,
        /// What the credential must allow.
        grant: Grant,
    },
    /// Approvers must approve lowering `dataset`'s minimum age before it is lowered.
    ApproveMinAge {
        /// The dataset.
        dataset: String,
    },
    /// The vault's promotion policy needs approvals of promoting `dataset`'s standby on `host`
    /// before `promote` may run there.
    ApprovePromotion {
        /// The dataset.
        dataset: String,
        /// The host the standby runs on (as the approval must name it).
        host: String,
        /// The public key (hex) of the credential that promotes (as the approval must name it).
        promoter: String,
    },
    /// A fork in `dataset`'s ledger: the root revokes the rogue signer, which decides it.
    RevokeSigner {
        /// The dataset.
        dataset: String,
    },
    /// PostgreSQL dataset `dataset` (empty: not known here) needs a new base backup.
    PgBaseBackup {
        /// The dataset.
        dataset: String,
    },
    /// PostgreSQL dataset `dataset` needs its WAL stream running (further than it has come).
    PgStream {
        /// The dataset.
        dataset: String,
    },
    /// Replication slot `slot` is unusable: drop it and let the streamer create it.
    PgCreateSlot {
        /// The slot's name.
        slot: String,
    },
    /// These sites lag: writes they missed wait in this machine's catch-up queues; catching
    /// them up from the other sites brings them level.
    CatchUpSites {
        /// The lagging sites' locations.
        sites: Vec<String>,
    },
    /// A PostgreSQL restore of a base backup with tablespaces: the operator chooses a folder
    /// for each of the backup's tablespace locations (never the backup alone).
    PgTablespaceMap {
        /// The backup's tablespace locations, none chosen yet.
        locations: Vec<String>,
    },
    /// A standby of `dataset` on `data_dir` has not replayed the WAL the vault's ledger
    /// anchors: wait, catch up the site that withholds it, or promote explicitly accepting the
    /// loss.
    PgPromoteBehind {
        /// The dataset.
        dataset: String,
        /// The standby's data directory.
        data_dir: String,
    },
    /// `dataset`'s newest timeline `timeline` leaves out acknowledged WAL of its parent
    /// `parent` and no takeover decided it: the operator names the timeline to restore, the
    /// parent (every record it holds, none of the fork's) or the fork (knowingly).
    PgChooseTimeline {
        /// The dataset.
        dataset: String,
        /// The timeline the fork left.
        parent: u32,
        /// The timeline that leaves out the parent's WAL.
        timeline: u32,
    },
    /// A consistency group's point names fewer members than the group has had: ask for an
    /// earlier point's time, or accept restoring only the members it names.
    AcceptSmallerGroup {
        /// The group.
        group: String,
    },
}

/// What a credential must allow, for [`WayOut::Grant`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// Read the dataset (a reader credential).
    Read,
    /// Add versions and stream WAL (a sealing credential).
    Seal,
    /// Delete versions (a sealing credential with the delete right, or the root key).
    Delete,
    /// Collect garbage: sign condemnation records with the root key.
    Collect,
}

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

    /// The key file to open does not exist. (Its own variant so that each front end can say
    /// where the path came from: `--key-file` for the CLI, `[keys] file` for the agent.)
    #[error(
        "key file {} not found: give the vault's key file, or recover the root key from \
         custodian shares",
        path.display()
    )]
    NoKeyFile {
        /// The path that was tried.
        path: PathBuf,
    },

    /// The keys at hand are not the keys of this vault or dataset.
    #[error("wrong key: {0}")]
    WrongKey(String),

    /// No vault exists at the site.
    #[error("no vault at site {site}: create one there first, or check the site's location")]
    NoVault {
        /// The site asked.
        site: String,
    },

    /// Some sites of a vault hold no vault (a missing or empty folder, an empty bucket or
    /// prefix) while others hold it. Such a site is never created or filled unless asked: it is
    /// more often a disk that is not mounted or a mistyped path than a new site.
    #[error("{}", site_without_vault(sites, holding))]
    SiteWithoutVault {
        /// The sites that hold no vault.
        sites: Vec<String>,
        /// The sites that hold it (to seed from).
        holding: Vec<String>,
    },

    /// A dataset named by the user is not in the vault (no ledger of that name): a typo, most
    /// often. The message lists the datasets that exist and the nearest name.
    #[error("{}", unknown_dataset(dataset, known))]
    UnknownDataset {
        /// The name asked for.
        dataset: String,
        /// The datasets the vault holds.
        known: Vec<String>,
    },

    /// The dataset exists but holds no version matching what was asked (a number never given or
    /// deleted, an id prefix that matches none, no version at all).
    #[error("{problem}")]
    NoSuchVersion {
        /// The dataset.
        dataset: String,
        /// Which version, and why it is not there.
        problem: String,
    },

    /// Under the vault's witness quorum, the version asked for is not yet covered by a
    /// checkpoint enough witnesses cosigned.
    #[error("{problem}")]
    Unwitnessed {
        /// The dataset.
        dataset: String,
        /// Which version, and what covers it.
        problem: String,
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
         site: compare the vault id with the fingerprint printed when the vault was created, and \
         copy the genuine `config` and `config.sig` from another site"
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
         replaced, forget this site's pin once to pin the new one"
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

    /// A refusal whose way out each front end spells in its own syntax (rule 5 of the error
    /// policy): `problem` says what is wrong and the way out in words, `way_out` says it typed,
    /// so that the CLI can name the command and the agent the embassy.toml setting.
    #[error("{problem}")]
    Refused {
        /// What kind of failure it is.
        kind: ErrorKind,
        /// What is wrong, and the way out in words.
        problem: String,
        /// The way out, typed.
        way_out: WayOut,
    },

    /// A lock another process on this host holds was not released in time (a dataset's ledger
    /// lock): nothing is wrong with the vault; waiting, or stopping the holder, is the way out.
    #[error("{what}: held by {holder} for more than {waited_secs:.0} s: {way_out}")]
    Locked {
        /// What is locked and where (the lock file).
        what: String,
        /// Who holds it (a pid, when known).
        holder: String,
        /// How long this process waited.
        waited_secs: f64,
        /// What to do.
        way_out: String,
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

    /// What kind of failure this is (see the error policy at the top of this module).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Site(e) => e.kind(),
            Error::Corrupt { .. }
            | Error::Missing { .. }
            | Error::History { .. }
            | Error::SubstitutedConfig { .. }
            | Error::SitePinMismatch { .. } => ErrorKind::Integrity,
            Error::WrongPassphrase { .. }
            | Error::KeyFile { .. }
            | Error::NoKeyFile { .. }
            | Error::WrongKey(_) => ErrorKind::Keys,
            Error::Source { .. } => ErrorKind::Source,
            // Local I/O: a restore target, a source file, a key file, the state folder.
            Error::Io { .. } => ErrorKind::Outage,
            Error::NoVault { .. }
            | Error::SiteWithoutVault { .. }
            | Error::UnknownDataset { .. }
            | Error::NoSuchVersion { .. }
            | Error::Unwitnessed { .. }
            | Error::VaultExists { .. }
            | Error::NotFound(_)
            | Error::Invalid(_)
            | Error::NotApproved { .. }
            | Error::Locked { .. } => ErrorKind::Config,
            Error::Refused { kind, .. } => *kind,
        }
    }

    /// True when the error shows damage or tampering rather than an operational failure.
    pub fn is_integrity(&self) -> bool {
        self.kind() == ErrorKind::Integrity
    }
}

impl SiteError {
    /// What kind of failure this is: a site that cannot be reached or used is an outage. (A
    /// missing object that something needs is judged by the caller, which knows who needs it,
    /// and reported as [`Error::Missing`]: integrity.)
    pub fn kind(&self) -> ErrorKind {
        match self {
            SiteError::NotFound { .. }
            | SiteError::Retryable { .. }
            | SiteError::Permanent { .. } => ErrorKind::Outage,
        }
    }
}

/// The kinds of failure the front ends tell apart (see the error policy above).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The stored data is damaged or was tampered with.
    Integrity,
    /// A site could not be reached or used; the data is not known to be wrong.
    Outage,
    /// The source being backed up could not be read.
    Source,
    /// Bad input or configuration, or a request the vault's policy refuses.
    Config,
    /// The keys do not open or do not fit.
    Keys,
}

impl ErrorKind {
    /// Every kind, for metrics that list each one.
    pub const ALL: [ErrorKind; 5] = [
        ErrorKind::Integrity,
        ErrorKind::Outage,
        ErrorKind::Source,
        ErrorKind::Config,
        ErrorKind::Keys,
    ];

    /// "integrity", "outage", "source", "config", "keys": the name in JSON, metrics labels and
    /// alarm variables.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Integrity => "integrity",
            ErrorKind::Outage => "outage",
            ErrorKind::Source => "source",
            ErrorKind::Config => "config",
            ErrorKind::Keys => "keys",
        }
    }

    /// What this kind means for the data, for people: the words alarms and the dashboard use.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorKind::Integrity => "damaged or tampered with",
            ErrorKind::Outage => "unreachable",
            ErrorKind::Source => "source unreadable",
            ErrorKind::Config => "misconfigured",
            ErrorKind::Keys => "keys do not fit",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure as status views, alarms and the agent's state record and show it: its kind and its
/// message. What a front end keeps of an error once the error itself is gone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Problem {
    /// Integrity, outage, source, config or keys.
    pub kind: ErrorKind,
    /// For people.
    pub message: String,
}

impl Problem {
    /// A problem of this kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Problem {
        Problem {
            kind,
            message: message.into(),
        }
    }

    /// True for damage or tampering.
    pub fn is_integrity(&self) -> bool {
        self.kind == ErrorKind::Integrity
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Error> for Problem {
    fn from(e: Error) -> Problem {
        Problem::new(e.kind(), e.to_string())
    }
}

impl From<SiteError> for Problem {
    fn from(e: SiteError) -> Problem {
        Problem::new(e.kind(), e.to_string())
    }
}
