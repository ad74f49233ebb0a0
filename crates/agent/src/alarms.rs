//! Alarms: raised once when a dataset at a required site turns red (its newest durable data is
//! older than its RPO, or the data there is damaged or was tampered with), cleared once when it
//! is healthy again. Each carries the kind of problem behind it (`problem_kind`,
//! `EMBASSY_ALARM_KIND`): `integrity` (damaged or tampered with: red at once, whatever the RPO),
//! `outage` (the site is unreachable), `source`, `config`, `keys`, or none when the data is only
//! old. An alarm raised for another kind is raised again when the problem turns out to be
//! integrity. Alarms are delivered by an HTTPS POST of JSON to a
//! webhook (certificate verified) and/or a shell command with `EMBASSY_ALARM_*` variables and
//! without the agent's secrets in its environment. Which alarms are raised is
//! kept in the agent's state file, so a restart neither repeats nor forgets one.

use std::path::Path;
use std::time::Duration;

use embassy_core::ErrorKind;
use embassy_sources::env::Scrub;
use serde_json::json;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig, TlsProvider};

use crate::config::Config;
use crate::state::{AgentState, RaisedAlarm};
use crate::status::{Colour, DatasetRow, GroupRow};

/// The `site` of a restore drill's alarm (a failed or overdue drill is the dataset's, not a
/// site's).
pub const DRILL_SITE: &str = "drill";

/// The `site` of a consistency group's alarm (its `dataset` is the group's ledger,
/// `group.<name>`): raised when a group point is overdue, by [`evaluate_groups`].
pub const GROUP_SITE: &str = "group";

/// One alarm or clearance to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// "raised" or "cleared".
    pub event: &'static str,
    /// The dataset.
    pub dataset: String,
    /// The site.
    pub site: String,
    /// Age of the newest durable data (None: no data / unreadable).
    pub lag_seconds: Option<f64>,
    /// The RPO.
    pub rpo_seconds: f64,
    /// For people.
    pub message: String,
    /// When (Unix seconds).
    pub at: i64,
    /// The kind of problem behind a raised alarm (None: the data is only older than the RPO).
    pub kind: Option<ErrorKind>,
}

impl Notice {
    /// The JSON body a webhook receives.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "source": "data-embassy",
            "event": self.event,
            "dataset": self.dataset,
            "site": self.site,
            "lag_seconds": self.lag_seconds,
            "rpo_seconds": self.rpo_seconds,
            "message": self.message,
            "problem_kind": self.kind.map(ErrorKind::as_str),
            "time": embassy_core::time::utc(self.at.saturating_mul(1_000_000_000)),
            "time_unix": self.at,
        })
    }
}

/// Compares the judged rows with the raised alarms: returns the notices to send (new breaches
/// at required sites, and clearances of alarms whose cell is no longer red). The state is
/// updated by [`mark_delivered`] once a notice got out.
pub fn evaluate(rows: &[DatasetRow], state: &AgentState, now: i64) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut still_red = std::collections::HashSet::new();
    for row in rows {
        for cell in row.cells.iter().filter(|c| c.required) {
            let key = format!("{}@{}", row.name, cell.site);
            if cell.colour == Colour::Red {
                still_red.insert(key.clone());
                let escalated = cell.problem == Some(ErrorKind::Integrity)
                    && state
                        .alarms
                        .get(&key)
                        .is_some_and(|a| a.kind != Some(ErrorKind::Integrity));
                if !state.alarms.contains_key(&key) || escalated {
                    out.push(Notice {
                        event: "raised",
                        dataset: row.name.clone(),
                        site: cell.site.clone(),
                        lag_seconds: cell.lag_seconds,
                        rpo_seconds: row.rpo_seconds,
                        message: format!("{} at {}: {}", row.name, cell.site, cell.reason),
                        at: now,
                        kind: cell.problem,
                    });
                }
            }
        }
    }
    // A failed or overdue restore drill: one alarm per dataset, at the pseudo-site `drill`.
    for row in rows {
        let Some(drill) = row.drill.as_ref().filter(|d| d.is_red()) else {
            continue;
        };
        let key = format!("{}@{DRILL_SITE}", row.name);
        still_red.insert(key.clone());
        let kind = drill
            .last
            .as_ref()
            .filter(|_| drill.failed)
            .and_then(|l| l.kind);
        if !state.alarms.contains_key(&key) {
            out.push(Notice {
                event: "raised",
                dataset: row.name.clone(),
                site: DRILL_SITE.into(),
                lag_seconds: None,
                rpo_seconds: row.rpo_seconds,
                message: format!("{}: {}", row.name, drill.reason()),
                at: now,
                kind,
            });
        }
    }
    for (key, a) in &state.alarms {
        if a.site != GROUP_SITE && !still_red.contains(key) {
            let (lag, rpo) = rows
                .iter()
                .find(|r| r.name == a.dataset)
                .map(|r| {
                    (
                        r.cells
                            .iter()
                            .find(|c| c.site == a.site)
                            .and_then(|c| c.lag_seconds),
                        r.rpo_seconds,
                    )
                })
                .unwrap_or((None, 0.0));
            out.push(Notice {
                event: "cleared",
                dataset: a.dataset.clone(),
                site: a.site.clone(),
                lag_seconds: lag,
                rpo_seconds: rpo,
                message: format!("{} at {}: healthy again", a.dataset, a.site),
                at: now,
                kind: a.kind,
            });
        }
    }
    out
}

/// The alarms of consistency groups: raised once when a group's point is overdue (no point
/// recorded within its interval and grace, so a group restore reaches only an older instant),
/// cleared once a point is recorded again. Keyed `group.<name>@group`; alarms of groups no
/// longer configured are cleared.
pub fn evaluate_groups(groups: &[GroupRow], state: &AgentState, now: i64) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut still_red = std::collections::HashSet::new();
    for g in groups.iter().filter(|g| g.overdue) {
        let dataset = embassy_core::format::layout::group_ledger(&g.name);
        let key = format!("{dataset}@{GROUP_SITE}");
        still_red.insert(key.clone());
        if !state.alarms.contains_key(&key) {
            out.push(Notice {
                event: "raised",
                dataset,
                site: GROUP_SITE.into(),
                lag_seconds: None,
                rpo_seconds: g.interval_seconds,
                message: format!("group {}: {}", g.name, g.reason()),
                at: now,
                kind: g
                    .state
                    .last_error_kind
                    .filter(|_| g.state.consecutive_failures > 0),
            });
        }
    }
    for (key, a) in &state.alarms {
        if a.site == GROUP_SITE && !still_red.contains(key) {
            out.push(Notice {
                event: "cleared",
                dataset: a.dataset.clone(),
                site: a.site.clone(),
                lag_seconds: None,
                rpo_seconds: 0.0,
                message: format!("{}: a group point was recorded again", a.dataset),
                at: now,
                kind: a.kind,
            });
        }
    }
    out
}

/// The `site` of an embassy node standby's alarm (its `dataset` is the standby's dataset).
pub const STANDBY_SITE: &str = "standby";

/// The alarms of the embassy node's standbys: raised once when a standby is not following
/// (down, being rebuilt) or lags past its `lag_alarm`, cleared once it follows within it again.
/// Keyed `<dataset>@standby`; alarms of standbys no longer configured are cleared.
pub fn evaluate_standbys(
    standbys: &[crate::report::StandbyStatus],
    state: &AgentState,
    now: i64,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut still_red = std::collections::HashSet::new();
    for s in standbys.iter().filter(|s| s.alarm) {
        let key = format!("{}@{STANDBY_SITE}", s.dataset);
        still_red.insert(key.clone());
        if !state.alarms.contains_key(&key) {
            let why = match (s.phase.as_str(), s.lag_seconds) {
                ("following", Some(l)) => format!(
                    "lags {l:.1} s ({} bytes) behind the newest durable WAL, past its lag_alarm of {} s",
                    s.lag_bytes.unwrap_or(0),
                    s.lag_alarm_seconds
                ),
                ("following", None) => "its lag cannot be measured".to_string(),
                (phase, _) => format!(
                    "is {phase}{}",
                    s.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            };
            out.push(Notice {
                event: "raised",
                dataset: s.dataset.clone(),
                site: STANDBY_SITE.into(),
                lag_seconds: s.lag_seconds,
                rpo_seconds: s.lag_alarm_seconds,
                message: format!("standby of {}: {why}", s.dataset),
                at: now,
                kind: Some(ErrorKind::Outage),
            });
        }
    }
    for (key, a) in &state.alarms {
        if a.site == STANDBY_SITE && !still_red.contains(key) {
            out.push(Notice {
                event: "cleared",
                dataset: a.dataset.clone(),
                site: a.site.clone(),
                lag_seconds: None,
                rpo_seconds: 0.0,
                message: format!(
                    "standby of {}: follows the vault within its lag_alarm again",
                    a.dataset
                ),
                at: now,
                kind: a.kind,
            });
        }
    }
    out
}

/// Records a delivered notice in the state.
pub fn mark_delivered(state: &mut AgentState, n: &Notice) {
    let key = format!("{}@{}", n.dataset, n.site);
    if n.event == "raised" {
        state.alarms.insert(
            key,
            RaisedAlarm {
                dataset: n.dataset.clone(),
                site: n.site.clone(),
                since: n.at,
                message: n.message.clone(),
                kind: n.kind,
            },
        );
    } else {
        state.alarms.remove(&key);
    }
}

/// Delivers a notice through every configured channel of `config` (the command runs in the
/// configuration's folder, without the secrets [`Config::command_scrub`] withholds). Ok when at
/// least one channel took it (or none is configured: the log line is the alarm); Err lists what
/// failed. Neither the webhook's URL (its path may be a secret) nor the command is repeated in
/// the error: the webhook is named by its host.
pub fn deliver(config: &Config, n: &Notice) -> Result<(), String> {
    let settings = &config.alarms;
    let mut failures = Vec::new();
    let mut delivered = 0;
    if let Some(url) = &settings.webhook {
        match post_json(
            url,
            settings.webhook_ca_file.as_deref(),
            &n.to_json().to_string(),
        ) {
            Ok(()) => delivered += 1,
            Err(e) => failures.push(format!(
                "webhook to {}: {e}",
                crate::config::WebhookUrl::parse(url)
                    .map(|u| u.host)
                    .unwrap_or_default()
            )),
        }
    }
    if let Some(command) = &settings.command {
        let scrub = config.command_scrub(&settings.pass_env);
        match run_command(command, n, &config.base_dir(), &scrub) {
            Ok(()) => delivered += 1,
            Err(e) => failures.push(format!("alarm command: {e}")),
        }
    }
    if delivered > 0 || failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn run_command(command: &str, n: &Notice, dir: &Path, scrub: &Scrub) -> Result<(), String> {
    let mut shell = std::process::Command::new("sh");
    shell.arg("-c").arg(command).current_dir(dir);
    scrub.apply(&mut shell);
    let status = shell
        .env("EMBASSY_ALARM_EVENT", n.event)
        .env("EMBASSY_ALARM_DATASET", &n.dataset)
        .env("EMBASSY_ALARM_SITE", &n.site)
        .env(
            "EMBASSY_ALARM_LAG_SECONDS",
            n.lag_seconds.map_or(String::new(), |l| format!("{l:.0}")),
        )
        .env("EMBASSY_ALARM_RPO_SECONDS", format!("{:.0}", n.rpo_seconds))
        .env("EMBASSY_ALARM_MESSAGE", &n.message)
        .env("EMBASSY_ALARM_KIND", n.kind.map_or("", ErrorKind::as_str))
        .env("EMBASSY_ALARM_JSON", n.to_json().to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot be started: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exited with {status}"))
    }
}

/// The certificate authorities in a PEM file.
fn read_ca_file(path: &Path) -> Result<RootCerts, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("the CA file {} cannot be read: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "the CA file {} is not valid PEM: {e}",
                    path.display()
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "the CA file {} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    Ok(RootCerts::new_with_certs(&certs))
}

/// POSTs `body` as JSON to an http:// or https:// URL (10 s timeout, no redirects); Ok on a 2xx
/// answer. An https server's certificate is verified against the CAs of `ca_file` when given,
/// the Mozilla roots otherwise.
pub fn post_json(url: &str, ca_file: Option<&Path>, body: &str) -> Result<(), String> {
    let mut tls = TlsConfig::builder().provider(TlsProvider::Rustls);
    if let Some(ca) = ca_file {
        tls = tls.root_certs(read_ca_file(ca)?);
    }
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(10)))
            .user_agent("data-embassy-agent")
            .build(),
    );
    let answer = agent
        .post(url)
        .content_type("application/json")
        .send(body)
        .map_err(|e| {
            // rustls reports a refused certificate as an I/O error of the handshake.
            let tls = match &e {
                ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => true,
                ureq::Error::Io(io) => io.get_ref().is_some_and(|inner| {
                    let text = inner.to_string();
                    text.contains("certificate") || text.contains("handshake")
                }),
                _ => false,
            };
            if tls {
                format!(
                    "TLS failed: {e} (the webhook's certificate must be valid for its host and signed by a trusted CA: set `webhook_ca_file` to your CA's PEM file)"
                )
            } else {
                format!("cannot be reached: {e}")
            }
        })?;
    let code = answer.status().as_u16();
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("answered HTTP {code}"))
    }
}
