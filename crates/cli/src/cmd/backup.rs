//! `embassy backup DATASET PATHS... | --stdin | --command CMD`: a new version of a dataset.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use embassy_ops::backup::{BackupReport, Lagging, Source};
use embassy_sources::files;
use serde_json::json;

use crate::interrupt::Interruptible;
use crate::{open_options, open_vault, open_vault_with, output, print_json, unlock, Cli};

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
    /// Leave out paths matching this pattern (gitignore-style, relative to the folder backed
    /// up: `*.tmp`, `/build`, `logs/**/*.gz`, `cache/`, `!keep.tmp`). Repeatable.
    #[arg(long, value_name = "PATTERN", conflicts_with_all = ["stdin", "command"])]
    pub exclude: Vec<String>,
    /// Leave out paths matching the patterns in FILE (one a line, `#` comments). Repeatable.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["stdin", "command"])]
    pub exclude_file: Vec<PathBuf>,
    /// Leave out the content of folders holding a valid CACHEDIR.TAG (the tag itself is kept).
    #[arg(long, conflicts_with_all = ["stdin", "command"])]
    pub exclude_caches: bool,
    /// Do not cross into other file systems: a mount point is stored as an empty folder.
    #[arg(long, conflicts_with_all = ["stdin", "command"])]
    pub one_file_system: bool,
    /// List what would be stored (new and changed files, bytes), writing nothing to any site.
    #[arg(long, conflicts_with_all = ["stdin", "command"])]
    pub dry_run: bool,
    /// List the files read because they are new or changed.
    #[arg(long, short = 'v', conflicts_with_all = ["stdin", "command"])]
    pub verbose: bool,
}

impl BackupArgs {
    /// The file-tree selection these arguments ask for.
    fn selection(&self) -> Result<files::BackupSelection> {
        let mut selection = files::BackupSelection::from_parts(
            &self.exclude,
            &self.exclude_file,
            self.exclude_caches,
            self.one_file_system,
        )
        .map_err(|e| Error::invalid(e.to_string()))?;
        selection.dry_run = self.dry_run;
        Ok(selection)
    }
}

/// The new and changed files, one a line: `new|changed SIZE PATH`.
fn print_changed(changed: &[files::Changed]) {
    for c in changed {
        println!(
            "{:<7} {:>10}  {}",
            if c.new { "new" } else { "changed" },
            output::size(c.size),
            output::escape(&c.path.display().to_string())
        );
    }
}

fn changed_json(changed: &[files::Changed]) -> serde_json::Value {
    json!(changed
        .iter()
        .map(|c| json!({"path": c.path, "size": c.size, "new": c.new}))
        .collect::<Vec<_>>())
}

/// `embassy backup --dry-run`: what a backup of PATHS would store; nothing is written.
fn dry_run(cli: &Cli, args: &BackupArgs, selection: &files::BackupSelection) -> Result<ExitCode> {
    if args.paths.is_empty() {
        return Err(Error::invalid(
            "a dry run needs the PATHs a backup would store",
        ));
    }
    let vault = open_vault(cli)?;
    let keyring = unlock(cli, &vault)?;
    let plan = files::dry_run(&vault, &keyring, &args.dataset, &args.paths, selection)?;
    for w in &plan.warnings {
        eprintln!("warning: {}", output::escape(w));
    }
    let changed_bytes: u64 = plan.changed.iter().map(|c| c.size).sum();
    if cli.json {
        return print_json(json!({
            "dry_run": true,
            "dataset": args.dataset,
            "files": plan.files,
            "dirs": plan.dirs,
            "bytes": plan.bytes,
            "changed_files": plan.changed.len(),
            "changed_bytes": changed_bytes,
            "changed": changed_json(&plan.changed),
            "warnings": plan.warnings,
        }))
        .map(|()| ExitCode::SUCCESS);
    }
    print_changed(&plan.changed);
    println!(
        "dry run, nothing stored: {} would hold {} files, {}; {} new or changed files, {} to read",
        args.dataset,
        plan.files,
        output::size(plan.bytes),
        plan.changed.len(),
        output::size(changed_bytes)
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `embassy backup`: the source parsed, the backup run by embassy-ops, its report
/// rendered. Ctrl-C or SIGTERM stops the run before its version is recorded and says so.
pub fn run(cli: &Cli, args: &BackupArgs) -> Result<ExitCode> {
    let selection = args.selection()?;
    if args.dry_run {
        return dry_run(cli, args, &selection);
    }
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
        Source::Tree {
            paths: &args.paths,
            selection: &selection,
        }
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
    render(cli, &report, args.verbose)?;
    Ok(ExitCode::SUCCESS)
}

/// Prints what a backup recorded, its warnings, and how to catch up sites that missed writes;
/// `verbose` also lists the files read because they were new or changed.
pub fn render(cli: &Cli, report: &BackupReport, verbose: bool) -> Result<()> {
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
        if verbose {
            value["changed"] = changed_json(&report.changed);
        }
        print_json(value)?;
    } else {
        if verbose {
            print_changed(&report.changed);
        }
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
    Ok(())
}
