//! `embassy`: the Data Embassy command line. Commands are thin wrappers over the libraries.
//!
//! Exit codes: 0 success; 1 failure (the message says why and what to do); 2 bad usage;
//! 3 integrity problem found (damaged or tampered vault).

mod agent;
mod catchup;
mod hints;
mod output;
mod pg;
mod pgrestore;
mod prune;
mod secrets;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use embassy_core::config::VaultConfig;
use embassy_core::keyfile::{KdfParams, KeyFile, PURPOSE_READER, PURPOSE_SEALING, PURPOSE_WITNESS};
use embassy_core::keys::Credential;
use embassy_core::keys::RootSecret;
use embassy_core::ledger::{self, Event};
use embassy_core::manifest::VersionKind;
use embassy_core::reader::VersionReader;
use embassy_core::site::Site;
use embassy_core::state::StateStore;
use embassy_core::vault::Vault;
use embassy_core::{verify, Error, Result};
use embassy_sources::{files, stream};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "embassy",
    version,
    about = "Data Embassy: keep a state's strategic datasets alive when home is lost."
)]
struct Cli {
    /// Where the vault is: a folder path or s3://bucket/prefix (also EMBASSY_SITE). Repeat (or
    /// separate with commas) to keep the vault at several sites at once.
    #[arg(
        long,
        short = 's',
        env = "EMBASSY_SITE",
        value_delimiter = ',',
        global = true
    )]
    site: Vec<String>,
    /// With several sites: how many must hold each object before a write counts (default: all).
    #[arg(long, global = true)]
    min_sites: Option<usize>,
    /// The vault's key file (also EMBASSY_KEY_FILE); default ~/.config/data-embassy/keys/<vault-id>.key.
    #[arg(long, env = "EMBASSY_KEY_FILE", global = true)]
    key_file: Option<PathBuf>,
    /// Read the passphrase from this file (else EMBASSY_PASSPHRASE, else a prompt on a terminal).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Print results as JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Where this machine remembers the newest verified history of each vault (also
    /// EMBASSY_STATE_DIR); default ~/.local/state/data-embassy.
    #[arg(long, env = "EMBASSY_STATE_DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// The vault id (or the fingerprint `embassy init` printed) this vault must have (also
    /// EMBASSY_VAULT_ID): a site serving another vault, or a substituted configuration, is
    /// refused. Pass it on first contact with a site.
    #[arg(long, env = "EMBASSY_VAULT_ID", global = true)]
    vault_id: Option<String>,
    /// This machine pins the vault id each site held on first contact and refuses a site that
    /// later holds another; this replaces the pins of the given sites with the vault they hold
    /// now (when a vault was legitimately replaced there).
    #[arg(long, global = true)]
    forget_site_pin: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a vault at the site and a passphrase-protected key file.
    Init {
        /// A witness's public key (hex) whose cosignatures restores will count; repeatable.
        #[arg(long = "witness")]
        witnesses: Vec<String>,
        /// How many witness cosignatures a checkpoint needs before restores trust it.
        #[arg(long, default_value_t = 0)]
        witness_quorum: u32,
        /// An approver's public key (hex) whose approvals count for deletions outside the
        /// retention policy; repeatable.
        #[arg(long = "approver")]
        approvers: Vec<String>,
        /// How many distinct approvers must approve each deletion outside the policy.
        #[arg(long, default_value_t = 0)]
        approvals_required: u32,
        /// Legal minimum age of every version (e.g. 90d; default 30d): deleting a younger one
        /// needs approvals. `0` turns it off (with a warning); `embassy policy min-age` raises it
        /// later.
        #[arg(long)]
        min_age: Option<String>,
    },
    /// Apply a retention policy: record the deletion of versions it does not keep (a signed
    /// ledger entry); `embassy gc` removes their data later.
    Prune(prune::PruneArgs),
    /// Remove objects no remaining version needs, in two phases (condemn, then delete after a
    /// grace period); safe while backups run; signs its records, so it needs a key allowed to
    /// delete (the root key file).
    Gc(prune::GcArgs),
    /// Delete versions outside the retention policy; needs the approvals the vault requires.
    Forget(prune::ForgetArgs),
    /// As an approver: sign an approval to delete versions (DATASET@N).
    Approve(prune::ApproveArgs),
    /// Signed policy changes by the root key (`policy min-age DATASET DURATION`).
    #[command(subcommand)]
    Policy(prune::PolicyCommand),
    /// Create an approver key file and print its public key (to pin with `init --approver`).
    ApproverKey(prune::ApproverKeyArgs),
    /// Store a new version of a dataset: a file tree, standard input, or a command's output.
    Backup {
        /// Dataset name (a-z, 0-9, '.', '_', '-').
        dataset: String,
        /// Files or folders to store (one folder becomes the version's root).
        paths: Vec<PathBuf>,
        /// Store standard input as a stream.
        #[arg(long, conflicts_with_all = ["paths", "command"])]
        stdin: bool,
        /// Run this shell command and store its output; no version is kept if it fails.
        #[arg(long, conflicts_with = "paths")]
        command: Option<String>,
    },
    /// List the versions of one dataset, or of all.
    Versions {
        /// Dataset name; all datasets when omitted.
        dataset: Option<String>,
    },
    /// Restore a version: DATASET or DATASET@VERSION (its number as `embassy versions` lists
    /// it, `latest`, or an id prefix).
    Restore {
        /// What to restore.
        target: String,
        /// Folder to restore a tree into; for a stream, a file (or `-` / omitted for stdout).
        #[arg(long)]
        to: Option<PathBuf>,
        /// Restore only this path inside the version.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Allow restoring into a folder that is not empty.
        #[arg(long)]
        overwrite: bool,
        /// Allow a version that no witnessed checkpoint covers yet (when the vault requires witnesses).
        #[arg(long)]
        unwitnessed: bool,
        /// PostgreSQL: recover to the last commit at or before this time (2026-11-27T03:04:05Z).
        #[arg(long, conflicts_with_all = ["lsn", "latest", "path"])]
        time: Option<String>,
        /// PostgreSQL: recover up to this WAL position (like 16/B374D848).
        #[arg(long, conflicts_with_all = ["latest", "path"])]
        lsn: Option<String>,
        /// PostgreSQL: recover to the newest WAL the vault holds.
        #[arg(long, conflicts_with = "path")]
        latest: bool,
        /// PostgreSQL: owner of the restored data directory (default: postgres when root).
        #[arg(long)]
        owner: Option<String>,
    },
    /// PostgreSQL: write a warm standby that follows the vault (`restore_command` = wal-fetch).
    Standby(pgrestore::StandbyArgs),
    /// PostgreSQL: promote a standby written by `embassy standby`; records the new timeline.
    Promote(pgrestore::PromoteArgs),
    /// Show a dataset's signed history (its ledger).
    History {
        /// Dataset name.
        dataset: String,
    },
    /// As a witness: verify the vault without keys and cosign its newest checkpoint.
    Witness {
        /// The witness's key file (made with `embassy witness-key --out FILE`).
        #[arg(long)]
        witness_key: PathBuf,
    },
    /// Custody of the keys: custodian shares, credentials, revocation.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Copy to site TO every object of the vault at site FROM that TO lacks (no keys needed):
    /// seeds a new site, catches up one that was down; --repair also replaces damaged copies.
    /// With --pending: catch up each --site from the others by its queue of missed writes.
    Sync {
        /// The site to copy from.
        #[arg(long, required_unless_present = "pending")]
        from: Option<String>,
        /// The site to copy to.
        #[arg(long, required_unless_present = "pending")]
        to: Option<String>,
        /// Also read every object at TO and replace damaged ones.
        #[arg(long)]
        repair: bool,
        /// Drain the catch-up queues of the --site sites (kept in the state folder).
        #[arg(long, conflicts_with_all = ["from", "to", "repair"])]
        pending: bool,
    },
    /// Per dataset and site: the newest version, its recovery point, and how old it is.
    /// With --config: freshness against each dataset's RPO (what the agent serves).
    Status {
        /// The agent's embassy.toml: judge every dataset at every site against its RPO.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// PostgreSQL datasets: continuous WAL streaming (and base backups, restore, standby).
    #[command(subcommand)]
    Pg(pg::PgCommand),
    /// PostgreSQL's restore_command: write WAL file %f of DATASET to %p from the vault (exit 1
    /// quietly when the vault does not hold it yet).
    WalFetch(pg::WalFetchArgs),
    /// Run the agent: every dataset of embassy.toml on schedule, alarms, status page.
    Agent {
        /// The configuration file.
        #[arg(long, default_value = "embassy.toml")]
        config: PathBuf,
        /// One cycle (every periodic dataset once, one verification), then exit.
        #[arg(long)]
        once: bool,
    },
    /// The agent's configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create a witness key file and print its public key (to pin with `init --witness`).
    WitnessKey {
        /// Where to write the key file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check the vault without keys; with --deep, also decrypt and check every chunk.
    Verify {
        /// Also decrypt and check every chunk (needs the key).
        #[arg(long)]
        deep: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check embassy.toml: prints a summary, or every problem with file:line:column (exit 2).
    Check {
        /// The configuration file.
        #[arg(default_value = "embassy.toml")]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Split the root key into N custodian shares, any K of which recover it.
    Split {
        /// Shares needed to recover (K).
        #[arg(long)]
        threshold: u8,
        /// Shares to make (N).
        #[arg(long)]
        shares: u8,
    },
    /// Recover the root key from K custodian shares and write a new key file.
    Recover {
        /// A share text; repeat for each. Without any, shares are read from stdin, one a line.
        #[arg(long = "share")]
        shares: Vec<String>,
        /// Where to write the recovered key file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Issue a credential: `--sealing` for a source host (adds, never reads) or `--reader`.
    Issue {
        /// A sealing credential: adds versions and streams WAL, cannot decrypt, and cannot delete
        /// unless `--may-delete` is given.
        #[arg(long, conflicts_with = "reader", required_unless_present = "reader")]
        sealing: bool,
        /// Also grant the sealing credential the right to delete versions (prune, forget), still
        /// bound by the retention policy, the legal minimum age and the approvals.
        #[arg(long, requires = "sealing")]
        may_delete: bool,
        /// A reader credential: decrypts the named datasets, cannot add.
        #[arg(long)]
        reader: bool,
        /// A dataset it covers; repeat for more.
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
        /// Who or what it is for (a host or team name).
        #[arg(long)]
        label: String,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Passphrase for the new credential file (default: the same passphrase).
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Rotate datasets' reader keys: new versions are sealed to a new key; old ones stay readable.
    Rotate {
        /// A dataset; repeat for more.
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
    },
    /// Revoke a signing key (a sealing credential) for datasets: its later entries are rejected.
    Revoke {
        /// The key's public half (hex), as `keys issue` printed it.
        #[arg(long)]
        signer: String,
        /// A dataset; repeat for more.
        #[arg(long = "dataset", required = true)]
        datasets: Vec<String>,
        /// Why, for the record.
        #[arg(long, default_value = "revoked")]
        reason: String,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`)
    // instead of failing a write.
    // SAFETY: setting a signal disposition to its default at startup, before any threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Keys, passphrases (EMBASSY_PASSPHRASE in our environment) and plaintext live in this
    // process: other processes of the same user (a source or alarm command, code in a restored
    // database) must not read them through /proc/PID/environ or /proc/PID/mem, nor ptrace us.
    // Not dumpable: only root can. Children get their own, scrubbed environment.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    // Pack buffers (16 MiB and more) are allocated and freed by different threads. With glibc's
    // dynamic threshold they end up in per-thread heaps that are never returned to the system;
    // a fixed threshold keeps them as mappings that are released when freed (peak RSS on the
    // registry corpus fell from 171 to the figures in bench/README.md).
    // SAFETY: a malloc tuning call at startup, before any allocation-heavy work or threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 * 1024 * 1024);
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                let _ = writeln!(
                    std::io::stdout(),
                    "{}",
                    json!({"ok": false, "error": e.to_string(), "integrity": e.is_integrity(), "kind": e.kind().as_str(), "hint": hints::for_error(&e)})
                );
            }
            eprintln!("error: {}", output::escape(&e.to_string()));
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {}", output::escape(&s.to_string()));
                source = s.source();
            }
            if let Some(hint) = hints::for_error(&e) {
                eprintln!("  hint: {}", output::escape(&hint));
            }
            ExitCode::from(if e.is_integrity() { 3 } else { 1 })
        }
    }
}

/// Opens the vault at the site, remembering verified heads in the state folder.
/// The state folder: --state-dir, else the default.
fn state_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.state_dir {
        Some(d) => Ok(d.clone()),
        None => StateStore::default_dir().ok_or_else(|| {
            Error::invalid("no home directory for the state folder: pass --state-dir DIR")
        }),
    }
}

fn open_vault(cli: &Cli) -> Result<Vault> {
    let vault = Vault::open(open_site(cli)?)?;
    let dir = state_dir(cli)?;
    // Writers on this host take turns at each ledger through lock files in the state folder.
    embassy_core::ledger::use_lock_folder(dir.join("locks"));
    check_vault_id(cli, vault.site().location(), &vault.config().vault_id)?;
    secrets::check_given_key_file(cli.key_file.as_deref(), vault.config())?;
    let state = StateStore::open(&dir, &vault.config().vault_id)?;
    Ok(vault.with_state(state))
}

/// The vault id given with --vault-id (or EMBASSY_VAULT_ID), parsed.
fn expected_vault_id(cli: &Cli) -> Result<Option<String>> {
    cli.vault_id
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .map(|text| {
            embassy_core::config::parse_vault_id(text).ok_or_else(|| {
                Error::invalid(format!(
                    "--vault-id {text} is not a vault id: give the 32 hex digits (or the grouped \
                     fingerprint) that `embassy init` printed"
                ))
            })
        })
        .transpose()
}

/// Refuses a vault that is not the one expected with --vault-id, or not the one each site held
/// on first contact (pinned in the state folder); pins the sites met for the first time.
fn check_vault_id(cli: &Cli, location: &str, vault_id: &str) -> Result<()> {
    if let Some(expected) = expected_vault_id(cli)? {
        if expected != vault_id {
            return Err(Error::SubstitutedConfig {
                site: location.to_string(),
                problem: format!(
                    "it holds vault {vault_id}, but vault {expected} was expected (--vault-id)"
                ),
            });
        }
    }
    let dir = state_dir(cli)?;
    for site in &cli.site {
        embassy_core::state::pin_site(&dir, site, vault_id, cli.forget_site_pin)?;
    }
    Ok(())
}

fn open_site(cli: &Cli) -> Result<Arc<dyn Site>> {
    open_sites(cli, false)
}

fn open_sites(cli: &Cli, creating: bool) -> Result<Arc<dyn Site>> {
    if cli.site.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH or set EMBASSY_SITE",
        ));
    }
    let min = cli.min_sites.unwrap_or(cli.site.len());
    // Several sites: missed writes are queued per site in the state folder.
    let queue_dir = if cli.site.len() > 1 {
        Some(state_dir(cli)?)
    } else {
        None
    };
    Ok(embassy_sites::open_many_queued(
        &cli.site,
        min,
        creating,
        queue_dir.as_deref(),
    )?)
}
fn print_json(value: serde_json::Value) -> Result<()> {
    writeln!(std::io::stdout(), "{value}").map_err(|e| Error::io("writing to stdout", e))
}

fn run(cli: &Cli) -> Result<ExitCode> {
    let show_progress = !cli.quiet && !cli.json;
    match &cli.command {
        Command::Init {
            witnesses,
            witness_quorum,
            approvers,
            approvals_required,
            min_age,
        } => init(
            cli,
            witnesses,
            *witness_quorum,
            (approvers, *approvals_required, min_age.as_deref()),
        ),
        Command::Prune(args) => prune::prune(cli, args),
        Command::Gc(args) => prune::gc(cli, args),
        Command::Forget(args) => prune::forget(cli, args),
        Command::Approve(args) => prune::approve(cli, args),
        Command::Policy(command) => prune::policy(cli, command),
        Command::ApproverKey(args) => prune::approver_key(cli, args),
        Command::History { dataset } => history(cli, dataset),
        Command::Witness { witness_key } => witness(cli, witness_key),
        Command::WitnessKey { out } => witness_key_new(cli, out),
        Command::Keys(command) => keys(cli, command),
        Command::Sync { pending: true, .. } => {
            catchup::sync_pending(&state_dir(cli)?, &cli.site, cli.json, cli.quiet)
        }
        Command::Sync {
            from, to, repair, ..
        } => sync(
            cli,
            from.as_deref().unwrap_or_default(),
            to.as_deref().unwrap_or_default(),
            *repair,
        ),
        Command::Status { config: None } => status(cli),
        Command::Status { config: Some(c) } => Ok(agent::status(c, cli.json)),
        Command::Agent { config, once } => Ok(agent::agent(config, *once)),
        Command::Pg(command) => pg::run(cli, command),
        Command::WalFetch(args) => pg::wal_fetch(cli, args),
        Command::Standby(args) => pgrestore::standby(cli, args),
        Command::Promote(args) => pgrestore::promote(cli, args),
        Command::Config(ConfigCommand::Check { file }) => Ok(agent::config_check(file, cli.json)),
        Command::Backup {
            dataset,
            paths,
            stdin,
            command,
        } => {
            let vault = open_vault(cli)?;
            let keyring = secrets::unlock(
                vault.config(),
                cli.key_file.as_deref(),
                cli.passphrase_file.as_deref(),
            )?;
            let bar = output::Bar::new(show_progress);
            let (version, warnings) = if *stdin {
                let v = stream::backup_reader(
                    &vault,
                    &keyring,
                    dataset,
                    std::io::stdin().lock(),
                    "stdin",
                    &bar,
                )?;
                (v, Vec::new())
            } else if let Some(command) = command {
                (
                    stream::backup_command(&vault, &keyring, dataset, command, None, &bar)?,
                    Vec::new(),
                )
            } else if paths.is_empty() {
                return Err(Error::invalid(
                    "nothing to back up: give PATHs, --stdin or --command CMD",
                ));
            } else {
                let b = files::backup(&vault, &keyring, dataset, paths, &bar)?;
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Versions { dataset } => {
            let vault = open_vault(cli)?;
            let names = match dataset {
                Some(d) => vec![d.clone()],
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
                print_json(json!(all
                    .iter()
                    .map(output::version_json)
                    .collect::<Vec<_>>()))?;
            } else if all.is_empty() {
                println!("no versions yet");
            } else {
                print!("{}", output::version_rows(&all));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            target,
            to,
            path,
            overwrite,
            unwitnessed,
            time,
            lsn,
            latest,
            owner,
        } => {
            let (dataset, selector) = match target.split_once('@') {
                Some((d, v)) => (d, Some(v)),
                None => (target.as_str(), None),
            };
            let pg_target = pgrestore::recovery_target(time.as_deref(), lsn.as_deref(), *latest)?;
            if let Some(t) = pg_target {
                return pgrestore::restore(
                    cli,
                    dataset,
                    t,
                    to.as_deref(),
                    owner.as_deref(),
                    *unwitnessed,
                );
            }
            let vault = open_vault(cli)?;
            let version = vault.find_trusted_version(dataset, selector, *unwitnessed)?;
            if !*unwitnessed && matches!(selector, None | Some("latest")) {
                if let Some(note) = vault.unwitnessed_note(&version)? {
                    eprintln!("note: {}", output::escape(&note));
                }
            }
            let keyring = secrets::unlock(
                vault.config(),
                cli.key_file.as_deref(),
                cli.passphrase_file.as_deref(),
            )?;
            let reader = VersionReader::open_with(vault.site().clone(), &keyring, &version)?;
            if selector.is_none() && path.is_none() && pgrestore::is_base_backup(&reader) {
                // A PostgreSQL dataset: a data directory recovering to the newest WAL.
                let latest = embassy_postgres::restore::RecoveryTarget::Latest;
                return pgrestore::restore(
                    cli,
                    dataset,
                    latest,
                    to.as_deref(),
                    owner.as_deref(),
                    *unwitnessed,
                );
            }
            let bar = output::Bar::new(show_progress);
            match (version.kind, to.as_deref().filter(|p| *p != Path::new("-"))) {
                (VersionKind::Stream, None) => {
                    let mut out = std::io::stdout().lock();
                    stream::restore_to(&reader, &mut out, &bar)?;
                }
                (VersionKind::Stream, Some(file)) => {
                    // A link there counts, dangling or not: --overwrite replaces it.
                    if std::fs::symlink_metadata(file).is_ok() && !overwrite {
                        return Err(Error::invalid(format!(
                            "{} exists: pass --overwrite to replace it",
                            file.display()
                        )));
                    }
                    // Written under a fresh random name beside it (never through a planted
                    // link) and renamed only when complete, so a failed restore never leaves a
                    // partial file under the final name.
                    let mut out = embassy_core::fsutil::NewFile::beside(file).map_err(|e| {
                        Error::io(format!("creating a file beside {}", file.display()), e)
                    })?;
                    let n = stream::restore_to(&reader, &mut out, &bar)?;
                    out.persist()
                        .map_err(|e| Error::io(format!("writing {}", file.display()), e))?;
                    report_restore(
                        cli,
                        &version,
                        json!({"bytes": n, "to": file}),
                        &format!("{} into {}", output::size(n), file.display()),
                    )?;
                }
                (VersionKind::Tree, None) => {
                    return Err(Error::invalid("restoring a file tree needs --to DIR"));
                }
                (VersionKind::Tree, Some(dir)) => {
                    let options = files::RestoreOptions {
                        subpath: path.clone(),
                        overwrite: *overwrite,
                    };
                    let stats = files::restore(&reader, dir, &options, &bar)?;
                    bar.finish();
                    report_restore(
                        cli,
                        &version,
                        json!({"files": stats.files, "dirs": stats.dirs, "bytes": stats.bytes, "to": dir}),
                        &format!(
                            "{} files, {} folders, {} into {}",
                            stats.files,
                            stats.dirs,
                            output::size(stats.bytes),
                            dir.display()
                        ),
                    )?;
                }
            }
            bar.finish();
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify { deep } => {
            let vault = open_vault(cli)?;
            let keyring = if *deep {
                Some(secrets::unlock(
                    vault.config(),
                    cli.key_file.as_deref(),
                    cli.passphrase_file.as_deref(),
                )?)
            } else {
                None
            };
            let bar = output::Bar::new(show_progress);
            let report = verify::verify(&vault, keyring.as_ref(), &bar)?;
            bar.finish();
            // Streamed WAL (PostgreSQL datasets) is part of the vault: checked the same way.
            let wal = pg::verify_wal_of(&vault, report.datasets.iter().map(|d| d.name.as_str()))?;
            let wal_ok = wal.iter().all(|(_, r)| r.is_ok());
            let ok = report.is_ok() && wal_ok;
            if cli.json {
                let mut value =
                    serde_json::to_value(&report).map_err(|e| Error::invalid(e.to_string()))?;
                value["ok"] = json!(ok);
                value["wal"] = pg::wal_reports_json(&wal);
                value["deep"] = json!(deep);
                print_json(value)?;
            } else {
                println!(
                    "checked {} objects ({}){}",
                    report.objects_checked,
                    output::size(report.bytes_checked),
                    if *deep {
                        format!(", {} chunks decrypted", report.blobs_checked)
                    } else {
                        String::new()
                    }
                );
                for d in &report.datasets {
                    println!(
                        "dataset {}: {} ledger entries, head {}, {} versions complete{}",
                        output::escape(&d.name),
                        d.entries,
                        d.head.as_deref().map_or("-", |h| &h[..16]),
                        d.versions_complete,
                        d.checkpoint
                            .as_deref()
                            .map_or(String::new(), |c| format!(", {c}"))
                    );
                }
                if report.is_ok() && !report.unreferenced.is_empty() {
                    println!(
                        "{} objects are not referenced by any version (left by interrupted backups; reused by the next backup)",
                        report.unreferenced.len()
                    );
                }
                if !report.noise.is_empty() {
                    println!(
                        "noise: {} objects at the site that no valid signer made or that are not part of the accepted history (no effect; they may be removed):",
                        report.noise.len()
                    );
                    for n in &report.noise {
                        println!("  NOISE (ignored): {}", output::escape(n));
                    }
                }
                for n in &report.notes {
                    println!("note: {}", output::escape(n));
                }
                for p in &report.problems {
                    println!("PROBLEM: {}", output::escape(p));
                }
                for (dataset, r) in &wal {
                    pg::print_wal_report(Some(dataset), r);
                }
                if ok {
                    println!("vault OK");
                } else {
                    let wal_problems: usize = wal
                        .iter()
                        .map(|(_, r)| r.problems.len() + r.gaps.len())
                        .sum();
                    println!("{} problems found: repair this site from another site, or restore an older version", report.problems.len() + wal_problems);
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
    }
}

fn report_restore(
    cli: &Cli,
    version: &embassy_core::vault::Version,
    mut detail: serde_json::Value,
    for_people: &str,
) -> Result<()> {
    if cli.json {
        detail["version"] = output::version_json(version);
        print_json(detail)
    } else {
        eprintln!(
            "restored {} version {} (ledger entry {}): {for_people}",
            version.dataset, version.number, version.seq
        );
        Ok(())
    }
}

fn history(cli: &Cli, dataset: &str) -> Result<ExitCode> {
    let vault = open_vault(cli)?;
    let history = vault.history(dataset)?;
    // Version numbers beside ledger sequence numbers: `version_added` rows carry theirs.
    let numbers = embassy_core::vault::numbers_by_seq(dataset, &history);
    let number = |seq: u64| numbers.get(&seq).copied();
    if cli.json {
        let rows: Vec<serde_json::Value> = history
            .iter()
            .map(|r| {
                json!({
                    "seq": r.entry.seq,
                    "version": number(r.entry.seq),
                    "id": r.id.to_hex(),
                    "prev": r.entry.prev.map(|p| p.to_hex()),
                    "time": output::time(r.entry.time_ns),
                    "signer": hex_key(&r.entry.signer),
                    "event": hexify(serde_json::to_value(&r.entry.event).unwrap_or_default()),
                    "refused": r.refused,
                })
            })
            .collect();
        print_json(json!(rows))?;
    } else {
        println!(
            "{:>5}  {:<20}  {:<16}  {:<16}  EVENT",
            "SEQ", "TIME (UTC)", "ENTRY", "SIGNER"
        );
        for r in &history {
            let detail = match &r.entry.event {
                embassy_core::ledger::Event::VersionAdded {
                    manifest, stats, ..
                } => format!(
                    "version added: version {}, manifest {}, {} files, {}",
                    number(r.entry.seq).unwrap_or_default(),
                    manifest.short(),
                    stats.files,
                    output::size(stats.bytes)
                ),
                embassy_core::ledger::Event::LogRangeAdded {
                    timeline,
                    start,
                    end,
                    ..
                } => {
                    format!("log range added: timeline {timeline}, {start:X}..{end:X}")
                }
                embassy_core::ledger::Event::VersionsDeleted { seqs, reason, .. } => {
                    let numbers: Vec<u64> = seqs.iter().filter_map(|s| number(*s)).collect();
                    format!("versions deleted: {numbers:?} (entries {seqs:?}; {reason})")
                }
                embassy_core::ledger::Event::SignerAdded { key, role, rights } => {
                    format!(
                        "signer added: {} ({role}; may {})",
                        hex_key(key),
                        rights
                            .iter()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
                embassy_core::ledger::Event::MinAgeChanged {
                    min_age_secs,
                    approvals,
                } => format!(
                    "min age changed to {} ({} approvals)",
                    embassy_core::duration::format_duration(*min_age_secs),
                    approvals.len()
                ),
                embassy_core::ledger::Event::SignerRevoked { key, reason } => {
                    format!("signer revoked: {} ({reason})", hex_key(key))
                }
                embassy_core::ledger::Event::ReaderKeyRotated { epoch, .. } => {
                    format!("reader key rotated to epoch {epoch}")
                }
                embassy_core::ledger::Event::Promoted {
                    timeline,
                    lsn,
                    host,
                    data_dir,
                } => format!(
                    "promoted: {host}:{data_dir} writes on timeline {timeline} from {}",
                    embassy_postgres::Lsn(*lsn)
                ),
            };
            let detail = match &r.refused {
                Some(why) => format!("{detail}; REFUSED, no effect: {why}"),
                None => detail,
            };
            println!(
                "{:>5}  {:<20}  {:<16}  {:<16}  {}",
                r.entry.seq,
                output::time(r.entry.time_ns),
                &r.id.to_hex()[..16],
                &hex_key(&r.entry.signer)[..16],
                output::escape(&detail)
            );
        }
        println!("{} entries, chain and signatures verified", history.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// Byte arrays (ids, keys) as hex strings, for JSON readers.
fn hexify(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Array(items)
            if matches!(items.len(), 8 | 32)
                && items.iter().all(|v| v.as_u64().is_some_and(|n| n < 256)) =>
        {
            let bytes: Vec<u8> = items
                .iter()
                .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()).unwrap_or(0))
                .collect();
            Value::String(hex::encode(bytes))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(hexify).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, hexify(v))).collect()),
        other => other,
    }
}

fn hex_bytes(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn hex_key(key: &[u8; 32]) -> String {
    hex::encode(key)
}

fn witness_key_new(cli: &Cli, out: &Path) -> Result<ExitCode> {
    let secret = RootSecret::generate();
    let public = ed25519_dalek_public(&secret);
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), true)?;
    // Bound to one vault when --vault-id is given: it then refuses to witness any other.
    let bound = expected_vault_id(cli)?;
    KeyFile::seal_payload(
        secret.expose(),
        PURPOSE_WITNESS,
        bound.as_deref().unwrap_or(WITNESS_KEY_ID),
        pass.as_bytes(),
        KdfParams::DEFAULT,
    )?
    .store(out)?;
    if cli.json {
        print_json(json!({"ok": true, "key_file": out, "public_key": public}))?;
    } else {
        println!("witness key written to {}", out.display());
        println!("public key: {public}");
        println!("pin it in a vault with: embassy init --witness {public} --witness-quorum 1");
    }
    Ok(ExitCode::SUCCESS)
}

/// The `vault_id` a witness key file carries.
const WITNESS_KEY_ID: &str = "witness";

fn ed25519_dalek_public(secret: &RootSecret) -> String {
    hex_key(
        &embassy_core::checkpoint::witness_signing_key(secret)
            .verifying_key()
            .to_bytes(),
    )
}

fn witness(cli: &Cli, key_path: &Path) -> Result<ExitCode> {
    let file = KeyFile::load(key_path)?;
    file.expect_purpose(PURPOSE_WITNESS, key_path)?;
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), false)?;
    let seed = file.open_payload(pass.as_bytes(), key_path)?;
    let seed = RootSecret::from_slice(&seed)
        .ok_or_else(|| Error::invalid("witness key file holds a secret of the wrong length"))?;
    let key = embassy_core::checkpoint::witness_signing_key(&seed);
    let vault = open_vault(cli)?;
    // A witness key made for one vault (`embassy --vault-id ID witness-key`) witnesses only it.
    if file.vault_id != WITNESS_KEY_ID && file.vault_id != vault.config().vault_id {
        return Err(Error::SubstitutedConfig {
            site: vault.site().location().to_string(),
            problem: format!(
                "it holds vault {}, but witness key {} was made for vault {}",
                vault.config().vault_id,
                key_path.display(),
                file.vault_id
            ),
        });
    }
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let report = verify::verify(&vault, None, &bar)?;
    bar.finish();
    if !report.is_ok() {
        for p in &report.problems {
            eprintln!("PROBLEM: {}", output::escape(p));
        }
        return Err(Error::History {
            dataset: "(vault)".into(),
            problem: format!(
                "{} problems found; nothing was cosigned",
                report.problems.len()
            ),
        });
    }
    for n in &report.noise {
        eprintln!("noise: {}", output::escape(n));
    }
    let (histories, _) = vault.histories()?;
    // The newest valid checkpoint (signed by the root or a pinned writer key, dated sanely);
    // verify above proved that the served histories extend every valid one.
    let (checkpoints, _) = vault.checkpoints(&histories)?;
    let newest = checkpoints
        .last()
        .ok_or_else(|| Error::NotFound("the vault has no valid checkpoint to cosign yet".into()))?;
    embassy_core::checkpoint::cosign(vault.site().as_ref(), &newest.id, &key)?;
    if cli.json {
        print_json(
            json!({"ok": true, "checkpoint": newest.id.to_hex(), "witness": hex_key(&key.verifying_key().to_bytes())}),
        )?;
    } else {
        println!(
            "verified {} objects; cosigned checkpoint {} of {}",
            report.objects_checked,
            newest.id.short(),
            output::time(newest.checkpoint.time_ns)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn sync(cli: &Cli, from: &str, to: &str, repair: bool) -> Result<ExitCode> {
    let source = embassy_sites::open(from)?;
    let target = embassy_sites::open(to)?;
    let bar = output::Bar::new(!cli.quiet && !cli.json);
    let report = embassy_core::sync::sync(source.as_ref(), target.as_ref(), repair, &bar)?;
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
        ExitCode::from(3)
    })
}

/// Per dataset and site: newest version, recovery point and age. Each site is read on its own,
/// so a site that lags shows it.
fn status(cli: &Cli) -> Result<ExitCode> {
    if cli.site.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH (repeat for each site)",
        ));
    }
    let now = embassy_core::config::now_unix_nanos();
    let mut rows = Vec::new();
    let mut healthy = true;
    for location in &cli.site {
        let vault = embassy_sites::open(location)
            .map_err(Error::from)
            .and_then(Vault::open)
            .and_then(|v| {
                secrets::check_given_key_file(cli.key_file.as_deref(), v.config())?;
                Ok(v)
            });
        let vault = match vault {
            Ok(v) => v,
            Err(e) => {
                healthy = false;
                rows.push(json!({"site": location, "error": e.to_string()}));
                continue;
            }
        };
        let datasets = vault.datasets()?;
        for dataset in datasets {
            match vault.history(&dataset) {
                Ok(history) => {
                    let versions = embassy_core::vault::versions_in(&dataset, &history);
                    let newest = versions.last();
                    rows.push(json!({
                        "site": location,
                        "dataset": dataset,
                        "entries": history.len(),
                        "versions": versions.len(),
                        "newest_version": newest.map(|v| v.number),
                        "newest_version_ledger_seq": newest.map(|v| v.seq),
                        "recovery_point": newest.map(|v| output::time(v.captured_at_ns)),
                        "lag_seconds": newest.map(|v| (now - v.captured_at_ns) as f64 / 1e9),
                    }));
                }
                Err(e) => {
                    healthy = false;
                    rows.push(
                        json!({"site": location, "dataset": dataset, "error": e.to_string()}),
                    );
                }
            }
        }
    }
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
        for r in &rows {
            if let Some(e) = r.get("error") {
                println!(
                    "{:<24} {:<40} ERROR: {}",
                    r["dataset"].as_str().unwrap_or("-"),
                    r["site"].as_str().unwrap_or_default(),
                    output::escape(e.as_str().unwrap_or_default())
                );
                continue;
            }
            let age = r["lag_seconds"].as_f64().map_or("-".to_string(), |s| {
                if s < 120.0 {
                    format!("{s:.0} s")
                } else if s < 7200.0 {
                    format!("{:.0} min", s / 60.0)
                } else {
                    format!("{:.1} h", s / 3600.0)
                }
            });
            println!(
                "{:<24} {:<40} {:>8}  {:<20}  {:>10}",
                r["dataset"].as_str().unwrap_or_default(),
                r["site"].as_str().unwrap_or_default(),
                r["newest_version"]
                    .as_u64()
                    .map_or("-".into(), |v| v.to_string()),
                r["recovery_point"].as_str().unwrap_or("-"),
                age
            );
        }
        for line in &queue_lines {
            println!("{line}");
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

/// The vault's root secret, from its key file (a credential is refused).
pub(crate) fn unlock_root(cli: &Cli, vault: &Vault) -> Result<RootSecret> {
    let keyring = secrets::unlock(
        vault.config(),
        cli.key_file.as_deref(),
        cli.passphrase_file.as_deref(),
    )?;
    keyring
        .root()
        .map(|r| RootSecret::from_bytes(r.expose()))
        .ok_or_else(|| {
            Error::WrongKey(
            "this needs the vault's root key file (or recovered custodian shares), not a credential"
                .into(),
        )
        })
}

fn keys(cli: &Cli, command: &KeysCommand) -> Result<ExitCode> {
    match command {
        KeysCommand::Split { threshold, shares } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            let texts = embassy_core::custody::split(root, *threshold, *shares)?;
            if cli.json {
                print_json(
                    json!({"vault_id": vault.config().vault_id, "threshold": threshold, "shares": texts}),
                )?;
            } else {
                println!(
                    "Custodian shares of vault {} ({threshold} of {shares} recover the root key).",
                    vault.config().vault_id
                );
                println!("Give each custodian one share, on paper, and keep no copy together with another.\n");
                for (i, t) in texts.iter().enumerate() {
                    println!("share {} of {shares}:\n  {t}\n", i + 1);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Recover { shares, out } => {
            let texts: Vec<String> = if shares.is_empty() {
                use std::io::BufRead;
                std::io::stdin()
                    .lock()
                    .lines()
                    .map_while(|l| l.ok())
                    .filter(|l| !l.trim().is_empty())
                    .collect()
            } else {
                shares.clone()
            };
            let root = embassy_core::custody::recover(&texts)?;
            let vault = open_vault(cli)?;
            vault.config().check_root(&root).map_err(|_| {
                Error::WrongKey(format!(
                    "the shares recombine correctly, but to the root key of another vault, not {}",
                    vault.config().vault_id
                ))
            })?;
            let pass = secrets::passphrase(cli.passphrase_file.as_deref(), true)?;
            KeyFile::seal(
                &root,
                &vault.config().vault_id,
                pass.as_bytes(),
                KdfParams::DEFAULT,
            )?
            .store(out)?;
            if cli.json {
                print_json(
                    json!({"ok": true, "vault_id": vault.config().vault_id, "key_file": out}),
                )?;
            } else {
                println!(
                    "recovered the root key of vault {}; key file written to {}",
                    vault.config().vault_id,
                    out.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Issue {
            sealing,
            may_delete,
            datasets,
            label,
            out,
            new_passphrase_file,
            ..
        } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            for d in datasets {
                embassy_core::layout::check_dataset_name(d)?;
            }
            let vault_id = vault.config().vault_id.clone();
            // Keys at each dataset's current key epoch (after `keys rotate`, the new one); a
            // reader also gets every earlier epoch's, so old versions stay readable.
            let mut epochs = Vec::new();
            for d in datasets {
                epochs.push((d.clone(), ledger::key_epoch(&vault.history(d)?)));
            }
            let credential = Credential::at_epochs(root, &vault_id, label, &epochs, !*sealing);
            let purpose = if *sealing {
                PURPOSE_SEALING
            } else {
                PURPOSE_READER
            };
            let pass = match new_passphrase_file {
                Some(f) => secrets::passphrase(Some(f), false)?,
                None => secrets::passphrase(cli.passphrase_file.as_deref(), false)?,
            };
            KeyFile::seal_payload(
                &credential.to_bytes(),
                purpose,
                &vault_id,
                pass.as_bytes(),
                KdfParams::DEFAULT,
            )?
            .store(out)?;
            let mut signer_hex = None;
            if let Some(key) = credential.signing_key() {
                let public = key.verifying_key().to_bytes();
                let root_key = root.root_signing_key();
                for d in datasets {
                    let event = Event::SignerAdded {
                        key: public,
                        role: label.clone(),
                        rights: embassy_core::rights::Right::sealing(*may_delete),
                    };
                    vault.append_root_event(root, d, event)?;
                }
                vault.write_checkpoint(&root_key)?;
                signer_hex = Some(hex_key(&public));
            }
            if cli.json {
                print_json(
                    json!({"ok": true, "credential": out, "purpose": purpose, "signer": signer_hex}),
                )?;
            } else {
                println!(
                    "{purpose} '{label}' for {} written to {}",
                    datasets.join(", "),
                    out.display()
                );
                if let Some(s) = signer_hex {
                    println!(
                        "its signing key {s} was added to each dataset's ledger; it may add versions \
                         and stream WAL{}",
                        if *may_delete {
                            ", and delete versions (within the policy, minimum age and approvals)"
                        } else {
                            ", not delete (`--may-delete` grants that)"
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Rotate { datasets } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            let root_key = root.root_signing_key();
            let mut rotated = Vec::new();
            for d in datasets {
                let epoch = ledger::key_epoch(&vault.history(d)?) + 1;
                let keys = root.dataset_keys(d, epoch);
                let event = Event::ReaderKeyRotated {
                    epoch,
                    reader_public: embassy_core::crypto::reader_public_bytes(&keys.reader_public),
                };
                vault.append_root_event(root, d, event)?;
                rotated.push(
                    json!({"dataset": d, "epoch": epoch, "key_id": hex_bytes(&keys.key_id())}),
                );
            }
            vault.write_checkpoint(&root_key)?;
            if cli.json {
                print_json(json!({"ok": true, "rotated": rotated}))?;
            } else {
                for r in &rotated {
                    println!(
                        "{}: reader key rotated to epoch {} (key id {}); issue new sealing and reader credentials",
                        r["dataset"].as_str().unwrap_or_default(),
                        r["epoch"],
                        r["key_id"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke {
            signer,
            datasets,
            reason,
        } => {
            let vault = open_vault(cli)?;
            let root = &unlock_root(cli, &vault)?;
            let mut key = [0u8; 32];
            if hex::decode_to_slice(signer, &mut key).is_err() {
                return Err(Error::invalid(format!(
                    "--signer {signer} is not a 64-digit hex public key"
                )));
            }
            let root_key = root.root_signing_key();
            for d in datasets {
                let event = Event::SignerRevoked {
                    key,
                    reason: reason.clone(),
                };
                vault.append_root_event(root, d, event)?;
            }
            vault.write_checkpoint(&root_key)?;
            if cli.json {
                print_json(json!({"ok": true, "revoked": signer, "datasets": datasets}))?;
            } else {
                println!("signer {signer} revoked for {}: its later entries are rejected by every verifier", datasets.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(
    cli: &Cli,
    witnesses: &[String],
    witness_quorum: u32,
    deletions: (&[String], u32, Option<&str>),
) -> Result<ExitCode> {
    if cli.site.is_empty() {
        return Err(Error::invalid(
            "no site given: pass --site PATH or set EMBASSY_SITE",
        ));
    }
    // Say what each store lacks (create-only writes, Object Lock) before anything is written.
    let mut notes = Vec::new();
    for location in &cli.site {
        let caps = embassy_sites::check_capabilities(location)?;
        caps.ensure_usable()?;
        for w in &caps.warnings {
            notes.push(format!("{location}: {w}"));
        }
    }
    for n in &notes {
        eprintln!("note: {}", output::escape(n));
    }
    let site = open_sites(cli, true)?;
    if let Some(existing) = VaultConfig::try_load(site.as_ref())? {
        return Err(Error::VaultExists {
            site: site.location().to_string(),
            vault_id: existing.vault_id,
        });
    }
    let root = RootSecret::generate();
    let mut config = VaultConfig::new(&root);
    for w in witnesses {
        let ok = w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(Error::invalid(format!(
                "--witness {w} is not a 64-digit hex public key (print one with `embassy witness-key`)"
            )));
        }
    }
    if witness_quorum as usize > witnesses.len() {
        return Err(Error::invalid(format!(
            "--witness-quorum {witness_quorum} is more than the {} witnesses given",
            witnesses.len()
        )));
    }
    config.witnesses = witnesses.iter().map(|w| w.to_ascii_lowercase()).collect();
    config.witness_quorum = witness_quorum;
    prune::configure_init(&mut config, deletions.0, deletions.1, deletions.2)?;
    let key_path = secrets::key_path(cli.key_file.as_deref(), &config.vault_id)?;
    if key_path.exists() {
        return Err(Error::invalid(format!(
            "key file {} already exists; choose another --key-file (existing keys are never overwritten)",
            key_path.display()
        )));
    }
    let pass = secrets::passphrase(cli.passphrase_file.as_deref(), true)?;
    // Key file first: a vault must never exist without a way to open it.
    KeyFile::seal(&root, &config.vault_id, pass.as_bytes(), KdfParams::DEFAULT)?
        .store(&key_path)?;
    if let Err(e) = config.create(site.as_ref(), &root) {
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    let dir = state_dir(cli)?;
    for location in &cli.site {
        embassy_core::state::pin_site(&dir, location, &config.vault_id, true)?;
    }
    let fingerprint = embassy_core::config::fingerprint(&config.vault_id);
    if cli.json {
        print_json(
            json!({"ok": true, "vault_id": config.vault_id, "fingerprint": fingerprint, "site": site.location(), "key_file": key_path}),
        )?;
    } else {
        println!("created vault {} at {}", config.vault_id, site.location());
        println!(
            "fingerprint: {fingerprint}\n  (record it away from this machine, on paper: it pins the vault's root key; \
             a first-time reader checks it with `embassy --vault-id {fingerprint} verify`)"
        );
        println!("key file: {} (keep a copy somewhere safe: without it and the passphrase, the data cannot be read)", key_path.display());
    }
    Ok(ExitCode::SUCCESS)
}
