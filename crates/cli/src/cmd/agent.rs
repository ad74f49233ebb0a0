//! The arguments of `embassy agent` and `embassy config check` (they run in crate::agent).

use std::path::PathBuf;

use clap::{Args, Subcommand};

/// Arguments of `embassy agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// The configuration file.
    #[arg(long, default_value = "embassy.toml")]
    pub config: PathBuf,
    /// One cycle (every periodic dataset once, one verification), then exit.
    #[arg(long)]
    pub once: bool,
}

/// `embassy config ...`
#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check embassy.toml: prints a summary, or every problem with file:line:column (exit 2).
    Check {
        /// The configuration file.
        #[arg(default_value = "embassy.toml")]
        file: PathBuf,
    },
}
