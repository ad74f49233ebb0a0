//! A hostile S3 endpoint: a tiny HTTP server on loopback that lies in its answers (huge or
//! shifting lengths, endless bodies, silence, trickles, endless listings), playing a compromised
//! or broken site. A fake is right here: no real server misbehaves on demand.

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proxy::{answer, content_length, drain_body, read_head};

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
    /// `412 PreconditionFailed` ("already exists") to every PUT, storing nothing; an empty
    /// listing to every listing and `404 NoSuchKey` to every other request: a site that claims
    /// to hold whatever it is sent.
    AlreadyExistsToPuts,
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
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The loopback port.
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
    /// Starts answering on a free loopback port.
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
        Hostility::AlreadyExistsToPuts => {
            drain_body(client, rest.len(), content_length(&head))?;
            if head.starts_with("PUT ") {
                return answer(client, "412 Precondition Failed", "PreconditionFailed");
            }
            let first_line = head.lines().next().unwrap_or("");
            if head.starts_with("GET ") && first_line.contains("list-type=2") {
                let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
                     <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
                     <Name>hostile</Name><MaxKeys>1000</MaxKeys><KeyCount>0</KeyCount>\
                     <IsTruncated>false</IsTruncated></ListBucketResult>";
                write!(
                    client,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n",
                    xml.len()
                )?;
                client.write_all(xml.as_bytes())?;
                return client.flush();
            }
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
        Hostility::Silent | Hostility::NotFound | Hostility::AlreadyExistsToPuts => {}
    }
    client.flush()
}
