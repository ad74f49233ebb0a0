//! `embassy pg base-backup`, the PostgreSQL side of `embassy restore`, `embassy standby` and
//! `embassy promote`. Thin: the logic is in `embassy_postgres::{base_backup, restore, standby}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use embassy_core::engine::vault::{Keyring, Vault};

use embassy_core::{Error, Result};
use embassy_ops::pgrestore::{owner, FetchFolder, FetchSetup, PgRestoreRequest};
use embassy_postgres::base_backup::{BaseBackupOptions, WalSource};
use embassy_postgres::restore::{self, PgRestore, RecoveryTarget};
use embassy_postgres::tablespace::Relocation;
use embassy_postgres::Lsn;
use embassy_postgres::{restored_conf, standby};
use serde_json::json;

use crate::{output, secrets, unlock, Cli};

/// Arguments of `embassy pg base-backup`.
#[derive(Args)]
pub struct BaseBackupArgs {
    /// Dataset the base backup is a version of.
    pub dataset: String,
    /// libpq connection string of a role with REPLICATION (`host=db1 user=embassy ...`).
    #[arg(long, env = "EMBASSY_PG_CONNINFO")]
    pub conninfo: String,
    /// The WAL from the backup's start to its end comes from the dataset's streamed WAL
    /// (`embassy pg stream`); by default it is stored inside the version, so the base backup
    /// restores on its own.
    #[arg(long)]
    pub wal_streamed: bool,
}

/// Arguments of `embassy standby`.
#[derive(Args)]
pub struct StandbyArgs {
    /// The PostgreSQL dataset.
    pub dataset: String,
    /// New or empty folder for the standby's data directory.
    #[arg(long)]
    pub to: PathBuf,
    /// Owner of the data directory (default: postgres when run as root).
    #[arg(long)]
    pub owner: Option<String>,
    /// Put the tablespace whose location was OLD at NEW instead (as `embassy restore
    /// --tablespace-map`). Repeatable.
    #[arg(long, value_name = "OLD=NEW")]
    pub tablespace_map: Vec<Relocation>,
    /// Follow exactly this timeline instead of the newest (as `embassy restore --timeline`):
    /// such a standby never follows a later promotion.
    #[arg(long, value_name = "N")]
    pub timeline: Option<u32>,
}

/// Arguments of `embassy promote`.
#[derive(Args)]
pub struct PromoteArgs {
    /// The PostgreSQL dataset the standby follows.
    pub dataset: String,
    /// The standby's data directory (its server must be running).
    #[arg(long)]
    pub data: PathBuf,
    /// Connection used to check that it accepts writes (default: its Unix socket).
    #[arg(long)]
    pub conninfo: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Promote even though the standby has not replayed all the WAL the vault holds durably (the
    /// ledger's anchors and the signed WAL the sites serve after them; refused otherwise): those
    /// commits are lost to it, and the `promoted` entry records the lost range.
    #[arg(long)]
    pub accept_data_loss: bool,
}

/// `embassy pg base-backup DATASET --conninfo ...`
pub fn base_backup(cli: &Cli, args: &BaseBackupArgs) -> Result<ExitCode> {
    let interrupt = crate::interrupt::Interruptible::new();
    let vault = crate::open_vault_with(cli, &interrupt.open_options(crate::open_options(cli)?))?;
    let keyring = unlock(cli, &vault)?;
    let mut options = BaseBackupOptions::new(args.conninfo.clone());
    if args.wal_streamed {
        options.wal = WalSource::Streamed;
    }
    interrupt.catch(&args.dataset, cli.json)?;
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let result = embassy_ops::backup::backup(
        &vault,
        &keyring,
        &args.dataset,
        embassy_ops::backup::Source::Postgres(&options),
        &bar,
    );
    bar.finish();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            return match interrupt.report(&args.dataset, cli.json)? {
                Some(code) => Ok(code),
                None => Err(e.into()),
            }
        }
    };
    let Some(info) = &report.base_backup else {
        return Err(Error::invalid("the base backup reported no WAL positions"));
    };
    let v = &report.version;
    if cli.json {
        crate::print_json(json!({
            "ok": true,
            "version": output::version_json(v),
            "start_lsn": info.start_lsn.to_string(),
            "stop_lsn": info.stop_lsn.to_string(),
            "timeline": info.timeline,
            "system_identifier": info.system_identifier.to_string(),
            "wal_included": info.wal_included,
        }))?;
    } else {
        println!(
            "base backup stored as version {} of {}: {}, {}; {} new ({} stored); WAL {}..{} on timeline {}{}",
            v.number,
            v.dataset,
            output::count(v.stats.files, "file", "files"),
            output::size(v.stats.bytes),
            v.stats.new_chunks,
            output::size(v.stats.new_bytes_stored),
            info.start_lsn,
            info.stop_lsn,
            info.timeline,
            if info.wal_included { ", WAL inside" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The PostgreSQL recovery target from `embassy restore`'s flags.
pub fn recovery_target(
    time: Option<&str>,
    lsn: Option<&str>,
    latest: bool,
) -> Result<Option<RecoveryTarget>> {
    Ok(match (time, lsn, latest) {
        (Some(t), None, false) => Some(RecoveryTarget::Time(
            restore::parse_time(t).map_err(Error::from)?,
        )),
        (None, Some(l), false) => Some(RecoveryTarget::Lsn(l.parse::<Lsn>().map_err(Error::from)?)),
        (None, None, true) => Some(RecoveryTarget::Latest),
        (None, None, false) => None,
        _ => {
            return Err(Error::invalid(
                "give one of --time, --lsn and --latest, not several",
            ))
        }
    })
}

/// Says what was restored; lists on stderr, always (and in `--json`), every restored setting
/// that was neutralised and the overrides in force, for the operator to review.
fn report(cli: &Cli, done: &PgRestore, fetch: &FetchFolder, what: &str, next: &str) -> Result<()> {
    if let Some(fell_back) = &done.fell_back {
        eprintln!("note: {}", output::escape(&fell_back.reason));
        eprintln!("  hint: {}", crate::hints::UNWITNESSED_BASE_BACKUP);
    }
    for n in &done.neutralised {
        eprintln!("embassy: NEUTRALISED restored setting {n}");
    }
    eprintln!(
        "embassy: the restored server starts with settings that run code off ({}){}; its \
         restore_command gets only a reader credential of {} in {}: review the restored \
         configuration, then set what you need again with ALTER SYSTEM",
        restored_conf::OVERRIDES.join(", "),
        if done.neutralised.is_empty() {
            String::new()
        } else {
            format!(
                "; {} line(s) of the backup's configuration were commented out (listed above)",
                done.neutralised.len()
            )
        },
        done.version.dataset,
        fetch.path.display()
    );
    if cli.json {
        crate::print_json(json!({
            "ok": true,
            "version": output::version_json(&done.version),
            "data_dir": done.data_dir,
            "start_lsn": done.info.start_lsn.to_string(),
            "stop_lsn": done.info.stop_lsn.to_string(),
            "settings": done.settings,
            "neutralised": done.neutralised,
            "overrides": restored_conf::OVERRIDES,
            "fetch_folder": fetch.path,
            "recovery": done.recovery,
            "tablespaces": done.tablespaces.iter().map(|t| json!({
                "oid": t.oid,
                "original": t.original,
                "location": t.location,
            })).collect::<Vec<_>>(),
            "fell_back": done.fell_back.as_ref().map(|f| json!({
                "skipped_version": f.skipped,
                "reason": f.reason,
                "hint": crate::hints::UNWITNESSED_BASE_BACKUP,
            })),
        }))
    } else {
        println!(
            "{what} {} from base backup version {} (WAL {}..{}), to {}; {next}",
            done.data_dir.display(),
            done.version.number,
            done.info.start_lsn,
            done.info.stop_lsn,
            done.recovery,
        );
        for t in &done.tablespaces {
            println!(
                "tablespace {} restored to {}{}",
                t.oid,
                t.location.display(),
                if t.location == t.original {
                    String::new()
                } else {
                    format!(" (was {})", t.original.display())
                }
            );
        }
        Ok(())
    }
}

/// How the restore_command of a restore run by this program reaches the vault: the sites,
/// `--min-sites` and `--state-dir` given.
pub fn fetch_setup(cli: &Cli) -> Result<FetchSetup> {
    FetchSetup::this_program(cli.site.clone(), cli.min_sites, cli.state_dir.clone())
}

/// The new data directory of a PostgreSQL restore: `--to DIR` is required.
pub fn data_dir_given(to: Option<&Path>) -> Result<&Path> {
    to.ok_or_else(|| {
        Error::invalid("restoring a PostgreSQL dataset needs --to DIR (the new data directory)")
    })
}

/// `embassy restore DATASET --time T | --lsn L | --latest --to DIR` for PostgreSQL datasets,
/// with the vault opened and its keys unlocked by the caller (once for the whole restore).
#[allow(clippy::too_many_arguments)]
pub fn restore(
    cli: &Cli,
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    target: RecoveryTarget,
    to: Option<&Path>,
    owner_name: Option<&str>,
    allow_unwitnessed: bool,
    relocations: &[Relocation],
    timeline: Option<u32>,
) -> Result<ExitCode> {
    let dir = data_dir_given(to)?;
    let setup = fetch_setup(cli)?;
    let request = PgRestoreRequest {
        dataset,
        data_dir: dir,
        target,
        owner: owner(owner_name)?,
        allow_unwitnessed,
        relocations,
        timeline,
        fetch: &setup,
    };
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let (done, fetch) = embassy_ops::pgrestore::restore(vault, keyring, &request, &bar)?;
    bar.finish();
    report(
        cli,
        &done,
        &fetch,
        "restored PostgreSQL data directory",
        "start PostgreSQL on it: it replays the vault's WAL to the target and opens for writes",
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `embassy standby DATASET --to DIR`
pub fn standby(cli: &Cli, args: &StandbyArgs) -> Result<ExitCode> {
    let vault = crate::open_vault(cli)?;
    let keyring = unlock(cli, &vault)?;
    let owner = owner(args.owner.as_deref())?;
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let (done, fetch) = embassy_ops::pgrestore::standby(
        &vault,
        &keyring,
        &args.dataset,
        &args.to,
        owner,
        &args.tablespace_map,
        args.timeline,
        &fetch_setup(cli)?,
        &bar,
    )?;
    bar.finish();
    report(
        cli,
        &done,
        &fetch,
        "standby data directory",
        "start PostgreSQL on it: it follows the vault; `embassy promote` brings it live",
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `embassy promote DATASET --data DIR`: the promotion's entry goes to every site of the vault
/// this machine knows (the sites given and the ones pinned in the state folder), queued for
/// those that do not answer.
pub fn promote(cli: &Cli, args: &PromoteArgs) -> Result<ExitCode> {
    let options = crate::open_options(cli)?;
    let (vault, sites) = embassy_ops::open::open_vault_everywhere(&options)?;
    secrets::check_given_key_file(cli.key_file.as_deref(), vault.config())?;
    let keyring = unlock(cli, &vault)?;
    let done = standby::promote(
        &vault,
        &keyring,
        &args.dataset,
        &args.data,
        args.conninfo.as_deref(),
        Duration::from_secs(args.timeout),
        args.accept_data_loss,
    )
    .map_err(Error::from)?;
    if let (Some(to), false) = (done.data_lost_to, cli.json) {
        eprintln!(
            "embassy: promoted ACCEPTING DATA LOSS: the vault's WAL from {} to {to} was never \
             replayed (recorded in the ledger)",
            done.lsn
        );
    }
    let queued = embassy_ops::open::lagging_sites(&options.state_dir, &sites);
    let recorded: Vec<&String> = sites.iter().filter(|s| !queued.contains(s)).collect();
    if !queued.is_empty() && !cli.json {
        eprintln!(
            "embassy: the promotion's entry is queued for {} (not reached): {}",
            queued.join(", "),
            crate::hints::for_way_out(&embassy_core::error::WayOut::CatchUpSites {
                sites: queued.clone()
            })
        );
    }
    if cli.json {
        crate::print_json(json!({
            "ok": true,
            "timeline": done.timeline,
            "lsn": done.lsn.to_string(),
            "data_lost_to": done.data_lost_to.map(|l| l.to_string()),
            "seconds": done.elapsed.as_secs_f64(),
            "ledger_seq": done.seq,
            "approvals": done.approvals,
            "authoritative": done.not_authoritative.is_none(),
            "replayed_wal": done.replayed.as_ref().map(|w| json!({
                "object": w.object.to_hex(),
                "timeline": w.timeline,
                "start": embassy_postgres::Lsn(w.start).to_string(),
                "end": embassy_postgres::Lsn(w.end).to_string(),
            })),
            "sites": recorded,
            "queued": queued,
        }))?;
    } else {
        println!(
            "promoted {}: accepts writes on timeline {} from {} after {:.1} s; recorded as entry {} of {}",
            args.data.display(),
            done.timeline,
            done.lsn,
            done.elapsed.as_secs_f64(),
            done.seq,
            args.dataset
        );
    }
    if done.replayed.is_none() && !cli.json {
        eprintln!(
            "warning: no valid WAL object of the timeline it left holds the WAL it replayed last \
             (before {}): the entry anchors none, so the old writers' WAL after their last anchor \
             is not valid; check `embassy pg verify-wal {}`",
            done.lsn, args.dataset
        );
    }
    if let Some(why) = &done.not_authoritative {
        eprintln!("warning: the promotion fences no writer of the old primary: {why}");
    }
    Ok(ExitCode::SUCCESS)
}
