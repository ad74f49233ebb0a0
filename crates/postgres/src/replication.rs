//! A physical replication client: PostgreSQL's streaming replication protocol over a std TCP
//! stream (TLS with rustls, see [`crate::tls`]) or Unix socket, on the `postgres-protocol`
//! crate's message framing and SCRAM-SHA-256(-PLUS) / md5 authentication. Synchronous: one
//! connection, blocking reads with a timeout.
//!
//! Security rules (docs/design.md, "Transport security"): plaintext only over a Unix socket or
//! loopback unless `insecure_plaintext=1`; a cleartext password only over a verified TLS
//! connection, a Unix socket or loopback; SCRAM-SHA-256-PLUS whenever the server offers it over
//! TLS, and required when the certificate is not verified.
//!
//! Supported commands: `IDENTIFY_SYSTEM`, `READ_REPLICATION_SLOT` (PostgreSQL 15+),
//! `CREATE_REPLICATION_SLOT .. PHYSICAL RESERVE_WAL`, `TIMELINE_HISTORY`, `SHOW`,
//! `START_REPLICATION SLOT .. PHYSICAL .. TIMELINE ..` and the CopyBoth sub-protocol (XLogData,
//! primary keepalive, standby status update, end of timeline).

//!
//! The pieces: [`conninfo`] (the connection string and the transport rules), [`auth`]
//! (SCRAM-SHA-256(-PLUS), md5 and password authentication), [`messages`] (what the replication
//! commands and the CopyBoth stream answer) and, here, the connection itself (socket, TLS
//! upgrade, framing, commands, the CopyBoth stream).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::{backend, frontend};

use crate::error::{PgError, Result};
use crate::lsn::Lsn;
use crate::tls::{SslMode, TlsInfo, TlsStream};

mod auth;
pub mod basebackup;
pub mod conninfo;
pub mod messages;

pub use conninfo::ConnConfig;
use messages::parse_copy_data;
pub use messages::{
    check_slot_name, pg_now, pg_time_to_unix_ns, timeline_fork, ReplicationMessage, SlotInfo,
    SystemInfo,
};

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Socket {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Socket::Tcp(s) => s.set_read_timeout(t),
            Socket::Unix(s) => s.set_read_timeout(t),
            Socket::Tls(s) => s.sock.set_read_timeout(t),
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
            Socket::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
            Socket::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Socket::Tcp(s) => s.flush(),
            Socket::Unix(s) => s.flush(),
            Socket::Tls(s) => s.flush(),
        }
    }
}

/// PostgreSQL's SSLRequest code (1234.5679).
const SSL_REQUEST_CODE: u32 = 80_877_103;

/// Sends SSLRequest on `tcp`; true when the server answers `S` (TLS follows). Reads exactly one
/// byte, so nothing a man in the middle sends in clear after it is taken as server data.
fn ssl_request(tcp: &mut TcpStream, addr: &str) -> Result<bool> {
    let mut req = [0u8; 8];
    req[..4].copy_from_slice(&8u32.to_be_bytes());
    req[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    tcp.write_all(&req)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(PgError::Tls {
            addr: addr.into(),
            message: format!(
                "the server answered the TLS request with {:?} instead of S or N: is this a \
                 PostgreSQL server?",
                other as char
            ),
        }),
    }
}

/// How the connection is protected and how the role authenticated, for status and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSecurity {
    /// TLS details; None for plaintext (Unix socket, loopback, or `insecure_plaintext=1`).
    pub tls: Option<TlsInfo>,
    /// `SCRAM-SHA-256-PLUS`, `SCRAM-SHA-256`, `md5`, `password` or `trust`.
    pub authentication: &'static str,
}

/// A replication-mode connection to PostgreSQL.
pub struct ReplicationConnection {
    socket: Socket,
    buf: BytesMut,
    out: BytesMut,
    cfg: ConnConfig,
    streaming: bool,
    /// The end of the timeline the server answered START_REPLICATION with at once (the start
    /// was its switch point): handed out by the next `recv`.
    ended: Option<ReplicationMessage>,
    parameters: Vec<(String, String)>,
    /// TLS details (None for plaintext).
    tls: Option<TlsInfo>,
    /// The peer is this machine (Unix socket or loopback address).
    local: bool,
    /// How the role authenticated.
    authentication: &'static str,
}

/// A server error's fields.
#[derive(Debug, Clone, Default)]
struct ServerError {
    code: String,
    message: String,
    detail: Option<String>,
}

impl ServerError {
    fn from_body(body: &backend::ErrorResponseBody) -> Self {
        let mut e = ServerError::default();
        let mut fields = body.fields();
        let mut details = Vec::new();
        while let Ok(Some(f)) = fields.next() {
            let v = String::from_utf8_lossy(f.value_bytes()).to_string();
            match f.type_() {
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' | b'H' => details.push(v),
                _ => {}
            }
        }
        if !details.is_empty() {
            e.detail = Some(details.join("; "));
        }
        e
    }

    /// An error while streaming: WAL the server no longer has is [`PgError::WalGone`].
    fn into_stream_error(self) -> PgError {
        if self.code == "58P01" || self.message.contains("has already been removed") {
            let lsn = self
                .message
                .split_whitespace()
                .find(|w| w.len() == 24 && w.bytes().all(|b| b.is_ascii_hexdigit()))
                .unwrap_or("the next position")
                .to_string();
            PgError::WalGone {
                lsn,
                message: self.message,
            }
        } else {
            self.into_error()
        }
    }

    fn into_error(self) -> PgError {
        PgError::Server {
            code: self.code,
            message: self.message,
            detail: self.detail,
        }
    }
}

/// A raw backend message: the tag and the whole frame (tag, length, body).
struct Frame {
    tag: u8,
    bytes: BytesMut,
}

impl ReplicationConnection {
    /// Connects with `replication=true` and authenticates. Errors name what to change:
    /// wrong host/port ([`PgError::Connect`]), password ([`PgError::Auth`]), pg_hba.conf
    /// ([`PgError::NotAllowedByHba`]), the REPLICATION attribute
    /// ([`PgError::NoReplicationPrivilege`]), `max_wal_senders` ([`PgError::NoWalSenders`]) and
    /// `wal_level` ([`PgError::WalLevelTooLow`], found through an ordinary connection when the
    /// server refuses WAL senders).
    pub fn connect(cfg: &ConnConfig) -> Result<Self> {
        match Self::connect_mode(cfg, true) {
            Err(PgError::NoWalSenders { message }) => {
                // With wal_level = minimal the server must run with max_wal_senders = 0, so the
                // refusal is the same: ask an ordinary connection which one it is.
                if let Ok(mut plain) = Self::connect_mode(cfg, false) {
                    if let Ok(level) = plain.show("wal_level") {
                        if level == "minimal" {
                            return Err(PgError::WalLevelTooLow { level });
                        }
                    }
                }
                Err(PgError::NoWalSenders { message })
            }
            other => other,
        }
    }

    /// Connects without replication (an ordinary session on `dbname`), for checks.
    pub fn connect_plain(cfg: &ConnConfig) -> Result<Self> {
        Self::connect_mode(cfg, false)
    }

    fn connect_mode(cfg: &ConnConfig, replication: bool) -> Result<Self> {
        let addr = cfg.address();
        let connect_err = |e: std::io::Error| PgError::Connect {
            addr: addr.clone(),
            message: e.to_string(),
        };
        let mut tls = None;
        let mut local = true;
        let socket = if cfg.host.starts_with('/') {
            // PostgreSQL never offers TLS on a Unix socket (like libpq, no SSLRequest there).
            Socket::Unix(UnixStream::connect(&addr).map_err(connect_err)?)
        } else {
            use std::net::ToSocketAddrs;
            let addrs: Vec<_> = (cfg.host.as_str(), cfg.port)
                .to_socket_addrs()
                .map_err(connect_err)?
                .collect();
            let mut last = None;
            let mut stream = None;
            for a in addrs {
                match TcpStream::connect_timeout(&a, cfg.connect_timeout) {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let s = stream.ok_or_else(|| {
                connect_err(last.unwrap_or_else(|| std::io::Error::other("no address")))
            })?;
            let mut s = s;
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(cfg.connect_timeout.max(Duration::from_secs(10))));
            local = s.peer_addr().map(|a| a.ip().is_loopback()).unwrap_or(false);
            cfg.check_transport(local)?;
            let mode = cfg.effective_sslmode();
            if mode == SslMode::Disable {
                Socket::Tcp(s)
            } else if ssl_request(&mut s, &addr)? {
                let root = cfg.root_cert();
                let (stream, info) =
                    crate::tls::handshake(s, &cfg.host, &addr, mode, root.as_deref())?;
                tls = Some(info);
                Socket::Tls(Box::new(stream))
            } else if mode.requires_tls() {
                return Err(PgError::Tls {
                    addr: addr.clone(),
                    message: format!(
                        "the server does not accept TLS connections but sslmode={} requires \
                         TLS: set ssl = on with ssl_cert_file and ssl_key_file in \
                         postgresql.conf and reload",
                        mode.as_str()
                    ),
                });
            } else {
                Socket::Tcp(s)
            }
        };
        let mut conn = ReplicationConnection {
            socket,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::new(),
            cfg: cfg.clone(),
            streaming: false,
            ended: None,
            parameters: Vec::new(),
            tls,
            local,
            authentication: "trust",
        };
        conn.socket
            .set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut params: Vec<(&str, &str)> = vec![
            ("user", cfg.user.as_str()),
            ("application_name", cfg.application_name.as_str()),
        ];
        if replication {
            params.push(("replication", "true"));
        } else {
            params.push(("database", cfg.dbname.as_str()));
        }
        frontend::startup_message(params.iter().copied(), &mut conn.out)?;
        conn.send()?;
        conn.authenticate(replication)?;
        Ok(conn)
    }

    fn send(&mut self) -> Result<()> {
        self.socket.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// Reads one whole frame, blocking up to the socket's timeout. None on timeout.
    fn read_frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if !(4..=1 << 30).contains(&len) {
                    return Err(PgError::Protocol(format!(
                        "message length {len} out of range"
                    )));
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let bytes = self.buf.split_to(len + 1);
                    return Ok(Some(Frame { tag, bytes }));
                }
                self.buf.reserve(len + 1 - self.buf.len());
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.socket.read(&mut chunk) {
                Ok(0) => {
                    return Err(PgError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads one frame, waiting as long as needed (up to the socket's timeout: 60 s, 15 min
    /// during a base backup).
    fn read_frame_blocking(&mut self) -> Result<Frame> {
        self.read_frame()?.ok_or_else(|| {
            PgError::Protocol(
                "the server did not answer in time (60 s, 15 min during a base backup): is it \
                 overloaded or stuck? see its log"
                    .into(),
            )
        })
    }

    fn parse(frame: Frame) -> Result<backend::Message> {
        let mut bytes = frame.bytes;
        backend::Message::parse(&mut bytes)?
            .ok_or_else(|| PgError::Protocol("truncated message".into()))
    }

    /// How the connection is protected (TLS details) and how the role authenticated
    /// (`SCRAM-SHA-256-PLUS` when channel binding was used).
    pub fn security(&self) -> ConnectionSecurity {
        ConnectionSecurity {
            tls: self.tls.clone(),
            authentication: self.authentication,
        }
    }

    /// A server parameter reported at startup (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Runs a simple query; returns its rows (text columns; None for NULL).
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        if self.streaming {
            return Err(PgError::Protocol("a query while streaming".into()));
        }
        frontend::query(sql, &mut self.out)?;
        self.send()?;
        let mut rows = Vec::new();
        let mut error: Option<ServerError> = None;
        loop {
            let frame = self.read_frame_blocking()?;
            match frame.tag {
                b'D' => {
                    if let backend::Message::DataRow(row) = Self::parse(frame)? {
                        let mut ranges = row.ranges();
                        let mut out = Vec::new();
                        while let Some(r) = ranges.next()? {
                            out.push(
                                r.map(|r| String::from_utf8_lossy(&row.buffer()[r]).to_string()),
                            );
                        }
                        rows.push(out);
                    }
                }
                b'E' => {
                    if let backend::Message::ErrorResponse(body) = Self::parse(frame)? {
                        error = Some(ServerError::from_body(&body));
                    }
                }
                b'Z' => break,
                b'H' | b'G' | b'W' => {
                    return Err(PgError::Protocol(
                        "unexpected COPY in a simple query".into(),
                    ))
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e.into_error()),
            None => Ok(rows),
        }
    }

    /// `SHOW name`.
    pub fn show(&mut self, name: &str) -> Result<String> {
        let rows = self.simple_query(&format!("SHOW {name}"))?;
        rows.first()
            .and_then(|r| r.first().cloned().flatten())
            .ok_or_else(|| PgError::Protocol(format!("SHOW {name} returned nothing")))
    }

    /// `IDENTIFY_SYSTEM`.
    pub fn identify_system(&mut self) -> Result<SystemInfo> {
        let rows = self.simple_query("IDENTIFY_SYSTEM")?;
        let row = rows
            .first()
            .filter(|r| r.len() >= 3)
            .ok_or_else(|| PgError::Protocol("IDENTIFY_SYSTEM returned no row".into()))?;
        let text = |i: usize| row[i].clone().unwrap_or_default();
        Ok(SystemInfo {
            system_id: text(0),
            timeline: text(1)
                .parse()
                .map_err(|_| PgError::Protocol("IDENTIFY_SYSTEM: bad timeline".into()))?,
            xlogpos: text(2).parse()?,
        })
    }

    /// `READ_REPLICATION_SLOT slot` (PostgreSQL 15+): None when the slot does not exist.
    pub fn read_replication_slot(&mut self, slot: &str) -> Result<Option<SlotInfo>> {
        check_slot_name(slot)?;
        let rows = self.simple_query(&format!("READ_REPLICATION_SLOT {slot}"))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let Some(kind) = row.first().cloned().flatten() else {
            return Ok(None);
        };
        let restart_lsn = match row.get(1).cloned().flatten() {
            Some(s) => Some(s.parse()?),
            None => None,
        };
        let restart_tli = row.get(2).cloned().flatten().and_then(|s| s.parse().ok());
        Ok(Some(SlotInfo {
            kind,
            restart_lsn,
            restart_tli,
        }))
    }

    /// `CREATE_REPLICATION_SLOT slot PHYSICAL RESERVE_WAL`: the slot keeps WAL from now on.
    pub fn create_physical_slot(&mut self, slot: &str) -> Result<()> {
        check_slot_name(slot)?;
        self.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL"
        ))?;
        Ok(())
    }

    /// `TIMELINE_HISTORY tl`: the history file's name and content.
    pub fn timeline_history(&mut self, timeline: u32) -> Result<(String, Vec<u8>)> {
        let rows = self.simple_query(&format!("TIMELINE_HISTORY {timeline}"))?;
        let row = rows
            .first()
            .filter(|r| r.len() >= 2)
            .ok_or_else(|| PgError::Protocol("TIMELINE_HISTORY returned no row".into()))?;
        Ok((
            row[0].clone().unwrap_or_default(),
            row[1].clone().unwrap_or_default().into_bytes(),
        ))
    }

    /// `START_REPLICATION SLOT slot PHYSICAL lsn TIMELINE tl`: enters streaming.
    pub fn start_replication(&mut self, slot: &str, start: Lsn, timeline: u32) -> Result<()> {
        check_slot_name(slot)?;
        let sql = format!("START_REPLICATION SLOT {slot} PHYSICAL {start} TIMELINE {timeline}");
        frontend::query(&sql, &mut self.out)?;
        self.send()?;
        loop {
            let frame = self.read_frame_blocking()?;
            match frame.tag {
                b'W' => {
                    self.streaming = true;
                    return Ok(());
                }
                b'T' => {
                    // Started at the timeline's switch point (a promoted server asked for the
                    // WAL of the timeline it left, up to where it left it): the server answers
                    // with the next timeline's result set instead of streaming.
                    self.ended = Some(self.next_timeline()?);
                    self.streaming = true;
                    return Ok(());
                }
                b'E' => {
                    let e = match Self::parse(frame)? {
                        backend::Message::ErrorResponse(body) => ServerError::from_body(&body),
                        _ => ServerError::default(),
                    };
                    // Wait for ReadyForQuery so the connection stays usable.
                    while let Ok(f) = self.read_frame_blocking() {
                        if f.tag == b'Z' {
                            break;
                        }
                    }
                    if e.code == "58P01" || e.message.contains("has already been removed") {
                        return Err(PgError::WalGone {
                            lsn: start.to_string(),
                            message: e.message,
                        });
                    }
                    if e.message.contains("does not exist") && e.message.contains("slot") {
                        return Err(PgError::MissingSlot {
                            slot: slot.to_string(),
                        });
                    }
                    return Err(e.into_error());
                }
                b'N' | b'S' => {}
                other => {
                    return Err(PgError::Protocol(format!(
                        "unexpected message '{}' after START_REPLICATION",
                        other as char
                    )))
                }
            }
        }
    }

    /// Waits up to `timeout` for the next streaming message; None when nothing came.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<ReplicationMessage>> {
        if !self.streaming {
            return Err(PgError::Protocol("recv outside streaming".into()));
        }
        if let Some(end) = self.ended.take() {
            self.streaming = false;
            return Ok(Some(end));
        }
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
        let frame = self.read_frame();
        self.socket
            .set_read_timeout(Some(Duration::from_secs(60)))?;
        let Some(frame) = frame? else {
            return Ok(None);
        };
        match frame.tag {
            b'd' => {
                let mut body = frame.bytes.freeze();
                body.advance(5);
                parse_copy_data(body).map(Some)
            }
            b'c' => {
                // End of timeline: answer CopyDone, then read the next-timeline result set.
                frontend::copy_done(&mut self.out);
                self.send()?;
                self.streaming = false;
                self.next_timeline().map(Some)
            }
            b'E' => match Self::parse(frame)? {
                backend::Message::ErrorResponse(body) => {
                    Err(ServerError::from_body(&body).into_stream_error())
                }
                _ => Err(PgError::Protocol("bad error response".into())),
            },
            b'C' => {
                // A server shutting down ends the stream with CommandComplete once its last WAL
                // was sent and confirmed flushed (no CopyDone): the stream is over, not broken.
                self.streaming = false;
                Err(PgError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server ended the stream (it is shutting down)",
                )))
            }
            b'N' | b'S' => Ok(None),
            other => Err(PgError::Protocol(format!(
                "unexpected message '{}' while streaming",
                other as char
            ))),
        }
    }

    /// The next-timeline result set after a timeline's end (until ReadyForQuery).
    fn next_timeline(&mut self) -> Result<ReplicationMessage> {
        let mut next_timeline = None;
        let mut next_start = None;
        loop {
            let f = self.read_frame_blocking()?;
            match f.tag {
                b'D' => {
                    if let backend::Message::DataRow(row) = Self::parse(f)? {
                        let mut ranges = row.ranges();
                        let mut vals = Vec::new();
                        while let Some(r) = ranges.next()? {
                            vals.push(
                                r.map(|r| String::from_utf8_lossy(&row.buffer()[r]).to_string()),
                            );
                        }
                        next_timeline =
                            vals.first().cloned().flatten().and_then(|s| s.parse().ok());
                        next_start = vals.get(1).cloned().flatten().and_then(|s| s.parse().ok());
                    }
                }
                b'E' => {
                    if let backend::Message::ErrorResponse(body) = Self::parse(f)? {
                        return Err(ServerError::from_body(&body).into_error());
                    }
                }
                b'Z' => break,
                _ => {}
            }
        }
        Ok(ReplicationMessage::EndOfTimeline {
            next_timeline,
            next_start,
        })
    }

    /// Sends a standby status update: `write`, `flush` and `apply` positions (PostgreSQL keeps
    /// WAL in the slot until `flush`). Nothing while the server is not streaming (it ended the
    /// timeline at once).
    pub fn send_status(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply: bool) -> Result<()> {
        if self.ended.is_some() {
            return Ok(());
        }
        let mut body = Vec::with_capacity(34);
        body.push(b'r');
        body.extend_from_slice(&write.0.to_be_bytes());
        body.extend_from_slice(&flush.0.to_be_bytes());
        body.extend_from_slice(&apply.0.to_be_bytes());
        body.extend_from_slice(&pg_now().to_be_bytes());
        body.push(reply as u8);
        frontend::CopyData::new(&body[..])?.write(&mut self.out);
        self.send()
    }

    /// Ends streaming from our side (CopyDone) and closes the connection.
    pub fn close(mut self) {
        if self.streaming && self.ended.is_none() {
            frontend::copy_done(&mut self.out);
        }
        frontend::terminate(&mut self.out);
        let _ = self.send();
        if let Socket::Tls(s) = &mut self.socket {
            s.conn.send_close_notify();
            let _ = s.flush();
        }
    }
}
