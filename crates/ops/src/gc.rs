//! Garbage collection: removing the objects no remaining version needs, in two phases
//! (condemn, then delete once the grace period has passed), safe while backups run. The command
//! line (`embassy gc`) and the agent's scheduled collection both call [`collect`], so the
//! options a grace period stands for and the key collection needs are decided here once.

use std::path::Path;
use std::sync::Arc;

use embassy_core::engine::gc::{self, GcOptions, GcReport};
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::error::Problem;
use embassy_core::format::config::now_unix_nanos;
use embassy_core::{Error, ErrorKind, Result};

/// The collection options for a grace period: the defaults with that grace period, the allowed
/// clock skew no longer than it (collection refuses a grace period shorter than the skew).
pub fn options(grace_secs: Option<u64>, dry_run: bool) -> GcOptions {
    let mut options = match grace_secs {
        Some(secs) => GcOptions::with_grace(secs),
        None => GcOptions::default(),
    };
    options.dry_run = dry_run;
    options
}

/// What a collection did, and with which options.
#[derive(Debug, Clone)]
pub struct Collection {
    /// What was condemned, deleted, rescued, deferred, refused, skipped.
    pub report: GcReport,
    /// The options it ran with (the grace period among them).
    pub options: GcOptions,
}

impl Collection {
    /// True when nothing was skipped and no problem was found.
    pub fn is_clean(&self) -> bool {
        self.report.skipped.is_empty() && self.report.problems.is_empty()
    }

    /// Every problem and skipped dataset, problems first.
    pub fn all_problems(&self) -> impl Iterator<Item = &Problem> {
        self.report.problems.iter().chain(&self.report.skipped)
    }

    /// True when a problem or a skipped dataset shows damage or forgery (a history, a
    /// reference or a bookkeeping object that does not check out): the command line exits 3
    /// and the agent raises an integrity problem. Problems of no other kind (a site that could
    /// not be listed or read) are outages: exit 1, checked again next run.
    pub fn found_damage(&self) -> bool {
        self.all_problems().any(Problem::is_integrity)
    }

    /// The messages of the problems of `kind`, one line each.
    pub fn messages(&self, kind: ErrorKind) -> Vec<String> {
        self.all_problems()
            .filter(|p| p.kind == kind)
            .map(|p| p.message.clone())
            .collect()
    }
}

/// Collects the vault's garbage. Condemnation records are signed by the root key (a
/// credential's delete right covers pruning its datasets only); also for a dry run,
/// which checks that the key would do. What this machine saw of the records is remembered in
/// `heads_dir` (the folder of the verified heads, [`crate::open::OpenOptions::heads_dir`]).
pub fn collect(
    vault: &Vault,
    keyring: &Arc<Keyring>,
    heads_dir: &Path,
    options: GcOptions,
) -> Result<Collection> {
    let signer = keyring.signer().map_err(|e| {
        Error::WrongKey(format!(
            "garbage collection signs its condemnation records, so it needs a key allowed to \
             delete: the root key file or a credential the root granted the delete right ({e})"
        ))
    })?;
    // The keyring also reads the datasets, to repack partly-dead packs.
    let collector = gc::Collector::new(signer, heads_dir, &vault.config().vault_id)
        .with_keyring(Arc::clone(keyring));
    let report = gc::collect_garbage(vault, &collector, &options, now_unix_nanos())?;
    Ok(Collection { report, options })
}
