//! The agent's group points: each `[[groups]]` of the configuration on its `interval` (the
//! first one interval after the start, when the streamers run), one group at a time, each in
//! its own thread, through `embassy_ops::group::take_point` like `embassy group point`. The
//! outcome is logged; a failure is retried at the next interval.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use embassy_core::engine::vault::Keyring;

use crate::config::Config;
use crate::log::log;
use crate::run;

/// When each group's next point is due, and the point being taken.
#[derive(Default)]
pub(super) struct GroupPoints {
    next: HashMap<String, Instant>,
    running: Option<JoinHandle<()>>,
}

impl GroupPoints {
    /// Starts the next due group point unless one is being taken.
    pub(super) fn tick(
        &mut self,
        config: &Arc<Config>,
        keyring: &Arc<Keyring>,
        cancel: &Arc<AtomicBool>,
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
            let (config, keyring, cancel) = (config.clone(), keyring.clone(), cancel.clone());
            let name = g.name.clone();
            self.running = std::thread::Builder::new()
                .name("group point".into())
                .spawn(
                    move || match run::group_point(&config, &keyring, &cancel, &name) {
                        Ok(summary) => log(summary),
                        Err(e) => log(format!("group {name}: no point taken: [{}] {e}", e.kind())),
                    },
                )
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
