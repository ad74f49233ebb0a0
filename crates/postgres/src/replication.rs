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

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::{backend, frontend};
use zeroize::Zeroizing;

use crate::error::{PgError, Result};
use crate::lsn::Lsn;
use crate::tls::{ChannelBindingMode, SslMode, TlsInfo, TlsStream, Verification};

/// Where and as whom to connect, parsed from a libpq-style `key=value` connection string.
#[derive(Clone)]
pub struct ConnConfig {
    /// Host name, IP address, or a directory holding the Unix socket (starts with `/`).
    pub host: String,
    /// TCP port (also names the Unix socket file `.s.PGSQL.<port>`).
    pub port: u16,
    /// The role.
    pub user: String,
    /// Password, if any (also taken from `PGPASSWORD`).
    pub password: Option<Zeroizing<String>>,
    /// Database for ordinary (non-replication) connections.
    pub dbname: String,
    /// Shown in `pg_stat_replication`.
    pub application_name: String,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// `sslmode` (also `PGSSLMODE`); None: `prefer` on a Unix socket or loopback address,
    /// `verify-full` anywhere else.
    pub sslmode: Option<SslMode>,
    /// `sslrootcert` (also `PGSSLROOTCERT`): PEM file of the CA the server's certificate must
    /// chain to; None: `~/.postgresql/root.crt` if it exists.
    pub sslrootcert: Option<PathBuf>,
    /// `channel_binding` (also `PGCHANNELBINDING`); None: `require` when nothing else protects
    /// the link (TLS whose certificate is not verified, to a non-loopback address, without
    /// `insecure_plaintext=1`), `prefer` otherwise.
    pub channel_binding: Option<ChannelBindingMode>,
    /// `insecure_plaintext=1`: the operator accepts an unencrypted connection to a non-loopback
    /// address (for example inside an SSH or WireGuard tunnel). Not a libpq key.
    pub insecure_plaintext: bool,
}

impl std::fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dbname", &self.dbname)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("channel_binding", &self.channel_binding)
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish()
    }
}

impl ConnConfig {
    /// Parses `host=... port=... user=... password=... dbname=... application_name=...
    /// sslmode=... sslrootcert=... channel_binding=... insecure_plaintext=...` (values may be
    /// single-quoted with `\'` and `\\` escapes). Missing values default like libpq:
    /// `PGHOST`/`PGPORT`/`PGUSER`/`PGPASSWORD`/`PGSSLMODE`/`PGSSLROOTCERT`/`PGCHANNELBINDING`,
    /// then `/var/run/postgresql`, 5432, `postgres`; the sslmode default is described on
    /// [`ConnConfig::sslmode`].
    pub fn parse(conninfo: &str) -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut cfg = ConnConfig {
            host: env("PGHOST").unwrap_or_else(|| "/var/run/postgresql".into()),
            port: 5432,
            user: env("PGUSER").unwrap_or_else(|| "postgres".into()),
            password: env("PGPASSWORD").map(Zeroizing::new),
            dbname: env("PGDATABASE").unwrap_or_else(|| "postgres".into()),
            application_name: "embassy".into(),
            connect_timeout: Duration::from_secs(10),
            sslmode: env("PGSSLMODE").map(|m| SslMode::parse(&m)).transpose()?,
            sslrootcert: env("PGSSLROOTCERT").map(PathBuf::from),
            channel_binding: env("PGCHANNELBINDING")
                .map(|m| ChannelBindingMode::parse(&m))
                .transpose()?,
            insecure_plaintext: false,
        };
        if let Some(p) = env("PGPORT") {
            cfg.port = p
                .parse()
                .map_err(|_| PgError::Conninfo(format!("PGPORT={p} is not a port number")))?;
        }
        let mut chars = conninfo.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    break;
                }
                key.push(c);
                chars.next();
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.next() != Some('=') {
                return Err(PgError::Conninfo(format!(
                    "expected key=value, found '{key}' without '=' (write for example host=127.0.0.1 port=5432 user=embassy)"
                )));
            }
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut value = Zeroizing::new(String::new());
            if chars.peek() == Some(&'\'') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n)
                            }
                        }
                        '\'' => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(PgError::Conninfo(format!(
                        "unterminated quoted value for {key}"
                    )));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            match key.as_str() {
                "host" | "hostaddr" => cfg.host = value.to_string(),
                "port" => {
                    cfg.port = value.parse().map_err(|_| {
                        PgError::Conninfo(format!("port={} is not a port number", *value))
                    })?
                }
                "user" => cfg.user = value.to_string(),
                "password" => cfg.password = Some(value),
                "dbname" => cfg.dbname = value.to_string(),
                "application_name" => cfg.application_name = value.to_string(),
                "connect_timeout" => {
                    let s: u64 = value.parse().map_err(|_| {
                        PgError::Conninfo(format!("connect_timeout={} is not seconds", *value))
                    })?;
                    cfg.connect_timeout = Duration::from_secs(s.max(1));
                }
                "sslmode" => cfg.sslmode = Some(SslMode::parse(&value)?),
                "sslrootcert" if value.as_str() == "system" => {
                    return Err(PgError::Conninfo(
                        "sslrootcert=system is not supported (PostgreSQL 15's pg_basebackup \
                         does not know it): give the PEM file of the CA that signed the \
                         server's certificate"
                            .into(),
                    ))
                }
                "sslrootcert" => cfg.sslrootcert = Some(PathBuf::from(value.as_str())),
                "channel_binding" => cfg.channel_binding = Some(ChannelBindingMode::parse(&value)?),
                "insecure_plaintext" => {
                    cfg.insecure_plaintext = match value.as_str() {
                        "1" | "true" | "yes" | "on" => true,
                        "0" | "false" | "no" | "off" => false,
                        other => {
                            return Err(PgError::Conninfo(format!(
                                "insecure_plaintext={other}: use 1 (accept an unencrypted \
                                 connection off loopback) or 0"
                            )))
                        }
                    }
                }
                "replication" => {}
                other => {
                    return Err(PgError::Conninfo(format!(
                        "unknown key '{other}' (known: host, port, user, password, dbname, \
                         application_name, connect_timeout, sslmode, sslrootcert, \
                         channel_binding, insecure_plaintext)"
                    )))
                }
            }
        }
        Ok(cfg)
    }

    /// True for a Unix socket, a loopback address, or a host name whose every address is
    /// loopback (traffic that never leaves this machine).
    pub fn is_local(&self) -> bool {
        if self.host.starts_with('/') {
            return true;
        }
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return ip.is_loopback();
        }
        use std::net::ToSocketAddrs;
        match (self.host.as_str(), self.port).to_socket_addrs() {
            Ok(addrs) => {
                let addrs: Vec<_> = addrs.collect();
                !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
            }
            Err(_) => false,
        }
    }

    /// The sslmode in force: the one given, else `prefer` for [local](Self::is_local)
    /// connections and `verify-full` for the rest.
    pub fn effective_sslmode(&self) -> SslMode {
        self.sslmode.unwrap_or(if self.is_local() {
            SslMode::Prefer
        } else {
            SslMode::VerifyFull
        })
    }

    /// The root certificate file in force: `sslrootcert`, else `~/.postgresql/root.crt`.
    pub fn root_cert(&self) -> Option<PathBuf> {
        self.sslrootcert
            .clone()
            .or_else(crate::tls::default_root_cert)
    }

    /// Refuses, before anything is sent, a mode that could carry the password and the WAL in
    /// clear to a non-loopback address without the operator's `insecure_plaintext=1`. `local`
    /// says whether the peer is this machine.
    pub fn check_transport(&self, local: bool) -> Result<()> {
        let mode = self.effective_sslmode();
        if mode.requires_tls() || local || self.insecure_plaintext {
            return Ok(());
        }
        Err(PgError::Insecure {
            addr: self.address(),
            message: format!(
                "sslmode={} could send the replication password and the WAL in clear over the \
                 network, where anyone on the path can read and rewrite them: use \
                 sslmode=verify-full sslrootcert=/path/to/ca.pem (set ssl = on on the server), \
                 or, only inside a tunnel you trust, add insecure_plaintext=1",
                mode.as_str()
            ),
        })
    }

    /// The connection string for libpq programs (`pg_basebackup`): the same server, role and
    /// TLS settings in force, and never the password (give it in the child's environment).
    pub fn libpq_conninfo(&self) -> String {
        let quote = |v: &str| {
            let mut q = String::from("'");
            for c in v.chars() {
                if c == '\\' || c == '\'' {
                    q.push('\\');
                }
                q.push(c);
            }
            q.push('\'');
            q
        };
        let mut parts = vec![
            format!("host={}", quote(&self.host)),
            format!("port={}", self.port),
            format!("user={}", quote(&self.user)),
            format!("dbname={}", quote(&self.dbname)),
            format!("application_name={}", quote(&self.application_name)),
            format!("connect_timeout={}", self.connect_timeout.as_secs().max(1)),
            format!("sslmode={}", self.effective_sslmode().as_str()),
        ];
        if let Some(root) = self.root_cert() {
            parts.push(format!("sslrootcert={}", quote(&root.to_string_lossy())));
        }
        parts.push(format!(
            "channel_binding={}",
            self.channel_binding_for(
                self.effective_sslmode().requires_tls(),
                self.root_cert().is_some(),
                self.is_local()
            )
            .as_str()
        ));
        parts.join(" ")
    }

    /// Gives the password to a libpq child (`pg_basebackup`, `psql`) run with
    /// [`libpq_conninfo`](Self::libpq_conninfo): in that child's environment only
    /// (`PGPASSWORD`), never in its argv where every local user can read it.
    pub fn pass_password_to(&self, cmd: &mut std::process::Command) {
        cmd.env_remove("PGPASSWORD");
        if let Some(pw) = &self.password {
            cmd.env("PGPASSWORD", pw.as_str());
        }
    }

    /// The channel binding mode in force for a connection that is (or is not) TLS, whose
    /// certificate is (or is not) verified, to this machine (or not).
    fn channel_binding_for(&self, tls: bool, verified: bool, local: bool) -> ChannelBindingMode {
        self.channel_binding
            .unwrap_or(if tls && !verified && !local && !self.insecure_plaintext {
                ChannelBindingMode::Require
            } else {
                ChannelBindingMode::Prefer
            })
    }

    /// host:port or the socket path, for messages.
    pub fn address(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

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

/// A replication-mode connection to PostgreSQL.
pub struct ReplicationConnection {
    socket: Socket,
    buf: BytesMut,
    out: BytesMut,
    cfg: ConnConfig,
    streaming: bool,
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

    /// Reads one frame, waiting as long as needed (up to the 60 s socket timeout).
    fn read_frame_blocking(&mut self) -> Result<Frame> {
        self.read_frame()?
            .ok_or_else(|| PgError::Protocol("the server did not answer within 60 seconds".into()))
    }

    fn parse(frame: Frame) -> Result<backend::Message> {
        let mut bytes = frame.bytes;
        backend::Message::parse(&mut bytes)?
            .ok_or_else(|| PgError::Protocol("truncated message".into()))
    }

    fn authenticate(&mut self, replication: bool) -> Result<()> {
        let user = self.cfg.user.clone();
        let map_err = |e: ServerError| -> PgError {
            let m = e.message.clone();
            match e.code.as_str() {
                "28P01" => PgError::Auth {
                    user: user.clone(),
                    message: m,
                },
                "28000" if m.contains("pg_hba.conf") => PgError::NotAllowedByHba {
                    user: user.clone(),
                    message: m,
                },
                "28000" if m.contains("does not exist") => PgError::Auth {
                    user: user.clone(),
                    message: m,
                },
                "42501" => PgError::NoReplicationPrivilege {
                    user: user.clone(),
                    message: m,
                },
                "53300" if m.contains("max_wal_senders") || replication => {
                    PgError::NoWalSenders { message: m }
                }
                _ => e.into_error(),
            }
        };
        let verified = self
            .tls
            .as_ref()
            .is_some_and(|t| t.verified != Verification::None);
        let binding = self
            .cfg
            .channel_binding_for(self.tls.is_some(), verified, self.local);
        let addr = self.cfg.address();
        let insecure = |message: String| PgError::Insecure {
            addr: addr.clone(),
            message,
        };
        let require_binding = |what: &str| {
            insecure(format!(
                "the server {what}, but channel_binding=require accepts only SCRAM-SHA-256-PLUS \
                 (with sslmode=require and no sslrootcert, channel binding is the only proof that \
                 no one sits in the middle): give sslrootcert=CA.pem with sslmode=verify-full, or \
                 use scram-sha-256 in pg_hba.conf and ssl = on"
            ))
        };
        let mut scram: Option<ScramSha256> = None;
        let mut mechanism = "trust";
        let mut scram_verified = false;
        loop {
            let frame = self.read_frame_blocking()?;
            if frame.tag == b'E' {
                if let backend::Message::ErrorResponse(body) = Self::parse(frame)? {
                    return Err(map_err(ServerError::from_body(&body)));
                }
                return Err(PgError::Protocol("bad error response".into()));
            }
            match Self::parse(frame)? {
                backend::Message::AuthenticationOk => {
                    if scram.is_some() && !scram_verified {
                        return Err(PgError::Protocol(
                            "the server said the password was right without proving that it \
                             knows it (SCRAM's final message was skipped): is this the real \
                             server?"
                                .into(),
                        ));
                    }
                    if binding == ChannelBindingMode::Require
                        && mechanism != SCRAM_SHA_256_PLUS
                    {
                        return Err(require_binding(&format!(
                            "accepted the connection with {mechanism} authentication"
                        )));
                    }
                    self.authentication = mechanism;
                }
                backend::Message::AuthenticationCleartextPassword => {
                    if binding == ChannelBindingMode::Require {
                        return Err(require_binding("asks for the password in clear"));
                    }
                    if !(self.local || verified) {
                        return Err(insecure(format!(
                            "the server asks for the password in clear over {}, where it could \
                             be read on the way: use scram-sha-256 in pg_hba.conf, or connect \
                             with sslmode=verify-full sslrootcert=CA.pem",
                            if self.tls.is_some() {
                                "a TLS connection whose certificate is not verified"
                            } else {
                                "an unencrypted network connection"
                            }
                        )));
                    }
                    mechanism = "password";
                    let pw = self.password()?;
                    frontend::password_message(pw.as_bytes(), &mut self.out)?;
                    self.send()?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    if binding == ChannelBindingMode::Require {
                        return Err(require_binding("asks for an md5 password"));
                    }
                    mechanism = "md5";
                    let pw = self.password()?;
                    let hashed = Zeroizing::new(postgres_protocol::authentication::md5_hash(
                        self.cfg.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    ));
                    frontend::password_message(hashed.as_bytes(), &mut self.out)?;
                    self.send()?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let (mut plain, mut plus) = (false, false);
                    while let Ok(Some(m)) = mechs.next() {
                        plain |= m == SCRAM_SHA_256;
                        plus |= m == SCRAM_SHA_256_PLUS;
                    }
                    // The tls-server-end-point binding: the hash of the certificate that spoke.
                    let end_point = match &self.socket {
                        Socket::Tls(s) if plus && binding != ChannelBindingMode::Disable => s
                            .conn
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::tls::server_end_point(c)),
                        _ => None,
                    };
                    let (name, channel) = match end_point {
                        Some(hash) => (
                            SCRAM_SHA_256_PLUS,
                            ChannelBinding::tls_server_end_point(hash),
                        ),
                        None if binding == ChannelBindingMode::Require => {
                            return Err(require_binding(if plus {
                                "offers SCRAM-SHA-256-PLUS with a certificate whose signature \
                                 names no hash to bind to (Ed25519/Ed448)"
                            } else {
                                "does not offer SCRAM-SHA-256-PLUS"
                            }))
                        }
                        // TLS and no PLUS offered: "y" tells a server that does support
                        // channel binding that someone removed it from the list.
                        None if plain
                            && self.tls.is_some()
                            && !plus
                            && binding != ChannelBindingMode::Disable =>
                        {
                            (SCRAM_SHA_256, ChannelBinding::unrequested())
                        }
                        None if plain => (SCRAM_SHA_256, ChannelBinding::unsupported()),
                        None => {
                            return Err(PgError::Protocol(
                                "the server offers no SASL mechanism this client knows \
                                 (SCRAM-SHA-256, SCRAM-SHA-256-PLUS over TLS)"
                                    .into(),
                            ))
                        }
                    };
                    mechanism = name;
                    let pw = self.password()?;
                    let s = ScramSha256::new(pw.as_bytes(), channel);
                    frontend::sasl_initial_response(name, s.message(), &mut self.out)?;
                    self.send()?;
                    scram = Some(s);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::Protocol("SASL continue before start".into()))?;
                    s.update(body.data()).map_err(|e| PgError::Protocol(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.out)?;
                    self.send()?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| PgError::Protocol("SASL final before start".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        PgError::Protocol(format!(
                            "SCRAM: the server's proof does not verify ({e}): is this the real server?"
                        ))
                    })?;
                    scram_verified = true;
                }
                backend::Message::ParameterStatus(body) => {
                    if let (Ok(n), Ok(v)) = (body.name(), body.value()) {
                        self.parameters.push((n.to_string(), v.to_string()));
                    }
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                _ => {
                    return Err(PgError::Protocol(
                        "unsupported authentication request (only SCRAM-SHA-256, md5, password and trust are supported)".into(),
                    ))
                }
            }
        }
    }

    fn password(&self) -> Result<Zeroizing<String>> {
        self.cfg.password.clone().ok_or_else(|| PgError::Auth {
            user: self.cfg.user.clone(),
            message: "the server asks for a password and none was given".into(),
        })
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
                                    vals.push(r.map(|r| {
                                        String::from_utf8_lossy(&row.buffer()[r]).to_string()
                                    }));
                                }
                                next_timeline =
                                    vals.first().cloned().flatten().and_then(|s| s.parse().ok());
                                next_start =
                                    vals.get(1).cloned().flatten().and_then(|s| s.parse().ok());
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
                Ok(Some(ReplicationMessage::EndOfTimeline {
                    next_timeline,
                    next_start,
                }))
            }
            b'E' => match Self::parse(frame)? {
                backend::Message::ErrorResponse(body) => {
                    Err(ServerError::from_body(&body).into_stream_error())
                }
                _ => Err(PgError::Protocol("bad error response".into())),
            },
            b'N' | b'S' => Ok(None),
            other => Err(PgError::Protocol(format!(
                "unexpected message '{}' while streaming",
                other as char
            ))),
        }
    }

    /// Sends a standby status update: `write`, `flush` and `apply` positions (PostgreSQL keeps
    /// WAL in the slot until `flush`).
    pub fn send_status(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply: bool) -> Result<()> {
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
        if self.streaming {
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

fn parse_copy_data(mut body: Bytes) -> Result<ReplicationMessage> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_parses_and_refuses_nonsense() {
        let c =
            ConnConfig::parse("host=127.0.0.1 port=5433 user=embassy password='a b\\'c'").unwrap();
        assert_eq!(c.port, 5433);
        assert_eq!(c.password.as_deref().map(|s| s.as_str()), Some("a b'c"));
        assert!(!format!("{c:?}").contains("a b"));
        assert!(ConnConfig::parse("host").is_err());
        assert!(ConnConfig::parse("port=x").is_err());
        assert!(ConnConfig::parse("sslmode=bogus").is_err());
        assert!(ConnConfig::parse("channel_binding=maybe").is_err());
        assert!(ConnConfig::parse("insecure_plaintext=perhaps").is_err());
        assert!(check_slot_name("bad-name").is_err());
        assert!(ConnConfig::parse("sslrootcert=system").is_err());
        assert!(check_slot_name("embassy_1").is_ok());
    }

    #[test]
    fn plaintext_needs_loopback_or_the_opt_in_and_tls_settings_reach_libpq() {
        let parse = |s: &str| ConnConfig::parse(s).unwrap();
        // Safe defaults: prefer on this machine, verify-full elsewhere.
        assert_eq!(parse("host=127.0.0.1").effective_sslmode(), SslMode::Prefer);
        assert_eq!(
            parse("host=/run/postgresql").effective_sslmode(),
            SslMode::Prefer
        );
        let remote = parse("host=192.0.2.77");
        assert_eq!(remote.effective_sslmode(), SslMode::VerifyFull);
        assert!(remote.check_transport(false).is_ok());
        for mode in ["disable", "allow", "prefer"] {
            let c = parse(&format!("host=192.0.2.77 sslmode={mode}"));
            assert!(matches!(
                c.check_transport(false),
                Err(PgError::Insecure { .. })
            ));
            assert!(c.check_transport(true).is_ok());
        }
        assert!(
            parse("host=192.0.2.77 sslmode=disable insecure_plaintext=1")
                .check_transport(false)
                .is_ok()
        );
        // pg_basebackup's connection string: the settings in force, never the password.
        let c = parse("host=192.0.2.77 user='o\\'k' password=hunter2 sslmode=require");
        let libpq = c.libpq_conninfo();
        assert!(libpq.contains("user='o\\'k'"), "{libpq}");
        assert!(libpq.contains("sslmode=require"), "{libpq}");
        assert!(libpq.contains("channel_binding=require"), "{libpq}");
        assert!(
            !libpq.contains("hunter2") && !libpq.contains("password"),
            "{libpq}"
        );
        let again = ConnConfig::parse(&libpq).unwrap();
        assert_eq!(again.user, "o'k");
        let full = parse("host=db1 sslmode=verify-full sslrootcert=/etc/ca.pem").libpq_conninfo();
        assert!(full.contains("sslrootcert='/etc/ca.pem'"), "{full}");
        assert!(full.contains("channel_binding=prefer"), "{full}");
    }
}
