//! `embassy restore DATASET[@VERSION]`: a file tree into a folder, a stream to a file or
//! standard output, or a PostgreSQL data directory. Which one is decided by embassy-ops, with
//! the vault opened and the keys unlocked once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use embassy_core::engine::vault::NewerUnwitnessed;
use embassy_core::{Error, Result};
use embassy_ops::restore::{RestorePlan, RestoreRequest};
use embassy_sources::{files, stream};
use serde_json::json;

use crate::{open_vault, output, pgrestore, print_json, unlock, Cli};

/// Arguments of `embassy restore`.
#[derive(Args)]
pub struct RestoreArgs {
    /// What to restore: DATASET or DATASET@VERSION (not with --group).
    #[arg(required_unless_present = "group", conflicts_with = "group")]
    pub target: Option<String>,
    /// Restore every member of this consistency group to one group point, each into
    /// `--to DIR/<dataset>`.
    #[arg(long, requires = "at", conflicts_with_all = ["time", "lsn", "latest", "path"])]
    pub group: Option<String>,
    /// With --group: the newest restorable point (`latest`), or the newest taken at or before
    /// this time (2026-11-27T03:04:05Z).
    #[arg(long, requires = "group")]
    pub at: Option<String>,
    /// With --group: restore a point even when it names fewer members than earlier points (the
    /// group lost a member on purpose); without it such a point is refused.
    #[arg(long, requires = "group")]
    pub accept_fewer_members: bool,
    /// Folder to restore a tree into; for a stream, a file (or `-` / omitted for stdout).
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// Restore only this path inside the version.
    #[arg(long)]
    pub path: Option<PathBuf>,
    /// Allow restoring into a folder that is not empty: files already identical to the
    /// version's (checked against its chunk hashes) are left as they are, others replaced (a
    /// file with more than one hard link is always replaced, never changed in place).
    #[arg(long)]
    pub overwrite: bool,
    /// File tree: restore only paths matching this pattern (gitignore-style, relative to the
    /// version's root: `*.csv`, `/reports`, `data/**/2026-*`), with the folders leading to
    /// them. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub include: Vec<String>,
    /// File tree: do not restore (nor delete) paths matching this pattern. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// File tree: remove what the target holds under the restored tree that the version does
    /// not (links are removed, never followed; excluded paths are left alone). Implies
    /// --overwrite.
    #[arg(long)]
    pub delete: bool,
    /// Allow a version that no witnessed checkpoint covers yet (when the vault requires witnesses).
    #[arg(long)]
    pub unwitnessed: bool,
    /// PostgreSQL: recover to the last commit at or before this time (2026-11-27T03:04:05Z).
    #[arg(long, conflicts_with_all = ["lsn", "latest", "path"])]
    pub time: Option<String>,
    /// PostgreSQL: recover up to this WAL position (like 16/B374D848).
    #[arg(long, conflicts_with_all = ["latest", "path"])]
    pub lsn: Option<String>,
    /// PostgreSQL: recover to the newest WAL the vault holds.
    #[arg(long, conflicts_with = "path")]
    pub latest: bool,
    /// PostgreSQL: owner of the restored data directory (default: postgres when root).
    #[arg(long)]
    pub owner: Option<String>,
    /// PostgreSQL: put the tablespace whose location was OLD at NEW (both absolute; `\=` for
    /// an `=` in a path), like pg_basebackup's -T. Needed for every tablespace of the base
    /// backup (OLD=OLD to put it back where it was): a restore never writes where the backup
    /// alone says. NEW is a new folder in an existing one, or an empty folder the server's
    /// owner owns. Repeatable; with --group, each OLD goes to the member that has it.
    #[arg(long, value_name = "OLD=NEW", conflicts_with = "path")]
    pub tablespace_map: Vec<embassy_postgres::tablespace::Relocation>,
    /// PostgreSQL: follow exactly this timeline (recovery_target_timeline) instead of the
    /// newest. Needed when the newest timeline leaves out acknowledged WAL of its parent and no
    /// takeover decided it: the parent's number keeps every record it holds, the fork's
    /// follows the fork.
    #[arg(long, value_name = "N", conflicts_with_all = ["path", "group"])]
    pub timeline: Option<u32>,
}

/// Runs `embassy restore`.
pub fn run(cli: &Cli, args: &RestoreArgs) -> Result<ExitCode> {
    let target = match (&args.group, &args.target) {
        (Some(group), _) => return crate::cmd::group::restore(cli, group, args),
        (None, Some(target)) => target,
        (None, None) => return Err(Error::invalid("name a dataset to restore, or --group G")),
    };
    let (dataset, selector) = match target.split_once('@') {
        Some((d, v)) => (d, Some(v)),
        None => (target.as_str(), None),
    };
    let recovery_target =
        pgrestore::recovery_target(args.time.as_deref(), args.lsn.as_deref(), args.latest)?;
    if recovery_target.is_some() {
        // Said before the vault is opened or a passphrase asked for.
        pgrestore::data_dir_given(args.to.as_deref())?;
    }
    let vault = open_vault(cli)?;
    let request = RestoreRequest {
        dataset,
        selector,
        recovery_target,
        subpath: args.path.is_some(),
        allow_unwitnessed: args.unwitnessed,
    };
    let (keyring, plan) = embassy_ops::restore::plan(&vault, &request, || unlock(cli, &vault))?;
    let note = match &plan {
        RestorePlan::Postgres { note, .. }
        | RestorePlan::Tree { note, .. }
        | RestorePlan::Stream { note, .. } => note.as_ref(),
    };
    let newer = note.map(newer_unwitnessed);
    if let Some(note) = note {
        let now = embassy_core::format::config::now_unix_nanos();
        eprintln!("note: {}", output::escape(&note.message(now)));
        eprintln!("  hint: {}", crate::hints::UNWITNESSED_NOTE);
    }
    if !matches!(plan, RestorePlan::Postgres { .. }) && args.timeline.is_some() {
        return Err(Error::invalid(format!(
            "--timeline names the PostgreSQL timeline a restore follows (with --time, --lsn or \
             --latest); {dataset}@{} is not restored as PostgreSQL",
            selector.unwrap_or("latest")
        )));
    }
    if !matches!(plan, RestorePlan::Postgres { .. }) && !args.tablespace_map.is_empty() {
        return Err(Error::invalid(format!(
            "--tablespace-map relocates tablespaces of a PostgreSQL restore (with --time, --lsn \
             or --latest); {dataset}@{} is restored as a plain {}",
            selector.unwrap_or("latest"),
            if matches!(plan, RestorePlan::Tree { .. }) {
                "file tree"
            } else {
                "stream"
            }
        )));
    }
    if !matches!(plan, RestorePlan::Tree { .. })
        && (!args.include.is_empty() || !args.exclude.is_empty() || args.delete)
    {
        return Err(Error::invalid(format!(
            "{dataset} is not a file tree: --include, --exclude and --delete select paths of a \
             file tree only"
        )));
    }
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let to = args.to.as_deref().filter(|p| *p != Path::new("-"));
    match (plan, to) {
        (RestorePlan::Postgres { target, .. }, _) => {
            // A PostgreSQL dataset: a data directory recovering to the target.
            return pgrestore::restore(
                cli,
                &vault,
                &keyring,
                dataset,
                target,
                args.to.as_deref(),
                args.owner.as_deref(),
                args.unwitnessed,
                &args.tablespace_map,
                args.timeline,
            );
        }
        (RestorePlan::Stream { reader, .. }, None) => {
            let mut out = std::io::stdout().lock();
            stream::restore_to(&reader, &mut out, &bar)?;
        }
        (
            RestorePlan::Stream {
                version, reader, ..
            },
            Some(file),
        ) => {
            // A link there counts, dangling or not: --overwrite replaces it.
            if std::fs::symlink_metadata(file).is_ok() && !args.overwrite {
                return Err(Error::invalid(format!(
                    "{} exists: pass --overwrite to replace it",
                    file.display()
                )));
            }
            // Written under a fresh random name beside it (never through a planted link) and
            // renamed only when complete, so a failed restore never leaves a partial file under
            // the final name.
            let mut out = embassy_core::fsutil::NewFile::beside(file)
                .map_err(|e| Error::io(format!("creating a file beside {}", file.display()), e))?;
            let n = stream::restore_to(&reader, &mut out, &bar)?;
            out.persist()
                .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
            report_restore(
                cli,
                &version,
                json!({"bytes": n, "to": file, "newer_unwitnessed": newer}),
                &format!("{} into {}", output::size(n), file.display()),
            )?;
        }
        (RestorePlan::Tree { .. }, None) => {
            return Err(Error::invalid("restoring a file tree needs --to DIR"));
        }
        (
            RestorePlan::Tree {
                version, reader, ..
            },
            Some(dir),
        ) => {
            let options = files::RestoreOptions {
                subpath: args.path.clone(),
                overwrite: args.overwrite,
                selection: files::RestoreSelection {
                    include: files::Patterns::parse(&args.include)
                        .map_err(|e| Error::invalid(e.to_string()))?,
                    exclude: files::Patterns::parse(&args.exclude)
                        .map_err(|e| Error::invalid(e.to_string()))?,
                    delete: args.delete,
                },
            };
            let stats = files::restore(&reader, dir, &options, &bar)?;
            bar.finish();
            report_restore(
                cli,
                &version,
                json!({
                    "files": stats.files,
                    "dirs": stats.dirs,
                    "bytes": stats.bytes,
                    "skipped_files": stats.skipped_files,
                    "skipped_bytes": stats.skipped_bytes,
                    "deleted": stats.deleted,
                    "to": dir,
                    "newer_unwitnessed": newer,
                }),
                &format!(
                    "{}, {}, {} into {}{}{}",
                    output::count(stats.files, "file", "files"),
                    output::count(stats.dirs, "folder", "folders"),
                    output::size(stats.bytes),
                    dir.display(),
                    if stats.skipped_files > 0 {
                        format!(
                            "; {} ({}) already identical, left as they were",
                            output::count(stats.skipped_files, "file", "files"),
                            output::size(stats.skipped_bytes)
                        )
                    } else {
                        String::new()
                    },
                    if options.selection.delete {
                        format!(
                            "; {} not in the version deleted",
                            output::count(stats.deleted, "entry", "entries")
                        )
                    } else {
                        String::new()
                    }
                ),
            )?;
        }
    }
    bar.finish();
    Ok(ExitCode::SUCCESS)
}

/// A restore's note that newer versions are not yet witnessed, for `--json`: how many, which,
/// how new, and how to take one.
fn newer_unwitnessed(note: &NewerUnwitnessed) -> serde_json::Value {
    let now = embassy_core::format::config::now_unix_nanos();
    json!({
        "count": note.versions.len(),
        "versions": note.versions,
        "newest": note.newest(),
        "newest_captured_at": output::time(note.newest_captured_at_ns),
        "newest_age_seconds": NewerUnwitnessed::age_secs(note.newest_captured_at_ns, now),
        "restored_age_seconds": NewerUnwitnessed::age_secs(note.restored_captured_at_ns, now),
        "witness_quorum": note.quorum,
        "message": note.message(now),
        "hint": crate::hints::UNWITNESSED_NOTE,
    })
}

fn report_restore(
    cli: &Cli,
    version: &embassy_core::history::version::Version,
    mut detail: serde_json::Value,
    for_people: &str,
) -> Result<()> {
    if cli.json {
        detail["version"] = output::version_json(version);
        print_json(detail)
    } else {
        eprintln!(
            "restored {} version {} (ledger entry {}): {for_people}",
            version.dataset, version.number, version.seq
        );
        Ok(())
    }
}
