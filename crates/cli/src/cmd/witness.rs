//! `embassy witness` (verify without keys, streamed WAL included, cosign the newest checkpoint) and
//! `embassy witness-key`: parse, embassy-ops's witness operations, render.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use embassy_ops::witness::{Pass, WitnessOptions, WitnessReport};
use serde_json::json;

use crate::{expected_vault_id, open_vault, output, print_json, secrets, Cli};

/// Arguments of `embassy witness`.
#[derive(Args)]
pub struct WitnessArgs {
    /// The witness's key file (made with `embassy witness-key --out FILE`).
    #[arg(long)]
    pub witness_key: PathBuf,
    /// Read every object this time. Otherwise the witness reads only what it has not verified
    /// before (its memory lives in the state folder) and checks the rest by listing.
    #[arg(long)]
    pub full: bool,
    /// Read every object when the last full check is this old (e.g. 7d, 12h).
    #[arg(long, value_name = "DURATION", default_value = "7d")]
    pub full_every: String,
    /// Also read every object after this many runs that did not.
    #[arg(long, value_name = "N")]
    pub full_every_runs: Option<u32>,
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
    let options = WitnessOptions {
        full: args.full,
        full_every_secs: embassy_core::duration::parse_duration(&args.full_every)?,
        full_every_runs: args.full_every_runs,
        ..WitnessOptions::new(Some(crate::state_dir(cli)?))
    };
    let vault = open_vault(cli)?;
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let run = secrets::with_rule(cli.passphrase_file.as_deref(), |pass| {
        embassy_ops::witness::witness(&vault, &args.witness_key, pass, &options, &bar)
    });
    bar.finish();
    let run = run?;
    if let Pass::Full { why } = &run.pass {
        eprintln!("note: reading every object: {}", output::escape(why));
    }
    for n in &run.notes {
        eprintln!("note: {}", output::escape(n));
    }
    match run.outcome {
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
            let v = &verification.vault;
            if cli.json {
                print_json(json!({
                    "ok": true,
                    "checkpoint": checkpoint,
                    "witness": witness,
                    "pass": run.pass,
                    "objects_read": v.objects_checked,
                    "bytes_read": v.bytes_checked,
                    "objects_remembered": v.objects_remembered,
                    "bytes_remembered": v.bytes_remembered,
                }))?;
            } else {
                println!(
                    "verified {} objects ({} read{}); cosigned checkpoint {} of {}",
                    v.objects_checked + v.objects_remembered,
                    output::size(v.bytes_checked),
                    if v.objects_remembered > 0 {
                        format!(
                            ", {} verified before and checked by listing",
                            v.objects_remembered
                        )
                    } else {
                        String::new()
                    },
                    checkpoint_short,
                    output::time(checkpoint_time_ns)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
