//! The agent's log: one line per event on stderr, and the clock its schedule reads. Below every
//! other module of the agent, so each can log.

/// Writes one log line on stderr: UTC time, then the message.
pub fn log(message: impl AsRef<str>) {
    let now = embassy_core::time::utc(embassy_core::format::config::now_unix_nanos());
    // Messages carry text from sites and writers: no control characters reach the log.
    eprintln!("{now} {}", embassy_core::text::escape(message.as_ref()));
}

/// Now, in whole seconds since the Unix epoch (the schedule's clock).
pub(crate) fn now_s() -> i64 {
    embassy_core::format::config::now_unix()
}
