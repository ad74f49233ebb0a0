//! `embassy pg base-backup`, the PostgreSQL side of `embassy restore`, `embassy standby` and
//! `embassy promote`. Thin: the logic is in `embassy_postgres::{base_backup, restore, standby}`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use embassy_core::vault::Vault;
use embassy_core::{Error, Result};
use embassy_postgres::base_backup::{self, format_lsn, parse_lsn, BaseBackupOptions, WalSource};
use embassy_postgres::restore::{self, Mode, PgRestore, PgRestoreOptions, RecoveryTarget};
use embassy_postgres::standby;
use embassy_postgres::PgError;
use serde_json::json;

use crate::{output, Cli};

/// Arguments of `embassy pg base-backup`.
#[derive(Args)]
pub struct BaseBackupArgs {
    /// Dataset the base backup is a version of.
    pub dataset: String,
    /// libpq connection string of a role with REPLICATION (`host=db1 user=embassy ...`).
    #[arg(long, env = "EMBASSY_PG_CONNINFO")]
    pub conninfo: String,
    /// The WAL from the backup's start to its end comes from the dataset's streamed WAL
    /// (`embassy pg stream`); by default it is stored inside the version, so the base backup
    /// restores on its own.
    #[arg(long)]
    pub wal_streamed: bool,
    /// The pg_basebackup program (default: PostgreSQL's bindir, then PATH).
    #[arg(long)]
    pub pg_basebackup: Option<PathBuf>,
}

/// Arguments of `embassy standby`.
#[derive(Args)]
pub struct StandbyArgs {
    /// The PostgreSQL dataset.
    pub dataset: String,
    /// New or empty folder for the standby's data directory.
    #[arg(long)]
    pub to: PathBuf,
    /// Owner of the data directory (default: postgres when run as root).
    #[arg(long)]
    pub owner: Option<String>,
}

/// Arguments of `embassy promote`.
#[derive(Args)]
pub struct PromoteArgs {
    /// The PostgreSQL dataset the standby follows.
    pub dataset: String,
    /// The standby's data directory (its server must be running).
    #[arg(long)]
    pub data: PathBuf,
    /// Connection used to check that it accepts writes (default: its Unix socket).
    #[arg(long)]
    pub conninfo: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

fn pg_error(e: PgError) -> Error {
    match e {
        PgError::Vault(e) => e,
        other => Error::Source {
            what: "PostgreSQL".into(),
            problem: other.to_string(),
        },
    }
}

fn unlock(cli: &Cli, vault: &Vault) -> Result<embassy_core::vault::Keyring> {
    crate::secrets::unlock(
        vault.config(),
        cli.key_file.as_deref(),
        cli.passphrase_file.as_deref(),
    )
}

/// `embassy pg base-backup DATASET --conninfo ...`
pub fn base_backup(cli: &Cli, args: &BaseBackupArgs) -> Result<ExitCode> {
    let vault = crate::open_vault(cli)?;
    let keyring = unlock(cli, &vault)?;
    let mut options = BaseBackupOptions::new(args.conninfo.clone());
    options.pg_basebackup = args.pg_basebackup.clone();
    if args.wal_streamed {
        options.wal = WalSource::Streamed;
    }
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let done = base_backup::base_backup(&vault, &keyring, &args.dataset, &options, &bar)
        .map_err(pg_error)?;
    bar.finish();
    let v = &done.version;
    if cli.json {
        crate::print_json(json!({
            "ok": true,
            "version": output::version_json(v),
            "start_lsn": format_lsn(done.info.start_lsn),
            "stop_lsn": format_lsn(done.info.stop_lsn),
            "timeline": done.info.timeline,
            "system_identifier": done.info.system_identifier.to_string(),
            "wal_included": done.info.wal_included,
        }))?;
    } else {
        println!(
            "base backup stored as version {} of {}: {} files, {}; {} new ({} stored); WAL {}..{} on timeline {}{}",
            v.seq,
            v.dataset,
            v.stats.files,
            output::size(v.stats.bytes),
            v.stats.new_chunks,
            output::size(v.stats.new_bytes_stored),
            format_lsn(done.info.start_lsn),
            format_lsn(done.info.stop_lsn),
            done.info.timeline,
            if done.info.wal_included { ", WAL inside" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The `restore_command` for data directories written from this vault: this very program
/// with the same sites, key file, passphrase file and (when PostgreSQL runs as this same user)
/// state folder, as absolute paths. Checked first by running it as `owner` (see [`preflight`]).
fn restore_command(
    cli: &Cli,
    dataset: &str,
    owner: Option<(u32, u32)>,
    data_dir: &Path,
) -> Result<String> {
    let (program, args) = restore_program(cli, owner)?;
    preflight(&program, &args, dataset, owner)?;
    let command = restore::restore_command(&program, &args, dataset);
    // Serve the newest, still growing WAL segment too (--partial), and fetch the next complete
    // segments ahead into a spool in pg_wal (which base backups of the server leave out).
    let spool = std::path::absolute(data_dir.join("pg_wal").join("embassy_prefetch"))
        .map_err(|e| Error::io(format!("resolving {}", data_dir.display()), e))?;
    let extra = format!(
        " wal-fetch --partial --prefetch {PREFETCH_SEGMENTS} --spool {} ",
        restore::shell_quote(&spool.to_string_lossy())
    );
    Ok(command.replace(" wal-fetch ", &extra))
}

/// Complete WAL segments fetched ahead while PostgreSQL replays (16 MiB each).
const PREFETCH_SEGMENTS: usize = 8;

/// Runs `embassy ... wal-fetch DATASET <a history file no vault holds>` with the
/// restore_command's arguments (it unlocks the keys, then answers "not there" quietly) as the user
/// PostgreSQL will run it as: a key file, passphrase file or site that user cannot read would
/// otherwise make recovery stop early and silently at the end of the base backup.
fn preflight(
    program: &Path,
    args: &[String],
    dataset: &str,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .args(["wal-fetch", dataset, "7FFFFFFF.history"])
        .arg(std::env::temp_dir().join("embassy-preflight-never-written"))
        .stdin(std::process::Stdio::null())
        .env_remove("EMBASSY_PASSPHRASE");
    if let Some((uid, gid)) = owner.filter(|(uid, _)| *uid != current_uid()) {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(gid);
        if let Some(home) = home_of(uid) {
            cmd.env("HOME", home);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| Error::io(format!("running {}", program.display()), e))?;
    // Exit 1 without a message is wal-fetch's quiet "not in the vault": keys and site worked.
    if out.status.success() || (out.status.code() == Some(1) && out.stderr.trim_ascii().is_empty())
    {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "PostgreSQL's restore_command would fail: `embassy wal-fetch` with its settings, \
         run as the data directory's owner (uid {}), says: {}; make the key file, passphrase \
         file and site readable by that user (or restore with --owner)",
        owner.map_or(current_uid(), |o| o.0),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The home folder of a user, from the password database.
fn home_of(uid: u32) -> Option<PathBuf> {
    // SAFETY: getpwuid returns NULL or a pointer to static storage, read at once on this thread.
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null; pw_dir is a NUL-terminated string or NULL.
    let dir = unsafe { (*pw).pw_dir };
    if dir.is_null() {
        return None;
    }
    // SAFETY: as above.
    let bytes = unsafe { std::ffi::CStr::from_ptr(dir) }.to_bytes();
    Some(PathBuf::from(std::ffi::OsStr::new(
        std::str::from_utf8(bytes).ok()?,
    )))
}

/// The program and global arguments of the restore_command.
fn restore_program(cli: &Cli, owner: Option<(u32, u32)>) -> Result<(PathBuf, Vec<String>)> {
    let program =
        std::env::current_exe().map_err(|e| Error::io("finding the path of this program", e))?;
    let absolute = |p: &Path| -> Result<String> {
        std::path::absolute(p)
            .map(|a| a.display().to_string())
            .map_err(|e| Error::io(format!("resolving {}", p.display()), e))
    };
    let mut args = Vec::new();
    for site in &cli.site {
        args.push("--site".to_string());
        if site.contains("://") {
            args.push(site.clone());
        } else {
            args.push(absolute(Path::new(site))?);
        }
    }
    if let Some(min) = cli.min_sites {
        args.push("--min-sites".into());
        args.push(min.to_string());
    }
    match &cli.key_file {
        Some(k) => {
            args.push("--key-file".into());
            args.push(absolute(k)?);
        }
        None => {
            return Err(Error::invalid(
                "PostgreSQL's restore_command needs the key file's path: pass --key-file FILE \
                 (readable by the database's owner)",
            ))
        }
    }
    match &cli.passphrase_file {
        Some(p) => {
            args.push("--passphrase-file".into());
            args.push(absolute(p)?);
        }
        None => {
            return Err(Error::invalid(
                "PostgreSQL's restore_command cannot answer a passphrase prompt: pass \
                 --passphrase-file FILE (readable by the database's owner)",
            ))
        }
    }
    // The state folder remembers verified histories. Another user keeps its own, named
    // explicitly: PostgreSQL may run restore_command with another user's HOME.
    match owner.filter(|(uid, _)| *uid != current_uid()) {
        None => {
            if let Some(state) = &cli.state_dir {
                args.push("--state-dir".into());
                args.push(absolute(state)?);
            }
        }
        Some((uid, _)) => {
            if let Some(home) = home_of(uid) {
                args.push("--state-dir".into());
                args.push(home.join(".local/state/data-embassy").display().to_string());
            }
        }
    }
    args.push("--quiet".into());
    Ok((program, args))
}

/// uid and gid of a user name (or a number).
fn owner(name: Option<&str>) -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let name = match name {
        Some(n) => n,
        None if root => "postgres",
        None => return Ok(None),
    };
    let c = std::ffi::CString::new(name)
        .map_err(|_| Error::invalid("the owner's name has a NUL byte"))?;
    // SAFETY: c is a valid C string; getpwnam returns NULL or a pointer to static storage we
    // read at once, on this thread, before any other passwd call.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return Err(Error::invalid(format!(
            "no user {name} on this machine: pass --owner USER, the user PostgreSQL runs as"
        )));
    }
    // SAFETY: pw is non-null and points to a valid passwd record (see above).
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

/// The PostgreSQL recovery target from `embassy restore`'s flags.
pub fn recovery_target(
    time: Option<&str>,
    lsn: Option<&str>,
    latest: bool,
) -> Result<Option<RecoveryTarget>> {
    Ok(match (time, lsn, latest) {
        (Some(t), None, false) => Some(RecoveryTarget::Time(
            restore::parse_time(t).map_err(pg_error)?,
        )),
        (None, Some(l), false) => Some(RecoveryTarget::Lsn(parse_lsn(l).map_err(pg_error)?)),
        (None, None, true) => Some(RecoveryTarget::Latest),
        (None, None, false) => None,
        _ => {
            return Err(Error::invalid(
                "give one of --time, --lsn and --latest, not several",
            ))
        }
    })
}

/// True if this version is a PostgreSQL base backup.
pub fn is_base_backup(reader: &embassy_core::reader::VersionReader) -> bool {
    reader
        .manifest
        .properties
        .get(base_backup::PROP_BASE_BACKUP)
        .is_some_and(|v| v == "1")
}

fn report(cli: &Cli, done: &PgRestore, what: &str, next: &str) -> Result<()> {
    if cli.json {
        crate::print_json(json!({
            "ok": true,
            "version": output::version_json(&done.version),
            "data_dir": done.data_dir,
            "start_lsn": format_lsn(done.info.start_lsn),
            "stop_lsn": format_lsn(done.info.stop_lsn),
            "settings": done.settings,
        }))
    } else {
        println!(
            "{what} {} from base backup version {} (WAL {}..{}); {next}",
            done.data_dir.display(),
            done.version.seq,
            format_lsn(done.info.start_lsn),
            format_lsn(done.info.stop_lsn),
        );
        Ok(())
    }
}

/// `embassy restore DATASET --time T | --lsn L | --latest --to DIR` for PostgreSQL datasets.
pub fn restore(
    cli: &Cli,
    dataset: &str,
    target: RecoveryTarget,
    to: Option<&Path>,
    owner_name: Option<&str>,
    allow_unwitnessed: bool,
) -> Result<ExitCode> {
    let dir = to.ok_or_else(|| {
        Error::invalid("restoring a PostgreSQL dataset needs --to DIR (the new data directory)")
    })?;
    let vault = crate::open_vault(cli)?;
    let keyring = unlock(cli, &vault)?;
    let owner = owner(owner_name)?;
    let options = PgRestoreOptions {
        mode: Mode::Recover(target),
        restore_command: restore_command(cli, dataset, owner, dir)?,
        owner,
        allow_unwitnessed,
    };
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let done =
        restore::restore(&vault, &keyring, dataset, dir, &options, &bar).map_err(pg_error)?;
    bar.finish();
    report(
        cli,
        &done,
        "restored PostgreSQL data directory",
        "start PostgreSQL on it: it replays the vault's WAL to the target and opens for writes",
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `embassy standby DATASET --to DIR`
pub fn standby(cli: &Cli, args: &StandbyArgs) -> Result<ExitCode> {
    let vault = crate::open_vault(cli)?;
    let keyring = unlock(cli, &vault)?;
    let owner = owner(args.owner.as_deref())?;
    let command = restore_command(cli, &args.dataset, owner, &args.to)?;
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let done = standby::standby(
        &vault,
        &keyring,
        &args.dataset,
        &args.to,
        &command,
        owner,
        &bar,
    )
    .map_err(pg_error)?;
    bar.finish();
    report(
        cli,
        &done,
        "standby data directory",
        "start PostgreSQL on it: it follows the vault; `embassy promote` brings it live",
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `embassy promote DATASET --data DIR`
pub fn promote(cli: &Cli, args: &PromoteArgs) -> Result<ExitCode> {
    let vault = crate::open_vault(cli)?;
    let keyring = unlock(cli, &vault)?;
    let done = standby::promote(
        &vault,
        &keyring,
        &args.dataset,
        &args.data,
        args.conninfo.as_deref(),
        Duration::from_secs(args.timeout),
    )
    .map_err(pg_error)?;
    if cli.json {
        crate::print_json(json!({
            "ok": true,
            "timeline": done.timeline,
            "lsn": format_lsn(done.lsn),
            "seconds": done.elapsed.as_secs_f64(),
            "ledger_seq": done.seq,
        }))?;
    } else {
        println!(
            "promoted {}: accepts writes on timeline {} from {} after {:.1} s; recorded as entry {} of {}",
            args.data.display(),
            done.timeline,
            format_lsn(done.lsn),
            done.elapsed.as_secs_f64(),
            done.seq,
            args.dataset
        );
    }
    Ok(ExitCode::SUCCESS)
}
