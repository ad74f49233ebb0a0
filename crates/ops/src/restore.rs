//! Which restore a request is: a PostgreSQL data directory recovering to a target, or a
//! version restored as a file tree or a stream. The vault is opened and its keys unlocked once
//! for the whole restore, whichever it turns out to be.

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, NewerUnwitnessed, Vault, Version};
use embassy_core::format::manifest::VersionKind;
use embassy_core::Result;
use embassy_postgres::restore::RecoveryTarget;

/// What the operator asked to restore.
#[derive(Debug, Clone)]
pub struct RestoreRequest<'a> {
    /// The dataset.
    pub dataset: &'a str,
    /// The version: a number, `latest`, or an id prefix (None: the newest).
    pub selector: Option<&'a str>,
    /// A PostgreSQL recovery target given explicitly (`--time`, `--lsn`, `--latest`).
    pub recovery_target: Option<RecoveryTarget>,
    /// Only a path inside the version is asked for (never a PostgreSQL recovery).
    pub subpath: bool,
    /// A version no witnessed checkpoint covers yet is acceptable.
    pub allow_unwitnessed: bool,
}

/// The restore to run, with the keys unlocked once.
pub enum RestorePlan {
    /// A PostgreSQL dataset: a new data directory recovering to `target`.
    Postgres {
        /// Where recovery stops.
        target: RecoveryTarget,
        /// Said when newer versions than the one restored are not witnessed yet.
        note: Option<NewerUnwitnessed>,
    },
    /// A file tree, to restore into a folder.
    Tree {
        /// The version.
        version: Box<Version>,
        /// Its reader.
        reader: Box<VersionReader>,
        /// Said when newer versions than the one restored are not witnessed yet.
        note: Option<NewerUnwitnessed>,
    },
    /// A stream, to restore to a file or standard output.
    Stream {
        /// The version.
        version: Box<Version>,
        /// Its reader.
        reader: Box<VersionReader>,
        /// Said when newer versions than the one restored are not witnessed yet.
        note: Option<NewerUnwitnessed>,
    },
}

/// True if this version is a PostgreSQL base backup.
pub fn is_base_backup(reader: &VersionReader) -> bool {
    reader
        .manifest
        .properties
        .get(embassy_postgres::base_backup::PROP_BASE_BACKUP)
        .is_some_and(|v| v == "1")
}

/// Decides the restore: an explicit recovery target is a PostgreSQL restore; otherwise the
/// version is found (and proved) first, then `unlock` is called once to read it; the newest
/// version of a PostgreSQL dataset, asked for without a path, recovers to the newest WAL. The
/// keys come back with the plan, for the restore to use.
pub fn plan(
    vault: &Vault,
    request: &RestoreRequest,
    unlock: impl FnOnce() -> Result<Keyring>,
) -> Result<(Keyring, RestorePlan)> {
    if let Some(target) = request.recovery_target.clone() {
        let note = None;
        return Ok((unlock()?, RestorePlan::Postgres { target, note }));
    }
    let version =
        vault.find_trusted_version(request.dataset, request.selector, request.allow_unwitnessed)?;
    let note = if !request.allow_unwitnessed && matches!(request.selector, None | Some("latest")) {
        vault.newer_unwitnessed(&version)?
    } else {
        None
    };
    let keyring = unlock()?;
    let reader = VersionReader::open_with(vault.site().clone(), &keyring, &version)?;
    if request.selector.is_none() && !request.subpath && is_base_backup(&reader) {
        let target = RecoveryTarget::Latest;
        return Ok((keyring, RestorePlan::Postgres { target, note }));
    }
    let (version, reader) = (Box::new(version), Box::new(reader));
    let plan = match version.kind {
        VersionKind::Stream => RestorePlan::Stream {
            version,
            reader,
            note,
        },
        VersionKind::Tree => RestorePlan::Tree {
            version,
            reader,
            note,
        },
    };
    Ok((keyring, plan))
}
