//! Retention: applying a policy to a dataset's versions (one signed ledger entry deleting the
//! versions it does not keep; their data goes at the next garbage collection). The command line
//! (`embassy prune`) and the agent (after each backup of a dataset with a policy) both call
//! [`retention`].

use embassy_core::engine::prune::{self, PruneReport};
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::config::now_unix_nanos;
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::Result;

/// Applies `policy` to `dataset`: with keys, records the deletions (the keys must be allowed
/// to delete); without (a dry run), only says what would be deleted. Never deletes a version
/// younger than the legal minimum age.
pub fn retention(
    vault: &Vault,
    keyring: Option<&Keyring>,
    dataset: &str,
    policy: &RetentionPolicy,
) -> Result<PruneReport> {
    let now = now_unix_nanos();
    match keyring {
        None => prune::plan_retention(vault, dataset, policy, now),
        Some(k) => prune::apply_retention(vault, k, dataset, policy, now),
    }
}
