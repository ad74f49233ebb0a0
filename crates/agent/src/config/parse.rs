//! Reading `embassy.toml`: the parser that keeps source positions, takes each field once
//! (what is left over is an unknown field), and reads the top-level sections (agent, status,
//! alarms, keys). Sites and datasets are read in [`super::datasets`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{
    AgentSettings, AlarmSettings, Config, ConfigError, KeyConfig, PassphraseSource, Problem,
    StatusSettings,
};
use crate::schedule::parse_duration;

/// Checks configuration text (see [`Config::parse`]).
pub(super) fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
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

pub(super) struct Parser<'t> {
    pub(super) text: &'t str,
    pub(super) file: String,
    pub(super) problems: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
    pub(super) base: PathBuf,
}

pub(super) type Table<'i> = DeTable<'i>;
pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// Fields of one table, each taken once; what is left over is unknown.
pub(super) struct Fields<'a, 'i> {
    pub(super) path: String,
    pub(super) span: Range<usize>,
    pub(super) map: BTreeMap<String, (&'a Value<'i>, Range<usize>)>,
}

pub(super) fn describe(v: &DeValue<'_>) -> &'static str {
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
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = self.text[line_start..offset].chars().count() + 1;
        (line, column)
    }

    pub(super) fn at(&self, span: Range<usize>, field: &str, message: String) -> Problem {
        let (line, column) = self.position(span.start);
        Problem {
            file: self.file.clone(),
            line,
            column,
            field: field.to_string(),
            message,
        }
    }

    pub(super) fn problem(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let p = self.at(span, field, message.into());
        self.problems.push(p);
    }

    pub(super) fn warn(&mut self, span: Range<usize>, field: &str, message: impl Into<String>) {
        let p = self.at(span, field, message.into());
        self.warnings.push(p);
    }

    pub(super) fn fields<'a, 'i>(
        &self,
        path: &str,
        span: Range<usize>,
        t: &'a Table<'i>,
    ) -> Fields<'a, 'i> {
        Fields {
            path: path.to_string(),
            span,
            map: t
                .iter()
                .map(|(k, v)| (k.get_ref().to_string(), (v, k.span())))
                .collect(),
        }
    }

    pub(super) fn field_name(f: &Fields<'_, '_>, key: &str) -> String {
        if f.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", f.path)
        }
    }

    /// Reports every field not taken, with the accepted names.
    pub(super) fn finish(&mut self, f: Fields<'_, '_>, known: &[&str]) {
        for (key, (_, span)) in &f.map {
            let name = Self::field_name(&f, key);
            self.problem(
                span.clone(),
                &name,
                format!("unknown field; expected one of: {}", known.join(", ")),
            );
        }
    }

    pub(super) fn take<'a, 'i>(
        &mut self,
        f: &mut Fields<'a, 'i>,
        key: &str,
    ) -> Option<&'a Value<'i>> {
        f.map.remove(key).map(|(v, _)| v)
    }

    pub(super) fn string(
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

    pub(super) fn required_string(
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

    pub(super) fn duration(
        &mut self,
        f: &mut Fields<'_, '_>,
        key: &str,
    ) -> Option<Spanned<Duration>> {
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

    pub(super) fn count(&mut self, f: &mut Fields<'_, '_>, key: &str, min: i64) -> Option<u32> {
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
    pub(super) fn env_names(&mut self, f: &mut Fields<'_, '_>, key: &str) -> Vec<String> {
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

    /// A list of non-empty strings (`expected` says what each is).
    pub(super) fn strings(
        &mut self,
        f: &mut Fields<'_, '_>,
        key: &str,
        expected: &str,
    ) -> Vec<String> {
        let Some(v) = self.take(f, key) else {
            return Vec::new();
        };
        let name = Self::field_name(f, key);
        let DeValue::Array(items) = v.get_ref() else {
            self.problem(
                v.span(),
                &name,
                format!("expected {expected}, found {}", describe(v.get_ref())),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_str() {
                Some(s) if !s.trim().is_empty() => out.push(s.to_string()),
                _ => self.problem(
                    item.span(),
                    &format!("{name}[{i}]"),
                    format!("expected {expected}"),
                ),
            }
        }
        out
    }

    pub(super) fn table<'a, 'i>(
        &mut self,
        f: &mut Fields<'a, 'i>,
        key: &str,
    ) -> Option<Fields<'a, 'i>> {
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

    pub(super) fn path(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn config(&mut self, root: &Table<'_>, path: &Path) -> Option<Config> {
        let mut top = self.fields("", 0..0, root);
        let agent = self.agent_settings(&mut top);
        let status = self.status_settings(&mut top);
        let alarms = self.alarm_settings(&mut top);
        let keys = self.key_config(&mut top);
        let sites = self.sites(&mut top);
        let site_names: Vec<String> = sites.iter().map(|s| s.name.clone()).collect();
        let datasets = self.datasets(&mut top, &site_names);
        let groups = self.groups(&mut top, datasets.as_deref().unwrap_or_default());
        let mut kept: Vec<(String, PathBuf)> =
            vec![("this configuration file".into(), path.into())];
        if let Some((a, _)) = &agent {
            kept.push(("the agent's state_dir".into(), a.state_dir.clone()));
        }
        if let Some(k) = &keys {
            kept.push(("the key file".into(), k.file.clone()));
            if let PassphraseSource::File(f) = &k.passphrase {
                kept.push(("the passphrase file".into(), f.clone()));
            }
        }
        for s in sites.iter().filter(|s| !s.location.contains("://")) {
            kept.push((
                format!("site {}'s folder", s.name),
                PathBuf::from(&s.location),
            ));
        }
        let standbys = self.standbys(&mut top, &kept);
        self.finish(
            top,
            &[
                "agent", "status", "alarms", "keys", "sites", "datasets", "groups", "standbys",
            ],
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
            groups,
            standbys,
            warnings: Vec::new(),
        })
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn agent_settings(
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

    pub(super) fn status_settings(&mut self, top: &mut Fields<'_, '_>) -> Option<StatusSettings> {
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

    pub(super) fn alarm_settings(&mut self, top: &mut Fields<'_, '_>) -> Option<AlarmSettings> {
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
            match super::WebhookUrl::parse(w.get_ref()) {
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

    pub(super) fn key_config(&mut self, top: &mut Fields<'_, '_>) -> Option<KeyConfig> {
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

    pub(super) fn array_of_tables<'a, 'i>(
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
}
