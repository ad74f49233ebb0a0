//! The status document: typed rows, serialized as `/status.json` and by `embassy status --config
//! FILE --json`, and the one source the dashboard ([`crate::dashboard`]) and `/metrics`
//! ([`crate::metrics`]) render from, so the three never disagree. The field names are a stable
//! interface (docs/operations.md lists them): fields may be added, none renamed or removed.
//!
//! An integrity problem (damage, tampering) and an outage (a site unreachable) are kept apart
//! everywhere by their [`ErrorKind`] (`problem_kind` in JSON), never by reading a message.

use std::collections::BTreeMap;
use std::path::PathBuf;

use embassy_core::ErrorKind;
use serde::Serialize;

use crate::config::{Config, Mode};
use crate::state::AgentState;
use crate::status::{rows, site_problem, Colour, SiteSnapshot};

/// The whole status document.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// True when no dataset is red.
    pub ok: bool,
    /// When it was made, UTC.
    pub generated_at: String,
    /// The configuration file it judges by.
    pub config: PathBuf,
    /// Every site, in configuration order.
    pub sites: Vec<SiteStatus>,
    /// Every dataset, in configuration order, with one cell per site.
    pub datasets: Vec<DatasetStatus>,
    /// Every consistency group (`[[groups]]`), in configuration order.
    pub groups: Vec<GroupStatus>,
    /// The embassy node's hot standbys (`[[standbys]]`), in configuration order.
    pub standbys: Vec<StandbyStatus>,
    /// The alarms raised and not cleared.
    pub alarms: Vec<AlarmStatus>,
    /// Sites by their worst problem: `"integrity": 1` is a site damaged or tampered with.
    pub problems: BTreeMap<ErrorKind, usize>,
}

/// One site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SiteStatus {
    /// Its name.
    pub name: String,
    /// Its location.
    pub location: String,
    /// Why it cannot be read at all ("not read yet" before the first look).
    pub error: Option<String>,
    /// Its worst problem, integrity first ([`site_problem`]).
    pub problem_kind: Option<ErrorKind>,
    /// It holds no vault while other sites hold it: left out of every run, never filled, until
    /// it holds the vault again (`error` gives the way out).
    pub holds_no_vault: bool,
    /// Bytes of all objects it holds.
    pub bytes_stored: Option<u64>,
    /// Writes it missed, queued for catch-up.
    pub catch_up_pending: Option<usize>,
    /// When it was last read, UTC.
    pub read_at: Option<String>,
    /// Its last keyless verification.
    pub last_verify: Option<VerifyStatus>,
}

/// The last keyless verification of a site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyStatus {
    /// When it ended, UTC.
    pub at: String,
    /// When it ended, Unix seconds.
    pub at_unix: i64,
    /// True when nothing was wrong.
    pub ok: bool,
    /// What it found, one line.
    pub summary: String,
    /// When not ok: integrity when it found damage, another kind when it could not run.
    pub problem_kind: Option<ErrorKind>,
}

/// One dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetStatus {
    /// Its name.
    pub name: String,
    /// Worst colour over its required sites.
    pub colour: Colour,
    /// Its RPO.
    pub rpo_seconds: f64,
    /// "continuous" (WAL streamed) or "periodic".
    pub mode: &'static str,
    /// Its schedule (of base backups, for a continuous dataset).
    pub schedule: Option<String>,
    /// What it backs up, without secrets.
    pub source: String,
    /// Its classification, as configured.
    pub classification: Option<String>,
    /// Its owner, as configured.
    pub owner: Option<String>,
    /// The sites its RPO must hold at.
    pub required_sites: Vec<String>,
    /// Backup runs started by the agent.
    pub runs: u64,
    /// Backup runs that failed.
    pub errors: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// When the last successful run ended, UTC.
    pub last_success: Option<String>,
    /// The same, Unix seconds.
    pub last_success_unix: Option<i64>,
    /// Seconds the last successful run took.
    pub last_duration_seconds: Option<f64>,
    /// The last failure, for people.
    pub last_error: Option<String>,
    /// Its kind.
    pub last_error_kind: Option<ErrorKind>,
    /// When it happened, UTC.
    pub last_error_at: Option<String>,
    /// One cell per site, in configuration order.
    pub sites: Vec<CellStatus>,
    /// Its restore drills (none without a `drill` schedule).
    pub drill: Option<DrillStatus>,
}

/// A dataset's restore drills.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DrillStatus {
    /// How often one is due, in seconds.
    pub interval_seconds: f64,
    /// When the last one ended, UTC (none: never ran).
    pub last_at: Option<String>,
    /// The same, Unix seconds.
    pub last_at_unix: Option<i64>,
    /// True when every check of the last one passed.
    pub passed: Option<bool>,
    /// Its recovery time, in milliseconds.
    pub rto_ms: Option<u64>,
    /// Its recovery point, in milliseconds.
    pub rpo_ms: Option<u64>,
    /// The version it restored.
    pub version: Option<u64>,
    /// The ledger entry recording it.
    pub recorded_seq: Option<u64>,
    /// What it found, one line.
    pub summary: Option<String>,
    /// When the next one is (was) due, UTC.
    pub due_at: String,
    /// No drill within the interval and its grace.
    pub overdue: bool,
    /// The last one failed or could not run.
    pub failed: bool,
}

/// A consistency group's points.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    /// The group.
    pub name: String,
    /// Its member datasets.
    pub members: Vec<String>,
    /// How often a point is due, in seconds.
    pub interval_seconds: f64,
    /// The last point's number (none: no point recorded by this agent yet).
    pub last_point: Option<u64>,
    /// The group ledger's entry recording it.
    pub last_point_seq: Option<u64>,
    /// When it was recorded, UTC.
    pub last_point_at: Option<String>,
    /// The same, Unix seconds.
    pub last_point_at_unix: Option<i64>,
    /// Milliseconds between its first and last member's restore point.
    pub last_point_spread_ms: Option<f64>,
    /// Attempts that failed since the last point.
    pub consecutive_failures: u32,
    /// The last failure.
    pub last_error: Option<String>,
    /// Its kind.
    pub last_error_kind: Option<ErrorKind>,
    /// When the next point is (was) due, UTC.
    pub due_at: String,
    /// No point within the interval and its grace: red, an alarm is raised.
    pub overdue: bool,
}

/// An embassy node's hot standby: where it is and how far behind home's newest durable WAL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StandbyStatus {
    /// The PostgreSQL dataset it follows.
    pub dataset: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The port it answers read-only queries on.
    pub port: u16,
    /// `creating`, `starting`, `following`, `diverged`, `rebuilding`, `down` or `promoted`
    /// (`unknown` before the agent looked at it).
    pub phase: String,
    /// When it entered that phase, UTC.
    pub since: Option<String>,
    /// Its replay position.
    pub replay_lsn: Option<String>,
    /// The end of the newest durable WAL in the vault.
    pub vault_lsn: Option<String>,
    /// Its timeline (the newest PostgreSQL accepted as its recovery target).
    pub timeline: Option<u32>,
    /// The timeline of the vault's newest durable WAL.
    pub vault_timeline: Option<u32>,
    /// Bytes of durable WAL it has not replayed.
    pub lag_bytes: Option<u64>,
    /// Seconds its data is behind the newest durable WAL.
    pub lag_seconds: Option<f64>,
    /// The configured alarm threshold, in seconds.
    pub lag_alarm_seconds: f64,
    /// When it was last asked, UTC.
    pub checked_at: Option<String>,
    /// Times its server was started again.
    pub restarts: u32,
    /// Times it was rebuilt from the newest base backup.
    pub rebuilds: u32,
    /// When it was last rebuilt, UTC.
    pub last_rebuild_at: Option<String>,
    /// Why.
    pub last_rebuild_reason: Option<String>,
    /// The last problem.
    pub last_error: Option<String>,
    /// Not following, or behind by more than its threshold: red, an alarm is raised.
    pub alarm: bool,
}

/// The standbys of `config` as the agent's state holds them, judged at `now_s` (Unix seconds):
/// an alarm when one is down or being rebuilt, lags past its threshold, or has been starting
/// (or being made) for longer than its threshold.
pub fn standby_rows(config: &Config, state: &AgentState, now_s: i64) -> Vec<StandbyStatus> {
    config
        .standbys
        .iter()
        .map(|c| {
            let st = state.standbys.get(&c.dataset).cloned().unwrap_or_default();
            let phase = if st.phase.is_empty() {
                "unknown".to_string()
            } else {
                st.phase.clone()
            };
            let threshold = c.lag_alarm.as_secs_f64();
            let alarm = match phase.as_str() {
                "following" => st.lag_seconds.is_none_or(|l| l > threshold),
                "down" | "rebuilding" | "diverged" => true,
                // The live registry after a takeover: nothing to follow.
                "promoted" => false,
                _ => st.since == 0 || (now_s - st.since) as f64 > threshold,
            };
            StandbyStatus {
                dataset: c.dataset.clone(),
                data_dir: c.data_dir.clone(),
                port: c.port,
                phase,
                since: (st.since > 0).then(|| utc_secs(st.since)),
                replay_lsn: st.replay_lsn,
                vault_lsn: st.vault_lsn,
                timeline: st.timeline,
                vault_timeline: st.vault_timeline,
                lag_bytes: st.lag_bytes,
                lag_seconds: st.lag_seconds,
                lag_alarm_seconds: threshold,
                checked_at: st.checked_at.map(utc_secs),
                restarts: st.restarts,
                rebuilds: st.rebuilds,
                last_rebuild_at: st.last_rebuild_at.map(utc_secs),
                last_rebuild_reason: st.last_rebuild_reason,
                last_error: st.last_error,
                alarm,
            }
        })
        .collect()
}

/// One dataset at one site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellStatus {
    /// The site's name.
    pub site: String,
    /// True when the dataset's RPO must hold at this site.
    pub required: bool,
    /// Green, amber or red.
    pub colour: Colour,
    /// Why, for people.
    pub reason: String,
    /// Age of the newest durable data (None: no version, or unreadable and never seen).
    pub lag_seconds: Option<f64>,
    /// Newest version number (as `embassy versions` lists it).
    pub newest_version: Option<u64>,
    /// Its ledger entry's sequence number.
    pub newest_version_ledger_seq: Option<u64>,
    /// Continuous datasets: end of the newest durable WAL here.
    pub wal_end: Option<String>,
    /// Continuous datasets: WAL the server has written that the site does not hold yet.
    pub wal_lag_bytes: Option<u64>,
    /// Continuous datasets: the site holds all the WAL the server had when last asked.
    pub caught_up: bool,
    /// Versions held.
    pub versions: u64,
    /// The recovery point, UTC (embassy-ops's rule).
    pub recovery_point: Option<String>,
    /// Bytes the dataset's versions added to the vault.
    pub bytes_stored: u64,
    /// Why the dataset's history cannot be read here.
    pub error: Option<String>,
    /// The kind of problem behind a colour that is not green, when a failure explains it.
    pub problem_kind: Option<ErrorKind>,
}

/// An alarm raised and not cleared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmStatus {
    /// The dataset.
    pub dataset: String,
    /// The site.
    pub site: String,
    /// When it was raised, UTC.
    pub since: String,
    /// Why, for people.
    pub message: String,
    /// What kind of problem raised it (None: the data is only older than the RPO).
    pub problem_kind: Option<ErrorKind>,
}

fn utc_secs(s: i64) -> String {
    embassy_core::time::utc(s.saturating_mul(1_000_000_000))
}

/// Judges every dataset at every site and gathers the document.
pub fn report(
    config: &Config,
    snaps: &[SiteSnapshot],
    state: &AgentState,
    now_ns: i64,
) -> StatusReport {
    let rows = rows(config, snaps, state, now_ns);
    let sites: Vec<SiteStatus> = config
        .sites
        .iter()
        .map(|s| {
            let snap = snaps.iter().find(|x| x.name == s.name);
            let verify = state.verify.get(&s.name);
            SiteStatus {
                name: s.name.clone(),
                location: s.location.clone(),
                error: snap.map_or(Some("not read yet".to_string()), |x| {
                    x.error.as_ref().map(|e| e.message.clone())
                }),
                problem_kind: site_problem(snap, verify),
                holds_no_vault: snap.is_some_and(|x| x.holds_no_vault),
                bytes_stored: snap.and_then(|x| x.bytes_stored),
                catch_up_pending: snap.and_then(|x| x.catch_up_pending),
                read_at: snap.map(|x| embassy_core::time::utc(x.read_at_ns)),
                last_verify: verify.map(|v| VerifyStatus {
                    at: utc_secs(v.at),
                    at_unix: v.at,
                    ok: v.ok,
                    summary: v.summary.clone(),
                    problem_kind: v.kind,
                }),
            }
        })
        .collect();
    let datasets: Vec<DatasetStatus> = rows
        .iter()
        .filter_map(|row| {
            let d = config.dataset(&row.name)?;
            let st = state.datasets.get(&d.name).cloned().unwrap_or_default();
            Some(DatasetStatus {
                name: d.name.clone(),
                colour: row.colour,
                rpo_seconds: row.rpo_seconds,
                mode: match &d.mode {
                    Mode::Continuous(_) => "continuous",
                    Mode::Periodic(_) => "periodic",
                },
                schedule: match &d.mode {
                    Mode::Continuous(s) => s.as_ref().map(|s| s.to_string()),
                    Mode::Periodic(s) => Some(s.to_string()),
                },
                source: d.source.describe(),
                classification: d.classification.clone(),
                owner: d.owner.clone(),
                required_sites: d.sites.clone(),
                runs: st.runs,
                errors: st.errors,
                consecutive_failures: st.consecutive_failures,
                last_success: st.last_success.map(utc_secs),
                last_success_unix: st.last_success,
                last_duration_seconds: st.last_duration_seconds,
                last_error: st.last_error,
                last_error_kind: st.last_error_kind,
                last_error_at: st.last_error_at.map(utc_secs),
                sites: row
                    .cells
                    .iter()
                    .map(|c| CellStatus {
                        site: c.site.clone(),
                        required: c.required,
                        colour: c.colour,
                        reason: c.reason.clone(),
                        lag_seconds: c.lag_seconds,
                        newest_version: c.facts.held.newest_version,
                        newest_version_ledger_seq: c.facts.held.newest_version_ledger_seq,
                        wal_end: c.facts.wal_end(),
                        wal_lag_bytes: c.facts.wal_lag_bytes,
                        caught_up: c.facts.caught_up,
                        versions: c.facts.held.versions,
                        recovery_point: c.facts.held.recovery_point_ns.map(embassy_core::time::utc),
                        bytes_stored: c.facts.held.bytes_stored,
                        error: c.facts.held.error.as_ref().map(|e| e.message.clone()),
                        problem_kind: c.problem,
                    })
                    .collect(),
                drill: row.drill.as_ref().map(|d| DrillStatus {
                    interval_seconds: d.interval_seconds,
                    last_at: d.last.as_ref().map(|l| utc_secs(l.at)),
                    last_at_unix: d.last.as_ref().map(|l| l.at),
                    passed: d.last.as_ref().map(|l| l.passed),
                    rto_ms: d.last.as_ref().and_then(|l| l.rto_ms),
                    rpo_ms: d.last.as_ref().and_then(|l| l.rpo_ms),
                    version: d.last.as_ref().and_then(|l| l.version),
                    recorded_seq: d.last.as_ref().and_then(|l| l.recorded_seq),
                    summary: d.last.as_ref().map(|l| l.summary.clone()),
                    due_at: utc_secs(d.due_at),
                    overdue: d.overdue,
                    failed: d.failed,
                }),
            })
        })
        .collect();
    let alarms = state
        .alarms
        .values()
        .map(|a| AlarmStatus {
            dataset: a.dataset.clone(),
            site: a.site.clone(),
            since: utc_secs(a.since),
            message: a.message.clone(),
            problem_kind: a.kind,
        })
        .collect();
    let groups = crate::status::group_rows(config, state, now_ns / 1_000_000_000)
        .into_iter()
        .map(|g| {
            let last = g.state.last_point.as_ref();
            GroupStatus {
                last_point: last.map(|p| p.number),
                last_point_seq: last.map(|p| p.seq),
                last_point_at: last.map(|p| utc_secs(p.at)),
                last_point_at_unix: last.map(|p| p.at),
                last_point_spread_ms: last.map(|p| p.spread_ms),
                consecutive_failures: g.state.consecutive_failures,
                last_error: g.state.last_error.clone(),
                last_error_kind: g.state.last_error_kind,
                due_at: utc_secs(g.due_at),
                overdue: g.overdue,
                name: g.name,
                members: g.members,
                interval_seconds: g.interval_seconds,
            }
        })
        .collect::<Vec<_>>();
    let mut problems: BTreeMap<ErrorKind, usize> =
        ErrorKind::ALL.into_iter().map(|k| (k, 0)).collect();
    for s in &sites {
        if let Some(k) = s.problem_kind {
            *problems.entry(k).or_default() += 1;
        }
    }
    let standbys = standby_rows(config, state, now_ns / 1_000_000_000);
    StatusReport {
        ok: datasets.iter().all(|d| d.colour != Colour::Red)
            && groups.iter().all(|g| !g.overdue)
            && standbys.iter().all(|s| !s.alarm),
        generated_at: embassy_core::time::utc(now_ns),
        config: config.path.clone(),
        sites,
        datasets,
        groups,
        standbys,
        alarms,
        problems,
    }
}
