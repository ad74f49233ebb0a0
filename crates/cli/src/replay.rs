//! The CLI half of fast replay (see `embassy_postgres::replay`): where a restore's spool is,
//! starting the long-lived fetch helper from the first `wal-fetch`, running it, and the
//! restore's fetch log (`wal-fetch.log` in the state folder: one line per vault unlock and per
//! segment the helper declined, so an operator sees whether the helper carried the replay).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use embassy_postgres::replay::{self, HelperOptions, Spool};
use embassy_postgres::PgError;

use crate::Cli;

/// Arguments of `embassy wal-fetch` (beside the fetch helper, which reads them too).
#[derive(Args)]
pub struct WalFetchArgs {
    /// Dataset.
    pub dataset: String,
    /// WAL file name PostgreSQL asks for (`%f`).
    pub wal_file: String,
    /// Where to write it (`%p`).
    pub dest: PathBuf,
    /// Serve the newest, incomplete segment zero-padded (standby, latest restore).
    #[arg(long)]
    pub partial: bool,
    /// Spool folder of the fetch helper (default: `replay-spool` in the state folder).
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// Keep this many segments fetched ahead of PostgreSQL by one long-lived helper per restore
    /// (0: every call fetches from the vault itself).
    #[arg(long, default_value_t = 0)]
    pub prefetch: usize,
    /// Segments the helper fetches at once.
    #[arg(long, default_value_t = 2)]
    pub prefetch_parallel: usize,
    /// Internal: run as the fetch helper (started by the first `wal-fetch` of a restore).
    #[arg(long, hide = true)]
    pub serve_spool: bool,
    /// Keep retrying a site that fails transiently (unreachable, timing out, busy) for this many
    /// seconds before stopping recovery.
    #[arg(long, env = "EMBASSY_WAL_FETCH_RETRY_SECONDS", default_value_t = 60)]
    pub retry_seconds: u64,
}

/// How long a `wal-fetch` waits for a segment the running helper is fetching before it asks
/// the vault itself.
pub const WAIT: Duration = Duration::from_secs(60);

/// A helper stops after this long without a request (EMBASSY_WAL_FETCH_IDLE_SECONDS).
const IDLE: Duration = Duration::from_secs(60);

/// The log beside the spool.
const LOG: &str = "wal-fetch.log";

/// The log is started afresh past this size (the previous one kept as `.old`).
const LOG_MAX: u64 = 1 << 20;

/// The spool of this `wal-fetch`: `--spool`, else `replay-spool` in the state folder (the
/// restore's private fetch folder when PostgreSQL runs it).
pub fn spool(cli: &Cli, args: &WalFetchArgs) -> Option<Spool> {
    let dir = match &args.spool {
        Some(s) => s.clone(),
        None => crate::state_dir(cli).ok()?.join("replay-spool"),
    };
    Some(Spool::new(&dir))
}

/// Starts the fetch helper in the background: this program again with the same arguments
/// and `--serve-spool`, in a session of its own (PostgreSQL's signals to its children do not
/// reach it), without stdin/stdout/stderr. Failing to start it only makes replay slower.
pub fn start_helper() {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .arg("--serve-spool")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let _ = cmd.spawn();
}

/// Appends a line to the restore's fetch log (mode 0600); best effort.
pub fn note(cli: &Cli, line: &str) {
    let Ok(dir) = crate::state_dir(cli) else {
        return;
    };
    let path = dir.join(LOG);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() > LOG_MAX) {
        let _ = std::fs::rename(&path, dir.join(format!("{LOG}.old")));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
    {
        let now = embassy_core::time::utc(embassy_core::format::config::now_unix_nanos());
        let _ = writeln!(f, "{now} pid {} {line}", std::process::id());
    }
}

/// Runs the fetch helper (`wal-fetch --serve-spool`): takes the spool's lock (another helper
/// running ends this one at once), opens the vault and unlocks once, and serves until the
/// restore is over. PostgreSQL runs `restore_command` in the data directory, so the restore is
/// over when its `recovery.signal` and `standby.signal` are gone.
pub fn helper(cli: &Cli, args: &WalFetchArgs) -> Result<std::process::ExitCode, PgError> {
    let Some(spool) = spool(cli, args) else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let Some(lock) = spool.lock()? else {
        return Ok(std::process::ExitCode::SUCCESS);
    };
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
    let vault = crate::open_vault(cli)?;
    let keyring = crate::unlock(cli, &vault)?;
    note(
        cli,
        &format!(
            "vault unlocked: fetch helper started, {} segments ahead, {} at once, spool {}",
            args.prefetch,
            args.prefetch_parallel,
            spool.dir().display()
        ),
    );
    let data_dir = std::env::current_dir().unwrap_or_default();
    let signals =
        |d: &Path| d.join("recovery.signal").exists() || d.join("standby.signal").exists();
    let recovering = signals(&data_dir);
    let restore_over = || recovering && !signals(&data_dir);
    let idle = std::env::var("EMBASSY_WAL_FETCH_IDLE_SECONDS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(IDLE, Duration::from_secs);
    let opts = HelperOptions {
        ahead: args.prefetch,
        parallel: args.prefetch_parallel,
        idle,
    };
    let first = next_segment(&args.wal_file);
    let log = |line: &str| note(cli, line);
    let report = replay::run_helper(
        &vault,
        &keyring,
        &args.dataset,
        &spool,
        &lock,
        &opts,
        first.as_deref(),
        &restore_over,
        &crate::stop::STOP,
        &log,
    )?;
    note(
        cli,
        &format!(
            "fetch helper stopped ({}): {} segments spooled, {} left to direct fetches, spool removed",
            report.stopped, report.spooled, report.declined
        ),
    );
    Ok(std::process::ExitCode::SUCCESS)
}

/// The segment after WAL file `name` (where the helper starts: the call that started it
/// fetches `name` itself).
fn next_segment(name: &str) -> Option<String> {
    match embassy_postgres::lsn::parse_wal_file_name(name).ok()? {
        embassy_postgres::lsn::WalFile::Segment { timeline, segno } => Some(
            embassy_postgres::lsn::segment_file_name(timeline, segno + 1),
        ),
        _ => None,
    }
}
