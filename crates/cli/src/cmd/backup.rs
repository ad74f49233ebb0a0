//! `embassy backup DATASET PATHS... | --stdin | --command CMD`: a new version of a dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use embassy_sources::{files, stream};
use serde_json::json;

use crate::{open_vault, output, print_json, unlock, Cli};

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

/// Runs `embassy backup`.
pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let show_progress = !cli.quiet && !cli.json;
    let dataset = &args.dataset;
    let vault = open_vault(cli)?;
    let keyring = unlock(cli, &vault)?;
    let bar = output::Bar::new(show_progress);
    let (version, warnings) = if args.stdin {
        let v = stream::backup_reader(
            &vault,
            &keyring,
            dataset,
            std::io::stdin().lock(),
            "stdin",
            &bar,
        )?;
        (v, Vec::new())
    } else if let Some(command) = &args.command {
        (
            stream::backup_command(&vault, &keyring, dataset, command, None, &bar)?,
            Vec::new(),
        )
    } else if args.paths.is_empty() {
        return Err(Error::invalid(
            "nothing to back up: give PATHs, --stdin or --command CMD",
        ));
    } else {
        let b = files::backup(&vault, &keyring, dataset, &args.paths, &bar)?;
        (b.version, b.warnings)
    };
    bar.finish();
    for w in &warnings {
        eprintln!("warning: {}", output::escape(w));
    }
    let mut lagging = vault.site().lagging();
    lagging.sort();
    lagging.dedup_by(|a, b| a.0 == b.0);
    let complete = cli
        .site
        .iter()
        .find(|s| {
            !lagging
                .iter()
                .any(|(l, _)| l.ends_with(s.trim_start_matches("file://")))
        })
        .cloned()
        .unwrap_or_else(|| "<a complete site>".into());
    for (site, why) in &lagging {
        eprintln!("warning: site {site} is behind ({why}); catch it up with `embassy sync --from {complete} --to {site}`");
    }
    if !lagging.is_empty() && cli.site.len() > 1 {
        eprintln!(
            "warning: the writes they missed are queued in the state folder: `embassy sync \
             --pending` (or the agent) copies them from the other sites"
        );
    }
    if cli.json {
        let mut value = output::version_json(&version);
        value["warnings"] = json!(warnings);
        print_json(value)?;
    } else {
        println!(
            "{} version {} stored: {}, {} ({} read, {} new stored), id {}",
            version.dataset,
            version.number,
            output::count(version.stats.files, "file", "files"),
            output::size(version.stats.bytes),
            output::size(version.stats.bytes_read),
            output::size(version.stats.new_bytes_stored),
            version.manifest.short()
        );
    }
    Ok(ExitCode::SUCCESS)
}
