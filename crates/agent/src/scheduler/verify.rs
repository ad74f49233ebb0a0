//! Keyless verification of the sites on the agent's `verify_interval`, and again right after a
//! catch-up of a site whose last verification failed (it ran while the site was down, say), so
//! the dashboard does not show "verify FAILED" for a site that is fine until the next scheduled
//! verification hours later (issue 15 item 7).

use std::time::Instant;

use embassy_core::ErrorKind;

use super::{Agent, Done};
use crate::error::RunError;
use crate::http::lock;
use crate::log::{log, now_s};
use crate::run;

impl Agent {
    /// Starts the scheduled keyless verification of every site and sets the next one.
    pub(super) fn start_verify(&mut self) {
        let sites: Vec<(String, String)> = self
            .config
            .sites
            .iter()
            .map(|s| (s.name.clone(), s.location.clone()))
            .collect();
        log(format!(
            "keyless verification of {} sites started",
            sites.len()
        ));
        self.reverify.clear();
        self.reverified.clear();
        self.spawn_verify(sites);
        self.next_verify = self
            .config
            .agent
            .verify_interval
            .map(|i| Instant::now() + i);
    }

    /// Verifies again, right away, the sites caught up since their last verification failed,
    /// or every site after garbage collection found damage (the scheduled verifications keep
    /// their interval).
    pub(super) fn start_reverify(&mut self) {
        let names = std::mem::take(&mut self.reverify);
        let sites: Vec<(String, String)> = self
            .config
            .sites
            .iter()
            .filter(|s| names.contains(&s.name))
            .map(|s| (s.name.clone(), s.location.clone()))
            .collect();
        if sites.is_empty() {
            return;
        }
        log(format!(
            "keyless verification of {} started ahead of schedule: caught up since its last \
             verification failed, or garbage collection found damage",
            sites
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.spawn_verify(sites);
    }

    fn spawn_verify(&mut self, sites: Vec<(String, String)>) {
        let tx = self.tx.clone();
        let options = run::open_options(&self.config, &self.cancel);
        if let Ok(h) = std::thread::Builder::new()
            .name("verify".into())
            .spawn(move || {
                let results = sites
                    .into_iter()
                    .map(|(name, location)| {
                        let result = run::verify_site(&options, &location);
                        (name, result)
                    })
                    .collect();
                let _ = tx.send(Done::Verify { results });
            })
        {
            self.verifying = Some(h);
        }
    }

    /// Records the verifications that ended.
    pub(super) fn finish_verify(&mut self, results: Vec<(String, Result<String, RunError>)>) {
        if let Some(h) = self.verifying.take() {
            let _ = h.join();
        }
        let now = now_s();
        let mut st = lock(&self.shared.state);
        for (site, result) in results {
            let (ok, summary, kind) = match result {
                Ok(summary) => (true, summary, None),
                Err(e) => (false, e.to_string(), Some(e.kind())),
            };
            log(format!(
                "verify {site}: {} ({summary})",
                match kind {
                    None => "OK".to_string(),
                    Some(ErrorKind::Integrity) =>
                        "FAILED: the site is damaged or was tampered with".to_string(),
                    Some(k) => format!("FAILED ({k}): it could not be verified"),
                }
            ));
            st.verify.insert(
                site,
                crate::state::VerifyState {
                    at: now,
                    ok,
                    summary,
                    kind,
                },
            );
        }
        drop(st);
        self.persist();
    }

    /// Notes a catch-up that ended; a site caught up after its last verification failed is
    /// verified again at once (at most once between scheduled verifications: a failure the
    /// catch-up did not mend waits for the schedule).
    pub(super) fn finish_catch_up(
        &mut self,
        site: String,
        result: Result<embassy_ops::catchup::CatchUpReport, RunError>,
    ) {
        if let Some(h) = self.catching_up.remove(&site) {
            let _ = h.join();
        }
        match result {
            Ok(report) => {
                log(format!(
                    "site {site} caught up: {} objects copied",
                    report.copied
                ));
                let failed = lock(&self.shared.state)
                    .verify
                    .get(&site)
                    .is_some_and(|v| !v.ok);
                // At most once between scheduled verifications: a failure the
                // catch-up did not mend waits for the schedule.
                if failed && self.reverified.insert(site.clone()) {
                    self.reverify.insert(site.clone());
                }
            }
            Err(e) => log(format!(
                "site {site} could not be caught up yet: [{}] {e}",
                e.kind()
            )),
        }
        self.refresh_now = true;
    }
}
