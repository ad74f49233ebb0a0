//! `embassy backup DATASET PATHS... | --stdin | --command CMD`: a new version of a dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use embassy_ops::backup::{BackupReport, Lagging, Source};
use serde_json::json;

use crate::interrupt::Interruptible;
use crate::{open_options, open_vault_with, output, print_json, unlock, Cli};

/// Arguments of `embassy backup`.
#[derive(Args)]
pub struct BackupArgs {
    /// Dataset name (a-z, 0-9, '.', '_', '-').
    pub dataset: String,
    /// Files or folders to store (one folder becomes the version's root).
    pub paths: Vec<PathBuf>,
    /// Store standard input as a stream.
    #[arg(long, conflicts_with_all = ["paths", "command"])]
    pub stdin: bool,
    /// Run this shell command and store its output; no version is kept if it fails.
    #[arg(long, conflicts_with = "paths")]
    pub command: Option<String>,
}

/// Runs `embassy backup`: the source parsed, the backup run by embassy-ops, its report
/// rendered. Ctrl-C or SIGTERM stops the run before its version is recorded and says so.
pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let show_progress = !cli.quiet && !cli.json;
    let dataset = &args.dataset;
    let source = if args.stdin {
        Source::Reader {
            reader: Box::new(std::io::stdin().lock()),
            description: "stdin",
        }
    } else if let Some(command) = &args.command {
        Source::Command {
            command,
            scrub: None,
        }
    } else if args.paths.is_empty() {
        return Err(Error::invalid(
            "nothing to back up: give PATHs, --stdin or --command CMD",
        ));
    } else {
        Source::Tree(&args.paths)
    };
    let interrupt = Interruptible::new();
    let vault = open_vault_with(cli, &interrupt.open_options(open_options(cli)?))?;
    let keyring = unlock(cli, &vault)?;
    interrupt.catch(dataset, cli.json)?;
    let bar = output::Bar::new(show_progress);
    let report = match embassy_ops::backup::backup(&vault, &keyring, dataset, source, &bar) {
        Ok(report) => report,
        Err(e) => {
            bar.finish();
            return match interrupt.report(dataset, cli.json)? {
                Some(code) => Ok(code),
                None => Err(e.into()),
            };
        }
    };
    bar.finish();
    render(cli, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints what a backup recorded, its warnings, and how to catch up sites that missed writes.
pub fn render(cli: &Cli, report: &BackupReport) -> Result<()> {
    let version = &report.version;
    for w in &report.warnings {
        eprintln!("warning: {}", output::escape(w));
    }
    let complete = cli
        .site
        .iter()
        .find(|s| {
            !report
                .lagging
                .iter()
                .any(|l| l.site.ends_with(s.trim_start_matches("file://")))
        })
        .cloned()
        .unwrap_or_else(|| "<a complete site>".into());
    for Lagging { site, why } in &report.lagging {
        eprintln!("warning: site {site} is behind ({why}); catch it up with `embassy sync --from {complete} --to {site}`");
    }
    if !report.lagging.is_empty() && cli.site.len() > 1 {
        eprintln!(
            "warning: the writes they missed are queued in the state folder: `embassy sync \
             --pending` (or the agent) copies them from the other sites"
        );
    }
    if cli.json {
        let mut value = output::version_json(version);
        value["warnings"] = json!(report.warnings);
        print_json(value)?;
    } else {
        println!(
            "{} version {} stored: {} files, {} ({} read, {} new stored), id {}",
            version.dataset,
            version.number,
            version.stats.files,
            output::size(version.stats.bytes),
            output::size(version.stats.bytes_read),
            output::size(version.stats.new_bytes_stored),
            version.manifest.short()
        );
    }
    Ok(())
}
