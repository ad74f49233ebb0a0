//! What the agent remembers across restarts, in `<state_dir>/agent-state.json`: per dataset its
//! runs and errors, per site its last verification, the alarms raised (so a restart neither
//! repeats nor forgets one) and the lag history the dashboard draws.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use embassy_core::ErrorKind;
use serde::{Deserialize, Serialize};

/// At most this many history points per dataset and site (a day at 2-minute spacing).
pub const HISTORY_POINTS: usize = 720;

/// The runs of one dataset.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DatasetState {
    /// When the agent first saw the dataset in its configuration (Unix seconds): the RPO
    /// clock of a dataset without any version starts here.
    pub first_seen: i64,
    /// Start of the last run (Unix seconds).
    pub last_start: Option<i64>,
    /// End of the last successful run.
    pub last_success: Option<i64>,
    /// Version number the last successful run stored.
    pub last_version: Option<u64>,
    /// Seconds the last successful run took.
    pub last_duration_seconds: Option<f64>,
    /// The last failure, for people.
    pub last_error: Option<String>,
    /// Its kind (integrity, outage, source, config, keys).
    #[serde(default)]
    pub last_error_kind: Option<ErrorKind>,
    /// When it happened.
    pub last_error_at: Option<i64>,
    /// Runs started.
    pub runs: u64,
    /// Runs that failed.
    pub errors: u64,
    /// Failures since the last success (drives the retry backoff).
    pub consecutive_failures: u32,
    /// When the next retry is due after a failure (Unix seconds).
    pub next_retry: Option<i64>,
    /// The last restore drill the agent ran.
    #[serde(default)]
    pub last_drill: Option<DrillState>,
}

/// A restore drill the agent ran (`drill = "7d"`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DrillState {
    /// When it ended (Unix seconds).
    pub at: i64,
    /// True when every check passed.
    pub passed: bool,
    /// Recovery time measured, in milliseconds (none when the drill could not run).
    pub rto_ms: Option<u64>,
    /// Recovery point measured, in milliseconds.
    pub rpo_ms: Option<u64>,
    /// The version restored.
    pub version: Option<u64>,
    /// The ledger entry that records it (none: not recorded).
    pub recorded_seq: Option<u64>,
    /// What it found or why it could not run, one line.
    pub summary: String,
    /// When it failed: integrity when it found damage, another kind when it could not run.
    #[serde(default)]
    pub kind: Option<ErrorKind>,
}

/// A consistency group's points as the agent took them (`[[groups]]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupState {
    /// When the agent first saw the group in its configuration (Unix seconds): the first
    /// point is due one interval after.
    pub first_seen: i64,
    /// The last point the agent recorded.
    pub last_point: Option<GroupPointState>,
    /// Attempts that failed since the last point was recorded.
    pub consecutive_failures: u32,
    /// The last failure, for people.
    pub last_error: Option<String>,
    /// Its kind (integrity, outage, source, config, keys).
    pub last_error_kind: Option<ErrorKind>,
    /// When it happened (Unix seconds).
    pub last_error_at: Option<i64>,
}

/// An embassy node's hot standby as the agent last saw it (`[[standbys]]`, see
/// [`crate::node`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StandbyState {
    /// `creating`, `starting`, `following`, `diverged` (its replay went past where the vault's
    /// newest timeline forked off its own: rebuilt), `rebuilding`, `down`, or `promoted` (its
    /// server left recovery: the live registry, kept running, never rebuilt).
    pub phase: String,
    /// When it entered that phase (Unix seconds).
    pub since: i64,
    /// When it was last asked (Unix seconds).
    pub checked_at: Option<i64>,
    /// Its replay position (`pg_last_wal_replay_lsn()`).
    pub replay_lsn: Option<String>,
    /// The end of the newest durable WAL in the vault (home's, as streamed): of the newest
    /// object that checks out (signed by a signer of the dataset), never a name alone.
    pub vault_lsn: Option<String>,
    /// Its timeline: the newest PostgreSQL accepted as its recovery target.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// The timeline of the vault's newest durable WAL.
    #[serde(default)]
    pub vault_timeline: Option<u32>,
    /// Bytes of durable WAL in the vault it has not replayed.
    pub lag_bytes: Option<u64>,
    /// Seconds its data is behind the newest durable WAL (0 when it has replayed it all).
    pub lag_seconds: Option<f64>,
    /// Commit time of the last transaction it replayed (Unix seconds).
    pub last_replay_at: Option<f64>,
    /// Times its server was started again after it stopped.
    pub restarts: u32,
    /// Times it was rebuilt from the newest base backup.
    pub rebuilds: u32,
    /// When it was last rebuilt (Unix seconds).
    pub last_rebuild_at: Option<i64>,
    /// Why it was last rebuilt.
    pub last_rebuild_reason: Option<String>,
    /// The last problem, for people.
    pub last_error: Option<String>,
}

/// A group point the agent recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupPointState {
    /// When it was recorded (Unix seconds).
    pub at: i64,
    /// Its number in the group.
    pub number: u64,
    /// The group ledger's entry that records it.
    pub seq: u64,
    /// Milliseconds between the first and the last member's restore point.
    pub spread_ms: f64,
}

/// The last keyless verification of one site.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifyState {
    /// When it finished (Unix seconds).
    pub at: i64,
    /// True when nothing was wrong.
    pub ok: bool,
    /// What it found, one line.
    pub summary: String,
    /// When not ok: integrity when it found damage, another kind when it could not run.
    #[serde(default)]
    pub kind: Option<ErrorKind>,
}

/// An alarm that was raised and not yet cleared.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RaisedAlarm {
    /// The dataset.
    pub dataset: String,
    /// The site.
    pub site: String,
    /// When it was raised (Unix seconds).
    pub since: i64,
    /// Why, for people.
    pub message: String,
    /// What kind of problem raised it (None: the data is only older than the RPO).
    #[serde(default)]
    pub kind: Option<ErrorKind>,
}

/// Everything the agent persists.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentState {
    /// Per dataset.
    #[serde(default)]
    pub datasets: BTreeMap<String, DatasetState>,
    /// Per site name.
    #[serde(default)]
    pub verify: BTreeMap<String, VerifyState>,
    /// Raised alarms by `dataset@site`.
    #[serde(default)]
    pub alarms: BTreeMap<String, RaisedAlarm>,
    /// Newest recovery point seen at each `dataset@site` (Unix ns): judges a site that cannot
    /// be read right now by the data it was last seen to hold.
    #[serde(default)]
    pub seen: BTreeMap<String, i64>,
    /// Lag history by `dataset@site`: (Unix seconds, lag seconds; negative = no data).
    #[serde(default)]
    pub history: BTreeMap<String, Vec<(i64, f64)>>,
    /// Per consistency group.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupState>,
    /// The embassy node's standbys, by dataset.
    #[serde(default)]
    pub standbys: BTreeMap<String, StandbyState>,
}

/// The state file in a state folder.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("agent-state.json")
}

impl AgentState {
    /// Reads the state (an empty one when there is none yet).
    pub fn load(dir: &Path) -> Result<AgentState, String> {
        let path = state_path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "state file {} is damaged ({e}); move it away to start afresh",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
            Err(e) => Err(format!("cannot read state file {}: {e}", path.display())),
        }
    }

    /// Writes the state atomically (a temporary file renamed over the old one, after fsync).
    pub fn store(&self, dir: &Path) -> Result<(), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create state folder {}: {e}", dir.display()))?;
        let path = state_path(dir);
        let bytes = serde_json::to_vec(self).map_err(|e| format!("encoding state: {e}"))?;
        embassy_core::fsutil::write_atomic(&path, &bytes)
            .map_err(|e| format!("cannot write state file {}: {e}", path.display()))
    }

    /// Adds a lag history point for `key`, keeping at most [`HISTORY_POINTS`] and at most one
    /// point per `spacing` seconds.
    pub fn record_lag(&mut self, key: &str, at: i64, lag: f64, spacing: i64) {
        let points = self.history.entry(key.to_string()).or_default();
        if let Some(last) = points.last() {
            if at - last.0 < spacing {
                return;
            }
        }
        points.push((at, lag));
        if points.len() > HISTORY_POINTS {
            let excess = points.len() - HISTORY_POINTS;
            points.drain(..excess);
        }
    }
}
