//! A fault-injecting TCP proxy in front of an S3 server: per connection (one request each) it
//! passes, delays, answers 5xx/403, resets before or after forwarding, cuts the answer short or
//! stalls, at random rates or by script, and counts what it did. Also the small HTTP helpers the
//! hostile endpoint ([`crate::hostile`]) shares.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Delayed by `Latency` (1 s).
    pub latency: f64,
    /// Answered 500.
    pub http_500: f64,
    /// Answered 503.
    pub http_503: f64,
    /// Reset before forwarding.
    pub reset_before: f64,
    /// Reset after the server acted.
    pub reset_after: f64,
    /// Answer cut short.
    pub truncate: f64,
    /// Held without answer for `stall_for`.
    pub stall: f64,
    /// How long a stall lasts.
    pub stall_for: Duration,
}

/// Counters of what the proxy did.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Forwarded untouched.
    pub passed: AtomicU64,
    /// Forwarded late.
    pub latency: AtomicU64,
    /// Answered 5xx.
    pub http_5xx: AtomicU64,
    /// Answered 403.
    pub http_403: AtomicU64,
    /// Reset before forwarding.
    pub reset_before: AtomicU64,
    /// Reset after forwarding.
    pub reset_after: AtomicU64,
    /// Answers cut short.
    pub truncated: AtomicU64,
    /// Connections stalled.
    pub stalled: AtomicU64,
}

impl FaultStats {
    /// One line saying what the proxy did.
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

/// The proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: point the S3 site here.
    pub endpoint: String,
    port: u16,
    stop: Arc<AtomicBool>,
    /// What it did so far.
    pub stats: Arc<FaultStats>,
    rates: Arc<Mutex<FaultRates>>,
    script: Arc<Mutex<Vec<Scripted>>>,
    strip_if_none_match: Arc<AtomicBool>,
    reject_if_none_match: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `127.0.0.1:upstream_port`.
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
pub(crate) fn read_head(client: &mut TcpStream) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
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

pub(crate) fn content_length(head: &str) -> u64 {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads the rest of the request body, so that closing afterwards is a clean close, not a reset.
pub(crate) fn drain_body(
    client: &mut TcpStream,
    already: usize,
    total: u64,
) -> std::io::Result<()> {
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

pub(crate) fn answer(client: &mut TcpStream, status: &str, code: &str) -> std::io::Result<()> {
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
