//! The agent's group points: each `[[groups]]` of the configuration on its `interval` (the
//! first one interval after the start, when the streamers run), one group at a time, each in
//! its own thread, through `embassy_ops::group::take_point` like `embassy group point`. The
//! outcome is logged and kept in the state (the dashboard, `/status.json`, `/metrics` and the
//! alarms read it from there: a group whose point is overdue raises an alarm); a failure is
//! retried at the next interval.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use embassy_core::engine::vault::Keyring;

use crate::config::Config;
use crate::error::RunError;
use crate::http::lock;
use crate::log::{log, now_s};
use crate::run;
use crate::state::{GroupPointState, GroupState};

use super::{Agent, Done};

/// When each group's next point is due, and the point being taken.
#[derive(Default)]
pub(super) struct GroupPoints {
    next: HashMap<String, Instant>,
    running: Option<JoinHandle<()>>,
}

impl GroupPoints {
    /// Starts the next due group point unless one is being taken; its result comes back on
    /// `tx` as [`Done::GroupPoint`].
    fn tick(
        &mut self,
        config: &Arc<Config>,
        keyring: &Arc<Keyring>,
        cancel: &Arc<AtomicBool>,
        tx: &Sender<Done>,
    ) {
        if self.running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if let Some(h) = self.running.take() {
            let _ = h.join();
        }
        let now = Instant::now();
        self.next
            .retain(|name, _| config.groups.iter().any(|g| &g.name == name));
        for g in &config.groups {
            let at = *self.next.entry(g.name.clone()).or_insert(now + g.interval);
            if now < at {
                continue;
            }
            self.next.insert(g.name.clone(), now + g.interval);
            let (config, keyring, cancel, tx) =
                (config.clone(), keyring.clone(), cancel.clone(), tx.clone());
            let group = g.name.clone();
            self.running = std::thread::Builder::new()
                .name("group point".into())
                .spawn(move || {
                    let result = run::group_point(&config, &keyring, &cancel, &group);
                    let _ = tx.send(Done::GroupPoint { group, result });
                })
                .ok();
            return;
        }
    }

    /// Waits for the point being taken, if any (at shutdown).
    pub(super) fn finish(&mut self) {
        if let Some(h) = self.running.take() {
            let _ = h.join();
        }
    }
}

impl Agent {
    /// Remembers when each configured group was first seen (its first point is due one
    /// interval later) and starts the next due point.
    pub(super) fn tick_group_points(&mut self) {
        if self.config.groups.is_empty() {
            return;
        }
        let now = now_s();
        let mut added = false;
        {
            let mut st = lock(&self.shared.state);
            for g in &self.config.groups {
                if !st.groups.contains_key(&g.name) {
                    st.groups.insert(
                        g.name.clone(),
                        GroupState {
                            first_seen: now,
                            ..GroupState::default()
                        },
                    );
                    added = true;
                }
            }
        }
        if added {
            self.persist();
        }
        self.group_points
            .tick(&self.config, &self.keyring, &self.cancel, &self.tx);
    }

    /// Keeps a group point's outcome in the state and logs it.
    pub(super) fn finish_group_point(
        &mut self,
        group: String,
        result: Result<embassy_ops::group::PointTaken, RunError>,
    ) {
        let now = now_s();
        {
            let mut st = lock(&self.shared.state);
            let gs = st.groups.entry(group.clone()).or_insert(GroupState {
                first_seen: now,
                ..GroupState::default()
            });
            match &result {
                Ok(taken) => {
                    gs.last_point = Some(GroupPointState {
                        at: now,
                        number: taken.point.number,
                        seq: taken.seq,
                        spread_ms: taken.spread.as_secs_f64() * 1e3,
                    });
                    gs.consecutive_failures = 0;
                }
                Err(e) => {
                    gs.consecutive_failures = gs.consecutive_failures.saturating_add(1);
                    gs.last_error = Some(e.to_string());
                    gs.last_error_kind = Some(e.kind());
                    gs.last_error_at = Some(now);
                }
            }
        }
        match result {
            Ok(taken) => log(format!(
                "group {group}: point {} recorded (entry {}), restore points {:.1} ms apart, \
                 durable after {:.1} s",
                taken.point.number,
                taken.seq,
                taken.spread.as_secs_f64() * 1e3,
                taken.waited.as_secs_f64()
            )),
            Err(e) => log(format!("group {group}: no point taken: [{}] {e}", e.kind())),
        }
        self.persist();
        self.refresh_now = true;
    }
}
