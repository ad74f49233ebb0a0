//! `embassy.toml`: the agent's one configuration of sites, keys and datasets, read with source
//! positions so every problem names the file, line, column and field, and says what is expected.
//!
//! The reference is `docs/operations.md`; `examples/estonia/embassy.toml` is a full example.
//!
//! Here: what a configuration holds (the types every part of the agent reads) and its derived
//! values. Reading and checking the text: [`parse`] (the positioned parser, agent, status,
//! alarm and key settings) and [`datasets`] (sites and datasets).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::schedule::{format_duration, Schedule};

mod datasets;
mod groups;
mod parse;
mod selection;
mod standbys;
mod webhook;

pub use webhook::WebhookUrl;

/// One problem in a configuration file, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The field, like `datasets[2].rpo` (empty for a syntax error).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.column, self.field, self.message
            )
        }
    }
}

/// A configuration that cannot be used: every problem found, each with its position.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Where a dataset's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file tree (one folder) or several files and folders.
    Files(Vec<PathBuf>),
    /// A shell command whose standard output is stored; no version if it fails. Its text is
    /// never shown (status, metrics, dashboard, logs): a command line may carry a password.
    Command {
        /// The command line, run with `sh -c` in the configuration's folder.
        command: String,
        /// Variables the command inherits although they look secret (see
        /// [`embassy_sources::env`]).
        pass_env: Vec<String>,
    },
    /// A PostgreSQL cluster: WAL streaming (continuous) or base backups (periodic).
    Postgres {
        /// libpq-style connection string.
        conninfo: String,
        /// The replication slot to stream from.
        slot: Option<String>,
    },
}

impl Source {
    /// A short description for logs and the dashboard. A command is named as such, never by
    /// its text.
    pub fn describe(&self) -> String {
        match self {
            Source::Files(p) => format!(
                "files {}",
                p.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Source::Command { .. } => "command (its text is not shown)".to_string(),
            Source::Postgres { slot, .. } => {
                format!("postgres (slot {})", slot.as_deref().unwrap_or("<default>"))
            }
        }
    }
}

/// How a dataset is captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Captured all the time (PostgreSQL WAL streaming), with base backups on the schedule when
    /// one is given (`interval` or `schedule`): their WAL comes from the stream, and replay
    /// from the newest base backup is what a restore costs.
    Continuous(Option<Schedule>),
    /// A new version on a schedule.
    Periodic(Schedule),
}

/// Which versions to keep (applied by the retention library of embassy-core).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// The newest N versions.
    pub keep_last: Option<u32>,
    /// The newest version of each of the last N hours.
    pub keep_hourly: Option<u32>,
    /// ... days.
    pub keep_daily: Option<u32>,
    /// ... ISO weeks.
    pub keep_weekly: Option<u32>,
    /// ... months.
    pub keep_monthly: Option<u32>,
    /// ... years.
    pub keep_yearly: Option<u32>,
    /// Legal minimum: no version younger than this is ever deleted.
    pub min_age: Option<Duration>,
    /// PostgreSQL: the point-in-time window of streamed WAL (`wal_keep = "7d"`): WAL streamed
    /// within it stays even when no kept base backup needs it.
    pub wal_keep: Option<Duration>,
}

impl Retention {
    /// True when nothing is set: every version is kept.
    pub fn keeps_everything(&self) -> bool {
        *self == Retention::default()
    }
}

/// One dataset the agent protects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetConfig {
    /// Name in the vault.
    pub name: String,
    /// Where its data comes from.
    pub source: Source,
    /// Continuous or periodic.
    pub mode: Mode,
    /// Recovery point objective: the newest durable data at each required site must be at
    /// most this old.
    pub rpo: Duration,
    /// Which versions to keep.
    pub retention: Retention,
    /// The sites where the RPO must hold (default: every site).
    pub sites: Vec<String>,
    /// Classification, for people (e.g. "restricted").
    pub classification: Option<String>,
    /// Who answers for the dataset.
    pub owner: Option<String>,
    /// What its backups leave out (a file tree's only).
    pub selection: FileSelection,
    /// How often to run a restore drill (`drill = "7d"`; none: never).
    pub drill: Option<Duration>,
    /// PostgreSQL drills: SQL checks that must each return true on the restored server
    /// (`drill_checks = ["select count(*) > 0 from persons"]`).
    pub drill_checks: Vec<String>,
    /// PostgreSQL drills: the database the checks run in (default `postgres`).
    pub drill_database: Option<String>,
}

/// A consistency group (`[[groups]]`): datasets restored to one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Its name (its ledger is `group.<name>`).
    pub name: String,
    /// Its member datasets, in the order their points are taken.
    pub members: Vec<String>,
    /// How often the agent takes a group point.
    pub interval: Duration,
}

/// What a file-tree dataset's backups leave out: `exclude`, `exclude_file`, `exclude_caches`
/// and `one_file_system` beside `files` in its source table (the same as `embassy backup`'s
/// options of those names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSelection {
    /// Gitignore-style patterns (see [`embassy_sources::selection`]).
    pub exclude: Vec<String>,
    /// Files of patterns, read again at each backup.
    pub exclude_files: Vec<PathBuf>,
    /// Leave out the content of folders holding a valid CACHEDIR.TAG.
    pub exclude_caches: bool,
    /// Store mount points as empty folders.
    pub one_file_system: bool,
}

impl FileSelection {
    /// The selection a backup applies (the exclude files read now).
    pub fn backup_selection(
        &self,
    ) -> Result<embassy_sources::selection::BackupSelection, embassy_sources::selection::PatternError>
    {
        embassy_sources::selection::BackupSelection::from_parts(
            &self.exclude,
            &self.exclude_files,
            self.exclude_caches,
            self.one_file_system,
        )
    }
}

/// A hot standby the agent keeps as an embassy node (`[[standbys]]`): a PostgreSQL server on
/// `data_dir` that follows the vault's WAL of `dataset` and answers read-only queries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyConfig {
    /// The PostgreSQL dataset of the vault it follows.
    pub dataset: String,
    /// Its data directory: made from the newest base backup when absent.
    pub data_dir: PathBuf,
    /// The port the standby listens on (localhost and its socket folder).
    pub port: u16,
    /// Read-only queries are answered while it follows (always true for a node).
    pub hot_standby: bool,
    /// Lag past which an alarm is raised.
    pub lag_alarm: Duration,
    /// The data directory's owner (default: postgres when the agent runs as root).
    pub owner: Option<String>,
}

/// One storage site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteConfig {
    /// Its name in the config and on the dashboard.
    pub name: String,
    /// The location `embassy_sites::open` takes (a folder, or s3://bucket/prefix?options).
    pub location: String,
}

/// Where the passphrase of the key file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassphraseSource {
    /// A file holding it (first line).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// The vault's key file and how to open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    /// The key file (root key or sealing credential).
    pub file: PathBuf,
    /// Its passphrase.
    pub passphrase: PassphraseSource,
}

/// The agent's own settings (`[agent]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Where the agent keeps its state (alarms, history, verified heads).
    pub state_dir: PathBuf,
    /// How many sites must hold each object before a version counts (default: all).
    pub min_sites: usize,
    /// How often to verify every site without keys (None: never).
    pub verify_interval: Option<Duration>,
    /// How long in-flight backups may run on after SIGTERM before they are abandoned.
    pub shutdown_grace: Duration,
    /// Backups running at once.
    pub max_parallel: usize,
    /// First retry delay after a failed run; doubles up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How often to collect garbage (None: never).
    pub gc_interval: Option<Duration>,
    /// How long an unreferenced object stays condemned before garbage collection deletes it.
    pub gc_grace: Duration,
}

/// The HTTP status endpoint (`[status]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSettings {
    /// IP:port to listen on (None: no HTTP endpoint). A bare port listens on 127.0.0.1; any
    /// address other than loopback needs `token_file`.
    pub listen: Option<String>,
    /// A file whose first line is the bearer token every request must carry (`Authorization:
    /// Bearer TOKEN`, or HTTP Basic with the token as password).
    pub token_file: Option<PathBuf>,
    /// Seconds the dashboard waits before reloading itself.
    pub refresh_seconds: u32,
}

/// Where RPO alarms go (`[alarms]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmSettings {
    /// An https:// URL (or http:// to a loopback address, or anywhere with `webhook_allow_http`)
    /// that receives a JSON POST per alarm and per clearance.
    pub webhook: Option<String>,
    /// PEM file of the certificate authorities the webhook's certificate is checked against
    /// (None: the Mozilla roots).
    pub webhook_ca_file: Option<PathBuf>,
    /// A shell command run per alarm and clearance, with EMBASSY_ALARM_* variables.
    pub command: Option<String>,
    /// Variables the command inherits although they look secret (see [`embassy_sources::env`]).
    pub pass_env: Vec<String>,
}

/// A whole, checked `embassy.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[agent]`.
    pub agent: AgentSettings,
    /// `[status]`.
    pub status: StatusSettings,
    /// `[alarms]`.
    pub alarms: AlarmSettings,
    /// `[keys]`.
    pub keys: KeyConfig,
    /// `[[sites]]`, in order.
    pub sites: Vec<SiteConfig>,
    /// `[[datasets]]`, in order.
    pub datasets: Vec<DatasetConfig>,
    /// `[[groups]]`: consistency groups, in order.
    pub groups: Vec<GroupConfig>,
    /// `[[standbys]]`: the embassy node's hot standbys, in order.
    pub standbys: Vec<StandbyConfig>,
    /// Things that work but look wrong (an RPO shorter than the schedule's period, ...).
    pub warnings: Vec<Problem>,
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![Problem {
                file: path.display().to_string(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot be read: {e}"),
            }],
        })?;
        Config::parse(&text, path)
    }

    /// Checks configuration text; relative paths are relative to `path`'s folder.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        parse::parse(text, path)
    }

    /// The dataset of this name.
    pub fn dataset(&self, name: &str) -> Option<&DatasetConfig> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// The consistency group of this name as the operation takes it (PostgreSQL members with
    /// their connection strings), or `None` when no group has this name.
    pub fn group_spec(&self, name: &str) -> Option<embassy_ops::group::GroupSpec> {
        let group = self.groups.iter().find(|g| g.name == name)?;
        let members = group
            .members
            .iter()
            .filter_map(|m| self.dataset(m))
            .map(|d| match &d.source {
                Source::Postgres { conninfo, .. } => embassy_ops::group::MemberSpec::Postgres {
                    dataset: d.name.clone(),
                    conninfo: conninfo.clone(),
                },
                _ => embassy_ops::group::MemberSpec::Version {
                    dataset: d.name.clone(),
                },
            })
            .collect();
        Some(embassy_ops::group::GroupSpec {
            name: group.name.clone(),
            members,
        })
    }

    /// What a command of this configuration (source or alarm) does not inherit: every variable
    /// that looks secret and the variable the passphrase is read from, except those in `pass`.
    pub fn command_scrub(&self, pass: &[String]) -> embassy_sources::env::Scrub {
        embassy_sources::env::Scrub {
            withhold: match &self.keys.passphrase {
                PassphraseSource::Env(name) => vec![name.clone()],
                PassphraseSource::File(_) => Vec::new(),
            },
            pass: pass.to_vec(),
        }
    }

    /// The folder relative paths and commands are taken from: the config file's folder.
    pub fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    }

    /// Every site's location, in order.
    pub fn locations(&self) -> Vec<String> {
        self.sites.iter().map(|s| s.location.clone()).collect()
    }

    /// A short human summary (what `embassy config check` prints).
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{}: {} sites, {} datasets; state in {}\n",
            self.path.display(),
            self.sites.len(),
            self.datasets.len(),
            self.agent.state_dir.display()
        );
        out.push_str("sites:\n");
        for s in &self.sites {
            out.push_str(&format!("  {:<20} {}\n", s.name, s.location));
        }
        out.push_str(&format!(
            "writes count once {} of {} sites hold them\n",
            self.agent.min_sites,
            self.sites.len()
        ));
        out.push_str("datasets:\n");
        for d in &self.datasets {
            let mode = match &d.mode {
                Mode::Continuous(None) => "continuous".to_string(),
                Mode::Continuous(Some(s)) => format!("continuous, base backups {s}"),
                Mode::Periodic(s) => s.to_string(),
            };
            out.push_str(&format!(
                "  {:<28} {:<22} rpo {:<6} {}\n",
                d.name,
                mode,
                format_duration(d.rpo),
                d.source.describe()
            ));
        }
        for g in &self.groups {
            out.push_str(&format!(
                "group {}: {} (a point every {})\n",
                g.name,
                g.members.join(", "),
                format_duration(g.interval)
            ));
        }
        for s in &self.standbys {
            out.push_str(&format!(
                "standby of {}: {} on port {} (lag alarm past {})\n",
                s.dataset,
                s.data_dir.display(),
                s.port,
                format_duration(s.lag_alarm)
            ));
        }
        match &self.status.listen {
            Some(l) => out.push_str(&format!(
                "dashboard: http://{l}/{}\n",
                if self.status.token_file.is_some() {
                    " (token required)"
                } else {
                    ""
                }
            )),
            None => out.push_str("dashboard: off (no [status] listen)\n"),
        }
        let alarms: Vec<&str> = [
            self.alarms.webhook.as_ref().map(|_| "webhook"),
            self.alarms.command.as_ref().map(|_| "command"),
        ]
        .into_iter()
        .flatten()
        .collect();
        out.push_str(&format!(
            "alarms: {}\n",
            if alarms.is_empty() {
                "log only (no [alarms] webhook or command)".to_string()
            } else {
                alarms.join(" and ")
            }
        ));
        out
    }
}
