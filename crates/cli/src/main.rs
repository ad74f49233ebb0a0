//! `embassy`: the Data Embassy command line. Each command parses its arguments (one file per
//! command under `cmd/`), calls the operations of `embassy-ops` and the libraries, and renders
//! what comes back for people or as JSON.
//!
//! Exit codes: defined in one place, `exit` (and listed by `embassy --help`).

mod agent;
mod catchup;
mod cmd;
mod exit;
mod help;
mod hints;
mod interrupt;
mod output;
mod pg;
mod pgrestore;
mod prune;
mod replay;
mod secrets;
mod stop;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{FromArgMatches, Parser, Subcommand};
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::history::state::StateStore;
use embassy_core::keys::RootSecret;
use embassy_core::{Error, Result};
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
    /// EMBASSY_STATE_DIR; a PostgreSQL restore keeps its restore_command's state below it
    /// too); default ~/.local/state/data-embassy.
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
    Init(cmd::init::InitArgs),
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
    /// Ctrl-C stops it without recording a version (exit 130); running it again reuses what
    /// was stored.
    Backup(cmd::backup::BackupArgs),
    /// List the versions of one dataset, or of all.
    Versions(cmd::versions::VersionsArgs),
    /// List what a version holds: DATASET@N [PATH] (-l long, -R recursive).
    Ls(cmd::ls::LsArgs),
    /// Find paths matching a glob in every version of a dataset, with the versions holding each.
    Find(cmd::find::FindArgs),
    /// What changed between two versions (DATASET@A DATASET@B): added, removed, changed paths.
    Diff(cmd::diff::DiffArgs),
    /// Per dataset: versions, logical and stored bytes, packs, blobs, dedup and compression.
    Stats(cmd::stats::StatsArgs),
    /// Mount a dataset's versions read-only (FUSE): a folder per version and `latest`.
    Mount(cmd::mount::MountArgs),
    /// Serve file and stream datasets read-only over HTTP(S): listings, files with ranges and
    /// ETags, each response naming its version and ledger entry (loopback unless a token or
    /// client certificates guard it).
    Serve(cmd::serve::ServeArgs),
    /// Restore a version: DATASET or DATASET@VERSION (a number, `latest`, or an id prefix).
    Restore(cmd::restore::RestoreArgs),
    /// Restore drill: restore the newest version into a scratch folder, check every byte (a
    /// PostgreSQL dataset: replay to the newest durable WAL, start PostgreSQL on a private
    /// socket, pg_amcheck, row counts, --check SQL), measure RTO and RPO, sign the result into
    /// the ledger (`--report`: the last drills).
    Drill(cmd::drill::DrillArgs),
    /// Consistency groups: take a group point now (`group point G`), list points (`group points G`);
    /// `restore --group G` brings every member back to one point.
    #[command(subcommand)]
    Group(cmd::group::GroupCommand),
    /// PostgreSQL: write a warm standby that follows the vault (`restore_command` = wal-fetch).
    Standby(pgrestore::StandbyArgs),
    /// PostgreSQL: promote a standby written by `embassy standby`; records the new timeline at
    /// every site of the vault this machine knows (queued for those that do not answer).
    Promote(pgrestore::PromoteArgs),
    /// Show a dataset's signed history (its ledger).
    History(cmd::history::HistoryArgs),
    /// As a witness: verify the vault without keys and cosign its newest checkpoint. Reads only
    /// what this witness has not verified before (its memory is in the state folder) and checks
    /// the rest by listing; --full, or the --full-every schedule, reads everything.
    Witness(cmd::witness::WitnessArgs),
    /// Custody of the keys: custodian shares, credentials, revocation.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Copy to site TO every object of the vault at site FROM that TO lacks (no keys needed):
    /// seeds a new site, catches up one that was down; --repair also replaces damaged copies.
    /// With --pending: catch up each --site from the others by its queue of missed writes.
    Sync(cmd::sync::SyncArgs),
    /// Per dataset and site: the newest version, its recovery point, and how old it is.
    /// With --config: freshness against each dataset's RPO (what the agent serves).
    Status(cmd::status::StatusArgs),
    /// PostgreSQL datasets: continuous WAL streaming (and base backups, restore, standby).
    #[command(subcommand)]
    Pg(pg::PgCommand),
    /// PostgreSQL's restore_command: write WAL file %f of DATASET to %p from the vault (exit 1
    /// quietly when the vault does not hold it yet).
    WalFetch(pg::WalFetchArgs),
    /// Run the agent: every dataset of embassy.toml on schedule, alarms, status page.
    Agent(cmd::agent::AgentArgs),
    /// The agent's configuration file.
    #[command(subcommand)]
    Config(cmd::agent::ConfigCommand),
    /// Create a witness key file and print its public key (to pin with `init --witness`).
    WitnessKey(cmd::witness::WitnessKeyArgs),
    /// Check the vault without keys; with --deep, also decrypt and check every chunk. With
    /// several sites, each site is checked on its own and reported per site.
    Verify(cmd::verify::VerifyArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(help::CompletionsArgs),
    /// Write the manual pages (embassy.1 and one per command) into a folder.
    #[command(hide = true)]
    Man(help::ManArgs),
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
    // The definition with the commands in task order and the exit codes after them (help).
    let cli = match Cli::from_arg_matches(&help::command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
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
            for cause in output::causes(&e) {
                eprintln!("  caused by: {}", output::escape(&cause));
            }
            if let Some(hint) = hints::for_error(&e) {
                eprintln!("  hint: {}", output::escape(&hint));
            }
            exit::for_error(&e)
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Init(args) => cmd::init::run(cli, args),
        Command::Prune(args) => prune::prune(cli, args),
        Command::Gc(args) => prune::gc(cli, args),
        Command::Forget(args) => prune::forget(cli, args),
        Command::Approve(args) => prune::approve(cli, args),
        Command::Policy(command) => prune::policy(cli, command),
        Command::ApproverKey(args) => prune::approver_key(cli, args),
        Command::Backup(args) => cmd::backup::run(cli, args),
        Command::Versions(args) => cmd::versions::run(cli, args),
        Command::Restore(args) => cmd::restore::run(cli, args),
        Command::Drill(args) => cmd::drill::run(cli, args),
        Command::Group(command) => cmd::group::run(cli, command),
        Command::Ls(args) => cmd::ls::run(cli, args),
        Command::Find(args) => cmd::find::run(cli, args),
        Command::Diff(args) => cmd::diff::run(cli, args),
        Command::Stats(args) => cmd::stats::run(cli, args),
        Command::Mount(args) => cmd::mount::run(cli, args),
        Command::Serve(args) => cmd::serve::run(cli, args),
        Command::Standby(args) => pgrestore::standby(cli, args),
        Command::Promote(args) => pgrestore::promote(cli, args),
        Command::History(args) => cmd::history::run(cli, args),
        Command::Witness(args) => cmd::witness::witness(cli, args),
        Command::WitnessKey(args) => cmd::witness::witness_key(cli, args),
        Command::Keys(command) => cmd::keys::run(cli, command),
        Command::Sync(args) => cmd::sync::run(cli, args),
        Command::Status(args) => cmd::status::run(cli, args),
        Command::Pg(command) => pg::run(cli, command),
        Command::WalFetch(args) => pg::wal_fetch(cli, args),
        Command::Agent(args) => Ok(agent::agent(&args.config, args.once)),
        Command::Config(cmd::agent::ConfigCommand::Check { file }) => {
            Ok(agent::config_check(file, cli.json))
        }
        Command::Verify(args) => cmd::verify::run(cli, args),
        Command::Completions(args) => {
            help::completions(args);
            Ok(ExitCode::SUCCESS)
        }
        Command::Man(args) => help::man(args).map(|()| ExitCode::SUCCESS),
    }
}

/// The state folder: --state-dir, else the default.
fn state_dir(cli: &Cli) -> Result<PathBuf> {
    match &cli.state_dir {
        Some(d) => Ok(d.clone()),
        None => StateStore::default_dir().ok_or_else(|| {
            Error::invalid("no home directory for the state folder: pass --state-dir DIR")
        }),
    }
}

/// Opens the vault at the sites (embassy-ops), remembering verified heads in the state folder;
/// a key file given with --key-file must belong to it.
fn open_vault(cli: &Cli) -> Result<Vault> {
    open_vault_with(cli, &open_options(cli)?)
}

/// How the global flags say to open the vault (a command may add cancellation to them).
fn open_options(cli: &Cli) -> Result<embassy_ops::open::OpenOptions> {
    Ok(embassy_ops::open::OpenOptions {
        min_sites: cli.min_sites,
        expected_vault_id: expected_vault_id(cli)?,
        forget_site_pin: cli.forget_site_pin,
        ..embassy_ops::open::OpenOptions::new(cli.site.clone(), state_dir(cli)?)
    })
}

/// [`open_vault`] with these options.
fn open_vault_with(cli: &Cli, options: &embassy_ops::open::OpenOptions) -> Result<Vault> {
    let vault = embassy_ops::open::open_vault(options)?;
    secrets::check_given_key_file(cli.key_file.as_deref(), vault.config())?;
    Ok(vault)
}

/// The vault id given with --vault-id (or EMBASSY_VAULT_ID), parsed.
fn expected_vault_id(cli: &Cli) -> Result<Option<String>> {
    embassy_ops::open::parse_expected_vault_id(cli.vault_id.as_deref())
}

/// Prints a `--json` result; a success object gets `"ok": true` here, for every command.
fn print_json(mut value: serde_json::Value) -> Result<()> {
    output::mark_ok(&mut value);
    writeln!(std::io::stdout(), "{value}").map_err(|e| Error::io("writing to stdout", e))
}

/// The vault's keys, from --key-file (or the default key file) and the passphrase.
fn unlock(cli: &Cli, vault: &Vault) -> Result<Keyring> {
    secrets::unlock(
        vault.config(),
        cli.key_file.as_deref(),
        cli.passphrase_file.as_deref(),
    )
}

/// The vault's root secret, from its key file (a credential is refused).
pub(crate) fn unlock_root(cli: &Cli, vault: &Vault) -> Result<RootSecret> {
    embassy_ops::unlock::root_of(&unlock(cli, vault)?)
}
