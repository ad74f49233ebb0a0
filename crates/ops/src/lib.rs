//! The operations both front ends of Data Embassy run: the `embassy` command line and the agent.
//!
//! Each operation takes what the front end parsed (sites, a state folder, a key file, where the
//! passphrase comes from) and returns a typed report; none prints, prompts or exits. The command
//! line renders the reports for people or as JSON; the agent schedules the operations and turns
//! the reports into its status page, metrics and alarms. A rule both front ends apply (how a
//! passphrase is read, what a verification covers, what a dataset's recovery point is) lives
//! here once, so the two cannot drift apart.
//!
//! Crate order: `embassy` (cli) → `embassy-agent` → `embassy-ops` → `embassy-postgres` →
//! {`embassy-sites`, `embassy-sources`} → `embassy-core`.

pub mod backup;
pub mod browse;
pub mod catchup;
pub mod custody;
pub mod drill;
pub mod gc;
pub mod group;
pub mod init;
pub mod open;
pub mod pgdrill;
pub mod pgrestore;
pub mod prune;
pub mod restore;
pub mod status;
pub mod unlock;
pub mod verify;
pub mod witness;

pub use embassy_core::{Error, Result};
