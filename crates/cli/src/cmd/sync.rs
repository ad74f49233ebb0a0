//! `embassy sync --from A --to B [--repair] [--seed]` and `embassy sync --pending`: copying objects
//! between sites without keys.

use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use serde_json::json;

use crate::{catchup, output, print_json, state_dir, Cli};

/// Arguments of `embassy sync`.
#[derive(Args)]
pub struct SyncArgs {
    /// The site to copy from.
    #[arg(long, required_unless_present = "pending")]
    pub from: Option<String>,
    /// The site to copy to.
    #[arg(long, required_unless_present = "pending")]
    pub to: Option<String>,
    /// Also read every object at TO and replace damaged ones.
    #[arg(long)]
    pub repair: bool,
    /// Seed TO when it holds no vault yet (a new site: a missing or empty folder, an empty
    /// bucket or prefix). Without it such a site is refused, since it is more often a disk that
    /// is not mounted or a mistyped path.
    #[arg(long)]
    pub seed: bool,
    /// Drain the catch-up queues of the --site sites (kept in the state folder).
    #[arg(long, conflicts_with_all = ["from", "to", "repair", "seed"])]
    pub pending: bool,
}

/// Runs `embassy sync`.
pub fn run(cli: &Cli, args: &SyncArgs) -> Result<ExitCode> {
    if args.pending {
        return catchup::sync_pending(&state_dir(cli)?, &cli.site, cli.json, cli.quiet);
    }
    sync(
        cli,
        args.from.as_deref().unwrap_or_default(),
        args.to.as_deref().unwrap_or_default(),
        args.repair,
        args.seed,
    )
}

fn sync(cli: &Cli, from: &str, to: &str, repair: bool, seed: bool) -> Result<ExitCode> {
    let source = embassy_sites::open(from)?;
    let target = embassy_sites::open(to)?;
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let copy = if seed {
        embassy_core::engine::sync::seed
    } else {
        embassy_core::engine::sync::sync
    };
    let report = copy(source.as_ref(), target.as_ref(), repair, &bar)?;
    bar.finish();
    if cli.json {
        let mut value = serde_json::to_value(&report).map_err(|e| Error::invalid(e.to_string()))?;
        value["ok"] = json!(report.problems.is_empty());
        print_json(value)?;
    } else {
        println!(
            "{} -> {}: copied {} objects ({}), {} already there, {} repaired",
            source.location(),
            target.location(),
            report.copied,
            output::size(report.bytes),
            report.present,
            report.repaired
        );
        for p in &report.problems {
            println!("PROBLEM: {}", output::escape(p));
        }
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        crate::exit::code(crate::exit::INTEGRITY)
    })
}
