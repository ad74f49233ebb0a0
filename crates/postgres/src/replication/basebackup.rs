//! `BASE_BACKUP` over the replication protocol (PostgreSQL 15+, `TARGET 'client'`): the start
//! position and the tablespace list as result sets, then one CopyOut stream whose CopyData
//! messages start with a type byte — `n` a new archive (its name and the tablespace's location,
//! empty for the main data directory, which comes last), `d` archive or manifest bytes, `p`
//! progress, `m` the backup manifest follows — then the end position as a result set.
//!
//! [`BaseBackupStream`] hands out the events one by one, and [`ArchiveReader`] reads one
//! archive's tar bytes as a [`Read`], stopping at the next event, so the caller parses each tar
//! as it arrives without a spool.

use std::io::Read;

use bytes::{Buf, Bytes};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend;

use super::{ReplicationConnection, ServerError};
use crate::error::{PgError, Result};
use crate::lsn::Lsn;

/// How long a base backup waits for the server's next message.
const BACKUP_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// What the base backup asks the server for.
#[derive(Debug, Clone)]
pub struct BaseBackupRequest {
    /// Label shown in `pg_stat_progress_basebackup` and backup_label.
    pub label: String,
    /// Append the WAL from start to stop to the main archive (`pg_wal/`), and do not wait for
    /// it to be archived (what `pg_basebackup -X fetch` asks).
    pub wal: bool,
}

impl BaseBackupRequest {
    /// The command text: a fast checkpoint, a backup manifest, archives streamed to us; no
    /// tablespace_map file (the `pg_tblspc/<oid>` links come in the main archive instead).
    pub fn command(&self) -> String {
        let mut options = vec![
            format!("LABEL '{}'", self.label.replace('\'', "''")),
            "CHECKPOINT 'fast'".to_string(),
            "MANIFEST 'yes'".to_string(),
            "TARGET 'client'".to_string(),
        ];
        if self.wal {
            options.push("WAL".to_string());
            options.push("WAIT false".to_string());
        }
        format!("BASE_BACKUP ( {} )", options.join(", "))
    }
}

/// A tablespace outside the main data directory, as the server listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// Its OID (the name of its link in `pg_tblspc/`).
    pub oid: u32,
    /// Its location on the server (`CREATE TABLESPACE .. LOCATION`).
    pub location: String,
}

/// One event of the base backup's CopyOut stream.
#[derive(Debug, Clone)]
pub enum BackupEvent {
    /// A new archive starts: `base.tar` (location empty) or `<oid>.tar`.
    Archive {
        /// The archive's name.
        name: String,
        /// The tablespace's location, empty for the main data directory.
        location: String,
    },
    /// Bytes of the current archive or of the manifest.
    Data(Bytes),
    /// Bytes the server has sent so far.
    Progress(u64),
    /// The backup manifest follows (as data).
    Manifest,
    /// The stream ended: the backup's end position and timeline.
    End {
        /// Where the backup becomes consistent.
        lsn: Lsn,
        /// Its timeline.
        timeline: u32,
    },
}

/// A running `BASE_BACKUP`: where it starts, its tablespaces, and its events.
pub struct BaseBackupStream<'a> {
    conn: &'a mut ReplicationConnection,
    /// Start position of the backup.
    pub start: Lsn,
    /// Timeline of the start position.
    pub timeline: u32,
    /// The tablespaces outside the main data directory.
    pub tablespaces: Vec<TablespaceInfo>,
    peeked: Option<BackupEvent>,
    ended: bool,
}

/// The text columns of a DataRow.
fn row_values(row: &backend::DataRowBody) -> Result<Vec<Option<String>>> {
    let mut ranges = row.ranges();
    let mut out = Vec::new();
    while let Some(r) = ranges.next()? {
        out.push(r.map(|r| String::from_utf8_lossy(&row.buffer()[r]).to_string()));
    }
    Ok(out)
}

impl ReplicationConnection {
    /// Sends `BASE_BACKUP` and reads its start position and tablespace list; the archives
    /// follow through the returned stream.
    pub fn base_backup(&mut self, request: &BaseBackupRequest) -> Result<BaseBackupStream<'_>> {
        if self.streaming {
            return Err(PgError::Protocol("BASE_BACKUP while streaming".into()));
        }
        postgres_protocol::message::frontend::query(&request.command(), &mut self.out)?;
        self.send()?;
        // The checkpoint before the first answer, and waiting for WAL archiving before the
        // last, can take minutes on a busy server (pg_basebackup waits as long as it takes).
        self.socket.set_read_timeout(Some(BACKUP_READ_TIMEOUT))?;
        let mut sets: Vec<Vec<Vec<Option<String>>>> = vec![Vec::new()];
        loop {
            let frame = self.read_frame_blocking()?;
            match frame.tag {
                b'T' => {
                    if sets.last().is_some_and(|s| !s.is_empty()) {
                        sets.push(Vec::new());
                    }
                }
                b'D' => {
                    if let backend::Message::DataRow(row) = Self::parse(frame)? {
                        let values = row_values(&row)?;
                        if let Some(set) = sets.last_mut() {
                            set.push(values);
                        }
                    }
                }
                b'H' => break,
                b'E' => return Err(self.error_then_ready(frame)),
                b'C' | b'N' | b'S' => {}
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message '{}' after BASE_BACKUP",
                        other as char
                    )))
                }
            }
        }
        let bad = |what: &str| PgError::Protocol(format!("BASE_BACKUP: {what}"));
        let start_row = sets
            .first()
            .and_then(|s| s.first())
            .ok_or_else(|| bad("no start position"))?;
        let start: Lsn = start_row
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| bad("no start position"))?
            .parse()?;
        let timeline = start_row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad("no start timeline"))?;
        let mut tablespaces = Vec::new();
        for row in sets.get(1).map(Vec::as_slice).unwrap_or_default() {
            // The main data directory is the row without an OID.
            let (Some(oid), Some(location)) = (
                row.first().cloned().flatten(),
                row.get(1).cloned().flatten(),
            ) else {
                continue;
            };
            let oid = oid
                .parse()
                .map_err(|_| bad("a tablespace OID is not a number"))?;
            tablespaces.push(TablespaceInfo { oid, location });
        }
        Ok(BaseBackupStream {
            conn: self,
            start,
            timeline,
            tablespaces,
            peeked: None,
            ended: false,
        })
    }

    /// The server's error in `frame`, after reading up to ReadyForQuery.
    fn error_then_ready(&mut self, frame: super::Frame) -> PgError {
        let e = match Self::parse(frame) {
            Ok(backend::Message::ErrorResponse(body)) => ServerError::from_body(&body),
            _ => ServerError::default(),
        };
        while let Ok(f) = self.read_frame_blocking() {
            if f.tag == b'Z' {
                break;
            }
        }
        e.into_error()
    }
}

impl<'c> BaseBackupStream<'c> {
    /// The next event; after [`BackupEvent::End`] the connection is ready for a new command.
    pub fn next_event(&mut self) -> Result<BackupEvent> {
        if let Some(e) = self.peeked.take() {
            return Ok(e);
        }
        if self.ended {
            return Err(PgError::Protocol("read past the base backup's end".into()));
        }
        loop {
            let frame = self.conn.read_frame_blocking()?;
            match frame.tag {
                b'd' => {
                    let mut body = frame.bytes.freeze();
                    body.advance(5);
                    return parse_event(body);
                }
                b'c' => return self.end(),
                b'E' => return Err(self.conn.error_then_ready(frame)),
                b'N' | b'S' => {}
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message '{}' in the base backup stream",
                        other as char
                    )))
                }
            }
        }
    }

    /// After CopyDone: the end position result set, then ReadyForQuery.
    fn end(&mut self) -> Result<BackupEvent> {
        let mut end = None;
        loop {
            let frame = self.conn.read_frame_blocking()?;
            match frame.tag {
                b'D' => {
                    if let backend::Message::DataRow(row) = ReplicationConnection::parse(frame)? {
                        end = Some(row_values(&row)?);
                    }
                }
                b'E' => return Err(self.conn.error_then_ready(frame)),
                b'Z' => break,
                _ => {}
            }
        }
        self.ended = true;
        self.conn
            .socket
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
        let row = end.ok_or_else(|| PgError::Protocol("BASE_BACKUP: no end position".into()))?;
        let lsn = row
            .first()
            .cloned()
            .flatten()
            .ok_or_else(|| PgError::Protocol("BASE_BACKUP: no end position".into()))?
            .parse()?;
        let timeline = row
            .get(1)
            .cloned()
            .flatten()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| PgError::Protocol("BASE_BACKUP: no end timeline".into()))?;
        Ok(BackupEvent::End { lsn, timeline })
    }

    /// Reads the current archive's (or the manifest's) bytes up to the next event, which the
    /// next [`Self::next_event`] returns.
    pub fn data(&mut self) -> ArchiveReader<'_, 'c> {
        ArchiveReader {
            stream: self,
            pending: Bytes::new(),
            progress: 0,
            error: None,
        }
    }
}

/// One archive's (or the manifest's) bytes as a [`Read`]; end of file at the next event.
pub struct ArchiveReader<'s, 'c> {
    stream: &'s mut BaseBackupStream<'c>,
    pending: Bytes,
    /// The last progress the server reported (bytes sent).
    pub progress: u64,
    /// The protocol error that ended the reading early, if any (the [`Read`] gives an I/O
    /// error; the typed one is kept here).
    pub error: Option<PgError>,
}

impl Read for ArchiveReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pending.is_empty() {
            match self.stream.next_event() {
                Ok(BackupEvent::Data(d)) => self.pending = d,
                Ok(BackupEvent::Progress(p)) => self.progress = p,
                Ok(other) => {
                    self.stream.peeked = Some(other);
                    return Ok(0);
                }
                Err(e) => {
                    let text = e.to_string();
                    self.error = Some(e);
                    return Err(std::io::Error::other(text));
                }
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}

/// A NUL-terminated string at the front of `body`.
fn c_string(body: &mut Bytes) -> Result<String> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| PgError::Protocol("BASE_BACKUP: unterminated string".into()))?;
    let s = String::from_utf8_lossy(&body[..end]).into_owned();
    body.advance(end + 1);
    Ok(s)
}

fn parse_event(mut body: Bytes) -> Result<BackupEvent> {
    if body.is_empty() {
        return Err(PgError::Protocol("BASE_BACKUP: empty CopyData".into()));
    }
    match body.get_u8() {
        b'n' => Ok(BackupEvent::Archive {
            name: c_string(&mut body)?,
            location: c_string(&mut body)?,
        }),
        b'd' => Ok(BackupEvent::Data(body)),
        b'p' if body.len() >= 8 => Ok(BackupEvent::Progress(body.get_u64())),
        b'm' => Ok(BackupEvent::Manifest),
        t => Err(PgError::Protocol(format!(
            "BASE_BACKUP: unknown message '{}' in the archive stream",
            t as char
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_asks_for_what_a_restore_needs() {
        let r = BaseBackupRequest {
            label: "it's ours".into(),
            wal: true,
        };
        assert_eq!(
            r.command(),
            "BASE_BACKUP ( LABEL 'it''s ours', CHECKPOINT 'fast', MANIFEST 'yes', \
             TARGET 'client', WAL, WAIT false )"
        );
        let r = BaseBackupRequest {
            label: "x".into(),
            wal: false,
        };
        assert!(!r.command().contains("WAL"));
    }

    #[test]
    fn stream_messages_parse() {
        let e = parse_event(Bytes::from_static(b"n16400.tar\0/srv/ts1\0")).unwrap();
        assert!(matches!(e, BackupEvent::Archive { name, location }
            if name == "16400.tar" && location == "/srv/ts1"));
        let e = parse_event(Bytes::from_static(b"p\0\0\0\0\0\0\x01\0")).unwrap();
        assert!(matches!(e, BackupEvent::Progress(256)));
        assert!(parse_event(Bytes::from_static(b"nbase.tar")).is_err());
        assert!(parse_event(Bytes::from_static(b"x")).is_err());
    }
}
