//! A backup: one new version of a dataset from its source, whatever the source's kind (a file
//! tree, a byte stream read from a reader, a command's output, a PostgreSQL base backup). The
//! command line (`embassy backup`, `embassy pg base-backup`) and the agent's scheduled runs both
//! call [`backup`], so what a run records and what it reports about sites that missed writes is
//! decided here once.
//!
//! No version is recorded unless the whole source was read and every object is held by the
//! sites the vault requires: a failure (or a cancelled run, see
//! [`crate::open::CancellableSite`]) leaves only objects that the next run reuses.

use std::io::Read;
use std::path::PathBuf;

use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::progress::Progress;
use embassy_core::{Error, ErrorKind};
use embassy_postgres::base_backup::{BaseBackupInfo, BaseBackupOptions};
use embassy_postgres::PgError;
use embassy_sources::env::Scrub;
use embassy_sources::{files, stream};

/// Where a version's bytes come from.
pub enum Source<'a> {
    /// Files and folders (one folder becomes the version's root), less what the selection
    /// leaves out (excludes, caches, other file systems).
    Tree {
        /// What to store.
        paths: &'a [PathBuf],
        /// What to leave out.
        selection: &'a files::BackupSelection,
    },
    /// Everything a reader yields (standard input), stored as one stream.
    Reader {
        /// The bytes.
        reader: Box<dyn Read + 'a>,
        /// What it is, recorded as the version's source (`stdin`).
        description: &'a str,
    },
    /// A shell command's standard output; no version is kept unless it exits with status 0.
    Command {
        /// The command, run with `sh -c`.
        command: &'a str,
        /// Variables the command does not inherit (None: it inherits the whole environment).
        scrub: Option<&'a Scrub>,
    },
    /// A PostgreSQL base backup (our own `BASE_BACKUP`), relation files stored page by page.
    Postgres(&'a BaseBackupOptions),
}

impl Source<'_> {
    /// The kind of source, in words (for logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Tree { .. } => "file tree",
            Source::Reader { .. } => "stream",
            Source::Command { .. } => "command",
            Source::Postgres(_) => "PostgreSQL base backup",
        }
    }
}

/// A site that missed some of a run's writes: they are queued for catch-up.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lagging {
    /// The site's location.
    pub site: String,
    /// Why it missed them.
    pub why: String,
}

/// Why a backup failed: the vault's (or a source's) error, or PostgreSQL's, kept as it is so
/// that its kind survives (a refused connection is a configuration problem, a failed password
/// a key problem; the agent's alarms and the dashboard show which).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The vault, a site or a file tree, stream or command.
    #[error(transparent)]
    Vault(#[from] Error),
    /// PostgreSQL (a base backup).
    #[error(transparent)]
    Postgres(#[from] PgError),
}

impl BackupError {
    /// What kind of failure it is (`embassy_core::error`'s policy).
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackupError::Vault(e) => e.kind(),
            BackupError::Postgres(e) => e.kind(),
        }
    }
}

impl From<BackupError> for Error {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Vault(e) => e,
            BackupError::Postgres(e) => e.into(),
        }
    }
}

/// What a backup recorded.
#[derive(Debug)]
pub struct BackupReport {
    /// The version recorded.
    pub version: Version,
    /// What did not stop the run (files that vanished, special files skipped).
    pub warnings: Vec<String>,
    /// Sites that missed writes of this run (one entry per site, sorted by location).
    pub lagging: Vec<Lagging>,
    /// For a PostgreSQL base backup: what a restore needs (WAL positions, timeline).
    pub base_backup: Option<BaseBackupInfo>,
    /// For a file tree: the files read because they were new or changed.
    pub changed: Vec<files::Changed>,
}

/// Stores a new version of `dataset` from `source`. The vault is opened by the caller
/// ([`crate::open::open_vault`], with cancellation where the front end can be interrupted) and
/// the keys unlocked ([`crate::unlock::unlock`]).
pub fn backup(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    source: Source<'_>,
    progress: &dyn Progress,
) -> Result<BackupReport, BackupError> {
    let mut changed = Vec::new();
    let (version, warnings, base_backup) = match source {
        Source::Tree { paths, selection } => {
            if paths.is_empty() {
                return Err(Error::invalid("nothing to back up: no files or folders given").into());
            }
            let b = files::backup_with(vault, keyring, dataset, paths, selection, progress)?;
            changed = b.changed;
            (b.version, b.warnings, None)
        }
        Source::Reader {
            reader,
            description,
        } => (
            stream::backup_reader(vault, keyring, dataset, reader, description, progress)?,
            Vec::new(),
            None,
        ),
        Source::Command { command, scrub } => (
            stream::backup_command(vault, keyring, dataset, command, scrub, progress)?,
            Vec::new(),
            None,
        ),
        Source::Postgres(options) => {
            let b = embassy_postgres::base_backup::base_backup(
                vault, keyring, dataset, options, progress,
            )?;
            (b.version, Vec::new(), Some(b.info))
        }
    };
    Ok(BackupReport {
        lagging: lagging(vault),
        version,
        warnings,
        base_backup,
        changed,
    })
}

/// The sites that missed writes since the vault was opened, one entry per site.
pub fn lagging(vault: &Vault) -> Vec<Lagging> {
    let mut lagging: Vec<Lagging> = vault
        .site()
        .lagging()
        .into_iter()
        .map(|(site, why)| Lagging { site, why })
        .collect();
    lagging.sort_by(|a, b| a.site.cmp(&b.site));
    lagging.dedup_by(|a, b| a.site == b.site);
    lagging
}
