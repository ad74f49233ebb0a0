//! The long-running agent: runs every periodic dataset on its schedule (with retries and
//! backoff), catches lagging sites up, verifies every site without keys on its own interval,
//! keeps freshness, raises and clears RPO alarms, serves status, metrics and the dashboard,
//! reloads its configuration on SIGHUP and shuts down cleanly on SIGTERM/SIGINT.
//!
//! This module starts the agent ([`run`]) and answers `status --config` ([`status_now`]); the
//! work is split by concern: [`crate::scheduler`] (the loop that starts, reaps and retries runs,
//! looks at the sites and shuts down), [`crate::http`] (the status server) and
//! [`crate::control`] (signals and the state folder's lock).
//!
//! Shutdown: no new run starts; in-flight runs get `shutdown_grace` to finish; then their
//! writes are refused ([`crate::run::CancellableSite`]), so they end without recording a
//! version (never a partial one) and the next run reuses what they stored.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use crate::config::{Config, Mode};
use crate::control::lock_state_dir;
use crate::log::now_s;
use crate::run;
use crate::state::AgentState;
use crate::status;

pub use crate::control::Control;
pub use crate::error::AgentError;
pub use crate::http::{serve, Shared, StatusToken};
pub use crate::log::log;
pub use crate::options::Options;

/// Reads the config, opens the vault and the keys, and runs until stopped (or one cycle with
/// `--once`).
pub fn run(config_path: &Path, options: Options, control: Control) -> Result<(), AgentError> {
    let config = Arc::new(Config::load(config_path)?);
    for w in &config.warnings {
        log(format!("warning: {w}"));
    }
    let _lock = lock_state_dir(&config.agent.state_dir)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let vault = run::open_vault(&config, &cancel).map_err(|error| AgentError::Open {
        context: "cannot open the vault at the configured sites",
        hint: crate::hints::for_error(&error, &config),
        error: Box::new(error),
    })?;
    // Sites left out (one that holds no vault, one that is down): the others keep protecting
    // every dataset; the looks at the sites show why and raise the alarm.
    for l in embassy_ops::backup::lagging(&vault) {
        log(format!("warning: site {} is left out: {}", l.site, l.why));
    }
    let keyring =
        Arc::new(
            run::unlock(&config.keys, &vault).map_err(|error| AgentError::Open {
                context: "cannot unlock the vault with the configured key file",
                hint: crate::hints::for_error(&error, &config),
                error: Box::new(error),
            })?,
        );
    let mut state = AgentState::load(&config.agent.state_dir).map_err(AgentError::Start)?;
    let now = now_s();
    for d in &config.datasets {
        state
            .datasets
            .entry(d.name.clone())
            .or_insert_with(|| crate::state::DatasetState {
                first_seen: now,
                ..Default::default()
            });
    }
    log(format!(
        "agent started: vault {}, {} datasets, {} sites ({}), state in {}",
        vault.config().vault_id,
        config.datasets.len(),
        config.sites.len(),
        config
            .sites
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        config.agent.state_dir.display()
    ));
    let shared = Arc::new(Shared {
        config: Mutex::new(config.clone()),
        state: Mutex::new(state),
        snapshots: Mutex::new(Vec::new()),
    });
    let http = match &config.status.listen {
        Some(listen) if !options.once => {
            let token = match &config.status.token_file {
                Some(f) => Some(StatusToken::read(f).map_err(AgentError::Start)?),
                None => None,
            };
            let guarded = if token.is_some() {
                ", token required"
            } else {
                ""
            };
            let h = serve(listen, token, shared.clone()).map_err(AgentError::Start)?;
            log(format!(
                "dashboard at http://{listen}/ (also /status.json and /metrics{guarded})"
            ));
            Some(h)
        }
        _ => None,
    };
    let once_failed =
        crate::scheduler::schedule(config, shared, keyring, cancel, http, &options, &control);
    if options.once && !once_failed.is_empty() {
        return Err(AgentError::Failed(format!(
            "{} of the cycle's runs failed: {}",
            once_failed.len(),
            once_failed.join(", ")
        )));
    }
    Ok(())
}

/// The status document for a configuration, read now from every site and the agent's state
/// folder: what `embassy status --config FILE --json` prints (the agent serves the same).
pub fn status_now(config: &Config) -> Result<crate::report::StatusReport, String> {
    let state = AgentState::load(&config.agent.state_dir)?;
    let mut ends = BTreeMap::new();
    for d in config
        .datasets
        .iter()
        .filter(|d| matches!(d.mode, Mode::Continuous(_)))
    {
        if let crate::config::Source::Postgres { conninfo, .. } = &d.source {
            let end = embassy_postgres::replication::ConnConfig::parse(conninfo)
                .and_then(|c| embassy_postgres::status::server_lsn(&c));
            if let Ok(end) = end {
                ends.insert(d.name.clone(), end.0);
            }
        }
    }
    let snaps = status::snapshot_all(config, &ends);
    Ok(crate::report::report(
        config,
        &snaps,
        &state,
        embassy_core::format::config::now_unix_nanos(),
    ))
}
