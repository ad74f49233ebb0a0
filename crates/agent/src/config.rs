//! `embassy.toml`: the agent's one configuration of sites, keys and datasets, read with source
//! positions so every problem names the file, line, column and field, and says what is expected.
//!
//! The reference is `docs/operations.md`; `examples/estonia/embassy.toml` is a full example.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::schedule::{format_duration, parse_duration, Schedule};

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
        let mut p = Parser {
            text,
            file: path.display().to_string(),
            problems: Vec::new(),
            warnings: Vec::new(),
            base: path
                .parent()
                .map(Path::to_path_buf)
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(".")),
        };
        let root = match DeTable::parse(text) {
            Ok(t) => t,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                p.problem(span, "", e.message().trim().to_string());
                return Err(ConfigError {
                    problems: p.problems,
                });
            }
        };
        let config = p.config(root.get_ref(), path);
        if !p.problems.is_empty() {
            p.problems.sort_by_key(|p| (p.line, p.column));
            return Err(ConfigError {
                problems: p.problems,
            });
        }
        let mut config = config.ok_or_else(|| ConfigError {
            problems: vec![Problem {
                file: p.file.clone(),
                line: 1,
                column: 1,
                field: String::new(),
                message: "incomplete configuration".into(),
            }],
        })?;
        config.warnings = p.warnings;
        Ok(config)
    }

    /// The dataset of this name.
    pub fn dataset(&self, name: &str) -> Option<&DatasetConfig> {
        self.datasets.iter().find(|d| d.name == name)
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

struct Parser<'t> {
    text: &'t str,
    file: String,
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    base: PathBuf,
}

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

/// Fields of one table, each taken once; what is left over is unknown.
struct Fields<'a, 'i> {
    path: String,
    span: Range<usize>,
    map: BTreeMap<String, (&'a Value<'i>, Range<usize>)>,
}

fn describe(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a number",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "a list",
        DeValue::Table(_) => "a table",
    }
}

impl<'t> Parser<'t> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    fn at(&self, span: Range<usize>, field: &str, message: String) -> Problem {
        let (line, column) = self.position(span.start);
        Problem {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message,
        }
    }

    fn problem(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let p = self.at(span, field, message.into());
        self.problems.push(p);
    }

    fn warn(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let p = self.at(span, field, message.into());
        self.warnings.push(p);
    }

    fn fields<'a, 'i>(&self, path: &str, span: Range<usize>, t: &'a Table<'i>) -> Fields<'a, 'i> {
        Fields {
            path: path.to_string(),
            span,
            map: t
                .iter()
                .map(|(k, v)| (k.get_ref().to_string(), (v, k.span())))
                .collect(),
        }
    }

    fn field_name(f: &Fields<'_, '_>, key: &str) -> String {
        if f.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", f.path)
        }
    }

    /// Reports every field not taken, with the accepted names.
    fn finish(&mut self, f: Fields<'_, '_>, known: &[&str]) {
        for (key, (_, span)) in &f.map {
            let name = Self::field_name(&f, key);
            self.problem(
                span.clone(),
                &name,
                format!("unknown field; expected one of: {}", known.join(", ")),
            );
        }
    }

    fn take<'a, 'i>(&mut self, f: &mut Fields<'a, 'i>, key: &str) -> Option<&'a Value<'i>> {
        f.map.remove(key).map(|(v, _)| v)
    }

    fn string(
        &mut self,
        f: &mut Fields<'_, '_>,
        key: &str,
        expected: &str,
    ) -> Option<Spanned<String>> {
        let v = self.take(f, key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(Spanned::new(v.span(), s.to_string())),
            other => {
                let name = Self::field_name(f, key);
                self.problem(
                    v.span(),
                    &name,
                    format!("expected {expected}, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn required_string(
        &mut self,
        f: &mut Fields<'_, '_>,
        key: &str,
        expected: &str,
    ) -> Option<Spanned<String>> {
        let present = f.map.contains_key(key);
        let s = self.string(f, key, expected);
        if !present {
            let name = Self::field_name(f, key);
            self.problem(
                f.span.clone(),
                &name,
                format!("missing; expected {expected}"),
            );
        }
        s
    }

    fn duration(&mut self, f: &mut Fields<'_, '_>, key: &str) -> Option<Spanned<Duration>> {
        const EXPECTED: &str = "a duration like \"90s\", \"15min\", \"1h\"";
        let s = self.string(f, key, EXPECTED)?;
        match parse_duration(s.get_ref()) {
            Ok(d) => Some(Spanned::new(s.span(), d)),
            Err(e) => {
                let name = Self::field_name(f, key);
                self.problem(s.span(), &name, e.to_string());
                None
            }
        }
    }

    fn count(&mut self, f: &mut Fields<'_, '_>, key: &str, min: i64) -> Option<u32> {
        let v = self.take(f, key)?;
        let name = Self::field_name(f, key);
        let n = match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= min && n <= u32::MAX as i64 => Some(n as u32),
            _ => {
                self.problem(
                    v.span(),
                    &name,
                    format!("expected a whole number of at least {min}"),
                );
                None
            }
        }
    }

    /// A list of environment variable names (a command's `pass_env`).
    fn env_names(&mut self, f: &mut Fields<'_, '_>, key: &str) -> Vec<String> {
        const EXPECTED: &str = "a list of environment variable names like [\"PGPASSWORD\"]";
        let Some(v) = self.take(f, key) else {
            return Vec::new();
        };
        let name = Self::field_name(f, key);
        let DeValue::Array(items) = v.get_ref() else {
            self.problem(
                v.span(),
                &name,
                format!("expected {EXPECTED}, found {}", describe(v.get_ref())),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_str() {
                Some(n) if !n.is_empty() && !n.contains('=') && !n.contains('\0') => {
                    out.push(n.to_string())
                }
                _ => self.problem(
                    item.span(),
                    &format!("{name}[{i}]"),
                    format!("expected {EXPECTED}"),
                ),
            }
        }
        out
    }

    fn table<'a, 'i>(&mut self, f: &mut Fields<'a, 'i>, key: &str) -> Option<Fields<'a, 'i>> {
        let v = self.take(f, key)?;
        let name = Self::field_name(f, key);
        match v.get_ref() {
            DeValue::Table(t) => Some(self.fields(&name, v.span(), t)),
            other => {
                self.problem(
                    v.span(),
                    &name,
                    format!("expected a table, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    fn config(&mut self, root: &Table<'_>, path: &Path) -> Option<Config> {
        let mut top = self.fields("", 0..0, root);
        let agent = self.agent_settings(&mut top);
        let status = self.status_settings(&mut top);
        let alarms = self.alarm_settings(&mut top);
        let keys = self.key_config(&mut top);
        let sites = self.sites(&mut top);
        let site_names: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();
        let datasets = self.datasets(&mut top, &site_names);
        self.finish(
            top,
            &["agent", "status", "alarms", "keys", "sites", "datasets"],
        );
        let mut agent = agent?;
        if let Some((min, span)) = agent.1 {
            if min as usize > sites.len() {
                self.problem(
                    span,
                    "agent.min_sites",
                    format!(
                        "expected at most the number of sites ({}), found {min}",
                        sites.len()
                    ),
                );
            } else {
                agent.0.min_sites = min as usize;
            }
        } else {
            agent.0.min_sites = sites.len().max(1);
        }
        Some(Config {
            path: path.to_path_buf(),
            agent: agent.0,
            status: status?,
            alarms: alarms?,
            keys: keys?,
            sites,
            datasets: datasets?,
            warnings: Vec::new(),
        })
    }

    #[allow(clippy::type_complexity)]
    fn agent_settings(
        &mut self,
        top: &mut Fields<'_, '_>,
    ) -> Option<(AgentSettings, Option<(u32, Range<usize>)>)> {
        let mut settings = AgentSettings {
            state_dir: self.path("embassy-state"),
            min_sites: 0,
            verify_interval: Some(Duration::from_secs(6 * 3600)),
            shutdown_grace: Duration::from_secs(30),
            max_parallel: 2,
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(600),
            gc_interval: Some(Duration::from_secs(86_400)),
            gc_grace: Duration::from_secs(86_400),
        };
        let Some(mut f) = self.table(top, "agent") else {
            if top.map.contains_key("agent") {
                return None;
            }
            return Some((settings, None));
        };
        if let Some(s) = self.string(&mut f, "state_dir", "a folder path") {
            settings.state_dir = self.path(s.get_ref());
        }
        let min_span = f.map.get("min_sites").map(|(v, _)| v.span());
        let min = self.count(&mut f, "min_sites", 1).zip(min_span);
        match f
            .map
            .get("verify_interval")
            .map(|(v, _)| v.get_ref().as_str())
        {
            Some(Some("never")) => {
                f.map.remove("verify_interval");
                settings.verify_interval = None;
            }
            _ => {
                if let Some(d) = self.duration(&mut f, "verify_interval") {
                    settings.verify_interval = Some(*d.get_ref());
                }
            }
        }
        if let Some(d) = self.duration(&mut f, "shutdown_grace") {
            settings.shutdown_grace = *d.get_ref();
        }
        if let Some(n) = self.count(&mut f, "max_parallel", 1) {
            settings.max_parallel = n as usize;
        }
        if let Some(d) = self.duration(&mut f, "retry_initial") {
            settings.retry_initial = (*d.get_ref()).max(Duration::from_secs(1));
        }
        if let Some(d) = self.duration(&mut f, "retry_max") {
            settings.retry_max = *d.get_ref();
        }
        match f.map.get("gc_interval").map(|(v, _)| v.get_ref().as_str()) {
            Some(Some("never")) => {
                f.map.remove("gc_interval");
                settings.gc_interval = None;
            }
            _ => {
                if let Some(d) = self.duration(&mut f, "gc_interval") {
                    settings.gc_interval = Some(*d.get_ref());
                }
            }
        }
        if let Some(d) = self.duration(&mut f, "gc_grace") {
            if d.get_ref().as_secs() < 600 {
                self.problem(
                    d.span(),
                    "agent.gc_grace",
                    "expected at least \"10m\" (it must cover the clocks' disagreement between hosts)",
                );
            } else {
                settings.gc_grace = *d.get_ref();
            }
        }
        self.finish(
            f,
            &[
                "state_dir",
                "min_sites",
                "verify_interval",
                "shutdown_grace",
                "max_parallel",
                "retry_initial",
                "retry_max",
                "gc_interval",
                "gc_grace",
            ],
        );
        Some((settings, min))
    }

    fn status_settings(&mut self, top: &mut Fields<'_, '_>) -> Option<StatusSettings> {
        let mut s = StatusSettings {
            listen: None,
            token_file: None,
            refresh_seconds: 10,
        };
        let Some(mut f) = self.table(top, "status") else {
            return (!top.map.contains_key("status")).then_some(s);
        };
        if let Some(t) = self.string(&mut f, "token_file", "a file path") {
            s.token_file = Some(self.path(t.get_ref()));
        }
        if let Some(l) = self.string(
            &mut f,
            "listen",
            "a port like \"8470\" or an address like \"127.0.0.1:8470\"",
        ) {
            // A bare port listens on loopback only.
            let text = match l.get_ref().parse::<u16>() {
                Ok(port) => format!("127.0.0.1:{port}"),
                Err(_) => l.get_ref().clone(),
            };
            match text.parse::<std::net::SocketAddr>() {
                Err(_) => self.problem(
                    l.span(),
                    "status.listen",
                    "expected a port like \"8470\" (loopback) or an address like \"127.0.0.1:8470\" (IP and port)",
                ),
                Ok(addr) if !addr.ip().is_loopback() && s.token_file.is_none() => self.problem(
                    l.span(),
                    "status.listen",
                    format!(
                        "{addr} is reachable from other hosts, and the status page then needs a bearer token: \
                         add `token_file = \"status-token\"` (a file holding a long random line, e.g. from \
                         `openssl rand -hex 32`), or listen on loopback (\"127.0.0.1:{}\")",
                        addr.port()
                    ),
                ),
                Ok(_) => s.listen = Some(text),
            }
        }
        if let Some(n) = self.count(&mut f, "refresh_seconds", 1) {
            s.refresh_seconds = n;
        }
        self.finish(f, &["listen", "token_file", "refresh_seconds"]);
        Some(s)
    }

    fn alarm_settings(&mut self, top: &mut Fields<'_, '_>) -> Option<AlarmSettings> {
        let mut a = AlarmSettings::default();
        let Some(mut f) = self.table(top, "alarms") else {
            return (!top.map.contains_key("alarms")).then_some(a);
        };
        let allow_http = match self.take(&mut f, "webhook_allow_http") {
            Some(v) => match v.get_ref() {
                DeValue::Boolean(b) => *b,
                other => {
                    self.problem(
                        v.span(),
                        "alarms.webhook_allow_http",
                        format!("expected true or false, found {}", describe(other)),
                    );
                    false
                }
            },
            None => false,
        };
        if let Some(c) = self.string(&mut f, "webhook_ca_file", "a PEM file path") {
            a.webhook_ca_file = Some(self.path(c.get_ref()));
        }
        if let Some(w) = self.string(&mut f, "webhook", "an https:// URL") {
            match crate::alarms::WebhookUrl::parse(w.get_ref()) {
                Err(why) => self.problem(w.span(), "alarms.webhook", why),
                Ok(u) if !u.https && !u.loopback && !allow_http => self.problem(
                    w.span(),
                    "alarms.webhook",
                    "an http:// webhook to another host sends alarms unencrypted and unauthenticated: \
                     use https://, or set `webhook_allow_http = true` if the network path is trusted",
                ),
                Ok(_) => a.webhook = Some(w.into_inner()),
            }
        }
        if let Some(c) = self.string(&mut f, "command", "a shell command") {
            a.command = Some(c.into_inner());
        }
        a.pass_env = self.env_names(&mut f, "pass_env");
        self.finish(
            f,
            &[
                "webhook",
                "webhook_ca_file",
                "webhook_allow_http",
                "command",
                "pass_env",
            ],
        );
        Some(a)
    }

    fn key_config(&mut self, top: &mut Fields<'_, '_>) -> Option<KeyConfig> {
        let present = top.map.contains_key("keys");
        let Some(mut f) = self.table(top, "keys") else {
            if !present {
                self.problem(
                    0..0,
                    "keys",
                    "missing; expected a [keys] table with `file` and `passphrase_file` or `passphrase_env`",
                );
            }
            return None;
        };
        if let Some(v) = self.take(&mut f, "hsm") {
            self.problem(
                v.span(),
                "keys.hsm",
                "HSM keys are not supported yet: use `file` with `passphrase_file` or `passphrase_env`",
            );
        }
        let file = self.required_string(&mut f, "file", "the path of the vault's key file");
        let pf = self.string(&mut f, "passphrase_file", "a file path");
        let pe = self.string(&mut f, "passphrase_env", "an environment variable name");
        let passphrase = match (pf, pe) {
            (Some(p), None) => Some(PassphraseSource::File(self.path(p.get_ref()))),
            (None, Some(e)) => Some(PassphraseSource::Env(e.into_inner())),
            (Some(p), Some(_)) => {
                self.problem(
                    p.span(),
                    "keys.passphrase_file",
                    "give either passphrase_file or passphrase_env, not both",
                );
                None
            }
            (None, None) => Some(PassphraseSource::Env("EMBASSY_PASSPHRASE".into())),
        };
        let span = f.span.clone();
        self.finish(f, &["file", "passphrase_file", "passphrase_env", "hsm"]);
        let _ = span;
        Some(KeyConfig {
            file: self.path(file?.get_ref()),
            passphrase: passphrase?,
        })
    }

    fn array_of_tables<'a, 'i>(
        &mut self,
        top: &mut Fields<'a, 'i>,
        key: &str,
    ) -> Option<Vec<Fields<'a, 'i>>> {
        let v = self.take(top, key)?;
        let DeValue::Array(items) = v.get_ref() else {
            self.problem(
                v.span(),
                key,
                format!(
                    "expected a list of tables ([[{key}]]), found {}",
                    describe(v.get_ref())
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let name = format!("{key}[{i}]");
            match item.get_ref() {
                DeValue::Table(t) => out.push(self.fields(&name, item.span(), t)),
                other => self.problem(
                    item.span(),
                    &name,
                    format!("expected a table, found {}", describe(other)),
                ),
            }
        }
        Some(out)
    }

    fn sites(&mut self, top: &mut Fields<'_, '_>) -> Vec<SiteConfig> {
        let Some(items) = self.array_of_tables(top, "sites") else {
            self.problem(
                0..0,
                "sites",
                "no sites: add at least one [[sites]] with a name and a path or url",
            );
            return Vec::new();
        };
        let mut out: Vec<SiteConfig> = Vec::new();
        for mut f in items {
            let name = self.required_string(&mut f, "name", "a site name like \"luxembourg\"");
            let path = self.string(&mut f, "path", "a folder path");
            let url = self.string(&mut f, "url", "an s3://bucket/prefix URL");
            let endpoint = self.string(&mut f, "endpoint", "an http(s):// URL");
            let region = self.string(&mut f, "region", "a region name like \"eu-west-1\"");
            let path_style = self
                .take(&mut f, "path_style")
                .map(|v| v.get_ref().as_bool());
            let field = f.path.clone();
            let location = match (path, url) {
                (Some(p), None) => {
                    if let Some(e) = endpoint.as_ref().or(region.as_ref()) {
                        self.problem(
                            e.span(),
                            &format!("{field}.endpoint"),
                            "endpoint and region apply to `url = \"s3://...\"` sites only",
                        );
                    }
                    Some(self.path(p.get_ref()).display().to_string())
                }
                (None, Some(u)) => {
                    if !u.get_ref().starts_with("s3://") || u.get_ref().len() <= 5 {
                        self.problem(
                            u.span(),
                            &format!("{field}.url"),
                            "expected an s3://bucket/prefix URL (for a folder, use `path`)",
                        );
                        None
                    } else {
                        let mut options = Vec::new();
                        if let Some(e) = endpoint {
                            options.push(format!("endpoint={}", e.get_ref()));
                        }
                        if let Some(r) = region {
                            options.push(format!("region={}", r.get_ref()));
                        }
                        match path_style {
                            Some(Some(b)) => options.push(format!("path-style={b}")),
                            Some(None) => self.problem(
                                u.span(),
                                &format!("{field}.path_style"),
                                "expected true or false",
                            ),
                            None => {}
                        }
                        let mut loc = u.into_inner();
                        if !options.is_empty() {
                            loc.push(if loc.contains('?') { '&' } else { '?' });
                            loc.push_str(&options.join("&"));
                        }
                        Some(loc)
                    }
                }
                (Some(p), Some(_)) => {
                    self.problem(
                        p.span(),
                        &format!("{field}.path"),
                        "give either `path` (a folder) or `url` (s3://...), not both",
                    );
                    None
                }
                (None, None) => {
                    self.problem(
                        f.span.clone(),
                        &field,
                        "missing `path = \"folder\"` or `url = \"s3://bucket/prefix\"`",
                    );
                    None
                }
            };
            self.finish(
                f,
                &["name", "path", "url", "endpoint", "region", "path_style"],
            );
            if let Some(name) = &name {
                if let Err(why) = check_name(name.get_ref()) {
                    self.problem(name.span(), &format!("{field}.name"), why);
                    continue;
                }
                if out.iter().any(|s| s.name == *name.get_ref()) {
                    self.problem(
                        name.span(),
                        &format!("{field}.name"),
                        format!("a site named \"{}\" is already declared", name.get_ref()),
                    );
                    continue;
                }
            }
            if let (Some(name), Some(location)) = (name, location) {
                out.push(SiteConfig {
                    name: name.into_inner(),
                    location,
                });
            }
        }
        if out.is_empty() && self.problems.is_empty() {
            self.problem(0..0, "sites", "no sites: add at least one [[sites]]");
        }
        out
    }

    fn datasets(
        &mut self,
        top: &mut Fields<'_, '_>,
        site_names: &[String],
    ) -> Option<Vec<DatasetConfig>> {
        let items = self.array_of_tables(top, "datasets").unwrap_or_default();
        let mut out = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        for mut f in items {
            let field = f.path.clone();
            let name =
                self.required_string(&mut f, "name", "a dataset name (a-z, 0-9, '.', '_', '-')");
            if let Some(n) = &name {
                if let Err(e) = embassy_core::layout::check_dataset_name(n.get_ref()) {
                    self.problem(n.span(), &format!("{field}.name"), e.to_string());
                } else if !seen.insert(n.get_ref().clone()) {
                    self.problem(
                        n.span(),
                        &format!("{field}.name"),
                        format!(
                            "duplicate dataset name \"{}\": each dataset is declared once",
                            n.get_ref()
                        ),
                    );
                }
            }
            let source = self.source(&mut f);
            let mode_text = self.string(&mut f, "mode", "\"continuous\" or \"periodic\"");
            let interval = self.duration(&mut f, "interval");
            let schedule_text = self.string(
                &mut f,
                "schedule",
                "a schedule like \"daily 02:00\", \"hourly :15\", \"weekly sun 03:00\"",
            );
            let rpo_present = f.map.contains_key("rpo");
            let rpo = self.duration(&mut f, "rpo");
            if !rpo_present {
                self.problem(
                    f.span.clone(),
                    &format!("{field}.rpo"),
                    "missing; expected a duration like \"90s\", \"15min\", \"1h\"",
                );
            }
            let retention = self.retention(&mut f);
            let mut sites = Vec::new();
            if let Some(v) = self.take(&mut f, "sites") {
                match v.get_ref() {
                    DeValue::Array(items) => {
                        for (i, item) in items.iter().enumerate() {
                            match item.get_ref().as_str() {
                                Some(s) if site_names.iter().any(|n| n == s) => {
                                    sites.push(s.to_string())
                                }
                                Some(s) => self.problem(
                                    item.span(),
                                    &format!("{field}.sites[{i}]"),
                                    format!(
                                        "unknown site \"{s}\"; the sites are: {}",
                                        site_names.join(", ")
                                    ),
                                ),
                                None => self.problem(
                                    item.span(),
                                    &format!("{field}.sites[{i}]"),
                                    "expected a site name (a string)",
                                ),
                            }
                        }
                    }
                    other => self.problem(
                        v.span(),
                        &format!("{field}.sites"),
                        format!("expected a list of site names, found {}", describe(other)),
                    ),
                }
            } else {
                sites = site_names.to_vec();
            }
            let classification = self
                .string(&mut f, "classification", "a string like \"restricted\"")
                .map(Spanned::into_inner);
            let owner = self
                .string(
                    &mut f,
                    "owner",
                    "a string naming who answers for the dataset",
                )
                .map(Spanned::into_inner);
            let span = f.span.clone();
            self.finish(
                f,
                &[
                    "name",
                    "source",
                    "mode",
                    "interval",
                    "schedule",
                    "rpo",
                    "retention",
                    "sites",
                    "classification",
                    "owner",
                ],
            );
            // The schedule: a periodic dataset's versions, or a continuous one's base backups.
            let schedule = match (&interval, &schedule_text) {
                (Some(i), None) => {
                    if i.get_ref().is_zero() {
                        self.problem(
                            i.span(),
                            &format!("{field}.interval"),
                            "expected a duration of at least 1s",
                        );
                    }
                    Some(Schedule::Every(*i.get_ref()))
                }
                (None, Some(s)) => match Schedule::parse_calendar(s.get_ref()) {
                    Some(sch) => Some(sch),
                    None => {
                        self.problem(
                            s.span(),
                            &format!("{field}.schedule"),
                            "expected \"hourly :MM\", \"daily HH:MM\" or \"weekly DAY HH:MM\" (UTC; DAY is mon..sun)",
                        );
                        None
                    }
                },
                (Some(i), Some(_)) => {
                    self.problem(
                        i.span(),
                        &format!("{field}.interval"),
                        "give either interval or schedule, not both",
                    );
                    None
                }
                (None, None) => None,
            };
            let mode = match mode_text.as_ref().map(|m| m.get_ref().as_str()) {
                Some("continuous") => {
                    if !matches!(source, Some(Source::Postgres { .. }) | None) {
                        self.problem(
                            mode_text.as_ref().map_or(span.clone(), |m| m.span()),
                            &format!("{field}.mode"),
                            "continuous capture needs a postgres source; for files or a command use mode = \"periodic\" with a short interval",
                        );
                    }
                    Some(Mode::Continuous(schedule))
                }
                Some("periodic") | None => match schedule {
                    Some(s) => Some(Mode::Periodic(s)),
                    None => {
                        if interval.is_none() && schedule_text.is_none() {
                            self.problem(
                                mode_text.as_ref().map_or(span.clone(), |m| m.span()),
                                &format!("{field}.interval"),
                                "missing; a periodic dataset needs `interval = \"15min\"` or `schedule = \"daily 02:00\"`",
                            );
                        }
                        None
                    }
                },
                Some(_) => {
                    self.problem(
                        mode_text.as_ref().map_or(span.clone(), |m| m.span()),
                        &format!("{field}.mode"),
                        "expected \"continuous\" or \"periodic\"",
                    );
                    None
                }
            };
            if let (Some(Mode::Periodic(s)), Some(r)) = (&mode, &rpo) {
                if *r.get_ref() < s.period() {
                    self.warn(
                        r.span(),
                        &format!("{field}.rpo"),
                        format!(
                            "rpo {} is shorter than the schedule ({s}): the dataset will breach its RPO between runs",
                            format_duration(*r.get_ref())
                        ),
                    );
                }
            }
            if let (Some(name), Some(source), Some(mode), Some(rpo), Some(retention)) =
                (name, source, mode, rpo, retention)
            {
                out.push(DatasetConfig {
                    name: name.into_inner(),
                    source,
                    mode,
                    rpo: rpo.into_inner(),
                    retention,
                    sites,
                    classification,
                    owner,
                });
            }
        }
        Some(out)
    }

    fn source(&mut self, f: &mut Fields<'_, '_>) -> Option<Source> {
        const EXPECTED: &str = "{ files = [\"path\", ...] }, { command = \"...\" } or { postgres = { conninfo = \"...\", slot = \"...\" } }";
        let field = Self::field_name(f, "source");
        let present = f.map.contains_key("source");
        let Some(mut s) = self.table(f, "source") else {
            if !present {
                self.problem(
                    f.span.clone(),
                    &field,
                    format!("missing; expected {EXPECTED}"),
                );
            }
            return None;
        };
        let span = s.span.clone();
        let mut found = Vec::new();
        if let Some(v) = self.take(&mut s, "files") {
            let mut paths = Vec::new();
            match v.get_ref() {
                DeValue::Array(items) if !items.is_empty() => {
                    for (i, item) in items.iter().enumerate() {
                        match item.get_ref().as_str() {
                            Some(p) if !p.is_empty() => paths.push(self.path(p)),
                            _ => self.problem(
                                item.span(),
                                &format!("{field}.files[{i}]"),
                                "expected a path (a non-empty string)",
                            ),
                        }
                    }
                }
                _ => self.problem(
                    v.span(),
                    &format!("{field}.files"),
                    "expected a list of paths like [\"/srv/registry\"]",
                ),
            }
            found.push(Source::Files(paths));
        }
        let pass_span = s.map.get("pass_env").map(|(v, _)| v.span());
        let pass_env = self.env_names(&mut s, "pass_env");
        if let Some(c) = self.string(&mut s, "command", "a shell command") {
            if c.get_ref().trim().is_empty() {
                self.problem(
                    c.span(),
                    &format!("{field}.command"),
                    "expected a command, found an empty string",
                );
            }
            found.push(Source::Command {
                command: c.into_inner(),
                pass_env,
            });
        } else if let Some(span) = pass_span {
            self.problem(
                span,
                &format!("{field}.pass_env"),
                "pass_env applies to a command source only",
            );
        }
        if let Some(mut pg) = self.table(&mut s, "postgres") {
            let conninfo = self.required_string(
                &mut pg,
                "conninfo",
                "a connection string like \"host=/run/postgresql user=embassy\"",
            );
            let slot = self
                .string(&mut pg, "slot", "a replication slot name")
                .map(Spanned::into_inner);
            self.finish(pg, &["conninfo", "slot"]);
            if let Some(c) = &conninfo {
                // A connection string the streamer would refuse (an unknown key, a bad sslmode)
                // is reported here with its line; sslrootcert must not depend on the folder the
                // agent happens to run in.
                let at = format!("{field}.postgres.conninfo");
                match embassy_postgres::replication::ConnConfig::parse(c.get_ref()) {
                    Err(e) => self.problem(c.span(), &at, e.to_string()),
                    Ok(cc) if cc.sslrootcert.as_ref().is_some_and(|p| p.is_relative()) => self
                        .problem(
                            c.span(),
                            &at,
                            "sslrootcert must be an absolute path (like \
                             sslrootcert=/etc/embassy/pg-ca.pem)",
                        ),
                    Ok(_) => {}
                }
            }
            if let Some(c) = conninfo {
                found.push(Source::Postgres {
                    conninfo: c.into_inner(),
                    slot,
                });
            }
        }
        self.finish(s, &["files", "command", "pass_env", "postgres"]);
        match found.len() {
            1 => found.pop(),
            0 => {
                self.problem(span, &field, format!("expected {EXPECTED}"));
                None
            }
            _ => {
                self.problem(
                    span,
                    &field,
                    "give exactly one of files, command or postgres",
                );
                None
            }
        }
    }

    fn retention(&mut self, f: &mut Fields<'_, '_>) -> Option<Retention> {
        let mut r = Retention::default();
        let present = f.map.contains_key("retention");
        let Some(mut t) = self.table(f, "retention") else {
            return (!present).then_some(r);
        };
        r.keep_last = self.count(&mut t, "keep_last", 1);
        r.keep_hourly = self.count(&mut t, "keep_hourly", 0);
        r.keep_daily = self.count(&mut t, "keep_daily", 0);
        r.keep_weekly = self.count(&mut t, "keep_weekly", 0);
        r.keep_monthly = self.count(&mut t, "keep_monthly", 0);
        r.keep_yearly = self.count(&mut t, "keep_yearly", 0);
        r.min_age = self.duration(&mut t, "min_age").map(Spanned::into_inner);
        let rules = [
            r.keep_last,
            r.keep_hourly,
            r.keep_daily,
            r.keep_weekly,
            r.keep_monthly,
            r.keep_yearly,
        ];
        if rules.iter().all(|k| k.unwrap_or(0) == 0) {
            let field = t.path.clone();
            self.problem(
                t.span.clone(),
                &field,
                "expected at least one keep_last/keep_hourly/keep_daily/keep_weekly/keep_monthly/keep_yearly rule (without one, every version but the newest would be deleted); omit retention to keep every version",
            );
        }
        self.finish(
            t,
            &[
                "keep_last",
                "keep_hourly",
                "keep_daily",
                "keep_weekly",
                "keep_monthly",
                "keep_yearly",
                "min_age",
            ],
        );
        Some(r)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected a site name of a-z, 0-9, '-', '_' (at most 64), found \"{name}\""
        ))
    }
}
