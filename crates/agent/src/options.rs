//! How the agent is asked to run (`embassy agent` flags), read by the scheduler.

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// One cycle: every periodic dataset once, a verification when configured, then exit.
    pub once: bool,
}
