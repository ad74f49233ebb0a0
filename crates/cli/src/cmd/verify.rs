//! `embassy verify [--deep]`: the vault's objects, ledgers and streamed WAL (embassy-ops's
//! verification, the same as the agent's scheduled one).

use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use serde_json::json;

use crate::{open_vault, output, pg, print_json, unlock, Cli};

/// Arguments of `embassy verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Also decrypt and check every chunk (needs the key).
    #[arg(long)]
    pub deep: bool,
}

/// Runs `embassy verify`: exit 3 when something is wrong.
pub fn run(cli: &Cli, args: &VerifyArgs) -> Result<ExitCode> {
    let vault = open_vault(cli)?;
    let keyring = if args.deep {
        Some(unlock(cli, &vault)?)
    } else {
        None
    };
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let v = embassy_ops::verify::verify(&vault, keyring.as_ref(), &bar)?;
    bar.finish();
    let ok = v.is_ok();
    let report = &v.vault;
    if cli.json {
        let mut value = serde_json::to_value(report).map_err(|e| Error::invalid(e.to_string()))?;
        value["ok"] = json!(ok);
        value["wal"] = pg::wal_reports_json(&v.wal);
        value["deep"] = json!(args.deep);
        print_json(value)?;
    } else {
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
    // 3 only for damage (core's error policy); what could not be read is an outage: 1.
    Ok(if ok {
        ExitCode::SUCCESS
    } else if v.found_damage() {
        crate::exit::code(crate::exit::INTEGRITY)
    } else {
        crate::exit::code(crate::exit::FAILURE)
    })
}
