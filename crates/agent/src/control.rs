//! Control of the agent process: the signals that stop it or reload its configuration, and the
//! lock that keeps a second agent off the same state folder.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Flags the signal handlers set (the CLI registers them with `signal-hook`; tests set them).
#[derive(Debug, Clone, Default)]
pub struct Control {
    /// SIGTERM / SIGINT: shut down.
    pub stop: Arc<AtomicBool>,
    /// SIGHUP: reload the configuration.
    pub reload: Arc<AtomicBool>,
}

impl Control {
    /// Registers SIGTERM, SIGINT (stop) and SIGHUP (reload). A second SIGTERM or SIGINT while
    /// stopping exits at once (status 1): runs in flight are cut, and since a version exists only
    /// once its ledger entry is written, none is left partial.
    pub fn from_signals() -> Result<Control, String> {
        let c = Control::default();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            // Registered first, so it sees the flag as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(sig, 1, c.stop.clone())
                .map_err(|e| format!("cannot install the handler of signal {sig}: {e}"))?;
            signal_hook::flag::register(sig, c.stop.clone())
                .map_err(|e| format!("cannot install the handler of signal {sig}: {e}"))?;
        }
        signal_hook::flag::register(signal_hook::consts::SIGHUP, c.reload.clone())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        Ok(c)
    }
}

/// Takes the agent's lock on its state folder (`agent.lock`, holding the pid): two agents on one
/// state folder would overwrite each other's alarms and history. Released when the file closes.
pub(crate) fn lock_state_dir(dir: &Path) -> Result<std::fs::File, crate::error::AgentError> {
    use crate::error::AgentError;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).map_err(|e| {
        AgentError::Start(format!("cannot create state folder {}: {e}", dir.display()))
    })?;
    let path = dir.join("agent.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| AgentError::Start(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: flock on a file descriptor we own, for the life of `file`.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        return Err(AgentError::Locked(format!(
            "another embassy agent (pid {}) runs with state folder {}: stop it first, or give this one its own [agent] state_dir",
            pid.trim(),
            dir.display()
        )));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(file)
}
