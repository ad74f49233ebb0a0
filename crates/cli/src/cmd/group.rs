//! `embassy group point G` and `embassy group points G` (consistency groups of embassy.toml),
//! and `embassy restore --group G --at latest|TIME --to DIR`. The operations are
//! `embassy_ops::group`'s, the same the agent runs on a group's interval.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use embassy_core::history::ledger::GroupMember;
use embassy_core::{Error, Result};
use embassy_ops::group::{self, GroupTarget, ListedPoint, MemberRestored, SmallerGroup};
use embassy_postgres::tablespace::Relocation;
use embassy_postgres::Lsn;
use serde_json::json;

use crate::{open_vault, output, pgrestore, print_json, unlock, Cli};

/// Consistency groups: datasets restored to one instant.
#[derive(Subcommand)]
pub enum GroupCommand {
    /// Take a group point now: a restore point on each PostgreSQL member at one moment, the
    /// current version of each file member, recorded as one signed entry once the points' WAL
    /// is durable in the vault.
    Point(PointArgs),
    /// List a group's points, oldest first, and whether each can be restored.
    Points(PointsArgs),
}

/// Arguments of `embassy group point`.
#[derive(Args)]
pub struct PointArgs {
    /// The group (a `[[groups]]` of the configuration).
    pub group: String,
    /// The agent's configuration naming the group and its members.
    #[arg(long, default_value = "embassy.toml")]
    pub config: PathBuf,
    /// Seconds to wait for the restore points' WAL to become durable in the vault.
    #[arg(long, default_value_t = 60)]
    pub wait: u64,
}

/// Arguments of `embassy group points`.
#[derive(Args)]
pub struct PointsArgs {
    /// The group.
    pub group: String,
}

/// Runs a `group` subcommand.
pub fn run(cli: &Cli, command: &GroupCommand) -> Result<ExitCode> {
    match command {
        GroupCommand::Point(args) => point(cli, args),
        GroupCommand::Points(args) => points(cli, args),
    }
}

fn point(cli: &Cli, args: &PointArgs) -> Result<ExitCode> {
    let config = embassy_agent::config::Config::load(&args.config)
        .map_err(|e| Error::invalid(e.to_string()))?;
    let spec = config.group_spec(&args.group).ok_or_else(|| {
        Error::invalid(format!(
            "{} declares no group \"{}\": add a [[groups]] with that name",
            args.config.display(),
            args.group
        ))
    })?;
    let vault = open_vault(cli)?;
    let signer = unlock(cli, &vault)?.signer()?;
    let taken = group::take_point(&vault, &signer, &spec, Duration::from_secs(args.wait))?;
    if cli.json {
        print_json(json!({
            "group": taken.point.group,
            "number": taken.point.number,
            "seq": taken.seq,
            "taken_at": embassy_core::time::utc(taken.point.taken_at_ns),
            "spread_seconds": taken.spread.as_secs_f64(),
            "waited_seconds": taken.waited.as_secs_f64(),
            "members": members_json(&taken.point.members),
        }))?;
    } else {
        println!(
            "group {} point {} (entry {}): restore points created {:.1} ms apart, durable after \
             {:.1} s",
            taken.point.group,
            taken.point.number,
            taken.seq,
            taken.spread.as_secs_f64() * 1e3,
            taken.waited.as_secs_f64()
        );
        for line in member_lines(&taken.point.members) {
            println!("  {line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn members_json(members: &[GroupMember]) -> Vec<serde_json::Value> {
    members
        .iter()
        .map(|m| match m {
            GroupMember::Postgres {
                dataset,
                restore_point,
                lsn,
                timeline,
            } => json!({"dataset": dataset, "restore_point": restore_point,
                        "lsn": Lsn(*lsn).to_string(), "timeline": timeline}),
            GroupMember::Version {
                dataset,
                entry,
                number,
            } => json!({"dataset": dataset, "version": number, "entry": entry.to_hex()}),
        })
        .collect()
}

fn member_lines(members: &[GroupMember]) -> Vec<String> {
    members
        .iter()
        .map(|m| match m {
            GroupMember::Postgres {
                dataset,
                restore_point,
                lsn,
                ..
            } => format!("{dataset}: restore point {restore_point} at {}", Lsn(*lsn)),
            GroupMember::Version {
                dataset, number, ..
            } => format!("{dataset}: version {number}"),
        })
        .collect()
}

fn point_json(p: &ListedPoint) -> serde_json::Value {
    json!({
        "number": p.point.number,
        "seq": p.seq,
        "taken_at": embassy_core::time::utc(p.point.taken_at_ns),
        "restorable": p.unrestorable.is_none(),
        "why_not": p.unrestorable,
        "lacking": p.lacking,
        "members": members_json(&p.point.members),
    })
}

fn points(cli: &Cli, args: &PointsArgs) -> Result<ExitCode> {
    let vault = open_vault(cli)?;
    let listed = group::points(&vault, &args.group)?;
    if cli.json {
        let points: Vec<serde_json::Value> = listed.iter().map(point_json).collect();
        print_json(json!({"group": args.group, "points": points}))?;
    } else if listed.is_empty() {
        println!("group {}: no points yet", args.group);
    } else {
        for p in &listed {
            println!(
                "{:>5}  {}  {}",
                p.point.number,
                embassy_core::time::utc(p.point.taken_at_ns),
                match (&p.unrestorable, p.lacking.as_slice()) {
                    (None, []) => "restorable".to_string(),
                    (None, lacking) => format!(
                        "restorable only with --accept-fewer-members: lacks {}, named by \
                         earlier points",
                        output::escape(&lacking.join(", "))
                    ),
                    (Some(why), _) => format!("NOT RESTORABLE: {}", output::escape(why)),
                }
            );
            for line in member_lines(&p.point.members) {
                println!("         {line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which of the operator's tablespace relocations (`--tablespace-map OLD=NEW`) go to which
/// PostgreSQL member of `point`: each OLD must be a tablespace location of exactly one member's
/// base backups, checked before anything is restored.
fn relocations_by_member(
    vault: &embassy_core::engine::vault::Vault,
    keyring: &embassy_core::engine::vault::Keyring,
    point: &embassy_core::history::ledger::GroupPoint,
    relocations: &[Relocation],
) -> Result<std::collections::HashMap<String, Vec<Relocation>>> {
    let mut out: std::collections::HashMap<String, Vec<Relocation>> = Default::default();
    if relocations.is_empty() {
        return Ok(out);
    }
    let mut owners: Vec<(String, std::path::PathBuf)> = Vec::new();
    for member in &point.members {
        let GroupMember::Postgres { dataset, .. } = member else {
            continue;
        };
        let backups = embassy_postgres::base_backup::list_base_backups(vault, keyring, dataset)
            .map_err(Error::from)?;
        for (_, info) in &backups {
            let Some(map) = info.tablespace_map.as_deref() else {
                continue;
            };
            for t in embassy_postgres::tablespace::parse_map(map).map_err(Error::from)? {
                let location = std::path::PathBuf::from(t.location);
                if !owners.iter().any(|(d, l)| d == dataset && *l == location) {
                    owners.push((dataset.clone(), location));
                }
            }
        }
    }
    for r in relocations {
        let members: Vec<&String> = owners
            .iter()
            .filter(|(_, l)| *l == r.old)
            .map(|(d, _)| d)
            .collect();
        match members.as_slice() {
            [one] => out.entry((*one).clone()).or_default().push(r.clone()),
            [] => {
                return Err(Error::invalid(format!(
                    "--tablespace-map names {}, which is no tablespace location of the group's \
                     PostgreSQL members (they have {})",
                    r.old.display(),
                    if owners.is_empty() {
                        "none".to_string()
                    } else {
                        owners
                            .iter()
                            .map(|(d, l)| format!("{} in {d}", l.display()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                )))
            }
            several => {
                return Err(Error::invalid(format!(
                    "--tablespace-map names {}, a tablespace location of several members ({}): \
                     restore them one at a time (`embassy restore DATASET --lsn ...`), each with \
                     its own map",
                    r.old.display(),
                    several
                        .iter()
                        .map(|d| d.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    }
    Ok(out)
}

/// `embassy restore --group G --at latest|TIME --to DIR`: every member into `DIR/<dataset>`.
pub fn restore(
    cli: &Cli,
    group_name: &str,
    args: &crate::cmd::restore::RestoreArgs,
) -> Result<ExitCode> {
    let at = args.at.as_deref().unwrap_or("latest");
    let to = args.to.as_deref();
    let owner_name = args.owner.as_deref();
    let allow_unwitnessed = args.unwitnessed;
    let accept_fewer_members = args.accept_fewer_members;
    let relocations = args.tablespace_map.as_slice();
    let target = if at == "latest" {
        GroupTarget::Latest
    } else {
        GroupTarget::Time(embassy_postgres::restore::parse_time(at).map_err(Error::from)?)
    };
    let dir = to.ok_or_else(|| {
        Error::invalid("restoring a group needs --to DIR (each member goes into DIR/<dataset>)")
    })?;
    let owner = embassy_ops::pgrestore::owner(owner_name)?;
    let vault = open_vault(cli)?;
    let smaller = if accept_fewer_members {
        SmallerGroup::Accept
    } else {
        SmallerGroup::Refuse
    };
    let chosen = group::choose(&vault, group_name, target, smaller)?;
    let keyring = unlock(cli, &vault)?;
    let members_relocations = relocations_by_member(&vault, &keyring, &chosen.point, relocations)?;
    let mut fetch_folders = Vec::new();
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let mut options = |dataset: &str, data_dir: &Path| {
        let fetch = embassy_ops::pgrestore::FetchFolder::create(
            &pgrestore::fetch_setup(cli)?,
            &vault,
            &keyring,
            dataset,
            owner,
            data_dir,
        )?;
        let options = embassy_postgres::restore::PgRestoreOptions {
            mode: embassy_postgres::restore::Mode::Recover(
                embassy_postgres::restore::RecoveryTarget::Latest,
            ),
            restore_command: fetch.restore_command.clone(),
            owner,
            allow_unwitnessed,
            // Each member's tablespaces where --tablespace-map puts them (a member with one
            // not chosen is refused, naming it).
            relocations: members_relocations
                .get(dataset)
                .cloned()
                .unwrap_or_default(),
            timeline: None,
        };
        fetch_folders.push(fetch);
        Ok(options)
    };
    let done = group::restore(
        &vault,
        &keyring,
        &chosen,
        dir,
        allow_unwitnessed,
        &mut options,
        &bar,
    );
    bar.finish();
    let done = match done {
        Ok(done) => done,
        Err(e) => {
            for f in &fetch_folders {
                f.remove();
            }
            return Err(e.into());
        }
    };
    if cli.json {
        let members: Vec<serde_json::Value> = done
            .iter()
            .map(|m| {
                json!({
                    "dataset": m.dataset,
                    "path": m.path,
                    "restored": match &m.restored {
                        MemberRestored::Postgres(p) => json!({"postgres": {"recovery": p.recovery,
                            "base_backup": p.version.number}}),
                        MemberRestored::Tree { version, files } =>
                            json!({"tree": {"version": version.number, "files": files}}),
                        MemberRestored::Stream { version, bytes } =>
                            json!({"stream": {"version": version.number, "bytes": bytes}}),
                    },
                })
            })
            .collect();
        print_json(json!({"group": group_name, "point": point_json(&chosen), "members": members}))?;
    } else {
        println!(
            "restored group {group_name} to point {} ({}) into {}:",
            chosen.point.number,
            embassy_core::time::utc(chosen.point.taken_at_ns),
            dir.display()
        );
        for m in &done {
            let what = match &m.restored {
                MemberRestored::Postgres(p) => format!(
                    "PostgreSQL data directory from base backup version {}, recovering to {}; \
                     start PostgreSQL on it",
                    p.version.number, p.recovery
                ),
                MemberRestored::Tree { version, files } => {
                    format!("version {}, {files} files", version.number)
                }
                MemberRestored::Stream { version, bytes } => {
                    format!("version {}, {}", version.number, output::size(*bytes))
                }
            };
            println!("  {} -> {}: {what}", m.dataset, m.path.display());
        }
    }
    if !chosen.lacking.is_empty() {
        eprintln!(
            "warning: point {} lacks {}, named by earlier points: not restored              (--accept-fewer-members)",
            chosen.point.number,
            output::escape(&chosen.lacking.join(", "))
        );
    }
    Ok(ExitCode::SUCCESS)
}
