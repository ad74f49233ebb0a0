//! `embassy pg ...` (PostgreSQL datasets) and `embassy wal-fetch` (PostgreSQL's
//! `restore_command`). Thin: the logic is in the `embassy-postgres` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use embassy_core::{Error, Result};
use embassy_postgres::fetch::{self, FetchOptions, Fetched};
use embassy_postgres::replay::FromSpool;
use embassy_postgres::replication::ConnConfig;
use embassy_postgres::stream::{StreamConfig, WalStreamer};
use embassy_postgres::PgError;
use serde_json::json;

use crate::Cli;

/// PostgreSQL datasets.
#[derive(Subcommand)]
pub enum PgCommand {
    /// Stream WAL continuously into the vault through a physical replication slot; PostgreSQL
    /// is told WAL is flushed only once it is durable on the sites the vault requires. Runs
    /// until SIGINT or SIGTERM.
    Stream(PgStreamArgs),
    /// Continuous WAL per site: last durable LSN, when it was captured, lag behind the server.
    WalStatus(PgWalStatusArgs),
    /// Check a dataset's WAL without keys: names, hashes, signatures, the hash chain, the ledger
    /// anchors and gaps (exit 3 on a problem).
    VerifyWal(PgVerifyWalArgs),
    /// Take a base backup (BASE_BACKUP, tablespaces included) and store it as a version;
    /// relation files are stored page by page, so only changed pages take new space.
    BaseBackup(crate::pgrestore::BaseBackupArgs),
}

/// Arguments of `embassy pg wal-status`.
#[derive(Args)]
pub struct PgWalStatusArgs {
    /// Dataset.
    pub dataset: String,
    /// Ask this server for its current position to compute the lag (a replication role).
    #[arg(long, env = "EMBASSY_PG_CONNINFO")]
    pub conninfo: Option<String>,
}

/// Arguments of `embassy pg verify-wal`.
#[derive(Args)]
pub struct PgVerifyWalArgs {
    /// Dataset.
    pub dataset: String,
}

/// Arguments of `embassy pg stream`.
#[derive(Args)]
pub struct PgStreamArgs {
    /// Dataset the WAL belongs to.
    pub dataset: String,
    /// libpq-style connection string of a role with REPLICATION
    /// (`host=db1 port=5432 user=embassy password=...`; also PGPASSWORD).
    #[arg(long, env = "EMBASSY_PG_CONNINFO")]
    pub conninfo: String,
    /// The physical replication slot.
    #[arg(long, default_value = "embassy")]
    pub slot: String,
    /// Create the slot if it does not exist.
    #[arg(long)]
    pub create_slot: bool,
    /// Seal buffered WAL at most this many milliseconds after it arrived.
    #[arg(long, default_value_t = 200)]
    pub max_delay_ms: u64,
    /// Append `<end lsn> <unix ns>` for every durable log object to this file (benchmarks).
    #[arg(long)]
    pub durable_log: Option<PathBuf>,
}

pub use crate::replay::WalFetchArgs;

/// `wal-fetch`'s exit status when it cannot answer: above 125, so PostgreSQL aborts recovery
/// (FATAL) instead of taking the file for missing and ending recovery early. Exit 1 means only
/// that the vault proves the file does not exist.
pub const WAL_FETCH_STOP_RECOVERY: u8 = 200;

/// Runs a `pg` subcommand.
pub fn run(cli: &Cli, command: &PgCommand) -> Result<ExitCode> {
    match command {
        PgCommand::Stream(args) => stream(cli, args),
        PgCommand::WalStatus(args) => wal_status(cli, args),
        PgCommand::VerifyWal(args) => verify_wal(cli, args),
        PgCommand::BaseBackup(args) => crate::pgrestore::base_backup(cli, args),
    }
}

fn stream(cli: &Cli, args: &PgStreamArgs) -> Result<ExitCode> {
    let vault = crate::open_vault(cli)?;
    let keyring = crate::unlock(cli, &vault)?;
    let conn = ConnConfig::parse(&args.conninfo).map_err(Error::from)?;
    let mut cfg = StreamConfig::new(&args.dataset, conn, &args.slot);
    cfg.create_slot = args.create_slot;
    cfg.max_delay = Duration::from_millis(args.max_delay_ms.clamp(10, 1000));
    cfg.durable_log = args.durable_log.clone();
    // SAFETY: installing an async-signal-safe handler (one atomic store) at startup.
    unsafe {
        libc::signal(
            libc::SIGINT,
            crate::stop::on_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            crate::stop::on_signal as *const () as libc::sighandler_t,
        );
    }
    if !cli.quiet && !cli.json {
        eprintln!(
            "streaming WAL of {} from {} (slot {}) into the vault; stop with Ctrl-C",
            args.dataset,
            cfg.conn.address(),
            args.slot
        );
    }
    let progress =
        WalStreamer::run(&cfg, &vault, &keyring, &crate::stop::STOP).map_err(Error::from)?;
    if cli.json {
        crate::print_json(json!({
            "ok": true,
            "dataset": args.dataset,
            "timeline": progress.timeline,
            "durable_lsn": progress.durable.to_string(),
            "objects": progress.objects,
            "bytes": progress.bytes,
        }))?;
    } else if !cli.quiet {
        eprintln!(
            "stopped: WAL durable up to {} on timeline {} ({} objects, {} bytes this run)",
            progress.durable, progress.timeline, progress.objects, progress.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `embassy wal-fetch DATASET %f %p`: exit 0 with the file written, exit 1 quietly when the
/// vault proves it does not hold it. Any other failure (a site unreachable after retrying for
/// `--retry-seconds`, damage, a key problem) is printed naming the site and exits
/// [`WAL_FETCH_STOP_RECOVERY`], so PostgreSQL stops instead of promoting short of the WAL;
/// except for a standby that is following (`standby.signal` and no `promote.signal` in the
/// data directory, where PostgreSQL runs restore_command), which exits 1 and asks again.
pub fn wal_fetch(cli: &Cli, args: &WalFetchArgs) -> Result<ExitCode> {
    let deadline = std::time::Instant::now() + Duration::from_secs(args.retry_seconds);
    let mut pause = Duration::from_millis(500);
    let e = loop {
        match wal_fetch_once(cli, args) {
            Ok(code) => return Ok(code),
            Err(e) if transient(&e) && std::time::Instant::now() + pause < deadline => {
                if !args.serve_spool {
                    eprintln!("embassy wal-fetch {}: {e}; retrying", args.wal_file);
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => break e,
        }
    };
    if args.serve_spool {
        return Err(Error::from(e)); // the helper: nobody reads its exit status
    }
    let sites = cli.site.join(", ");
    let following = std::path::Path::new("standby.signal").is_file()
        && !std::path::Path::new("promote.signal").is_file();
    if following {
        eprintln!(
            "embassy wal-fetch {}: cannot fetch it from site {sites}: {e}; the standby asks again",
            args.wal_file
        );
        return Ok(ExitCode::from(1));
    }
    eprintln!(
        "embassy wal-fetch {}: cannot fetch it from site {sites}: {e}; PostgreSQL's recovery is \
         stopped here rather than ended short of the vault's WAL: make the site reachable (or \
         restore from another site) and start the server again, it resumes where it stopped",
        args.wal_file
    );
    Ok(ExitCode::from(WAL_FETCH_STOP_RECOVERY))
}

/// A failure that may pass by itself: a site that is unreachable, timing out or busy.
fn transient(e: &PgError) -> bool {
    use embassy_core::site::SiteError::Retryable;
    matches!(
        e,
        PgError::Site(Retryable { .. }) | PgError::Vault(Error::Site(Retryable { .. }))
    )
}

/// One try of `wal-fetch`; errors stay [`PgError`]s, so they print as themselves.
fn wal_fetch_once(cli: &Cli, args: &WalFetchArgs) -> std::result::Result<ExitCode, PgError> {
    if args.serve_spool {
        return crate::replay::helper(cli, args);
    }
    let spool = if args.prefetch > 0 {
        crate::replay::spool(cli, args)
    } else {
        None
    };
    if let Some(spool) = &spool {
        match spool.serve(&args.wal_file, &args.dest, crate::replay::WAIT) {
            FromSpool::Served => return fetched(cli, args, Fetched::Complete),
            FromSpool::Direct => {}
            FromSpool::NoHelper => crate::replay::start_helper(),
        }
    }
    let vault = crate::open_vault(cli)?;
    let keyring = crate::unlock(cli, &vault)?;
    if spool.is_some() {
        crate::replay::note(
            cli,
            &format!("vault unlocked: direct fetch of {}", args.wal_file),
        );
    }
    let opts = FetchOptions {
        partial: args.partial,
    };
    let got = fetch::fetch(
        &vault,
        &keyring,
        &args.dataset,
        &args.wal_file,
        &args.dest,
        &opts,
    )?;
    fetched(cli, args, got)
}

/// `wal-fetch`'s answer for what was fetched.
fn fetched(cli: &Cli, args: &WalFetchArgs, got: Fetched) -> std::result::Result<ExitCode, PgError> {
    match got {
        Fetched::NotFound => Ok(ExitCode::from(1)),
        Fetched::Complete | Fetched::Partial { .. } => {
            if cli.json {
                crate::print_json(
                    json!({"ok": true, "file": args.wal_file, "partial": matches!(got, Fetched::Partial { .. })}),
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn wal_status(cli: &Cli, args: &PgWalStatusArgs) -> Result<ExitCode> {
    embassy_core::format::layout::check_dataset_name(&args.dataset)?;
    let mut sites = Vec::new();
    for location in &cli.site {
        sites.push((location.clone(), embassy_sites::open(location)?));
    }
    if sites.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH or set EMBASSY_SITE",
        ));
    }
    let server = match &args.conninfo {
        Some(c) => Some(
            embassy_postgres::status::server_lsn(&ConnConfig::parse(c).map_err(Error::from)?)
                .map_err(Error::from)?,
        ),
        None => None,
    };
    let st = embassy_postgres::status::wal_status(&sites, &args.dataset, server);
    if cli.json {
        crate::print_json(json!({
            "dataset": st.dataset,
            "server_lsn": st.server_lsn.map(|l| l.to_string()),
            "lag_bytes": st.lag_bytes,
            "lag_seconds": st.lag_seconds,
            "sites": st.sites.iter().map(|s| json!({
                "site": s.site, "timeline": s.timeline, "durable_lsn": s.durable.to_string(),
                "captured_at": embassy_core::time::utc(s.captured_at_ns),
            })).collect::<Vec<_>>(),
            "errors": st.errors.iter().map(|(s, e)| json!({"site": s, "error": e})).collect::<Vec<_>>(),
        }))?;
    } else {
        for s in &st.sites {
            println!(
                "{}: timeline {}, durable to {} (captured {})",
                s.site,
                s.timeline,
                s.durable,
                embassy_core::time::utc(s.captured_at_ns)
            );
        }
        for (site, e) in &st.errors {
            println!("{site}: {e}");
        }
        if let (Some(server), Some(bytes), Some(secs)) =
            (st.server_lsn, st.lag_bytes, st.lag_seconds)
        {
            println!("server at {server}: lag {bytes} bytes, {secs:.1} s");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The WAL part of a verification report as JSON.
fn wal_report_json(report: &embassy_postgres::wal::WalVerifyReport) -> serde_json::Value {
    json!({
        "ok": report.is_ok(),
        "objects_ok": report.objects_ok,
        "problems": report.problems,
        "noise": report.noise,
        "overlapping": report.overlapping,
        "gaps": report.gaps.iter().map(|(tl, a, b)| json!({"timeline": tl, "from": a.to_string(), "to": b.to_string()})).collect::<Vec<_>>(),
        "ends": report.ends.iter().map(|(tl, e)| json!({"timeline": tl, "end": e.to_string()})).collect::<Vec<_>>(),
        "retention_cutoff": embassy_postgres::Lsn(report.cutoff.lsn).to_string(),
    })
}

/// The WAL part of `embassy verify`: JSON per dataset, or lines for people.
pub fn wal_reports_json(
    reports: &[(String, embassy_postgres::wal::WalVerifyReport)],
) -> serde_json::Value {
    reports
        .iter()
        .map(|(d, r)| (d.clone(), wal_report_json(r)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Prints a WAL check for people: its extent, then every problem and gap.
pub fn print_wal_report(dataset: Option<&str>, report: &embassy_postgres::wal::WalVerifyReport) {
    let of = dataset.map_or(String::new(), |d| format!(" of dataset {d}"));
    println!("{} WAL objects{of} check out", report.objects_ok);
    for (tl, e) in &report.ends {
        println!("timeline {tl}: up to {e}");
    }
    if report.cutoff.lsn > 0 {
        println!(
            "WAL before {} collected by retention (not needed): cut-off {}",
            embassy_postgres::Lsn(report.cutoff.lsn),
            report.cutoff.describe()
        );
    }
    for p in &report.problems {
        println!("PROBLEM: {}", embassy_core::text::escape(&p.to_string()));
    }
    for n in &report.noise {
        println!(
            "  NOISE (ignored): {}",
            embassy_core::text::escape(&n.to_string())
        );
    }
    for o in &report.overlapping {
        println!(
            "  OVERLAP (not compared without a key): {}",
            embassy_core::text::escape(o)
        );
    }
    for (tl, a, b) in &report.gaps {
        println!("GAP: timeline {tl}: {a} .. {b} missing");
    }
}

fn verify_wal(cli: &Cli, args: &PgVerifyWalArgs) -> Result<ExitCode> {
    let vault = crate::open_vault(cli)?;
    let report = embassy_postgres::wal::verify(&vault, &args.dataset).map_err(Error::from)?;
    if cli.json {
        crate::print_json(wal_report_json(&report))?;
    } else {
        print_wal_report(None, &report);
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        crate::exit::code(crate::exit::INTEGRITY)
    })
}
