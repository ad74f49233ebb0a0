//! The stop flag of the long-running PostgreSQL commands (`pg stream`, the fetch helper): set by
//! SIGINT or SIGTERM, read by their loops, which end cleanly at their next check.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a stop signal arrived.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

/// The signal handler that sets [`STOP`] (async-signal-safe: one atomic store).
pub(crate) extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}
