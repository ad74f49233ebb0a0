//! Prometheus text exposition of the status document ([`crate::report`], the same typed values
//! `/status.json` and the dashboard show) and of the problems found, by kind
//! (`embassy_integrity_problems`, `embassy_site_problem`, `embassy_dataset_problem`): what
//! `/metrics` serves.

use std::fmt::Write as _;

use embassy_core::ErrorKind;

use crate::report::{CellStatus, SiteStatus, StatusReport};

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of a status document.
pub fn metrics(report: &StatusReport) -> String {
    let rows = &report.datasets;
    let mut m = String::new();
    let mut family = |name: &str, help: &str, kind: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(m, "# HELP {name} {help}");
        let _ = writeln!(m, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(m, "{name}{{{labels}}} {v}");
        }
    };
    let cell_samples = |f: &dyn Fn(&CellStatus) -> Option<f64>| -> Vec<(String, f64)> {
        rows.iter()
            .flat_map(|r| {
                r.sites.iter().filter_map(move |c| {
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
        cell_samples(&|c| c.wal_lag_bytes.map(|b| b as f64)),
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
        cell_samples(&|c| Some(c.bytes_stored as f64)),
    );
    family(
        "embassy_dataset_newest_version",
        "Newest version number of the dataset at the site.",
        "gauge",
        cell_samples(&|c| c.newest_version.map(|v| v as f64)),
    );
    let per_dataset = |f: &dyn Fn(&crate::report::DatasetStatus) -> Option<f64>| {
        rows.iter()
            .filter_map(|d| f(d).map(|v| (format!("dataset=\"{}\"", label(&d.name)), v)))
            .collect::<Vec<(String, f64)>>()
    };
    family(
        "embassy_dataset_rpo_seconds",
        "The dataset's recovery point objective.",
        "gauge",
        per_dataset(&|d| Some(d.rpo_seconds)),
    );
    family(
        "embassy_dataset_last_success_timestamp_seconds",
        "When the dataset's last successful backup ended.",
        "gauge",
        per_dataset(&|d| d.last_success_unix.map(|t| t as f64)),
    );
    family(
        "embassy_dataset_runs_total",
        "Backup runs started by the agent.",
        "counter",
        per_dataset(&|d| Some(d.runs as f64)),
    );
    family(
        "embassy_dataset_errors_total",
        "Backup runs that failed.",
        "counter",
        per_dataset(&|d| Some(d.errors as f64)),
    );
    let per_site = |f: &dyn Fn(&SiteStatus) -> Option<f64>| -> Vec<(String, f64)> {
        report
            .sites
            .iter()
            .filter_map(|s| f(s).map(|v| (format!("site=\"{}\"", label(&s.name)), v)))
            .collect()
    };
    family(
        "embassy_site_up",
        "1 when the site's vault could be read at the last look.",
        "gauge",
        per_site(&|s| Some(s.error.is_none() as u8 as f64)),
    );
    family(
        "embassy_site_holds_no_vault",
        "1 when the site holds no vault while other sites hold it (a disk not mounted, a wrong path): left out of every run and never filled until it is seeded.",
        "gauge",
        per_site(&|s| Some(s.holds_no_vault as u8 as f64)),
    );
    family(
        "embassy_site_bytes_stored",
        "Bytes of all objects at the site.",
        "gauge",
        per_site(&|s| s.bytes_stored.map(|b| b as f64)),
    );
    family(
        "embassy_site_catch_up_pending",
        "Writes the site missed, queued for catch-up.",
        "gauge",
        per_site(&|s| s.catch_up_pending.map(|p| p as f64)),
    );
    family(
        "embassy_site_last_verify_timestamp_seconds",
        "When the last keyless verification of the site ended.",
        "gauge",
        per_site(&|s| s.last_verify.as_ref().map(|v| v.at_unix as f64)),
    );
    family(
        "embassy_site_verify_ok",
        "1 when the last keyless verification found nothing wrong.",
        "gauge",
        per_site(&|s| s.last_verify.as_ref().map(|v| v.ok as u8 as f64)),
    );
    family(
        "embassy_site_problem",
        "1 for a site's worst problem by kind: integrity (damaged or tampered with), outage (unreachable), source, config, keys.",
        "gauge",
        report
            .sites
            .iter()
            .filter_map(|s| {
                s.problem_kind.map(|k| {
                    (
                        format!("site=\"{}\",kind=\"{}\"", label(&s.name), k.as_str()),
                        1.0,
                    )
                })
            })
            .collect(),
    );
    family(
        "embassy_integrity_problems",
        "Sites whose data is damaged or was tampered with (their history does not verify, or their keyless verification found damage).",
        "gauge",
        vec![(
            String::new(),
            report
                .sites
                .iter()
                .filter(|s| s.problem_kind == Some(ErrorKind::Integrity))
                .count() as f64,
        )],
    );
    family(
        "embassy_dataset_problem",
        "1 when the dataset at the site is not green because of a failure, by kind (integrity, outage, source, config, keys).",
        "gauge",
        rows.iter()
            .flat_map(|r| {
                r.sites.iter().filter_map(move |c| {
                    c.problem_kind.map(|k| {
                        (
                            format!(
                                "dataset=\"{}\",site=\"{}\",kind=\"{}\"",
                                label(&r.name),
                                label(&c.site),
                                k.as_str()
                            ),
                            1.0,
                        )
                    })
                })
            })
            .collect(),
    );
    family(
        "embassy_drill_last_timestamp_seconds",
        "When the dataset's last restore drill ended (Unix seconds).",
        "gauge",
        per_dataset(&|d| d.drill.as_ref()?.last_at_unix.map(|t| t as f64)),
    );
    family(
        "embassy_drill_passed",
        "1 when the dataset's last restore drill passed every check, 0 when it failed.",
        "gauge",
        per_dataset(&|d| d.drill.as_ref()?.passed.map(|p| f64::from(u8::from(p)))),
    );
    family(
        "embassy_drill_rto_seconds",
        "Recovery time the dataset's last restore drill measured.",
        "gauge",
        per_dataset(&|d| d.drill.as_ref()?.rto_ms.map(|ms| ms as f64 / 1000.0)),
    );
    family(
        "embassy_drill_rpo_seconds",
        "Recovery point the dataset's last restore drill measured.",
        "gauge",
        per_dataset(&|d| d.drill.as_ref()?.rpo_ms.map(|ms| ms as f64 / 1000.0)),
    );
    family(
        "embassy_drill_overdue",
        "1 when no restore drill of the dataset ended within its drill interval and grace.",
        "gauge",
        per_dataset(&|d| d.drill.as_ref().map(|x| f64::from(u8::from(x.overdue)))),
    );
    let per_standby = |f: &dyn Fn(&crate::report::StandbyStatus) -> Option<f64>| {
        report
            .standbys
            .iter()
            .filter_map(|s| f(s).map(|v| (format!("dataset=\"{}\"", label(&s.dataset)), v)))
            .collect::<Vec<_>>()
    };
    family(
        "embassy_standby_lag_seconds",
        "Seconds the embassy node's standby is behind the newest durable WAL in the vault.",
        "gauge",
        per_standby(&|s| s.lag_seconds),
    );
    family(
        "embassy_standby_lag_bytes",
        "Bytes of durable WAL in the vault the embassy node's standby has not replayed.",
        "gauge",
        per_standby(&|s| s.lag_bytes.map(|b| b as f64)),
    );
    family(
        "embassy_standby_following",
        "1 when the embassy node's standby runs and follows the vault.",
        "gauge",
        per_standby(&|s| Some(f64::from(u8::from(s.phase == "following")))),
    );
    family(
        "embassy_standby_alarm",
        "1 when the standby is not following or lags more than its lag_alarm.",
        "gauge",
        per_standby(&|s| Some(f64::from(u8::from(s.alarm)))),
    );
    family(
        "embassy_standby_restarts_total",
        "Times the agent started the standby's server again after it stopped.",
        "counter",
        per_standby(&|s| Some(f64::from(s.restarts))),
    );
    family(
        "embassy_standby_rebuilds_total",
        "Times the agent rebuilt the standby from the newest base backup.",
        "counter",
        per_standby(&|s| Some(f64::from(s.rebuilds))),
    );
    let per_group = |f: &dyn Fn(&crate::report::GroupStatus) -> Option<f64>| {
        report
            .groups
            .iter()
            .filter_map(|g| f(g).map(|v| (format!("group=\"{}\"", label(&g.name)), v)))
            .collect::<Vec<(String, f64)>>()
    };
    family(
        "embassy_group_point_last_timestamp_seconds",
        "When the agent last recorded a point of the consistency group (Unix seconds).",
        "gauge",
        per_group(&|g| g.last_point_at_unix.map(|t| t as f64)),
    );
    family(
        "embassy_group_point_number",
        "The number of the consistency group's last point the agent recorded.",
        "gauge",
        per_group(&|g| g.last_point.map(|n| n as f64)),
    );
    family(
        "embassy_group_point_failures",
        "Attempts to take a point of the consistency group that failed since its last point.",
        "gauge",
        per_group(&|g| Some(f64::from(g.consecutive_failures))),
    );
    family(
        "embassy_group_point_overdue",
        "1 when no point of the consistency group was recorded within its interval and grace.",
        "gauge",
        per_group(&|g| Some(f64::from(u8::from(g.overdue)))),
    );
    family(
        "embassy_alarms_raised",
        "Alarms raised and not cleared.",
        "gauge",
        vec![(String::new(), report.alarms.len() as f64)],
    );
    let mut alarms_by_kind: Vec<(String, f64)> = Vec::new();
    for kind in [None].into_iter().chain(ErrorKind::ALL.map(Some)) {
        let n = report
            .alarms
            .iter()
            .filter(|a| a.problem_kind == kind)
            .count();
        alarms_by_kind.push((
            format!("kind=\"{}\"", kind.map_or("rpo", ErrorKind::as_str)),
            n as f64,
        ));
    }
    family(
        "embassy_alarms_by_kind",
        "Alarms raised and not cleared, by the kind of problem behind them (rpo: the data is only older than the RPO).",
        "gauge",
        alarms_by_kind,
    );
    m.replace("{}", "")
}
