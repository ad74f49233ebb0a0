//! The agent's status page as tests read it (plain HTTP on loopback), and how a finished
//! command is shown in a failed assertion.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Output;
use std::time::Duration;

/// `GET path` from `127.0.0.1:port`: the body of a 200 answer, `None` for anything else
/// (not listening yet, another status, a broken answer).
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// The agent's `/status.json`, parsed; `None` until it answers with a document.
pub fn status_json(port: u16) -> Option<serde_json::Value> {
    http_get(port, "/status.json").and_then(|b| serde_json::from_str(&b).ok())
}

/// A finished command's status, stdout and stderr, for an assertion's message.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
