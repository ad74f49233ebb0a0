//! The circuit breaker of an S3 endpoint: after a request times out or cannot connect, the site
//! is down, and its requests fail at once (no network) instead of each waiting for its own
//! timeout. Now and then one request is let through as a probe; any HTTP answer brings the site
//! back. One breaker per endpoint and location for the whole process, so a long-lived process
//! (the agent) remembers a dead site from one run to the next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The wait before the first probes of a site that went down.
pub const FIRST_PROBE_AFTER: Duration = Duration::from_secs(1);
/// The longest wait between two probes of a site that stays down.
pub const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(600);
/// Failed probes that are followed by the short wait before the waits start doubling.
const QUICK_PROBES: u32 = 3;

/// One endpoint's breaker.
#[derive(Debug, Default)]
pub(crate) struct Breaker {
    state: Mutex<Option<Down>>,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    why: String,
    next_probe: Instant,
    failed_probes: u32,
    probing: bool,
}

/// Whether a request may go out.
pub(crate) enum Admit {
    /// The site is up.
    Go,
    /// The site is down and this request is the probe.
    Probe,
    /// The site is down: fail without a request.
    Refuse(String),
}

impl Breaker {
    /// The process's breaker for `key` (endpoint and location).
    pub(crate) fn for_site(key: &str) -> Arc<Breaker> {
        static ALL: OnceLock<Mutex<HashMap<String, Arc<Breaker>>>> = OnceLock::new();
        ALL.get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Down>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a request may go out now.
    pub(crate) fn admit(&self) -> Admit {
        let mut state = self.lock();
        let Some(down) = state.as_mut() else {
            return Admit::Go;
        };
        let now = Instant::now();
        if !down.probing && now >= down.next_probe {
            down.probing = true;
            return Admit::Probe;
        }
        Admit::Refuse(format!(
            "skipped without a request: the site has not answered for {}s ({}); it is tried \
             again in {}s",
            now.duration_since(down.since).as_secs(),
            down.why,
            down.next_probe.saturating_duration_since(now).as_secs()
        ))
    }

    /// Whether the site is down now.
    pub(crate) fn is_down(&self) -> bool {
        self.lock().is_some()
    }

    /// The server answered (any HTTP status): the site is up.
    pub(crate) fn answered(&self) {
        let mut state = self.lock();
        if state.is_some() {
            *state = None;
        }
    }

    /// A request timed out or could not connect: the site is down (again).
    pub(crate) fn unreachable(&self, why: &str) {
        let mut state = self.lock();
        let now = Instant::now();
        match state.as_mut() {
            None => {
                *state = Some(Down {
                    since: now,
                    why: why.to_string(),
                    next_probe: now + FIRST_PROBE_AFTER,
                    failed_probes: 0,
                    probing: false,
                })
            }
            Some(down) => {
                if down.probing {
                    down.probing = false;
                    down.failed_probes = down.failed_probes.saturating_add(1);
                }
                let doublings = down.failed_probes.saturating_sub(QUICK_PROBES).min(16);
                let wait = FIRST_PROBE_AFTER
                    .saturating_mul(1 << doublings)
                    .min(MAX_PROBE_INTERVAL);
                down.next_probe = now + wait;
            }
        }
    }

    /// A probe ended without an answer that says whether the site is up (a reset, say): the
    /// next request may probe again.
    pub(crate) fn probe_inconclusive(&self) {
        if let Some(down) = self.lock().as_mut() {
            down.probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_after_a_timeout_then_probed_and_back_on_an_answer() {
        let b = Breaker::default();
        assert!(matches!(b.admit(), Admit::Go));
        b.unreachable("timed out");
        assert!(b.is_down());
        match b.admit() {
            Admit::Refuse(why) => assert!(why.contains("timed out"), "{why}"),
            _ => panic!("a down site was asked at once"),
        }
        std::thread::sleep(FIRST_PROBE_AFTER);
        assert!(matches!(b.admit(), Admit::Probe));
        // One probe at a time.
        assert!(matches!(b.admit(), Admit::Refuse(_)));
        b.unreachable("timed out again");
        assert!(matches!(b.admit(), Admit::Refuse(_)));
        std::thread::sleep(FIRST_PROBE_AFTER);
        assert!(matches!(b.admit(), Admit::Probe));
        b.answered();
        assert!(!b.is_down());
        assert!(matches!(b.admit(), Admit::Go));
    }

    #[test]
    fn one_breaker_per_site_for_the_process() {
        let a = Breaker::for_site("http://127.0.0.1:1 s3://breaker-test");
        a.unreachable("cannot connect");
        assert!(Breaker::for_site("http://127.0.0.1:1 s3://breaker-test").is_down());
        assert!(!Breaker::for_site("http://127.0.0.1:2 s3://breaker-test").is_down());
    }
}
