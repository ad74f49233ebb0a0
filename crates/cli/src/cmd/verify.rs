//! `embassy verify [--deep]`: the vault's objects, ledgers and streamed WAL (embassy-ops's
//! verification, the same as the agent's scheduled one). With several sites, each site is
//! verified on its own (reads never fall through to another site) and reported per site.

use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use serde_json::json;

use embassy_ops::catchup::Behind;

use crate::{open_vault, output, pg, print_json, unlock, Cli};

/// Arguments of `embassy verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Also decrypt and check every chunk (needs the key).
    #[arg(long)]
    pub deep: bool,
}

/// Runs `embassy verify`: exit 3 when something is wrong. With several sites, each site is
/// verified on its own (as the agent does), so that one site's damage is not hidden by reads
/// that fall through to another: exit 3 if any site is damaged, 1 if any could not be checked.
pub fn run(cli: &Cli, args: &VerifyArgs) -> Result<ExitCode> {
    if cli.site.len() > 1 {
        return run_each_site(cli, args);
    }
    // What the queue holds first (it turns dead writers' sessions into full-comparison
    // records), so that the vault is opened knowing it, as `run_each_site` does.
    let behind = match cli.site.as_slice() {
        [one] => embassy_ops::catchup::behind(&crate::state_dir(cli)?, one)
            .ok()
            .flatten(),
        _ => None,
    };
    let vault = open_vault(cli)?;
    let (vault, behind) = embassy_ops::catchup::as_it_stands(vault, behind)?;
    Ok(match verify_and_show(cli, args, &vault, behind.as_ref())? {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Damaged => crate::exit::code(crate::exit::INTEGRITY),
        Outcome::NotChecked => crate::exit::code(crate::exit::FAILURE),
    })
}

/// What verifying one site found.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    NotChecked,
    Damaged,
}

/// Verifies each site of `--site` on its own and reports per site.
fn run_each_site(cli: &Cli, args: &VerifyArgs) -> Result<ExitCode> {
    let mut worst = Outcome::Ok;
    let mut json_sites = Vec::new();
    let mut lines = Vec::new();
    for site in &cli.site {
        if !cli.json {
            println!("== site {}", output::escape(site));
        }
        let options = embassy_ops::open::OpenOptions {
            locations: vec![site.clone()],
            min_sites: None,
            ..crate::open_options(cli)?
        };
        // The site's pin and --vault-id are checked as for any command; the verification
        // reads the site alone, against the heads this machine remembers unless its catch-up
        // queue holds every entry it lacks (it merely lags: see `as_it_stands`).
        let behind = embassy_ops::catchup::behind(&crate::state_dir(cli)?, site)
            .ok()
            .flatten();
        let opened = crate::open_vault_with(cli, &options)
            .and_then(|v| embassy_ops::catchup::as_it_stands(v, behind));
        let (opened, behind) = match opened {
            Ok((vault, behind)) => (Ok(vault), behind),
            Err(e) => (Err(e), None),
        };
        let outcome = match opened {
            Ok(vault) => {
                let (outcome, value) = if cli.json {
                    let (o, v) = verify_json(cli, args, &vault, behind.as_ref())?;
                    (o, Some(v))
                } else {
                    (verify_and_show(cli, args, &vault, behind.as_ref())?, None)
                };
                if let Some(mut v) = value {
                    v["site"] = json!(site);
                    json_sites.push(v);
                }
                outcome
            }
            Err(e) => {
                let outcome = if e.is_integrity() {
                    Outcome::Damaged
                } else {
                    Outcome::NotChecked
                };
                if cli.json {
                    json_sites.push(json!({
                        "site": site, "ok": false, "error": e.to_string(), "kind": e.kind(),
                    }));
                } else {
                    println!("PROBLEM: {}", output::escape(&e.to_string()));
                }
                outcome
            }
        };
        lines.push(format!(
            "site {}: {}",
            output::escape(site),
            match outcome {
                Outcome::Ok => "OK",
                Outcome::NotChecked => "NOT CHECKED (could not be read)",
                Outcome::Damaged => "DAMAGED",
            }
        ));
        worst = worst.max(outcome);
    }
    if cli.json {
        print_json(json!({"ok": worst == Outcome::Ok, "sites": json_sites}))?;
    } else {
        println!("== every site");
        for l in &lines {
            println!("{l}");
        }
    }
    Ok(match worst {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Damaged => crate::exit::code(crate::exit::INTEGRITY),
        Outcome::NotChecked => crate::exit::code(crate::exit::FAILURE),
    })
}

/// Verifies `vault` (with the keys when `--deep`).
fn verify_vault(
    cli: &Cli,
    args: &VerifyArgs,
    vault: &embassy_core::engine::vault::Vault,
) -> Result<embassy_ops::verify::Verification> {
    let keyring = if args.deep {
        Some(unlock(cli, vault)?)
    } else {
        None
    };
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let v = embassy_ops::verify::verify(vault, keyring.as_ref(), &bar)?;
    bar.finish();
    Ok(v)
}

/// What a verification found, judged.
fn outcome_of(v: &embassy_ops::verify::Verification) -> Outcome {
    // 3 only for damage (core's error policy); what could not be read is an outage: 1.
    if v.is_ok() {
        Outcome::Ok
    } else if v.found_damage() {
        Outcome::Damaged
    } else {
        Outcome::NotChecked
    }
}

/// A verification as JSON.
fn verify_json(
    cli: &Cli,
    args: &VerifyArgs,
    vault: &embassy_core::engine::vault::Vault,
    behind: Option<&Behind>,
) -> Result<(Outcome, serde_json::Value)> {
    let mut v = verify_vault(cli, args, vault)?;
    let queued_wal = behind.map_or_else(Vec::new, |b| {
        embassy_ops::verify::set_aside_queued_wal(&mut v, &b.queued, b.full_sync.is_some())
    });
    let mut value = serde_json::to_value(&v.vault).map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(b) = behind {
        value["behind"] = json!(b);
        value["behind_wal"] = json!(queued_wal);
        value["hint"] = json!(crate::hints::catch_up_pending());
    }
    value["ok"] = json!(v.is_ok());
    value["wal"] = pg::wal_reports_json(&v.wal);
    value["deep"] = json!(args.deep);
    value["drills"] = json!(embassy_ops::drill::last_drills(vault)
        .unwrap_or_default()
        .iter()
        .map(crate::cmd::drill::last_json)
        .collect::<Vec<_>>());
    Ok((outcome_of(&v), value))
}

/// Verifies `vault` and prints what was found (JSON with `--json`).
fn verify_and_show(
    cli: &Cli,
    args: &VerifyArgs,
    vault: &embassy_core::engine::vault::Vault,
    behind: Option<&Behind>,
) -> Result<Outcome> {
    if cli.json {
        let (outcome, value) = verify_json(cli, args, vault, behind)?;
        print_json(value)?;
        return Ok(outcome);
    }
    if let Some(b) = behind {
        println!(
            "BEHIND: {} queued for this site on this machine{}: it lacks writes it missed while \
             it was down, which the other sites hold; behind, not damaged. What it holds is \
             verified as it stands, not against the newer history verified here.\nhint: {}",
            embassy_core::text::count(b.queued_objects as u64, "missed object", "missed objects"),
            b.full_sync.as_deref().map_or(String::new(), |why| format!(
                ", and a full comparison ({why})"
            )),
            crate::hints::catch_up_pending()
        );
    }
    let mut v = verify_vault(cli, args, vault)?;
    let queued_wal = behind.map_or_else(Vec::new, |b| {
        embassy_ops::verify::set_aside_queued_wal(&mut v, &b.queued, b.full_sync.is_some())
    });
    for line in &queued_wal {
        println!("BEHIND: {}", output::escape(line));
    }
    let ok = v.is_ok();
    let report = &v.vault;
    {
        println!(
            "checked {} objects ({}){}",
            report.objects_checked,
            output::size(report.bytes_checked),
            if args.deep {
                format!(", {} chunks decrypted", report.blobs_checked)
            } else {
                String::new()
            }
        );
        for d in &report.datasets {
            println!(
                "dataset {}: {} ledger entries, head {}, {} versions complete{}",
                output::escape(&d.name),
                d.entries,
                d.head.as_deref().map_or("-", |h| &h[..16]),
                d.versions_complete,
                d.checkpoint
                    .as_deref()
                    .map_or(String::new(), |c| format!(", {c}"))
            );
        }
        // The newest signed drill of each dataset, from the accepted histories (no keys).
        for d in embassy_ops::drill::last_drills(vault).unwrap_or_default() {
            println!("{}", crate::cmd::drill::last_line(&d));
        }
        if report.is_ok() && !report.unreferenced.is_empty() {
            println!(
                "{} objects are not referenced by any version (left by interrupted backups; reused by the next backup)",
                report.unreferenced.len()
            );
        }
        if !report.noise.is_empty() {
            println!(
                "noise: {} objects at the site that no valid signer made or that are not part of the accepted history (no effect; they may be removed):",
                report.noise.len()
            );
            for n in &report.noise {
                println!("  NOISE (ignored): {}", output::escape(n));
            }
        }
        for n in &report.notes {
            println!("note: {}", output::escape(n));
        }
        for p in &report.problems {
            println!("PROBLEM: {}", output::escape(p));
        }
        for u in &report.unreadable {
            println!("NOT CHECKED: {}", output::escape(u));
        }
        for (dataset, r) in &v.wal {
            pg::print_wal_report(Some(dataset), r);
        }
        if ok {
            println!("vault OK");
        } else if !v.found_damage() {
            println!(
                "{} objects could not be read or checked this time (the site busy or down, or \
                 $TMPDIR full): no damage found; verify again once the site answers",
                report.unreadable.len()
            );
        } else {
            println!(
                "{} found: repair this site from another site, or restore an older version",
                output::count(v.problem_count() as u64, "problem", "problems")
            );
        }
    }
    Ok(outcome_of(&v))
}
