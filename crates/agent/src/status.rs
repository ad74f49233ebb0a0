//! Freshness: per dataset and site, how old the newest durable data is against the dataset's
//! RPO: the judged rows the status document ([`crate::report`]) is made of, and from it the
//! dashboard, `/metrics` and the alarms.
//!
//! Colours: **red** when the newest durable data at a site is older than the RPO (or the site
//! cannot be read, or no version exists after a whole RPO, or a dataset that never had a version
//! there had its alarm raised); **amber** when it is older than 75 % of the RPO, or the site lags
//! behind another site's newer version; **green** otherwise.

use std::collections::BTreeMap;

use embassy_core::ErrorKind;

use crate::config::{Config, Mode};
use crate::error::Problem;
use crate::state::{AgentState, VerifyState};
use embassy_ops::status::DatasetFacts;

/// What one site holds of one dataset: embassy-ops's facts (the same `embassy status --site`
/// reads, with the one recovery-point rule), and what the agent adds from the database server.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CellFacts {
    /// What the site holds: versions, the recovery point, streamed WAL, or why its history
    /// cannot be read there (integrity: it does not verify; outage: the site failed).
    pub held: DatasetFacts,
    /// Continuous datasets: the site holds all the WAL the server had when last asked, so its
    /// data is current however old the newest WAL is (an idle database writes none).
    pub caught_up: bool,
    /// Continuous datasets: bytes of WAL the server has written that the site does not hold
    /// yet (when the server's position is known).
    pub wal_lag_bytes: Option<u64>,
}

impl CellFacts {
    /// Continuous (WAL) datasets: end of the newest durable WAL here.
    pub fn wal_end(&self) -> Option<String> {
        self.held.wal.as_ref().map(|w| w.end.to_string())
    }
}

/// What one site holds, read from that site alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteSnapshot {
    /// The site's name.
    pub name: String,
    /// Its location.
    pub location: String,
    /// Why it cannot be read at all, and what kind of problem that is.
    pub error: Option<Problem>,
    /// It holds no vault while other sites hold it: left out of every run and never filled
    /// until it holds the vault again (`error` says so, with the way out).
    pub holds_no_vault: bool,
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
        holds_no_vault: read.holds_no_vault,
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
            caught_up: durable.zip(server_end).is_some_and(|(d, end)| d >= end),
            wal_lag_bytes: durable
                .zip(server_end)
                .map(|(d, end)| end.saturating_sub(d)),
            held: d,
        };
        snap.datasets.insert(facts.held.dataset.clone(), facts);
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
    let mut snaps: Vec<SiteSnapshot> = config
        .sites
        .iter()
        .map(|s| {
            let mut snap = snapshot_site(&s.name, &s.location, &wal);
            snap.catch_up_pending = pending.get(&s.location).copied();
            snap
        })
        .collect();
    // A site without a vault among sites that hold it: said so, with the way out (the runs
    // leave it out). When no site holds the vault, the read error stands as it is.
    let holding: Vec<String> = snaps
        .iter()
        .filter(|s| s.error.is_none())
        .map(|s| s.location.clone())
        .collect();
    if !holding.is_empty() {
        for snap in snaps.iter_mut().filter(|s| s.holds_no_vault) {
            let advice = crate::hints::site_without_vault(
                config,
                std::slice::from_ref(&snap.location),
                &holding,
            );
            snap.error = Some(Problem::new(ErrorKind::Config, advice));
        }
    }
    snaps
}

/// Health of one dataset at one site ("green", "amber", "red" in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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
    /// The kind of problem behind a colour that is not green, when a failure explains it: the
    /// site or the history cannot be read, or the site's last keyless verification found damage
    /// (None: the data is only old, or nothing is wrong).
    pub problem: Option<ErrorKind>,
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
    let unreadable = match (&snap.error, &facts.held.error) {
        (Some(e), _) => Some((
            e.kind,
            format!("site cannot be read ({}): {e}", e.kind.describe()),
        )),
        (None, Some(e)) => Some((
            e.kind,
            format!("history cannot be read ({}): {e}", e.kind.describe()),
        )),
        _ => None,
    };
    if let Some((kind, why)) = unreadable {
        // Damage or tampering is not a matter of time: the data there cannot be trusted now;
        // neither is a site that holds no vault: it holds nothing to restore.
        if kind == ErrorKind::Integrity || snap.holds_no_vault {
            let lag = last_seen_ns.map(|seen| ((now_ns - seen) as f64 / 1e9).max(0.0));
            return (Colour::Red, why, lag, facts);
        }
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
    // No version, no recovery point (ops::status::recovery_point): streamed WAL alone cannot be
    // restored without a base backup to replay it onto, however fresh it is.
    let Some(captured) = facts.held.recovery_point_ns else {
        let waited = first_seen.map(|f| now_ns as f64 / 1e9 - f as f64);
        let wal_only = if facts.held.wal.is_some() {
            ": it holds streamed WAL but no base backup to replay it onto"
        } else {
            ""
        };
        return match waited {
            Some(w) if w <= rpo_seconds => (
                Colour::Amber,
                format!("no version yet (within the first RPO){wal_only}"),
                None,
                facts,
            ),
            _ => (
                Colour::Red,
                format!("no version at this site{wal_only}"),
                None,
                facts,
            ),
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
    if let (Some(here), Some(newest)) = (facts.held.newest_version, newest_anywhere) {
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
    /// Its restore drills, when it has a `drill` schedule.
    pub drill: Option<DrillRow>,
}

/// A dataset's restore drills as judged: the last one, and whether it failed or is overdue.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillRow {
    /// How often a drill is due, in seconds.
    pub interval_seconds: f64,
    /// The last drill the agent ran.
    pub last: Option<crate::state::DrillState>,
    /// When the next drill was due (Unix seconds).
    pub due_at: i64,
    /// No drill ended within the interval: the last one (or the agent's first sight of the
    /// dataset) is older than the interval and a grace of a tenth of it (at least a second,
    /// at most a day), for the drill itself to run.
    pub overdue: bool,
    /// The last drill failed, or could not run.
    pub failed: bool,
}

impl DrillRow {
    /// Red: an alarm is raised.
    pub fn is_red(&self) -> bool {
        self.overdue || self.failed
    }

    /// Why, for people (when red).
    pub fn reason(&self) -> String {
        match (&self.last, self.failed) {
            (Some(l), true) => format!("restore drill failed at {}: {}", utc_secs(l.at), l.summary),
            _ => format!("restore drill overdue since {}", utc_secs(self.due_at)),
        }
    }
}

/// Judges a dataset's drills: due `interval` after the last one ended (or after `first_seen`
/// when none ran), overdue once a grace (a tenth of the interval, between 1 s and 1 day) has
/// passed since.
pub fn drill_row(
    interval: std::time::Duration,
    last: Option<&crate::state::DrillState>,
    first_seen: i64,
    now: i64,
) -> DrillRow {
    let interval_s = i64::try_from(interval.as_secs()).unwrap_or(i64::MAX);
    let grace = (interval_s / 10).clamp(1, 86_400);
    let due_at = last.map_or(first_seen, |l| l.at).saturating_add(interval_s);
    DrillRow {
        interval_seconds: interval.as_secs_f64(),
        last: last.cloned(),
        due_at,
        overdue: now > due_at.saturating_add(grace),
        failed: last.is_some_and(|l| !l.passed),
    }
}

/// A consistency group's points as judged: the last one, and whether the next is overdue.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    /// The group.
    pub name: String,
    /// Its member datasets.
    pub members: Vec<String>,
    /// How often a point is due, in seconds.
    pub interval_seconds: f64,
    /// What the agent remembers of its points.
    pub state: crate::state::GroupState,
    /// When the next point was due (Unix seconds).
    pub due_at: i64,
    /// No point was recorded within the interval and a grace of a tenth of it (at least a
    /// second, at most a day): a group restore can only reach an older instant.
    pub overdue: bool,
}

impl GroupRow {
    /// Why it is red, for people.
    pub fn reason(&self) -> String {
        let last = match &self.state.last_point {
            Some(p) => format!("last point {} at {}", p.number, utc_secs(p.at)),
            None => "no point yet".to_string(),
        };
        match &self.state.last_error {
            Some(e) if self.state.consecutive_failures > 0 => format!(
                "group point overdue since {} ({last}); {} failed attempt(s), the last: {e}",
                utc_secs(self.due_at),
                self.state.consecutive_failures
            ),
            _ => format!("group point overdue since {} ({last})", utc_secs(self.due_at)),
        }
    }
}

/// Judges every consistency group of `config`: a point is due `interval` after the last one
/// was recorded (or after the agent first saw the group), overdue once the drill's grace (a
/// tenth of the interval, between 1 s and 1 day) has passed since.
pub fn group_rows(config: &Config, state: &AgentState, now_s: i64) -> Vec<GroupRow> {
    config
        .groups
        .iter()
        .map(|g| {
            let st = state.groups.get(&g.name).cloned().unwrap_or(crate::state::GroupState {
                first_seen: now_s,
                ..Default::default()
            });
            let interval_s = i64::try_from(g.interval.as_secs()).unwrap_or(i64::MAX);
            let grace = (interval_s / 10).clamp(1, 86_400);
            let due_at = st
                .last_point
                .as_ref()
                .map_or(st.first_seen, |p| p.at)
                .saturating_add(interval_s);
            GroupRow {
                name: g.name.clone(),
                members: g.members.clone(),
                interval_seconds: g.interval.as_secs_f64(),
                overdue: now_s > due_at.saturating_add(grace),
                due_at,
                state: st,
            }
        })
        .collect()
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
            .filter_map(|s| s.datasets.get(&d.name).and_then(|f| f.held.newest_version))
            .max();
        let mut cells = Vec::new();
        for site in &config.sites {
            let empty = SiteSnapshot {
                name: site.name.clone(),
                location: site.location.clone(),
                error: Some(Problem::new(ErrorKind::Outage, "not read yet")),
                ..SiteSnapshot::default()
            };
            let snap = snaps.iter().find(|s| s.name == site.name).unwrap_or(&empty);
            let last_seen = state
                .seen
                .get(&format!("{}@{}", d.name, site.name))
                .copied();
            let (mut colour, mut reason, lag, facts) = judge(
                rpo,
                snap,
                &d.name,
                first_seen,
                newest_anywhere,
                last_seen,
                now_ns,
            );
            // A dataset that never had a version here stays red once its alarm was raised (the
            // site was down, or its first RPO ran out): the grace of the first RPO is for a
            // dataset nobody was warned about yet, and an alarm is cleared by a version only.
            let key = format!("{}@{}", d.name, site.name);
            if colour != Colour::Red
                && facts.held.newest_version.is_none()
                && last_seen.is_none()
                && state.alarms.contains_key(&key)
            {
                colour = Colour::Red;
                reason = format!("no version at this site yet ({reason}); the alarm stays raised until one is stored");
            }
            // The failure behind the colour: reading the site or the history, else (the data is
            // only old) the dataset's failing backups.
            let mut problem = snap
                .error
                .as_ref()
                .or(facts.held.error.as_ref())
                .map(|p| p.kind)
                .or_else(|| {
                    state
                        .datasets
                        .get(&d.name)
                        .filter(|s| s.consecutive_failures > 0)
                        .and_then(|s| s.last_error_kind)
                });
            // Damage found by the site's keyless verification makes every dataset there red
            // until a verification passes again: which versions the damaged objects belong to
            // is not known without keys, so none of them is trusted.
            if let Some(v) = state.verify.get(&site.name) {
                if v.kind == Some(ErrorKind::Integrity) && problem != Some(ErrorKind::Integrity) {
                    colour = Colour::Red;
                    reason = format!(
                        "damaged or tampered with: the site's keyless verification at {} found: {}",
                        utc_secs(v.at),
                        v.summary
                    );
                    problem = Some(ErrorKind::Integrity);
                }
            }
            cells.push(Cell {
                site: site.name.clone(),
                required: d.sites.contains(&site.name),
                colour,
                reason,
                lag_seconds: lag,
                facts,
                problem: problem.filter(|_| colour != Colour::Green),
            });
        }
        let colour = cells
            .iter()
            .filter(|c| c.required)
            .map(|c| c.colour)
            .max()
            .unwrap_or(Colour::Green);
        let dstate = state.datasets.get(&d.name);
        let drill = d.drill.map(|interval| {
            drill_row(
                interval,
                dstate.and_then(|s| s.last_drill.as_ref()),
                dstate.map_or(now_ns / 1_000_000_000, |s| s.first_seen),
                now_ns / 1_000_000_000,
            )
        });
        out.push(DatasetRow {
            name: d.name.clone(),
            rpo_seconds: rpo,
            colour,
            cells,
            drill,
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

/// The worst problem at a site, integrity first: the site cannot be read, a dataset's history
/// there cannot be read, or its last keyless verification failed. None when nothing is wrong
/// (or the site was not read yet).
pub fn site_problem(
    snap: Option<&SiteSnapshot>,
    verify: Option<&VerifyState>,
) -> Option<ErrorKind> {
    let read = snap.into_iter().flat_map(|s| {
        s.error
            .iter()
            .chain(s.datasets.values().filter_map(|f| f.held.error.as_ref()))
            .map(|p| p.kind)
    });
    let verified = verify.filter(|v| !v.ok).and_then(|v| v.kind);
    read.chain(verified).min()
}
