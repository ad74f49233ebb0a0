//! Freshness: per dataset and site, how old the newest durable data is against the dataset's
//! RPO, as one JSON document (`embassy status --config FILE --json` and the agent's
//! `/status.json` compute it with the same code) and as Prometheus metrics.
//!
//! Colours: **red** when the newest durable data at a site is older than the RPO (or the site
//! cannot be read, or no version exists after a whole RPO); **amber** when it is older than 75 %
//! of the RPO, or the site lags behind another site's newer version; **green** otherwise.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::config::{Config, Mode};
use crate::state::AgentState;

/// What one site holds of one dataset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellFacts {
    /// Newest version number, if any.
    pub newest_version: Option<u64>,
    /// Versions held.
    pub versions: u64,
    /// Recovery point of the newest version (Unix ns).
    pub captured_ns: Option<i64>,
    /// Sum of the bytes the versions added to the vault.
    pub bytes_stored: u64,
    /// Why the dataset's history cannot be read at this site.
    pub error: Option<String>,
    /// Continuous (WAL) datasets: end of the newest durable WAL here.
    pub wal_end: Option<String>,
    /// Continuous datasets: the site holds all the WAL the server had when last asked, so its
    /// data is current however old the newest WAL is (an idle database writes none).
    pub caught_up: bool,
    /// Continuous datasets: bytes of WAL the server has written that the site does not hold
    /// yet (when the server's position is known).
    pub wal_lag_bytes: Option<u64>,
}

/// What one site holds, read from that site alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteSnapshot {
    /// The site's name.
    pub name: String,
    /// Its location.
    pub location: String,
    /// Why it cannot be read at all.
    pub error: Option<String>,
    /// Bytes of all objects it holds.
    pub bytes_stored: Option<u64>,
    /// Per dataset.
    pub datasets: BTreeMap<String, CellFacts>,
    /// When it was read (Unix ns).
    pub read_at_ns: i64,
    /// Writes it missed, queued for catch-up in the agent's state folder (None: unknown).
    pub catch_up_pending: Option<usize>,
}

/// Reads one site on its own: its vault's datasets, their newest versions and the bytes held.
/// `wal` names the continuous (WAL) datasets, each with the server's end of WAL when known.
/// The facts and the recovery point come from embassy-ops (the same as `embassy status`).
pub fn snapshot_site(name: &str, location: &str, wal: &[(String, Option<u64>)]) -> SiteSnapshot {
    let wal_datasets: Vec<String> = wal.iter().map(|(d, _)| d.clone()).collect();
    let options = embassy_ops::status::ReadOptions {
        wal_datasets: &wal_datasets,
        bytes: true,
        key_file: None,
    };
    let read = embassy_ops::status::read_site(location, &options);
    let mut snap = SiteSnapshot {
        name: name.to_string(),
        location: location.to_string(),
        error: read.error,
        bytes_stored: read.bytes_stored,
        read_at_ns: read.read_at_ns,
        ..SiteSnapshot::default()
    };
    for d in read.datasets {
        let server_end = wal
            .iter()
            .find(|(name, _)| *name == d.dataset)
            .and_then(|(_, end)| *end);
        let durable = d.wal.as_ref().map(|w| w.end.0);
        let facts = CellFacts {
            newest_version: d.newest_version,
            versions: d.versions,
            captured_ns: d.recovery_point_ns,
            bytes_stored: d.bytes_stored,
            error: d.error,
            wal_end: d.wal.as_ref().map(|w| w.end.to_string()),
            caught_up: durable.zip(server_end).is_some_and(|(d, end)| d >= end),
            wal_lag_bytes: durable
                .zip(server_end)
                .map(|(d, end)| end.saturating_sub(d)),
        };
        snap.datasets.insert(d.dataset, facts);
    }
    snap
}

/// Reads every site of a configuration; `server_ends` holds the server's end of WAL of the
/// continuous datasets, where known.
pub fn snapshot_all(config: &Config, server_ends: &BTreeMap<String, u64>) -> Vec<SiteSnapshot> {
    let wal: Vec<(String, Option<u64>)> = config
        .datasets
        .iter()
        .filter(|d| matches!(d.mode, Mode::Continuous(_)))
        .map(|d| (d.name.clone(), server_ends.get(&d.name).copied()))
        .collect();
    let pending: BTreeMap<String, usize> = if config.sites.len() > 1 {
        embassy_sites::queue::depths(&config.agent.state_dir, &config.locations())
            .map(|d| d.into_iter().map(|(l, p)| (l, p.depth())).collect())
            .unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    config
        .sites
        .iter()
        .map(|s| {
            let mut snap = snapshot_site(&s.name, &s.location, &wal);
            snap.catch_up_pending = pending.get(&s.location).copied();
            snap
        })
        .collect()
}

/// Health of one dataset at one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Colour {
    /// Within the RPO.
    Green,
    /// Older than 75 % of the RPO, or behind another site.
    Amber,
    /// RPO breached, or unreadable.
    Red,
}

impl Colour {
    /// "green", "amber", "red".
    pub fn name(self) -> &'static str {
        match self {
            Colour::Green => "green",
            Colour::Amber => "amber",
            Colour::Red => "red",
        }
    }

    /// 0, 1, 2 (for metrics).
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// The verdict for one dataset at one site.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The site's name.
    pub site: String,
    /// True when the dataset's RPO must hold at this site.
    pub required: bool,
    /// Its colour.
    pub colour: Colour,
    /// Why, for people.
    pub reason: String,
    /// Age of the newest durable data, seconds (None: no version).
    pub lag_seconds: Option<f64>,
    /// What the site holds.
    pub facts: CellFacts,
}

/// Judges one dataset at one site. `first_seen` starts the RPO clock of a dataset without a
/// version; `newest_anywhere` is the newest version any site holds; `last_seen_ns` is the
/// newest recovery point the agent saw at this site before (so a site that cannot be read
/// right now turns red when its data is older than the RPO, not on the first failed read).
pub fn judge(
    rpo_seconds: f64,
    snap: &SiteSnapshot,
    dataset: &str,
    first_seen: Option<i64>,
    newest_anywhere: Option<u64>,
    last_seen_ns: Option<i64>,
    now_ns: i64,
) -> (Colour, String, Option<f64>, CellFacts) {
    let facts = if snap.error.is_some() {
        CellFacts::default()
    } else {
        snap.datasets.get(dataset).cloned().unwrap_or_default()
    };
    let unreadable = match (&snap.error, &facts.error) {
        (Some(e), _) => Some(format!("site cannot be read: {e}")),
        (None, Some(e)) => Some(format!("history cannot be read: {e}")),
        _ => None,
    };
    if let Some(why) = unreadable {
        let Some(seen) = last_seen_ns else {
            return (Colour::Red, why, None, facts);
        };
        let lag = ((now_ns - seen) as f64 / 1e9).max(0.0);
        let colour = if lag > rpo_seconds {
            Colour::Red
        } else {
            Colour::Amber
        };
        let reason = format!(
            "{}{why}; the newest data seen there is {} old (RPO {})",
            if colour == Colour::Red {
                "RPO breached: "
            } else {
                ""
            },
            human_seconds(lag),
            human_seconds(rpo_seconds)
        );
        return (colour, reason, Some(lag), facts);
    }
    let Some(captured) = facts.captured_ns else {
        let waited = first_seen.map(|f| now_ns as f64 / 1e9 - f as f64);
        return match waited {
            Some(w) if w <= rpo_seconds => (
                Colour::Amber,
                "no version yet (within the first RPO)".into(),
                None,
                facts,
            ),
            _ => (Colour::Red, "no version at this site".into(), None, facts),
        };
    };
    let lag = if facts.caught_up {
        0.0
    } else {
        ((now_ns - captured) as f64 / 1e9).max(0.0)
    };
    if lag > rpo_seconds {
        return (
            Colour::Red,
            format!(
                "RPO breached: newest data is {} old, RPO {}",
                human_seconds(lag),
                human_seconds(rpo_seconds)
            ),
            Some(lag),
            facts,
        );
    }
    if let (Some(here), Some(newest)) = (facts.newest_version, newest_anywhere) {
        if here < newest {
            return (
                Colour::Amber,
                format!("behind: holds version {here}, another site holds {newest}"),
                Some(lag),
                facts,
            );
        }
    }
    if lag > 0.75 * rpo_seconds {
        return (
            Colour::Amber,
            format!(
                "close to the RPO: {} of {}",
                human_seconds(lag),
                human_seconds(rpo_seconds)
            ),
            Some(lag),
            facts,
        );
    }
    (Colour::Green, "within the RPO".into(), Some(lag), facts)
}

/// The freshness of one dataset at every site.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    /// The dataset.
    pub name: String,
    /// Its RPO in seconds.
    pub rpo_seconds: f64,
    /// Worst colour over its required sites.
    pub colour: Colour,
    /// One per site, in config order.
    pub cells: Vec<Cell>,
}

/// Judges every dataset of `config` at every site.
pub fn rows(
    config: &Config,
    snaps: &[SiteSnapshot],
    state: &AgentState,
    now_ns: i64,
) -> Vec<DatasetRow> {
    let mut out = Vec::new();
    for d in &config.datasets {
        let rpo = d.rpo.as_secs_f64();
        let first_seen = state.datasets.get(&d.name).map(|s| s.first_seen);
        let newest_anywhere = snaps
            .iter()
            .filter_map(|s| s.datasets.get(&d.name).and_then(|f| f.newest_version))
            .max();
        let mut cells = Vec::new();
        for site in &config.sites {
            let empty = SiteSnapshot {
                name: site.name.clone(),
                location: site.location.clone(),
                error: Some("not read yet".into()),
                ..SiteSnapshot::default()
            };
            let snap = snaps.iter().find(|s| s.name == site.name).unwrap_or(&empty);
            let last_seen = state
                .seen
                .get(&format!("{}@{}", d.name, site.name))
                .copied();
            let (colour, reason, lag, facts) = judge(
                rpo,
                snap,
                &d.name,
                first_seen,
                newest_anywhere,
                last_seen,
                now_ns,
            );
            cells.push(Cell {
                site: site.name.clone(),
                required: d.sites.contains(&site.name),
                colour,
                reason,
                lag_seconds: lag,
                facts,
            });
        }
        let colour = cells
            .iter()
            .filter(|c| c.required)
            .map(|c| c.colour)
            .max()
            .unwrap_or(Colour::Green);
        out.push(DatasetRow {
            name: d.name.clone(),
            rpo_seconds: rpo,
            colour,
            cells,
        });
    }
    out
}

/// "42s", "3m 12s", "2h 5m", "3d 4h".
pub fn human_seconds(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    }
}

fn utc_secs(s: i64) -> String {
    embassy_core::time::utc(s.saturating_mul(1_000_000_000))
}

/// The status document: the same for `embassy status --config FILE --json` and `/status.json`.
pub fn report(config: &Config, snaps: &[SiteSnapshot], state: &AgentState, now_ns: i64) -> Value {
    let rows = rows(config, snaps, state, now_ns);
    let sites: Vec<Value> = config
        .sites
        .iter()
        .map(|s| {
            let snap = snaps.iter().find(|x| x.name == s.name);
            let verify = state.verify.get(&s.name);
            json!({
                "name": s.name,
                "location": s.location,
                "error": snap.map_or(Some("not read yet".to_string()), |x| x.error.clone()),
                "bytes_stored": snap.and_then(|x| x.bytes_stored),
                "catch_up_pending": snap.and_then(|x| x.catch_up_pending),
                "read_at": snap.map(|x| embassy_core::time::utc(x.read_at_ns)),
                "last_verify": verify.map(|v| json!({
                    "at": utc_secs(v.at), "at_unix": v.at, "ok": v.ok, "summary": v.summary
                })),
            })
        })
        .collect();
    let datasets: Vec<Value> = rows
        .iter()
        .map(|row| {
            let Some(d) = config.dataset(&row.name) else {
                return Value::Null;
            };
            let st = state.datasets.get(&d.name).cloned().unwrap_or_default();
            json!({
                "name": d.name,
                "colour": row.colour.name(),
                "rpo_seconds": row.rpo_seconds,
                "mode": match &d.mode { Mode::Continuous(_) => "continuous".to_string(), Mode::Periodic(_) => "periodic".to_string() },
                "schedule": match &d.mode { Mode::Continuous(s) => s.as_ref().map(|s| s.to_string()), Mode::Periodic(s) => Some(s.to_string()) },
                "source": d.source.describe(),
                "classification": d.classification,
                "owner": d.owner,
                "required_sites": d.sites,
                "runs": st.runs,
                "errors": st.errors,
                "last_success": st.last_success.map(utc_secs),
                "last_success_unix": st.last_success,
                "last_duration_seconds": st.last_duration_seconds,
                "last_error": st.last_error,
                "last_error_at": st.last_error_at.map(utc_secs),
                "sites": row.cells.iter().map(|c| json!({
                    "site": c.site,
                    "required": c.required,
                    "colour": c.colour.name(),
                    "reason": c.reason,
                    "lag_seconds": c.lag_seconds,
                    "newest_version": c.facts.newest_version,
                    "wal_end": c.facts.wal_end,
                    "wal_lag_bytes": c.facts.wal_lag_bytes,
                    "versions": c.facts.versions,
                    "recovery_point": c.facts.captured_ns.map(embassy_core::time::utc),
                    "bytes_stored": c.facts.bytes_stored,
                    "error": c.facts.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let alarms: Vec<Value> = state
        .alarms
        .values()
        .map(|a| json!({"dataset": a.dataset, "site": a.site, "since": utc_secs(a.since), "message": a.message}))
        .collect();
    let ok = rows.iter().all(|r| r.colour != Colour::Red);
    json!({
        "ok": ok,
        "generated_at": embassy_core::time::utc(now_ns),
        "config": config.path,
        "sites": sites,
        "datasets": datasets,
        "alarms": alarms,
    })
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of the same facts.
pub fn metrics(config: &Config, snaps: &[SiteSnapshot], state: &AgentState, now_ns: i64) -> String {
    let rows = rows(config, snaps, state, now_ns);
    let mut m = String::new();
    let mut family = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(m, "# HELP {name} {help}");
        let _ = writeln!(m, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(m, "{name}{{{labels}}} {v}");
        }
    };
    let cell_samples = |f: &dyn Fn(&Cell) -> Option<f64>| -> Vec<(String, f64)> {
        rows.iter()
            .flat_map(|r| {
                r.cells.iter().filter_map(move |c| {
                    f(c).map(|v| {
                        (
                            format!("dataset=\"{}\",site=\"{}\"", label(&r.name), label(&c.site)),
                            v,
                        )
                    })
                })
            })
            .collect()
    };
    family(
        "embassy_dataset_lag_seconds",
        "Age of the newest durable version of the dataset at the site.",
        "gauge",
        cell_samples(&|c| c.lag_seconds),
    );
    family(
        "embassy_dataset_wal_lag_bytes",
        "Continuous datasets: WAL the server has written that the site does not hold yet.",
        "gauge",
        cell_samples(&|c| c.facts.wal_lag_bytes.map(|b| b as f64)),
    );
    family(
        "embassy_dataset_status",
        "Freshness against the RPO: 0 green, 1 amber, 2 red.",
        "gauge",
        cell_samples(&|c| Some(c.colour.level() as f64)),
    );
    family(
        "embassy_dataset_bytes_stored",
        "Bytes the dataset's versions added to the vault at the site.",
        "gauge",
        cell_samples(&|c| Some(c.facts.bytes_stored as f64)),
    );
    family(
        "embassy_dataset_newest_version",
        "Newest version number of the dataset at the site.",
        "gauge",
        cell_samples(&|c| c.facts.newest_version.map(|v| v as f64)),
    );
    let per_dataset = |f: &dyn Fn(&str) -> Option<f64>| -> Vec<(String, f64)> {
        config
            .datasets
            .iter()
            .filter_map(|d| f(&d.name).map(|v| (format!("dataset=\"{}\"", label(&d.name)), v)))
            .collect()
    };
    family(
        "embassy_dataset_rpo_seconds",
        "The dataset's recovery point objective.",
        "gauge",
        per_dataset(&|n| config.dataset(n).map(|d| d.rpo.as_secs_f64())),
    );
    family(
        "embassy_dataset_last_success_timestamp_seconds",
        "When the dataset's last successful backup ended.",
        "gauge",
        per_dataset(&|n| {
            state
                .datasets
                .get(n)
                .and_then(|s| s.last_success)
                .map(|t| t as f64)
        }),
    );
    family(
        "embassy_dataset_runs_total",
        "Backup runs started by the agent.",
        "counter",
        per_dataset(&|n| Some(state.datasets.get(n).map_or(0, |s| s.runs) as f64)),
    );
    family(
        "embassy_dataset_errors_total",
        "Backup runs that failed.",
        "counter",
        per_dataset(&|n| Some(state.datasets.get(n).map_or(0, |s| s.errors) as f64)),
    );
    let per_site = |f: &dyn Fn(&str) -> Option<f64>| -> Vec<(String, f64)> {
        config
            .sites
            .iter()
            .filter_map(|s| f(&s.name).map(|v| (format!("site=\"{}\"", label(&s.name)), v)))
            .collect()
    };
    let snap = |n: &str| snaps.iter().find(|s| s.name == n);
    family(
        "embassy_site_up",
        "1 when the site's vault could be read at the last look.",
        "gauge",
        per_site(&|n| Some(snap(n).is_some_and(|s| s.error.is_none()) as u8 as f64)),
    );
    family(
        "embassy_site_bytes_stored",
        "Bytes of all objects at the site.",
        "gauge",
        per_site(&|n| snap(n).and_then(|s| s.bytes_stored).map(|b| b as f64)),
    );
    family(
        "embassy_site_catch_up_pending",
        "Writes the site missed, queued for catch-up.",
        "gauge",
        per_site(&|n| snap(n).and_then(|s| s.catch_up_pending).map(|p| p as f64)),
    );
    family(
        "embassy_site_last_verify_timestamp_seconds",
        "When the last keyless verification of the site ended.",
        "gauge",
        per_site(&|n| state.verify.get(n).map(|v| v.at as f64)),
    );
    family(
        "embassy_site_verify_ok",
        "1 when the last keyless verification found nothing wrong.",
        "gauge",
        per_site(&|n| state.verify.get(n).map(|v| v.ok as u8 as f64)),
    );
    family(
        "embassy_alarms_raised",
        "RPO alarms raised and not cleared.",
        "gauge",
        vec![(String::new(), state.alarms.len() as f64)],
    );
    m.replace("{}", "")
}
