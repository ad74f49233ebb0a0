//! `embassy drill DATASET...`: restore drills (embassy-ops's `drill`): the newest version of
//! each dataset restored into a scratch folder, checked byte for byte (a PostgreSQL dataset:
//! replayed, started and checked, see `embassy_ops::pgdrill`), RTO and RPO measured, and the
//! result signed into the ledger. `embassy drill --report`: the newest recorded drill
//! of every dataset, read without keys, as a table for an auditor (or JSON).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use embassy_core::{Error, Result};
use embassy_ops::drill::{DrillKind, DrillReport, DrillRequest, LastDrill};
use embassy_ops::pgdrill::PgDrillOptions;
use serde_json::json;

use crate::{open_vault, output, print_json, state_dir, unlock, Cli};

/// Arguments of `embassy drill`.
#[derive(Args)]
pub struct DrillArgs {
    /// The datasets to drill.
    #[arg(required_unless_present = "report")]
    pub datasets: Vec<String>,
    /// Print the newest recorded drill of every dataset (no keys needed) instead of drilling.
    #[arg(long, conflicts_with_all = ["datasets", "scratch", "no_record"])]
    pub report: bool,
    /// Folder for the scratch copies (default: `drills` in the state folder); each drill
    /// makes a private sub-folder there and removes it when done.
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    /// Drill the newest version even when no witnessed checkpoint covers it yet.
    #[arg(long)]
    pub unwitnessed: bool,
    /// Report the drill without recording it in the ledger.
    #[arg(long)]
    pub no_record: bool,
    /// PostgreSQL: an SQL check that must return true on the restored server (for example
    /// `select count(*) > 0 from persons`). Repeatable; a false or failing check fails the drill.
    #[arg(long = "check", value_name = "SQL")]
    pub checks: Vec<String>,
    /// PostgreSQL: the database the SQL checks run in.
    #[arg(long, value_name = "DB", default_value = "postgres")]
    pub check_database: String,
    /// PostgreSQL: the user the restored server runs as (default: postgres when run as root).
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
}

/// Runs `embassy drill`: exit 3 when a drill failed, 1 when a result could not be recorded.
pub fn run(cli: &Cli, args: &DrillArgs) -> Result<ExitCode> {
    let vault = open_vault(cli)?;
    if args.report {
        return report(cli, &vault);
    }
    let scratch = match &args.scratch {
        Some(d) => d.clone(),
        None => state_dir(cli)?.join("drills"),
    };
    for dataset in &args.datasets {
        vault.require_dataset(dataset)?;
    }
    let keyring = unlock(cli, &vault)?;
    let postgres = match embassy_ops::pgrestore::owner(args.owner.as_deref()) {
        Ok(owner) => {
            let mut options = PgDrillOptions::new(crate::pgrestore::fetch_setup(cli)?, owner);
            options.checks = args.checks.clone();
            options.check_database = args.check_database.clone();
            Some(options)
        }
        // Only a PostgreSQL dataset needs the server's user.
        Err(_) if args.owner.is_none() => None,
        Err(e) => return Err(e),
    };
    let mut reports = Vec::new();
    for dataset in &args.datasets {
        let request = DrillRequest {
            dataset,
            scratch: &scratch,
            allow_unwitnessed: args.unwitnessed,
            record: !args.no_record,
            postgres: postgres.as_ref(),
        };
        let report = embassy_ops::drill::run(&vault, &request, &keyring)?;
        if !cli.json {
            show(&report);
        }
        reports.push(report);
    }
    let failed = reports.iter().any(|r| !r.result.passed);
    let unrecorded = reports.iter().any(|r| r.not_recorded.is_some());
    if cli.json {
        print_json(json!({
            "ok": !failed && !unrecorded,
            "drills": reports.iter().map(report_json).collect::<Vec<_>>(),
        }))?;
    }
    Ok(if failed {
        crate::exit::code(crate::exit::INTEGRITY)
    } else if unrecorded {
        crate::exit::code(crate::exit::FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}

fn show(r: &DrillReport) {
    println!(
        "drill of {}@{}: {} (RTO {} ms, RPO {} ms, {}, {}{})",
        output::escape(&r.dataset),
        r.version,
        if r.result.passed { "PASSED" } else { "FAILED" },
        r.result.rto_ms,
        r.result.rpo_ms,
        output::count(r.files, "file", "files"),
        output::size(r.bytes),
        r.result
            .lsn
            .map(|l| format!(", replayed to {}", embassy_postgres::Lsn(l)))
            .unwrap_or_default()
    );
    for c in &r.result.checks {
        println!(
            "  {} {}: {}",
            if c.passed { "ok  " } else { "FAIL" },
            output::escape(&c.name),
            output::escape(&c.detail)
        );
    }
    if r.kind == DrillKind::Postgres {
        for t in &r.tables {
            println!(
                "  rows {}.{}: {}",
                output::escape(&t.database),
                output::escape(&t.table),
                t.rows
            );
        }
    }
    match (&r.recorded, &r.not_recorded) {
        (Some(seq), _) => println!("  recorded as ledger entry {seq}"),
        (None, Some(why)) => println!("  NOT RECORDED: {}", output::escape(why)),
        (None, None) => println!("  not recorded (--no-record)"),
    }
}

fn report_json(r: &DrillReport) -> serde_json::Value {
    json!({
        "dataset": r.dataset,
        "kind": r.kind,
        "version": r.version,
        "passed": r.result.passed,
        "rto_ms": r.result.rto_ms,
        "rpo_ms": r.result.rpo_ms,
        "files": r.files,
        "bytes": r.bytes,
        "lsn": r.result.lsn.map(|l| embassy_postgres::Lsn(l).to_string()),
        "tables": r.tables,
        "checks": r.result.checks.iter().map(|c| json!({
            "name": c.name, "passed": c.passed, "detail": c.detail,
        })).collect::<Vec<_>>(),
        "host": r.result.host,
        "tool": r.result.tool,
        "recorded_seq": r.recorded,
        "not_recorded": r.not_recorded,
    })
}

/// One recorded drill as JSON (`drill --report`, `verify`).
pub fn last_json(d: &LastDrill) -> serde_json::Value {
    json!({
        "dataset": d.dataset,
        "time": embassy_core::time::utc(d.time_ns),
        "seq": d.seq,
        "passed": d.result.passed,
        "version": d.version,
        "version_seq": d.result.version_seq,
        "lsn": d.result.lsn,
        "rto_ms": d.result.rto_ms,
        "rpo_ms": d.result.rpo_ms,
        "checks": d.result.checks.iter().map(|c| json!({
            "name": c.name, "passed": c.passed, "detail": c.detail,
        })).collect::<Vec<_>>(),
        "host": d.result.host,
        "tool": d.result.tool,
        "signer": d.signer,
    })
}

/// One recorded drill in a line (`verify`).
pub fn last_line(d: &LastDrill) -> String {
    format!(
        "last drill of {}: {} at {}, version {}, RTO {} ms, RPO {} ms, host {}",
        output::escape(&d.dataset),
        if d.result.passed { "PASSED" } else { "FAILED" },
        embassy_core::time::utc(d.time_ns),
        d.version.map_or_else(
            || format!("entry {}", d.result.version_seq),
            |v| v.to_string()
        ),
        d.result.rto_ms,
        d.result.rpo_ms,
        output::escape(&d.result.host)
    )
}

/// `drill --report`: the auditor's table.
fn report(cli: &Cli, vault: &embassy_core::engine::vault::Vault) -> Result<ExitCode> {
    let drills = embassy_ops::drill::last_drills(vault)?;
    let never = embassy_ops::drill::never_drilled(vault)?;
    if cli.json {
        print_json(json!({
            "ok": true,
            "drills": drills.iter().map(last_json).collect::<Vec<_>>(),
            "never_drilled": never,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![[
        "DATASET",
        "LAST DRILL (UTC)",
        "RESULT",
        "RTO",
        "RPO",
        "VERSION",
        "HOST",
        "SIGNER",
    ]
    .map(String::from)];
    for d in &drills {
        rows.push([
            output::escape(&d.dataset).into_owned(),
            embassy_core::time::utc(d.time_ns),
            if d.result.passed { "passed" } else { "FAILED" }.to_string(),
            format!("{} ms", d.result.rto_ms),
            format!("{} ms", d.result.rpo_ms),
            d.version.map_or_else(
                || format!("entry {}", d.result.version_seq),
                |v| v.to_string(),
            ),
            output::escape(&d.result.host).into_owned(),
            d.signer.get(..16).unwrap_or(&d.signer).to_string(),
        ]);
    }
    for n in &never {
        let mut row = [(); 8].map(|()| "-".to_string());
        row[0] = output::escape(n).into_owned();
        row[2] = "never drilled".into();
        rows.push(row);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if drills.is_empty() && never.is_empty() {
        return Err(Error::invalid("the vault holds no datasets"));
    }
    Ok(ExitCode::SUCCESS)
}
