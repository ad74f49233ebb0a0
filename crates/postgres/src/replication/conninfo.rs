//! The connection string (libpq's `key=value` form) and the transport rules it decides: TLS
//! mode, certificate verification, channel binding, and when plaintext is allowed.

use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::error::{PgError, Result};
use crate::tls::{ChannelBindingMode, SslMode};

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
    pub(super) fn channel_binding_for(
        &self,
        tls: bool,
        verified: bool,
        local: bool,
    ) -> ChannelBindingMode {
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
        assert!(ConnConfig::parse("sslrootcert=system").is_err());
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
