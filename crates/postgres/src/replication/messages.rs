//! What the replication commands and the CopyBoth stream answer: system and slot information,
//! XLogData and keepalive messages, PostgreSQL's timestamps, and the slot-name rule.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes};

use crate::error::{PgError, Result};
use crate::lsn::Lsn;

/// What `IDENTIFY_SYSTEM` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier (ties WAL to one cluster).
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
}

/// What `READ_REPLICATION_SLOT` reports for an existing slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// `physical` or `logical`.
    pub kind: String,
    /// Oldest WAL the slot keeps (None before it reserved any).
    pub restart_lsn: Option<Lsn>,
    /// Timeline of `restart_lsn`.
    pub restart_tli: Option<u32>,
}

/// One message of the CopyBoth stream.
#[derive(Debug, Clone)]
pub enum ReplicationMessage {
    /// WAL bytes starting at `start`.
    XLogData {
        /// Position of the first byte.
        start: Lsn,
        /// The server's current end of WAL.
        server_end: Lsn,
        /// Server clock when sent (µs since 2000-01-01).
        server_time: i64,
        /// The WAL bytes.
        data: Bytes,
    },
    /// Primary keepalive.
    Keepalive {
        /// The server's current end of WAL.
        server_end: Lsn,
        /// The server wants a status update now.
        reply_requested: bool,
    },
    /// The timeline ended (the server was promoted or switched timeline): stream the next one.
    EndOfTimeline {
        /// The next timeline, if the server said.
        next_timeline: Option<u32>,
        /// Where the next timeline starts.
        next_start: Option<Lsn>,
    },
}

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Now as PostgreSQL timestamps count (µs since 2000-01-01).
pub fn pg_now() -> i64 {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    us - PG_EPOCH_OFFSET_US
}

/// Converts a PostgreSQL timestamp (µs since 2000) to ns since the Unix epoch.
pub fn pg_time_to_unix_ns(t: i64) -> i64 {
    (t + PG_EPOCH_OFFSET_US).saturating_mul(1000)
}

pub(super) fn parse_copy_data(mut body: Bytes) -> Result<ReplicationMessage> {
    let short = || PgError::Protocol("short replication message".into());
    if body.is_empty() {
        return Err(short());
    }
    match body.get_u8() {
        b'w' => {
            if body.len() < 24 {
                return Err(short());
            }
            let start = Lsn(body.get_u64());
            let server_end = Lsn(body.get_u64());
            let server_time = body.get_i64();
            Ok(ReplicationMessage::XLogData {
                start,
                server_end,
                server_time,
                data: body,
            })
        }
        b'k' => {
            if body.len() < 17 {
                return Err(short());
            }
            let server_end = Lsn(body.get_u64());
            let _time = body.get_i64();
            let reply_requested = body.get_u8() != 0;
            Ok(ReplicationMessage::Keepalive {
                server_end,
                reply_requested,
            })
        }
        t => Err(PgError::Protocol(format!(
            "unknown replication message '{}'",
            t as char
        ))),
    }
}

/// Slot names are `[a-z0-9_]{1,63}` (PostgreSQL's rule); checked before they go into a command.
pub fn check_slot_name(slot: &str) -> Result<()> {
    if !slot.is_empty()
        && slot.len() <= 63
        && slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(PgError::Invalid(format!(
            "'{slot}' is not a valid replication slot name: use 1 to 63 of a-z, 0-9 and _"
        )))
    }
}

/// Where a server's history leaves `timeline`: the timeline that follows it and the switch
/// point (the end of `timeline`'s WAL in this server's history). `history` is the content of
/// `server_timeline`'s history file (`TIMELINE_HISTORY`): one `<parent>\t<switch point>\t<reason>`
/// line per ancestor, oldest first. None when `timeline` is not an ancestor there.
pub fn timeline_fork(history: &str, timeline: u32, server_timeline: u32) -> Option<(u32, Lsn)> {
    let entries = crate::fork::history_edges(history);
    let at = entries.iter().position(|(tli, _)| *tli == timeline)?;
    let next = entries.get(at + 1).map_or(server_timeline, |(tli, _)| *tli);
    Some((next, entries[at].1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_names_where_each_ancestor_was_left() {
        let history = "1\t0/3000A28\tno recovery target specified\n\n\
                       2\t0/5000060\tno recovery target specified\n";
        assert_eq!(
            timeline_fork(history, 1, 3),
            Some((2, "0/3000A28".parse().unwrap()))
        );
        assert_eq!(
            timeline_fork(history, 2, 3),
            Some((3, "0/5000060".parse().unwrap()))
        );
        assert_eq!(timeline_fork(history, 3, 3), None);
        assert_eq!(timeline_fork("", 1, 2), None);
    }

    #[test]
    fn slot_names_follow_postgresqls_rule() {
        assert!(check_slot_name("bad-name").is_err());
        assert!(check_slot_name("embassy_1").is_ok());
        assert!(check_slot_name("").is_err());
        assert!(check_slot_name(&"a".repeat(64)).is_err());
    }
}
