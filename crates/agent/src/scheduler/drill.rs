//! Restore drills on each dataset's `drill` schedule: started when due (never while the
//! dataset's backup runs, nor before its first version), run by embassy-ops on a worker
//! thread, their results kept in the state (the dashboard, `/status.json`, `/metrics` and the
//! alarms read them from there; the signed result is in the ledger).

use std::time::Instant;

use crate::http::lock;
use crate::log::{log, now_s};
use crate::run;
use crate::state::DrillState;

use super::{Agent, Done};

impl Agent {
    /// Starts the drills that are due.
    pub(super) fn start_due_drills(&mut self) {
        let now = now_s();
        let due: Vec<String> = self
            .config
            .datasets
            .iter()
            .filter_map(|d| Some((d.name.clone(), d.drill?)))
            .filter(|(name, interval)| {
                if self.drilling.contains_key(name) || self.running.contains_key(name) {
                    return false;
                }
                let st = lock(&self.shared.state);
                let Some(ds) = st.datasets.get(name) else {
                    return false;
                };
                ds.last_success.is_some()
                    && ds.last_drill.as_ref().is_none_or(|l| {
                        now >= l
                            .at
                            .saturating_add(i64::try_from(interval.as_secs()).unwrap_or(i64::MAX))
                    })
            })
            .map(|(name, _)| name)
            .collect();
        for dataset in due {
            let (config, keyring, cancel, tx) = (
                self.config.clone(),
                self.keyring.clone(),
                self.cancel.clone(),
                self.tx.clone(),
            );
            log(format!("{dataset}: restore drill started"));
            let name = dataset.clone();
            let handle = std::thread::Builder::new()
                .name(format!("drill-{dataset}"))
                .spawn(move || {
                    let t = Instant::now();
                    let result = run::drill_dataset(&config, &keyring, &dataset, &cancel);
                    let _ = tx.send(Done::Drill {
                        dataset,
                        elapsed: t.elapsed(),
                        result,
                    });
                });
            match handle {
                Ok(h) => {
                    self.drilling.insert(name, h);
                }
                Err(e) => log(format!("{name}: cannot start a worker thread: {e}")),
            }
        }
    }

    /// Keeps a drill's result in the state.
    pub(super) fn finish_drill(
        &mut self,
        dataset: String,
        elapsed: std::time::Duration,
        result: Result<embassy_ops::drill::DrillReport, crate::error::RunError>,
    ) {
        if let Some(h) = self.drilling.remove(&dataset) {
            let _ = h.join();
        }
        let drill = match result {
            Ok(r) => {
                let failed: Vec<String> = r
                    .result
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect();
                let mut summary = if failed.is_empty() {
                    format!(
                        "version {}: {} files, {} bytes checked",
                        r.version, r.files, r.bytes
                    )
                } else {
                    failed.join("; ")
                };
                if let Some(why) = &r.not_recorded {
                    summary.push_str(&format!(" (not recorded: {why})"));
                }
                DrillState {
                    at: now_s(),
                    passed: r.result.passed,
                    rto_ms: Some(r.result.rto_ms),
                    rpo_ms: Some(r.result.rpo_ms),
                    version: Some(r.version),
                    recorded_seq: r.recorded,
                    summary,
                    kind: (!r.result.passed).then_some(embassy_core::ErrorKind::Integrity),
                }
            }
            Err(e) => DrillState {
                at: now_s(),
                passed: false,
                summary: format!("could not run: {e}"),
                kind: Some(e.kind()),
                ..DrillState::default()
            },
        };
        log(format!(
            "{dataset}: restore drill {} in {:.1}s: {}",
            if drill.passed { "passed" } else { "FAILED" },
            elapsed.as_secs_f64(),
            drill.summary
        ));
        lock(&self.shared.state)
            .datasets
            .entry(dataset)
            .or_default()
            .last_drill = Some(drill);
        self.persist();
        self.refresh_now = true;
    }
}
