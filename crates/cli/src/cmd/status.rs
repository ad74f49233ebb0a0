//! `embassy status`: per dataset and site, the newest version, the recovery point (embassy-ops:
//! streamed WAL included) and its age; with `--config`, freshness against each dataset's RPO
//! as the agent judges it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use embassy_ops::status::StatusRow;
use serde_json::json;

use crate::{agent, catchup, output, print_json, state_dir, Cli};

/// Arguments of `embassy status`.
#[derive(Args)]
pub struct StatusArgs {
    /// The agent's embassy.toml: judge every dataset at every site against its RPO.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs `embassy status`.
pub fn run(cli: &Cli, args: &StatusArgs) -> Result<ExitCode> {
    match &args.config {
        Some(c) => Ok(agent::status(c, cli.json)),
        None => sites(cli),
    }
}

/// Per dataset and site: newest version, recovery point and age. Each site is read on its own,
/// so a site that lags shows it.
fn sites(cli: &Cli) -> Result<ExitCode> {
    if cli.site.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH (repeat for each site)",
        ));
    }
    let now = embassy_core::format::config::now_unix_nanos();
    let state = state_dir(cli)?;
    let rows =
        embassy_ops::status::site_rows(&cli.site, cli.key_file.as_deref(), Some(&state), now);
    let healthy = !rows.iter().any(StatusRow::is_error);
    let (queue_rows, queue_lines) = if cli.site.len() > 1 {
        catchup::queue_rows(&state_dir(cli)?, &cli.site)?
    } else {
        (Vec::new(), Vec::new())
    };
    if cli.json {
        print_json(json!({"ok": healthy, "datasets": rows, "queues": queue_rows}))?;
    } else {
        println!(
            "{:<24} {:<40} {:>8}  {:<20}  {:>10}",
            "DATASET", "SITE", "VERSION", "RECOVERY POINT", "AGE"
        );
        for row in &rows {
            match row {
                StatusRow::Error(r) => println!(
                    "{:<24} {:<40} ERROR: {}",
                    r.dataset.as_deref().unwrap_or("-"),
                    r.site,
                    output::escape(&r.error)
                ),
                StatusRow::Dataset(r) => println!(
                    "{:<24} {:<40} {:>8}  {:<20}  {:>10}",
                    r.dataset,
                    r.site,
                    r.newest_version.map_or("-".into(), |v| v.to_string()),
                    r.recovery_point.as_deref().unwrap_or("-"),
                    r.lag_seconds.map_or("-".to_string(), age)
                ),
            }
        }
        for line in &queue_lines {
            println!("{line}");
        }
    }
    // 3 only for damage or tampering (core's error policy); a site without a vault is 10; a
    // site that cannot be read is 1.
    Ok(if healthy {
        ExitCode::SUCCESS
    } else if rows.iter().any(StatusRow::is_integrity_problem) {
        crate::exit::code(crate::exit::INTEGRITY)
    } else if rows.iter().any(StatusRow::is_no_vault) {
        crate::exit::code(crate::exit::NO_VAULT)
    } else {
        crate::exit::code(crate::exit::FAILURE)
    })
}

/// An age for people: seconds, minutes or hours.
fn age(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
