//! The agent's work: opening the vault at every configured site, one backup run of a dataset,
//! catching a lagging site up, keyless verification of a site. Each is a plain function the
//! scheduler ([`crate::agent`]) runs on a worker thread and tests can call directly.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::progress::Silent;
use embassy_ops::backup::{BackupError, Source as BackupSource};

use crate::config::{Config, KeyConfig, PassphraseSource as ConfiguredPassphrase, Source};
use crate::error::{Problem, RunError};

/// A site that refuses every write once the agent abandons in-flight work (embassy-ops).
pub use embassy_ops::open::CancellableSite;

/// Opens the vault at every configured site as one (writes count once `min_sites` hold them),
/// remembering verified heads in the agent's state folder. Writes fail once `cancel` is set.
pub fn open_vault(config: &Config, cancel: &Arc<AtomicBool>) -> Result<Vault, RunError> {
    Ok(embassy_ops::open::open_vault(&open_options(
        config, cancel,
    ))?)
}

/// Takes one point of consistency group `group` (`[[groups]]`), as `embassy group point` does.
pub fn group_point(
    config: &Config,
    keyring: &Keyring,
    cancel: &Arc<AtomicBool>,
    group: &str,
) -> Result<embassy_ops::group::PointTaken, RunError> {
    let spec = config
        .group_spec(group)
        .ok_or_else(|| RunError::Config(format!("no group \"{group}\" in the configuration")))?;
    let vault = open_vault(config, cancel)?;
    let signer = keyring.signer()?;
    let wait = std::time::Duration::from_secs(60);
    Ok(embassy_ops::group::take_point(&vault, &signer, &spec, wait)
        .map_err(embassy_core::Error::from)?)
}

/// How the agent opens the vault: every configured site, `min_sites`, its state folder (the
/// verified heads too, in the same file as the command line's), writes refused once `cancel` is set, and a site
/// that holds no vault left out (never filled) while the others keep every dataset protected.
pub fn open_options(config: &Config, cancel: &Arc<AtomicBool>) -> embassy_ops::open::OpenOptions {
    let state_dir = config.agent.state_dir.clone();
    embassy_ops::open::OpenOptions {
        min_sites: Some(config.agent.min_sites),
        // The one home of the remembered heads, shared with the command line run with the
        // same state folder (the agent's former `vaults` subfolder is folded in on reading).
        cancel: Some(cancel.clone()),
        without_vault: embassy_sites::WithoutVault::LeaveOut,
        ..embassy_ops::open::OpenOptions::new(config.locations(), state_dir)
    }
}

/// Opens the configured key file for the vault (a root key or a credential), the passphrase
/// read by embassy-ops's one rule from the configured file or variable.
pub fn unlock(keys: &KeyConfig, vault: &Vault) -> Result<Keyring, RunError> {
    use embassy_ops::unlock::{Passphrase, PassphraseSource};
    let (sources, missing) = match &keys.passphrase {
        ConfiguredPassphrase::File(path) => ([PassphraseSource::File(path)], String::new()),
        ConfiguredPassphrase::Env(name) => (
            [PassphraseSource::Env(name)],
            format!(
                "the passphrase variable {name} is not set (or empty): set it, or use keys.passphrase_file"
            ),
        ),
    };
    let passphrase = Passphrase {
        sources: &sources,
        missing: &missing,
    };
    Ok(embassy_ops::unlock::unlock(
        vault.config(),
        &keys.file,
        &passphrase,
    )?)
}

/// What one backup run stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// The version number (as `embassy versions` lists it).
    pub number: u64,
    /// Bytes in the version.
    pub bytes: u64,
    /// Bytes newly stored.
    pub new_bytes: u64,
    /// Files in the version.
    pub files: u64,
    /// Warnings (files that vanished, sites that missed writes).
    pub warnings: Vec<String>,
    /// Sites that missed writes (to catch up).
    pub lagging: Vec<String>,
    /// The retention policy applied after the run: versions deleted, or why it could not be.
    pub pruned: Result<Vec<u64>, Problem>,
}

/// One backup run of a dataset (embassy-ops's backup, the same as `embassy backup` and
/// `embassy pg base-backup`), then its retention policy; no version is recorded unless the whole
/// source was read and every object is at `min_sites` sites.
pub fn backup_dataset(
    config: &Config,
    keyring: &Keyring,
    dataset: &str,
    cancel: &Arc<AtomicBool>,
) -> Result<RunOutcome, RunError> {
    let d = config.dataset(dataset).ok_or_else(|| {
        RunError::Config(format!("dataset {dataset} is not in the configuration"))
    })?;
    let vault = open_vault(config, cancel)?;
    // The backup and its retention load the dataset's history several times, at every run: a
    // writer's own loads reuse the ledger entries this process decoded from the same site
    // (`verify` and `status` still read every entry).
    let _cached = embassy_core::history::ledger::CachedReads::begin();
    let command;
    let scrub;
    let base_backup;
    let selection;
    let source = match &d.source {
        Source::Files(paths) => {
            selection = d
                .selection
                .backup_selection()
                .map_err(|e| RunError::Config(format!("dataset {dataset}: {e}")))?;
            BackupSource::Tree {
                paths,
                selection: &selection,
            }
        }
        Source::Command {
            command: c,
            pass_env,
        } => {
            command = in_config_dir(config, c);
            scrub = config.command_scrub(pass_env);
            BackupSource::Command {
                command: &command,
                scrub: Some(&scrub),
            }
        }
        Source::Postgres { conninfo, .. } => {
            // For a periodic dataset with its WAL inside; for a continuous one the WAL between
            // its start and stop comes from the stream.
            let mut options =
                embassy_postgres::base_backup::BaseBackupOptions::new(conninfo.clone());
            if matches!(d.mode, crate::config::Mode::Continuous(_)) {
                options.wal = embassy_postgres::base_backup::WalSource::Streamed;
            }
            base_backup = options;
            BackupSource::Postgres(&base_backup)
        }
    };
    let report = embassy_ops::backup::backup(&vault, keyring, dataset, source, &Silent).map_err(
        |e| match e {
            // Kept as they are: a PostgreSQL error keeps its kind (configuration, keys, ...).
            BackupError::Vault(e) => RunError::Core(e),
            BackupError::Postgres(e) => RunError::Postgres(e),
        },
    )?;
    let version = report.version;
    let mut warnings = report.warnings;
    let lagging: Vec<String> = report
        .lagging
        .into_iter()
        .map(|l| {
            warnings.push(format!("site {} missed writes: {}", l.site, l.why));
            l.site
        })
        .collect();
    let pruned = apply_retention(config, keyring, &vault, dataset).map_err(|e| e.problem());
    Ok(RunOutcome {
        pruned,
        number: version.number,
        bytes: version.stats.bytes,
        new_bytes: version.stats.new_bytes_stored,
        files: version.stats.files,
        warnings,
        lagging,
    })
}

/// The dataset's retention policy as embassy-core takes it (None: keep every version).
pub fn retention_policy(config: &Config, dataset: &str) -> Option<RetentionPolicy> {
    let r = &config.dataset(dataset)?.retention;
    if r.keeps_everything() {
        return None;
    }
    Some(RetentionPolicy {
        keep_last: r.keep_last.unwrap_or(0),
        keep_hourly: r.keep_hourly.unwrap_or(0),
        keep_daily: r.keep_daily.unwrap_or(0),
        keep_weekly: r.keep_weekly.unwrap_or(0),
        keep_monthly: r.keep_monthly.unwrap_or(0),
        keep_yearly: r.keep_yearly.unwrap_or(0),
        min_age_secs: r.min_age.map_or(0, |d| d.as_secs()),
        wal_keep_secs: r.wal_keep.map_or(0, |d| d.as_secs()),
    })
}

/// Applies the dataset's retention policy (embassy-ops's retention, as `embassy prune`): one signed ledger entry
/// deleting the versions the policy does not keep now (never one younger than the legal minimum
/// age). Their objects are removed later by garbage collection. Returns the versions deleted.
pub fn apply_retention(
    config: &Config,
    keyring: &Keyring,
    vault: &Vault,
    dataset: &str,
) -> Result<Vec<u64>, RunError> {
    let Some(policy) = retention_policy(config, dataset) else {
        return Ok(Vec::new());
    };
    embassy_ops::prune::retention(vault, Some(keyring), dataset, &policy)
        .map(|r| r.deleted)
        .map_err(RunError::from)
}

/// Garbage collection of the vault (embassy-ops's, as `embassy gc`; two-phase, safe while
/// backups run):
/// condemns objects no version references, deletes those condemned longer than `grace` ago.
/// Returns a one-line summary; damage found is [`RunError::Damaged`] (integrity), problems of
/// no other kind (a site that could not be listed or read) [`RunError::Unreadable`] (outage).
/// Condemnation records are signed with the agent's key, which must be allowed to delete (the
/// root key file); with a sealing credential, collection reports that and does nothing.
pub fn collect_garbage(
    config: &Config,
    keyring: &Arc<Keyring>,
    cancel: &Arc<AtomicBool>,
    grace: std::time::Duration,
) -> Result<String, RunError> {
    let open = open_options(config, cancel);
    let vault = embassy_ops::open::open_vault(&open)?;
    // Collection loads every dataset's history at every run: it reuses the ledger entries this
    // process decoded from the same site, as a backup does.
    let _cached = embassy_core::history::ledger::CachedReads::begin();
    // The same options and key rule as `embassy gc --grace`; what this machine saw of the
    // records is kept beside its verified heads.
    let options = embassy_ops::gc::options(Some(grace.as_secs()), false);
    let collection = embassy_ops::gc::collect(&vault, keyring, &open.heads_dir, options)?;
    let r = &collection.report;
    let mut summary = format!(
        "{} objects condemned ({} bytes), {} deleted ({} bytes), {} waiting for their grace period",
        r.condemned.len(),
        r.condemned_bytes,
        r.deleted.len(),
        r.deleted_bytes,
        r.waiting
    );
    // Damage is an integrity problem and an outage an outage, as a scheduled verification's.
    if collection.found_damage() {
        return Err(RunError::Damaged {
            problems: collection.messages(embassy_core::ErrorKind::Integrity),
        });
    }
    if !collection.is_clean() {
        return Err(RunError::Unreadable {
            unreadable: collection
                .all_problems()
                .map(|p| p.message.clone())
                .collect(),
        });
    }
    for p in &r.refused {
        summary.push_str(&format!("; {p}"));
    }
    Ok(summary)
}

/// The replication slot a continuous dataset streams from: the configured one, else
/// `embassy_<dataset>` with every other character than a-z, 0-9 made `_`.
pub fn slot_name(dataset: &str, configured: Option<&str>) -> String {
    match configured {
        Some(s) => s.to_string(),
        None => {
            let mut s: String = format!("embassy_{dataset}")
                .chars()
                .map(|c| {
                    if c.is_ascii_lowercase() || c.is_ascii_digit() {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            s.truncate(63);
            s
        }
    }
}

/// Streams a continuous PostgreSQL dataset's WAL into the vault (embassy-postgres's
/// `WalStreamer`) until `stop` is set; live figures go to `progress`. The slot is created when
/// missing. Returns when stopped, or with the error that stopped it.
pub fn stream_dataset(
    config: &Config,
    keyring: &Keyring,
    dataset: &str,
    stop: &AtomicBool,
    cancel: &Arc<AtomicBool>,
    progress: Arc<std::sync::Mutex<embassy_postgres::stream::StreamProgress>>,
) -> Result<(), RunError> {
    let d = config.dataset(dataset).ok_or_else(|| {
        RunError::Config(format!("dataset {dataset} is not in the configuration"))
    })?;
    let Source::Postgres { conninfo, slot } = &d.source else {
        return Err(RunError::Config(format!(
            "dataset {dataset} has no postgres source to stream"
        )));
    };
    let conn = embassy_postgres::replication::ConnConfig::parse(conninfo)?;
    let mut cfg = embassy_postgres::stream::StreamConfig::new(
        dataset,
        conn,
        &slot_name(dataset, slot.as_deref()),
    );
    cfg.create_slot = true;
    let vault = open_vault(config, cancel)?;
    embassy_postgres::stream::WalStreamer::run_with_progress(&cfg, &vault, keyring, stop, progress)
        .map(|_| ())
        .map_err(RunError::from)
}

/// A shell command that runs `command` in the config file's folder.
pub fn in_config_dir(config: &Config, command: &str) -> String {
    let dir = config
        .base_dir()
        .display()
        .to_string()
        .replace('\'', "'\\''");
    format!("cd '{dir}' && {command}")
}

/// Catches the site at `to` up from the site at `from` (no keys), by embassy-ops's catch-up
/// (the same as `embassy sync --pending`): its queue of missed writes, read from every site of
/// the vault (`sites`: a write may sit at a down one only), then a full comparison with `from`
/// unless that settled everything. Objects left uncopied are [`RunError::CatchUp`].
pub fn catch_up(
    state_dir: &std::path::Path,
    from: &str,
    to: &str,
    sites: &[String],
) -> Result<embassy_ops::catchup::CatchUpReport, RunError> {
    let report = embassy_ops::catchup::catch_up(state_dir, from, to, sites, &Silent)?;
    if !report.is_complete() {
        return Err(RunError::CatchUp {
            problems: report.problems,
        });
    }
    Ok(report)
}

/// Verifies the vault at one site without keys, its streamed WAL included (embassy-ops's
/// verification, the same as `embassy verify`): a one-line summary, or what is wrong. Damage
/// found is [`RunError::Damaged`] (integrity); a site that cannot be read is its own error (an
/// outage, typically), as `embassy verify` tells them apart by its exit status.
pub fn verify_site(
    options: &embassy_ops::open::OpenOptions,
    location: &str,
) -> Result<String, RunError> {
    let (verification, _behind) = embassy_ops::verify::verify_site(options, location)?;
    if verification.found_damage() {
        return Err(RunError::Damaged {
            problems: verification.problems(),
        });
    }
    if !verification.is_ok() {
        return Err(RunError::Unreadable {
            unreadable: verification.vault.unreadable.clone(),
        });
    }
    Ok(verification.summary())
}

/// How the agent drills a PostgreSQL dataset: its restored server's `restore_command` reaches
/// the configured sites with the agent's state folder, runs as the `postgres` user when the
/// agent runs as root, and runs the dataset's `drill_checks` in its `drill_database`. None for
/// other datasets.
fn postgres_drill(
    config: &Config,
    dataset: &str,
) -> Result<Option<embassy_ops::pgdrill::PgDrillOptions>, RunError> {
    let Some(d) = config.datasets.iter().find(|d| d.name == dataset) else {
        return Ok(None);
    };
    if !matches!(d.source, crate::config::Source::Postgres { .. }) {
        return Ok(None);
    }
    let fetch = embassy_ops::pgrestore::FetchSetup::this_program(
        config.locations(),
        Some(config.agent.min_sites),
        Some(config.agent.state_dir.clone()),
    )?;
    let owner = embassy_ops::pgrestore::owner(None)?;
    let mut options = embassy_ops::pgdrill::PgDrillOptions::new(fetch, owner);
    options.checks = d.drill_checks.clone();
    if let Some(db) = &d.drill_database {
        options.check_database = db.clone();
    }
    Ok(Some(options))
}

/// One restore drill of `dataset` (embassy-ops's `drill`): the newest version restored into a
/// scratch folder under the agent's state folder (`drills`), checked, measured and recorded in
/// the ledger. A drill that ran comes back `Ok`, passed or not; `Err` when it could not run.
pub fn drill_dataset(
    config: &Config,
    keyring: &Keyring,
    dataset: &str,
    cancel: &Arc<AtomicBool>,
) -> Result<embassy_ops::drill::DrillReport, RunError> {
    let vault = open_vault(config, cancel)?;
    let scratch = config.agent.state_dir.join("drills");
    let postgres = postgres_drill(config, dataset)?;
    let request = embassy_ops::drill::DrillRequest {
        dataset,
        scratch: &scratch,
        allow_unwitnessed: false,
        record: true,
        postgres: postgres.as_ref(),
    };
    Ok(embassy_ops::drill::run(&vault, &request, keyring)?)
}
