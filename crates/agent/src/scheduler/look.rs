//! Looking at the sites: every few seconds each site is read on its own, freshness is judged,
//! alarms are raised or cleared and delivered, lag history is recorded and lagging sites are
//! caught up.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Agent, Done};
use crate::alarms;
use crate::http::lock;
use crate::log::log;
use crate::run;
use crate::status::{self, SiteSnapshot};

/// See [`Agent::event_look_gap`].
const EVENT_LOOK_GAP: Duration = Duration::from_secs(5);

impl Agent {
    fn refresh_interval(&self) -> Duration {
        let smallest = self
            .config
            .datasets
            .iter()
            .map(|d| d.rpo / 4)
            .chain(self.config.standbys.iter().map(|s| s.lag_alarm / 4))
            .min()
            .unwrap_or(Duration::from_secs(10));
        smallest.clamp(Duration::from_secs(1), Duration::from_secs(15))
    }

    /// Spacing of lag history points: a quarter of the smallest RPO, 1 s to 2 min, so the 720
    /// points kept span about a day for RPOs of 8 minutes or more.
    fn history_spacing(&self) -> i64 {
        let smallest = self
            .config
            .datasets
            .iter()
            .map(|d| d.rpo / 4)
            .min()
            .unwrap_or(Duration::from_secs(120));
        smallest
            .clamp(Duration::from_secs(1), Duration::from_secs(120))
            .as_secs() as i64
    }

    /// Least time between two looks that backups' and collections' ends ask for
    /// ([`Agent::maybe_refresh`]; other events, a verification or a catch-up, look at once): a
    /// look reads every site's whole ledger (it judges each site by its own bytes), and with
    /// datasets backed up every second the looks ran back to back, most of an S3 site's
    /// requests (issue 19's soak: the S3 site fell behind its RPO).
    fn event_look_gap(&self) -> Duration {
        self.refresh_interval().min(EVENT_LOOK_GAP)
    }

    pub(super) fn maybe_refresh(&mut self) {
        let since = self.last_refresh.map(|t| t.elapsed());
        let due = self.refresh_now
            || since.is_none_or(|t| {
                t >= self.refresh_interval() || (self.refresh_soon && t >= self.event_look_gap())
            });
        if due {
            self.refresh();
        }
    }

    /// Starts a look at every site on a worker thread (reading sites and delivering alarms can
    /// take a while; the scheduler and the signals must not wait for it). Its result arrives as
    /// [`Done::Looked`] and is applied by [`Agent::apply_look`].
    fn refresh(&mut self) {
        if self.looking.is_some() {
            return;
        }
        self.refresh_now = false;
        self.refresh_soon = false;
        self.last_refresh = Some(Instant::now());
        let config = self.config.clone();
        let ends = self.server_ends();
        let state = lock(&self.shared.state).clone();
        let tx = self.tx.clone();
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("look".into())
            .spawn(move || {
                let snaps = status::snapshot_all(&config, &ends);
                // Published before any alarm goes out: whoever an alarm sends to the dashboard
                // sees what raised it.
                *lock(&shared.snapshots) = snaps.clone();
                let now_ns = embassy_core::format::config::now_unix_nanos();
                let rows = status::rows(&config, &snaps, &state, now_ns);
                let now = now_ns / 1_000_000_000;
                let groups = status::group_rows(&config, &state, now);
                let mut delivered = Vec::new();
                let notices = alarms::evaluate(&rows, &state, now)
                    .into_iter()
                    .chain(alarms::evaluate_groups(&groups, &state, now))
                    .chain(alarms::evaluate_standbys(
                        &crate::report::standby_rows(&config, &state, now),
                        &state,
                        now,
                    ));
                for n in notices {
                    let label = if n.event == "raised" {
                        "ALARM"
                    } else {
                        "cleared"
                    };
                    log(format!("{label}: {}", n.message));
                    match alarms::deliver(&config, &n) {
                        Ok(()) => {
                            // Recorded at once, so /status.json lists it as soon as it is out.
                            alarms::mark_delivered(&mut lock(&shared.state), &n);
                            delivered.push(n);
                        }
                        Err(e) => log(format!("alarm could not be delivered (will retry): {e}")),
                    }
                }
                let _ = tx.send(Done::Looked {
                    snaps,
                    delivered,
                    now_ns,
                });
            });
        match spawned {
            Ok(h) => self.looking = Some(h),
            Err(e) => log(format!("cannot start a look at the sites: {e}")),
        }
    }

    /// Starts a look and waits for it to be applied.
    pub(super) fn refresh_blocking(&mut self) {
        self.refresh();
        while self.looking.is_some() {
            self.reap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Records lag history and delivered alarms, publishes the snapshots, persists the state and
    /// catches up lagging sites.
    pub(super) fn apply_look(
        &mut self,
        snaps: Vec<SiteSnapshot>,
        delivered: Vec<alarms::Notice>,
        now_ns: i64,
    ) {
        let now = now_ns / 1_000_000_000;
        let spacing = self.history_spacing();
        {
            let mut state = lock(&self.shared.state);
            let rows = status::rows(&self.config, &snaps, &state, now_ns);
            for row in &rows {
                for c in &row.cells {
                    state.record_lag(
                        &format!("{}@{}", row.name, c.site),
                        now,
                        c.lag_seconds.unwrap_or(-1.0),
                        spacing,
                    );
                }
            }
            for snap in &snaps {
                for (dataset, f) in &snap.datasets {
                    // The recovery point is only data a restore can reach (ops::status's rule).
                    if let (None, Some(c)) = (&f.held.error, f.held.recovery_point_ns) {
                        let seen = state
                            .seen
                            .entry(format!("{dataset}@{}", snap.name))
                            .or_insert(c);
                        *seen = (*seen).max(c);
                    }
                }
            }
            // Delivered alarms were recorded by the look itself.
            let _ = &delivered;
        }
        self.persist();
        self.catch_up_lagging(&snaps);
    }

    fn catch_up_lagging(&mut self, snaps: &[SiteSnapshot]) {
        if self.cancel.load(Ordering::SeqCst) {
            return;
        }
        // The most complete readable site: the one holding the most versions.
        let best = snaps
            .iter()
            .filter(|s| s.error.is_none() && s.datasets.values().all(|f| f.held.error.is_none()))
            .max_by_key(|s| {
                // Of sites holding as much, one with no writes queued for it (a site just
                // seeded holds as much as the others but still has its missed writes queued).
                (
                    s.datasets.values().map(|f| f.held.versions).sum::<u64>(),
                    std::cmp::Reverse(s.catch_up_pending.unwrap_or(0)),
                )
            });
        let Some(best) = best else { return };
        for s in snaps {
            // A site that holds no vault is never filled: it is seeded on request only.
            if s.name == best.name || s.holds_no_vault || self.catching_up.contains_key(&s.name) {
                continue;
            }
            let behind = best.datasets.iter().any(|(d, f)| {
                s.datasets.get(d).is_none_or(|mine| {
                    mine.held.error.is_some() || mine.held.newest_version < f.held.newest_version
                })
            });
            // A site that cannot be opened at all may still be empty (catch up) or down (the
            // attempt fails and is retried at the next look).
            // Writes it missed while it was left out (down, or holding no vault until it was
            // seeded) are still queued: drained, even when its versions look current.
            let queued = s.error.is_none() && s.catch_up_pending.unwrap_or(0) > 0;
            if !behind && !queued {
                continue;
            }
            let state_dir = self.config.agent.state_dir.clone();
            // Its queue is read from every site: a write may sit at a down one only.
            let sites = self.config.locations();
            let (from, to, site, tx) = (
                best.location.clone(),
                s.location.clone(),
                s.name.clone(),
                self.tx.clone(),
            );
            if let Ok(h) = std::thread::Builder::new()
                .name(format!("catch-up-{site}"))
                .spawn({
                    let site = site.clone();
                    move || {
                        let result = run::catch_up(&state_dir, &from, &to, &sites);
                        let _ = tx.send(Done::CatchUp { site, result });
                    }
                })
            {
                self.catching_up.insert(site, h);
            }
        }
    }
}
