//! Test support: a real S3 server (moto's standalone server, started as a child process on
//! loopback) and a fault-injecting TCP proxy. No in-memory fake: every S3 request goes over
//! HTTP to the server process.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use embassy_sites::s3::{S3Config, S3Credentials};
use embassy_sites::S3Site;

const INSTALL_HINT: &str = "run scripts/install-test-deps (it installs moto[server] 5.x from \
                            PyPI), or set MOTO_SERVER to the moto_server program";

/// A moto S3 server on 127.0.0.1. Killed when dropped, and also when the test process dies
/// (a shell watchdog kills it when our end of its stdin pipe closes).
pub struct MotoServer {
    child: Child,
    stdin: Option<ChildStdin>,
    pub endpoint: String,
    pub port: u16,
    log: PathBuf,
}

/// The command that runs moto's server: `$MOTO_SERVER`, else `moto_server` on PATH, else
/// `python3 -m moto.server` when python3 has moto.
fn find_moto() -> Vec<OsString> {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return vec![p];
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("moto_server");
        if candidate.is_file() {
            return vec![candidate.into_os_string()];
        }
    }
    let has_module = Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_module {
        return vec!["python3".into(), "-m".into(), "moto.server".into()];
    }
    panic!(
        "moto's S3 server was not found (no moto_server on PATH, no moto module for python3): \
         the S3 tests need a real S3 server; {INSTALL_HINT}"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl MotoServer {
    pub fn start() -> MotoServer {
        Self::start_on(free_port())
    }

    /// The moto process itself (the watchdog shell's child), to send it signals.
    pub fn server_pid(&self) -> i32 {
        let shell = self.child.id().to_string();
        for entry in std::fs::read_dir("/proc").expect("/proc") {
            let Ok(entry) = entry else { continue };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid == Some(shell.as_str()) {
                if let Ok(pid) = entry.file_name().to_string_lossy().parse() {
                    return pid;
                }
            }
        }
        panic!("moto's server process (a child of {shell}) was not found");
    }

    /// Sends `signal` to the moto process (SIGSTOP, SIGCONT, SIGKILL).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we started and a valid signal number.
        let r = unsafe { libc::kill(self.server_pid(), signal) };
        assert_eq!(r, 0, "kill({signal}) of moto failed");
    }

    /// Starts moto on `port` (e.g. again after it was killed: it comes back empty).
    pub fn start_on(port: u16) -> MotoServer {
        let command = find_moto();
        let shown = command
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let log =
            std::env::temp_dir().join(format!("embassy-moto-{}-{port}.log", std::process::id()));
        // The shell keeps moto in the background and kills it once its stdin (our pipe) closes:
        // when this value is dropped, or when the test process dies.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                r#"port=$1; log=$2; shift 2; "$@" -H 127.0.0.1 -p "$port" >"$log" 2>&1 & m=$!; read _; kill $m 2>/dev/null; wait $m; rm -f "$log""#,
            )
            .arg("sh")
            .arg(port.to_string())
            .arg(&log)
            .args(&command)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {shown}: {e}; {INSTALL_HINT}"));
        let stdin = child.stdin.take();
        let server = MotoServer {
            child,
            stdin,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if server.answers() {
                return server;
            }
            let log_text = std::fs::read_to_string(&server.log).unwrap_or_default();
            let exited = log_text.contains("Traceback")
                || log_text.contains("not found")
                || log_text.contains("No module named");
            if exited || Instant::now() > deadline {
                panic!(
                    "moto's server ({shown}) did not start on port {port}; {INSTALL_HINT}. Its \
                     output:\n{}",
                    log_text
                        .chars()
                        .rev()
                        .take(3000)
                        .collect::<String>()
                        .chars()
                        .rev()
                        .collect::<String>()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).contains(" 200 ")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        drop(self.stdin.take()); // the watchdog kills moto and exits
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One moto server shared by the tests of a test binary; each test uses its own bucket.
pub fn moto() -> &'static MotoServer {
    static SERVER: OnceLock<MotoServer> = OnceLock::new();
    SERVER.get_or_init(MotoServer::start)
}

pub fn unique_bucket(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "t-{tag}-{}-{:08x}",
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

/// The kind of S3 server the S3 tests run against, for the few checks whose expected answer
/// depends on it (conditional writes, Object Lock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// moto's standalone server, started by the tests (the default).
    Moto,
    /// A Garage cluster (`scripts/garage-cluster`): ignores If-None-Match, has no Object Lock.
    Garage,
    /// Another S3-compatible server: only the trait's contract is checked.
    Other,
}

/// The S3 server the S3 conformance and multi-site tests use: moto, started here on loopback,
/// unless `EMBASSY_TEST_S3_ENDPOINT` names another one (with `EMBASSY_TEST_S3_ACCESS_KEY_ID`,
/// `EMBASSY_TEST_S3_SECRET_ACCESS_KEY`, `EMBASSY_TEST_S3_REGION` and `EMBASSY_TEST_S3_KIND`
/// `garage`|`other`; `eval "$(scripts/garage-cluster env)"` sets them). The credentials must
/// be allowed to create buckets: every test makes its own.
#[derive(Debug, Clone)]
pub struct S3Target {
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub kind: ServerKind,
    /// Every node's endpoint, for tests that stop one node (`EMBASSY_TEST_S3_ENDPOINTS`).
    pub endpoints: Vec<String>,
}

pub fn s3_target() -> &'static S3Target {
    static TARGET: OnceLock<S3Target> = OnceLock::new();
    TARGET.get_or_init(|| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match var("EMBASSY_TEST_S3_ENDPOINT") {
            None => {
                let server = moto();
                S3Target {
                    endpoint: server.endpoint.clone(),
                    region: "us-east-1".into(),
                    access_key_id: "testing".into(),
                    secret_access_key: "testing".into(),
                    kind: ServerKind::Moto,
                    endpoints: vec![server.endpoint.clone()],
                }
            }
            Some(endpoint) => {
                let need = |k: &str| {
                    var(k).unwrap_or_else(|| {
                        panic!(
                            "EMBASSY_TEST_S3_ENDPOINT is set ({endpoint}) but {k} is not: set it \
                             (eval \"$(scripts/garage-cluster env)\" sets all), or unset \
                             EMBASSY_TEST_S3_ENDPOINT to test against moto"
                        )
                    })
                };
                let kind = match var("EMBASSY_TEST_S3_KIND").as_deref() {
                    Some("garage") => ServerKind::Garage,
                    Some("moto") => ServerKind::Moto,
                    Some("other") | None => ServerKind::Other,
                    Some(k) => panic!("EMBASSY_TEST_S3_KIND={k}: use garage, moto or other"),
                };
                let endpoints = var("EMBASSY_TEST_S3_ENDPOINTS")
                    .map(|e| e.split(',').map(str::to_string).collect())
                    .unwrap_or_else(|| vec![endpoint.clone()]);
                S3Target {
                    region: var("EMBASSY_TEST_S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                    access_key_id: need("EMBASSY_TEST_S3_ACCESS_KEY_ID"),
                    secret_access_key: need("EMBASSY_TEST_S3_SECRET_ACCESS_KEY"),
                    endpoint,
                    kind,
                    endpoints,
                }
            }
        }
    })
}

/// Test settings on the tests' S3 server ([`s3_target`]).
pub fn target_config(bucket: &str, prefix: &str) -> S3Config {
    let t = s3_target();
    let mut cfg = s3_config(&t.endpoint, bucket, prefix);
    cfg.region = t.region.clone();
    cfg.credentials = S3Credentials {
        access_key_id: t.access_key_id.clone(),
        secret_access_key: t.secret_access_key.clone(),
        session_token: None,
    };
    cfg
}

/// Test settings for moto: small parts so that multi-MiB objects go multipart.
pub fn s3_config(endpoint: &str, bucket: &str, prefix: &str) -> S3Config {
    let mut cfg = S3Config::new(
        bucket,
        prefix,
        endpoint,
        S3Credentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
            session_token: None,
        },
    );
    cfg.part_size = 5 * 1024 * 1024;
    cfg.multipart_threshold = 8 * 1024 * 1024;
    cfg.parallelism = 4;
    cfg.io_timeout = Duration::from_secs(30);
    cfg
}

/// A fresh bucket on the tests' S3 server ([`s3_target`]) and a site on it.
pub fn s3_site(tag: &str, prefix: &str, object_lock: bool) -> S3Site {
    let bucket = unique_bucket(tag);
    let site = S3Site::new(target_config(&bucket, prefix)).unwrap();
    assert!(site.create_bucket(object_lock).expect("create bucket"));
    site
}

/// A fresh bucket on the shared moto server and a site on it (tests that need moto itself: the
/// fault proxy, signature checks).
pub fn moto_site(tag: &str, prefix: &str, object_lock: bool) -> S3Site {
    let server = moto();
    let bucket = unique_bucket(tag);
    let site = S3Site::new(s3_config(&server.endpoint, &bucket, prefix)).unwrap();
    assert!(site.create_bucket(object_lock).expect("create bucket"));
    site
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

// -------------------------------------------------------------------------------------------
// Fault-injecting proxy.

/// What the proxy does to one connection (one request: it forces `Connection: close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward untouched.
    Pass,
    /// Wait, then forward.
    Latency(Duration),
    /// Answer `500 InternalError` without forwarding.
    Http500,
    /// Answer `503 SlowDown` without forwarding.
    Http503,
    /// Answer `403 AccessDenied` without forwarding (a permanent failure).
    Http403,
    /// Reset the connection after reading the request head (the server never sees it).
    ResetBeforeForward,
    /// Forward the whole request, wait for the server's answer, then reset the connection
    /// without answering (the server acted; the client cannot know).
    ResetAfterForward,
    /// Forward, then pass on only half of the answer and close.
    TruncateResponse,
    /// Hold the connection without answering for this long, then close.
    Stall(Duration),
}

/// Random fault rates (fractions of requests).
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultRates {
    pub latency: f64,
    pub http_500: f64,
    pub http_503: f64,
    pub reset_before: f64,
    pub reset_after: f64,
    pub truncate: f64,
    pub stall: f64,
    pub stall_for: Duration,
}

#[derive(Debug, Default)]
pub struct FaultStats {
    pub connections: AtomicU64,
    pub passed: AtomicU64,
    pub latency: AtomicU64,
    pub http_5xx: AtomicU64,
    pub http_403: AtomicU64,
    pub reset_before: AtomicU64,
    pub reset_after: AtomicU64,
    pub truncated: AtomicU64,
    pub stalled: AtomicU64,
}

impl FaultStats {
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "{} requests: {} passed, {} delayed, {} answered 5xx, {} answered 403, {} reset before \
             forwarding, {} reset after the server acted, {} answers cut short, {} stalled",
            g(&self.connections),
            g(&self.passed),
            g(&self.latency),
            g(&self.http_5xx),
            g(&self.http_403),
            g(&self.reset_before),
            g(&self.reset_after),
            g(&self.truncated),
            g(&self.stalled)
        )
    }
}

/// A scripted fault: applied to the next `times` requests whose request line contains `needle`.
struct Scripted {
    needle: String,
    fault: Fault,
    times: u32,
}

pub struct FaultProxy {
    pub endpoint: String,
    port: u16,
    stop: Arc<AtomicBool>,
    pub stats: Arc<FaultStats>,
    rates: Arc<Mutex<FaultRates>>,
    script: Arc<Mutex<Vec<Scripted>>>,
    strip_if_none_match: Arc<AtomicBool>,
    reject_if_none_match: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream_port: u16, rates: FaultRates) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(FaultStats::default());
        let rates = Arc::new(Mutex::new(rates));
        let script: Arc<Mutex<Vec<Scripted>>> = Arc::new(Mutex::new(Vec::new()));
        let strip_if_none_match = Arc::new(AtomicBool::new(false));
        let reject_if_none_match = Arc::new(AtomicBool::new(false));
        let accept = {
            let (stop, stats, rates, script, strip, reject) = (
                stop.clone(),
                stats.clone(),
                rates.clone(),
                script.clone(),
                strip_if_none_match.clone(),
                reject_if_none_match.clone(),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(client) = conn else { continue };
                    let (stats, rates, script) = (stats.clone(), rates.clone(), script.clone());
                    let strip = strip.load(Ordering::Relaxed);
                    let reject = reject.load(Ordering::Relaxed);
                    std::thread::spawn(move || {
                        let _ = handle(
                            client,
                            upstream_port,
                            &stats,
                            &rates,
                            &script,
                            strip,
                            reject,
                        );
                    });
                }
            })
        };
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            stop,
            stats,
            rates,
            script,
            strip_if_none_match,
            reject_if_none_match,
            accept: Some(accept),
        }
    }

    /// Drops `If-None-Match` from every request from now on: the server then behaves like one
    /// that ignores conditional writes.
    pub fn strip_if_none_match(&self, on: bool) {
        self.strip_if_none_match.store(on, Ordering::Relaxed);
    }

    /// Answers `501 NotImplemented` to every request carrying `If-None-Match`, like a server that
    /// refuses the header outright.
    pub fn reject_if_none_match(&self, on: bool) {
        self.reject_if_none_match.store(on, Ordering::Relaxed);
    }

    pub fn set_rates(&self, rates: FaultRates) {
        *self.rates.lock().unwrap() = rates;
    }

    /// Applies `fault` to the next `times` requests whose request line contains `needle`.
    pub fn script(&self, needle: &str, fault: Fault, times: u32) {
        self.script.lock().unwrap().push(Scripted {
            needle: needle.to_string(),
            fault,
            times,
        });
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn choose(rates: &FaultRates) -> Fault {
    let r: f64 = rand::random();
    let mut acc = 0.0;
    let table = [
        (rates.http_500, Fault::Http500),
        (rates.http_503, Fault::Http503),
        (rates.reset_before, Fault::ResetBeforeForward),
        (rates.reset_after, Fault::ResetAfterForward),
        (rates.truncate, Fault::TruncateResponse),
        (rates.stall, Fault::Stall(rates.stall_for)),
        (
            rates.latency,
            Fault::Latency(Duration::from_millis(20 + rand::random::<u64>() % 180)),
        ),
    ];
    for (p, fault) in table {
        acc += p;
        if r < acc {
            return fault;
        }
    }
    Fault::Pass
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request head (and whatever body bytes came with it).
fn read_head(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 256 * 1024 {
            return Err(std::io::Error::other("request head too long"));
        }
        let n = client.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("client closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn content_length(head: &str) -> u64 {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads the rest of the request body, so that closing afterwards is a clean close, not a reset.
fn drain_body(client: &mut TcpStream, already: usize, total: u64) -> std::io::Result<()> {
    let mut left = total.saturating_sub(already as u64);
    let mut chunk = [0u8; 64 * 1024];
    while left > 0 {
        let n = client.read(&mut chunk[..(left.min(64 * 1024)) as usize])?;
        if n == 0 {
            break;
        }
        left -= n as u64;
    }
    Ok(())
}

fn answer(client: &mut TcpStream, status: &str, code: &str) -> std::io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>"
    );
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    client.flush()
}

/// Forces `Connection: close` so that each connection carries exactly one request; optionally
/// drops `If-None-Match` (to play a server that ignores conditional writes, like Garage).
fn rewrite_head(head: &str, strip_if_none_match: bool) -> String {
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let name = line
            .split_once(':')
            .map(|(k, _)| k.trim().to_ascii_lowercase());
        if name.as_deref() == Some("connection")
            || (strip_if_none_match && name.as_deref() == Some("if-none-match"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

/// Forwards the request; returns the whole answer.
fn forward(
    client: &mut TcpStream,
    upstream_port: u16,
    head: &str,
    early_body: &[u8],
    strip: bool,
) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream_port))?;
    up.write_all(rewrite_head(head, strip).as_bytes())?;
    up.write_all(early_body)?;
    let mut left = content_length(head).saturating_sub(early_body.len() as u64);
    let mut chunk = vec![0u8; 256 * 1024];
    while left > 0 {
        let n = client.read(&mut chunk[..(left.min(256 * 1024)) as usize])?;
        if n == 0 {
            return Err(std::io::Error::other("client closed mid-body"));
        }
        up.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    Ok(response)
}

fn handle(
    mut client: TcpStream,
    upstream_port: u16,
    stats: &FaultStats,
    rates: &Mutex<FaultRates>,
    script: &Mutex<Vec<Scripted>>,
    strip: bool,
    reject: bool,
) -> std::io::Result<()> {
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let (head, early) = read_head(&mut client)?;
    let head = String::from_utf8_lossy(&head).into_owned();
    let request_line = head.lines().next().unwrap_or("").to_string();
    let scripted = {
        let mut script = script.lock().unwrap();
        let found = script
            .iter_mut()
            .find(|s| s.times > 0 && request_line.contains(&s.needle));
        found.map(|s| {
            s.times -= 1;
            s.fault
        })
    };
    let total = content_length(&head);
    if reject && head.to_ascii_lowercase().contains("\r\nif-none-match:") {
        drain_body(&mut client, early.len(), total)?;
        answer(&mut client, "501 Not Implemented", "NotImplemented")?;
        return client.shutdown(Shutdown::Write);
    }
    let fault = scripted.unwrap_or_else(|| choose(&rates.lock().unwrap()));
    match fault {
        Fault::Pass | Fault::Latency(_) => {
            if let Fault::Latency(d) = fault {
                stats.latency.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(d);
            } else {
                stats.passed.fetch_add(1, Ordering::Relaxed);
            }
            let response = forward(&mut client, upstream_port, &head, &early, strip)?;
            client.write_all(&response)?;
            client.shutdown(Shutdown::Write)?;
        }
        Fault::Http500 | Fault::Http503 | Fault::Http403 => {
            drain_body(&mut client, early.len(), total)?;
            let (status, code) = match fault {
                Fault::Http500 => ("500 Internal Server Error", "InternalError"),
                Fault::Http503 => ("503 Service Unavailable", "SlowDown"),
                _ => ("403 Forbidden", "AccessDenied"),
            };
            if fault == Fault::Http403 {
                stats.http_403.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.http_5xx.fetch_add(1, Ordering::Relaxed);
            }
            answer(&mut client, status, code)?;
            client.shutdown(Shutdown::Write)?;
        }
        Fault::ResetBeforeForward => {
            stats.reset_before.fetch_add(1, Ordering::Relaxed);
            reset(client);
        }
        Fault::ResetAfterForward => {
            stats.reset_after.fetch_add(1, Ordering::Relaxed);
            let _ = forward(&mut client, upstream_port, &head, &early, strip)?;
            reset(client);
        }
        Fault::TruncateResponse => {
            stats.truncated.fetch_add(1, Ordering::Relaxed);
            let response = forward(&mut client, upstream_port, &head, &early, strip)?;
            let head_end = find(&response, b"\r\n\r\n").map_or(0, |i| i + 4);
            let body_len = response.len() - head_end;
            // Cut inside the body when there is one, else inside the head.
            let cut = if body_len > 1 {
                head_end + body_len / 2
            } else {
                head_end / 2
            };
            client.write_all(&response[..cut])?;
            client.shutdown(Shutdown::Write)?;
        }
        Fault::Stall(d) => {
            stats.stalled.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(d);
        }
    }
    Ok(())
}

/// Closes with a TCP reset (SO_LINGER with a zero timeout makes close() send RST).
fn reset(client: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized, initialised option value.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(client);
}

/// How a [`HostileS3`] endpoint lies in its answers to GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostility {
    /// `200` announcing a terabyte (`Content-Length: 2^40`), then a few bytes and a close.
    HugeContentLength,
    /// `206` with the bytes asked for, labelled as part of a terabyte-long object
    /// (`Content-Range: bytes 0-N/2^40`).
    LyingContentRangeTotal,
    /// `200` with a chunked body that does not end (the server gives up after
    /// [`HOSTILE_ENDLESS_CAP`] bytes so that a test without the fix fails rather than eat the
    /// machine).
    EndlessChunked,
    /// `200` announcing a megabyte more than it sends, then a close.
    ShortBody,
    /// Reads the request and never answers (a frozen server), holding the connection for up
    /// to 30 s.
    Silent,
    /// An honest `404 NoSuchKey` to everything (a server that came back, holding nothing).
    NotFound,
    /// `200` announcing 1000 bytes and sending one every 300 ms (each read progresses, so the
    /// per-read timeout never fires), for up to 30 s.
    Trickle,
    /// Ignores Range: `200` with `length` zero bytes (announced) to every GET.
    WholeForRange { length: u64 },
    /// `206` with exactly the range asked (zeros) of an object of `total` bytes for a range from
    /// 0; `200` with the whole object (`total` zeros, announced) for any other range.
    WholeAfterFirst { total: u64 },
    /// `206` with exactly the range asked (zeros), labelled as part of an object of `total`
    /// bytes for a range from 0 and of `total + 1` bytes for any other.
    ShiftingTotal { total: u64 },
    /// Listings (`ListObjectsV2`) of `pages` pages of `keys` keys of `key_len` bytes each under
    /// `vault/packs/`, every page but the last marked truncated with a fresh continuation token.
    ListPages { keys: u32, key_len: u32, pages: u32 },
}

/// Where an endless body stops anyway: 1.5 GiB.
pub const HOSTILE_ENDLESS_CAP: u64 = 1536 * 1024 * 1024;

/// A hostile S3 endpoint on loopback: a tiny HTTP server (threads over `std::net`) that answers
/// every GET according to its [`Hostility`] and every other request with `503 SlowDown`. Plays
/// a compromised or broken site; stops when dropped.
pub struct HostileS3 {
    pub endpoint: String,
    pub port: u16,
    /// GET requests answered.
    pub gets: Arc<AtomicU64>,
    /// Requests of any kind received.
    pub requests: Arc<AtomicU64>,
    hostility: Arc<Mutex<Hostility>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl HostileS3 {
    pub fn start(hostility: Hostility) -> HostileS3 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let mode = Arc::new(Mutex::new(hostility));
        let accept = {
            let (stop, gets, requests, mode) =
                (stop.clone(), gets.clone(), requests.clone(), mode.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(mut client) = conn else { continue };
                    let (gets, requests, stop) = (gets.clone(), requests.clone(), stop.clone());
                    let hostility = *mode.lock().unwrap_or_else(|p| p.into_inner());
                    std::thread::spawn(move || {
                        let _ = hostile_answer(&mut client, hostility, &gets, &requests, &stop);
                        let _ = client.shutdown(Shutdown::Both);
                    });
                }
            })
        };
        HostileS3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            gets,
            requests,
            hostility: mode,
            stop,
            accept: Some(accept),
        }
    }
}

impl HostileS3 {
    /// Changes how the connections accepted from now on are answered.
    pub fn set(&self, hostility: Hostility) {
        *self.hostility.lock().unwrap_or_else(|p| p.into_inner()) = hostility;
    }
}

impl Drop for HostileS3 {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Answers one request (one per connection) as `hostility` says.
fn hostile_answer(
    client: &mut TcpStream,
    hostility: Hostility,
    gets: &AtomicU64,
    requests: &AtomicU64,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let (head, rest) = read_head(client)?;
    requests.fetch_add(1, Ordering::Relaxed);
    let head = String::from_utf8_lossy(&head).into_owned();
    match hostility {
        Hostility::Silent => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(());
        }
        Hostility::NotFound => {
            drain_body(client, rest.len(), content_length(&head))?;
            return answer(client, "404 Not Found", "NoSuchKey");
        }
        _ => {}
    }
    drain_body(client, rest.len(), content_length(&head))?;
    if !head.starts_with("GET ") {
        return answer(client, "503 Service Unavailable", "SlowDown");
    }
    gets.fetch_add(1, Ordering::Relaxed);
    const TIB: u64 = 1 << 40;
    // The range asked for, if any: `range: bytes=A-B`.
    let range = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .and_then(|(_, v)| v.trim().strip_prefix("bytes=")?.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let zeros = vec![0u8; 64 * 1024];
    let send_zeros = |client: &mut TcpStream, mut n: u64| -> std::io::Result<()> {
        while n > 0 {
            let k = n.min(zeros.len() as u64);
            client.write_all(&zeros[..k as usize])?;
            n -= k;
        }
        Ok(())
    };
    let partial = |client: &mut TcpStream, total: u64| -> std::io::Result<()> {
        let (a, b) = range.unwrap_or((0, total - 1));
        let b = b.min(total - 1);
        write!(
            client,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{total}\r\n\
             Content-Length: {}\r\nETag: \"e\"\r\nConnection: close\r\n\r\n",
            b - a + 1
        )?;
        send_zeros(client, b - a + 1)
    };
    match hostility {
        Hostility::WholeForRange { length } => {
            write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
            )?;
            send_zeros(client, length)?;
        }
        Hostility::WholeAfterFirst { total } => match range {
            Some((0, _)) => partial(client, total)?,
            _ => {
                write!(
                    client,
                    "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
                )?;
                send_zeros(client, total)?;
            }
        },
        Hostility::ShiftingTotal { total } => match range {
            Some((0, _)) => partial(client, total)?,
            _ => partial(client, total + 1)?,
        },
        Hostility::ListPages {
            keys,
            key_len,
            pages,
        } => {
            let first_line = head.lines().next().unwrap_or("");
            // The page asked for: continuation-token=tN asks for page N.
            let page: u32 = first_line
                .split(['?', '&', ' '])
                .find_map(|kv| kv.strip_prefix("continuation-token=t"))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let last = page + 1 >= pages;
            let mut xml = String::from(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                 <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                 <Name>hostile</Name><MaxKeys>1000</MaxKeys>",
            );
            xml.push_str(&format!(
                "<KeyCount>{keys}</KeyCount><IsTruncated>{}</IsTruncated>",
                !last
            ));
            if !last {
                xml.push_str(&format!(
                    "<NextContinuationToken>t{}</NextContinuationToken>",
                    page + 1
                ));
            }
            for i in 0..keys {
                let mut key = format!("vault/packs/population/{page:08}-{i:06}-");
                while key.len() < key_len as usize {
                    key.push('x');
                }
                xml.push_str(&format!(
                    "<Contents><Key>{key}</Key><Size>1</Size></Contents>"
                ));
            }
            xml.push_str("</ListBucketResult>");
            write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                xml.len()
            )?;
            client.write_all(xml.as_bytes())?;
        }
        Hostility::HugeContentLength => {
            write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Length: {TIB}\r\nConnection: close\r\n\r\n"
            )?;
            client.write_all(&zeros)?;
        }
        Hostility::LyingContentRangeTotal => {
            let (a, b) = range.unwrap_or((0, 99));
            let len = (b - a + 1).min(64 * 1024);
            write!(
                client,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{}/{TIB}\r\n\
                 Content-Length: {len}\r\nETag: \"lie\"\r\nConnection: close\r\n\r\n",
                a + len - 1
            )?;
            client.write_all(&zeros[..len as usize])?;
        }
        Hostility::EndlessChunked => {
            write!(
                client,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            let mut sent = 0u64;
            while sent < HOSTILE_ENDLESS_CAP {
                write!(client, "{:x}\r\n", zeros.len())?;
                client.write_all(&zeros)?;
                client.write_all(b"\r\n")?;
                sent += zeros.len() as u64;
            }
        }
        Hostility::ShortBody => {
            write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                2 * 1024 * 1024
            )?;
            client.write_all(&zeros)?;
        }
        Hostility::Trickle => {
            write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
            )?;
            for _ in 0..100 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                client.write_all(b"x")?;
                client.flush()?;
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        Hostility::Silent | Hostility::NotFound => {}
    }
    client.flush()
}
