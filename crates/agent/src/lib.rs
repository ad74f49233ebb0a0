//! The Data Embassy agent: `embassy.toml` declares sites, keys and datasets; the agent keeps
//! every dataset protected at every site on schedule and shows that it is (freshness against
//! the RPO, alarms, `/status.json`, `/metrics`, a dashboard). See `docs/operations.md`.

pub mod agent;
pub mod alarms;
pub mod config;
pub mod control;
pub mod dashboard;
pub mod error;
pub mod hints;
pub mod http;
pub mod log;
pub mod metrics;
pub mod node;
pub mod options;
pub mod preflight;
pub mod report;
pub mod run;
pub mod schedule;
mod scheduler;
pub mod state;
pub mod status;

pub use agent::{run as run_agent, AgentError, Control, Options};
pub use config::{Config, ConfigError};
