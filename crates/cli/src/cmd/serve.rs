//! `embassy serve [--listen ADDR:PORT] [DATASET...]`: the versions of file and stream datasets,
//! read-only over HTTP(S), so a registry's published files (a State Gazette) stay readable at
//! the embassy when home is gone.
//!
//! Pages list the datasets, their versions and each version's tree (HTML, or JSON with
//! `?format=json`); files and streams are sent with byte ranges and content-hash ETags, and every
//! response names its version and ledger entry. Listing and reading go through
//! `embassy_ops::browse` (under a witness quorum, only witnessed versions), and each chunk is
//! checked before a byte of it is sent.
//!
//! Security: loopback unless `--token-file` (bearer token or HTTP Basic password) or a client
//! CA (`--client-ca`, TLS client certificates) guards it; GET and HEAD only; paths never leave
//! the version; file bodies are attachments under a sandboxing CSP, so a hostile file cannot run
//! script in the server's origin.

mod http;
mod pages;
mod route;
mod tls;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use embassy_agent::http::StatusToken;
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::{Error, Result};
use embassy_ops::browse::{self, Opened};

use crate::{open_vault, unlock, Cli};

/// Arguments of `embassy serve`.
#[derive(Args)]
#[command(after_help = "\
Pages: /  (datasets), /DATASET/  (versions), /DATASET/N/PATH  (a folder's entries or a file's \
bytes; N a version number or `latest`), add ?format=json for JSON, ?check on a file for how to \
check it against the signed history, ?view=text to show a file as plain text.

Examples:
  embassy serve gazette                                   # http://127.0.0.1:8470/ only
  embassy serve --listen 0.0.0.0:8443 --token-file /etc/embassy/serve.token \\
      --tls-cert cert.pem --tls-key key.pem gazette
  curl -H \"Authorization: Bearer $(cat serve.token)\" -r 0-99 https://embassy:8443/gazette/latest/index.xml")]
pub struct ServeArgs {
    /// The datasets to serve (file or stream datasets; default: every such dataset).
    pub datasets: Vec<String>,
    /// Where to listen. An address other than loopback needs --token-file or --client-ca.
    #[arg(long, default_value = "127.0.0.1:8470", value_name = "ADDR:PORT")]
    pub listen: String,
    /// A file whose first line is the token every request must carry (`Authorization: Bearer
    /// TOKEN`, or HTTP Basic with the token as password); at least 16 characters.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require a client certificate signed by this CA (PEM); needs --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
    /// At most this many requests answered at once (each holds one chunk in memory); more wait
    /// up to 30 s for a slot, then get 503. A request head must arrive within 5 s.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub max_connections: usize,
}

/// What the request handlers share.
pub(crate) struct Server {
    vault: Vault,
    keyring: Keyring,
    /// The datasets served, in name order.
    datasets: Vec<String>,
    token: Option<StatusToken>,
    /// Versions opened lately: (dataset, number) -> reader.
    opened: Mutex<HashMap<(String, u64), Arc<Opened>>>,
}

/// Versions kept open for the next request.
const OPENED_KEPT: usize = 16;

impl Server {
    /// The version `selector` of `dataset` (a number or `latest`), opened: under a witness
    /// quorum, only a witnessed one (the rule restores follow).
    pub(crate) fn open(&self, dataset: &str, selector: &str) -> Result<Arc<Opened>> {
        let version = self
            .vault
            .find_trusted_version(dataset, Some(selector), false)?;
        let key = (dataset.to_string(), version.number);
        if let Some(o) = lock(&self.opened).get(&key) {
            return Ok(o.clone());
        }
        let opened = Arc::new(browse::open_version(&self.vault, &self.keyring, version)?);
        let mut cache = lock(&self.opened);
        if cache.len() >= OPENED_KEPT {
            cache.clear();
        }
        cache.insert(key, opened.clone());
        Ok(opened)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `embassy serve` until Ctrl-C or SIGTERM.
pub fn run(cli: &Cli, args: &ServeArgs) -> Result<ExitCode> {
    let addr = listen_addr(&args.listen)?;
    let token = args
        .token_file
        .as_deref()
        .map(StatusToken::read)
        .transpose()
        .map_err(Error::Invalid)?;
    if !addr.ip().is_loopback() && token.is_none() && args.client_ca.is_none() {
        return Err(Error::Invalid(format!(
            "refusing to serve on {addr} without a credential: an address other than loopback \
             needs --token-file FILE (a bearer token, at least 16 characters) or --client-ca \
             CA.pem with --tls-cert and --tls-key (client certificates); or listen on \
             127.0.0.1"
        )));
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::config(cert, key, args.client_ca.as_deref())?),
        _ => None,
    };
    let vault = open_vault(cli)?;
    let datasets = served_datasets(&vault, &args.datasets)?;
    let keyring = unlock(cli, &vault)?;
    let listener =
        TcpListener::bind(addr).map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("reading the address listened on", e))?;
    let server = Arc::new(Server {
        vault,
        keyring,
        datasets,
        token,
        opened: Mutex::new(HashMap::new()),
    });
    eprintln!(
        "serving {} read-only on {}://{bound}/{}{}; Ctrl-C or SIGTERM stops",
        server.datasets.join(", "),
        if tls.is_some() { "https" } else { "http" },
        if server.token.is_some() {
            " (token required)"
        } else {
            ""
        },
        if args.client_ca.is_some() {
            " (client certificate required)"
        } else {
            ""
        },
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::io("listening for Ctrl-C and SIGTERM", e))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("setting the listener non-blocking", e))?;
    let limits = Arc::new(Limits {
        open: AtomicUsize::new(0),
        serving: AtomicUsize::new(0),
        max_serving: args.max_connections.max(1),
    });
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                eprintln!("warning: accepting a connection: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // The accept loop never waits for a slot: a connection over the limit is answered 503
        // (plain HTTP) or closed (TLS) at once, and slow clients cannot stop it accepting.
        if limits.open.load(Ordering::Acquire) >= limits.max_open() {
            refuse_busy(stream, tls.is_some());
            continue;
        }
        limits.open.fetch_add(1, Ordering::AcqRel);
        let (server, tls, limits) = (server.clone(), tls.clone(), limits.clone());
        let spawned = std::thread::Builder::new()
            .name("embassy-serve".into())
            .spawn(move || {
                connection(&server, stream, tls, &limits);
                limits.open.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            eprintln!("warning: cannot start a connection thread: {e}");
        }
    }
    eprintln!("stopped serving");
    Ok(ExitCode::SUCCESS)
}

/// The address to listen on.
fn listen_addr(listen: &str) -> Result<SocketAddr> {
    listen
        .to_socket_addrs()
        .map_err(|e| Error::Invalid(format!("--listen {listen}: {e} (write ADDR:PORT)")))?
        .next()
        .ok_or_else(|| Error::Invalid(format!("--listen {listen} names no address")))
}

/// The datasets named (each must exist), or every dataset of the vault.
fn served_datasets(vault: &Vault, named: &[String]) -> Result<Vec<String>> {
    if named.is_empty() {
        return vault.datasets();
    }
    for d in named {
        vault.require_dataset(d)?;
    }
    let mut out = named.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// A connection's byte stream, plain or TLS.
trait Conn: Read + Write + Send {
    /// Ends the stream cleanly (TLS: close_notify).
    fn finish(&mut self);
}

impl Conn for TcpStream {
    fn finish(&mut self) {
        let _ = self.flush();
    }
}

impl Conn for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn finish(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

/// The whole request head (with the TLS handshake) must arrive within this time: a client
/// trickling bytes cannot hold a connection longer.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// Connections reading their request head, besides those being answered: each costs a thread
/// and a few KiB, and lasts at most [`HEAD_DEADLINE`].
const HEADS_MAX: usize = 64;

/// How long a request whose head has arrived waits for one of the `--max-connections` slots
/// before it is answered 503.
const SLOT_WAIT: Duration = Duration::from_secs(30);

/// The connection counts: `open` connections (threads), of which `serving` are being answered.
struct Limits {
    open: AtomicUsize,
    serving: AtomicUsize,
    /// `--max-connections`: requests answered at once (each holds one chunk in memory).
    max_serving: usize,
}

impl Limits {
    /// Connections open at most: those answered, and as many again reading their head.
    fn max_open(&self) -> usize {
        self.max_serving.saturating_add(HEADS_MAX)
    }

    /// Takes a serving slot, waiting at most [`SLOT_WAIT`]; false when none came free.
    fn take_slot(&self) -> bool {
        let until = Instant::now() + SLOT_WAIT;
        loop {
            let now = self.serving.load(Ordering::Acquire);
            if now < self.max_serving
                && self
                    .serving
                    .compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Answers a connection over the limit: 503 on plain HTTP (one small write into a fresh
/// socket's buffer, which does not wait), a plain close on TLS.
fn refuse_busy(mut stream: TcpStream, tls: bool) {
    if !tls {
        let _ = stream.set_nonblocking(true);
        let _ = stream.write_all(route::BUSY);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// A connection's reader while its request head arrives: every read waits at most until the
/// head's deadline (the socket's timeout is set to what is left before each read).
struct HeadReader {
    conn: Box<dyn Conn>,
    tcp: TcpStream,
    until: Instant,
}

impl Read for HeadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request head did not arrive in time",
            ));
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.conn.read(buf)
    }
}

/// Serves one request on `stream`, then closes it.
fn connection(
    server: &Server,
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: &Limits,
) {
    let until = Instant::now() + HEAD_DEADLINE;
    let _ = stream.set_write_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_nodelay(true);
    // Without a second handle the head's deadline cannot be kept: close.
    let Ok(tcp) = stream.try_clone() else {
        return;
    };
    let conn: Box<dyn Conn> = match tls {
        None => Box::new(stream),
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(c) => Box::new(rustls::StreamOwned::new(c, stream)),
            Err(e) => {
                eprintln!("warning: TLS: {e}");
                return;
            }
        },
    };
    let mut reader = BufReader::new(HeadReader { conn, tcp, until });
    let request = match http::read_request(&mut reader) {
        Ok(Some(r)) => r,
        // Closed, timed out, or a TLS handshake that failed (no client certificate): nothing to say.
        Ok(None) | Err(_) => return,
    };
    let HeadReader { mut conn, tcp, .. } = reader.into_inner();
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    if !limits.take_slot() {
        let _ = conn.write_all(route::BUSY);
        conn.finish();
        return;
    }
    let outcome = route::answer(server, request, &mut conn);
    limits.serving.fetch_sub(1, Ordering::AcqRel);
    if outcome.is_ok() {
        conn.finish();
    }
    if outcome.is_err() {
        // The body could not be finished (a damaged chunk after the head went out): abort the
        // connection so the client sees a cut transfer, never a complete-looking wrong one.
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
}
