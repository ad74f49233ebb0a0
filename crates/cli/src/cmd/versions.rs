//! `embassy versions [DATASET]`: the versions of one dataset, or of all.

use std::process::ExitCode;

use clap::Args;
use embassy_core::Result;
use serde_json::json;

use crate::{open_vault, output, print_json, Cli};

/// Arguments of `embassy versions`.
#[derive(Args)]
pub struct VersionsArgs {
    /// Dataset name; all datasets when omitted.
    pub dataset: Option<String>,
}

/// Runs `embassy versions`.
pub fn run(cli: &Cli, args: &VersionsArgs) -> Result<ExitCode> {
    let vault = open_vault(cli)?;
    let names = match &args.dataset {
        Some(d) => {
            vault.require_dataset(d)?;
            vec![d.clone()]
        }
        None => vault.datasets()?,
    };
    let mut all = Vec::new();
    for name in &names {
        let (versions, problems) = vault.versions_full(name)?;
        // Never an older version shown as the newest in silence (invariant 12).
        for p in &problems {
            eprintln!(
                "WARNING: dataset {name}: newer entries exist that cannot be proved; only the versions before them are listed: {p}"
            );
        }
        all.extend(versions);
    }
    if cli.json {
        // An object, not a bare list, so it carries `"ok": true` like every JSON answer.
        let versions: Vec<serde_json::Value> = all.iter().map(output::version_json).collect();
        print_json(json!({ "versions": versions }))?;
    } else if all.is_empty() {
        println!("no versions yet");
    } else {
        print!("{}", output::version_rows(&all));
    }
    Ok(ExitCode::SUCCESS)
}
