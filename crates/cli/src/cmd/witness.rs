//! `embassy witness` (verify without keys, streamed WAL included, cosign the newest checkpoint) and
//! `embassy witness-key`: parse, embassy-ops's witness operations, render.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use embassy_ops::witness::WitnessReport;
use serde_json::json;

use crate::{expected_vault_id, open_vault, output, print_json, secrets, Cli};

/// Arguments of `embassy witness`.
#[derive(Args)]
pub struct WitnessArgs {
    /// The witness's key file (made with `embassy witness-key --out FILE`).
    #[arg(long)]
    pub witness_key: PathBuf,
}

/// Arguments of `embassy witness-key`.
#[derive(Args)]
pub struct WitnessKeyArgs {
    /// Where to write the key file.
    #[arg(long)]
    pub out: PathBuf,
}

/// `embassy witness-key --out FILE`
pub fn witness_key(cli: &Cli, args: &WitnessKeyArgs) -> Result<ExitCode> {
    // Bound to one vault when --vault-id is given: it then refuses to witness any other.
    let bound = expected_vault_id(cli)?;
    let report = secrets::with_rule(cli.passphrase_file.as_deref(), |pass| {
        embassy_ops::witness::make_key(&args.out, pass, bound.as_deref())
    })?;
    if cli.json {
        print_json(
            json!({"ok": true, "key_file": report.key_file, "public_key": report.public_key}),
        )?;
    } else {
        println!("witness key written to {}", report.key_file.display());
        println!("public key: {}", report.public_key);
        println!(
            "pin it in a vault with: embassy init --witness {} --witness-quorum 1",
            report.public_key
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `embassy witness --witness-key FILE`
pub fn witness(cli: &Cli, args: &WitnessArgs) -> Result<ExitCode> {
    let vault = open_vault(cli)?;
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let report = secrets::with_rule(cli.passphrase_file.as_deref(), |pass| {
        embassy_ops::witness::witness(&vault, &args.witness_key, pass, &bar)
    });
    bar.finish();
    match report? {
        WitnessReport::NotChecked(verification) => {
            for u in &verification.vault.unreadable {
                eprintln!("NOT CHECKED: {}", output::escape(u));
            }
            // An outage, not damage: nothing is vouched for, and the exit status says "try again".
            Err(Error::Site(embassy_core::site::SiteError::Retryable {
                site: vault.site().location().to_string(),
                operation: "verify",
                path: String::new(),
                message: format!(
                    "{} objects could not be read or checked; nothing was cosigned: run the \
                     witness again once the site answers",
                    verification.vault.unreadable.len()
                ),
            }))
        }
        WitnessReport::Damaged(verification) => {
            let problems = verification.problems();
            for p in &problems {
                eprintln!("PROBLEM: {}", output::escape(p));
            }
            Err(Error::History {
                dataset: "(vault)".into(),
                problem: format!(
                    "{} found; nothing was cosigned",
                    output::count(problems.len() as u64, "problem", "problems")
                ),
            })
        }
        WitnessReport::Cosigned {
            verification,
            checkpoint,
            checkpoint_short,
            checkpoint_time_ns,
            witness,
        } => {
            for n in &verification.vault.noise {
                eprintln!("noise: {}", output::escape(n));
            }
            if cli.json {
                print_json(json!({"ok": true, "checkpoint": checkpoint, "witness": witness}))?;
            } else {
                println!(
                    "verified {} objects; cosigned checkpoint {} of {}",
                    verification.vault.objects_checked,
                    checkpoint_short,
                    output::time(checkpoint_time_ns)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
