//! RPO alarms: raised once when a dataset's newest durable data at a required site is older
//! than its RPO, cleared once when it is fresh again; delivered by an HTTP POST of JSON to a
//! webhook and/or a shell command with `EMBASSY_ALARM_*` variables. Which alarms are raised is
//! kept in the agent's state file, so a restart neither repeats nor forgets one.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::config::AlarmSettings;
use crate::state::{AgentState, RaisedAlarm};
use crate::status::{Colour, DatasetRow};

/// One alarm or clearance to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// "raised" or "cleared".
    pub event: &'static str,
    /// The dataset.
    pub dataset: String,
    /// The site.
    pub site: String,
    /// Age of the newest durable data (None: no data / unreadable).
    pub lag_seconds: Option<f64>,
    /// The RPO.
    pub rpo_seconds: f64,
    /// For people.
    pub message: String,
    /// When (Unix seconds).
    pub at: i64,
}

impl Notice {
    /// The JSON body a webhook receives.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "source": "data-embassy",
            "event": self.event,
            "dataset": self.dataset,
            "site": self.site,
            "lag_seconds": self.lag_seconds,
            "rpo_seconds": self.rpo_seconds,
            "message": self.message,
            "time": embassy_core::time::utc(self.at.saturating_mul(1_000_000_000)),
            "time_unix": self.at,
        })
    }
}

/// Compares the judged rows with the raised alarms: returns the notices to send (new breaches
/// at required sites, and clearances of alarms whose cell is no longer red). The state is
/// updated by [`mark_delivered`] once a notice got out.
pub fn evaluate(rows: &[DatasetRow], state: &AgentState, now: i64) -> Vec<Notice> {
    let mut out = Vec::new();
    let mut still_red = std::collections::HashSet::new();
    for row in rows {
        for cell in row.cells.iter().filter(|c| c.required) {
            let key = format!("{}@{}", row.name, cell.site);
            if cell.colour == Colour::Red {
                still_red.insert(key.clone());
                if !state.alarms.contains_key(&key) {
                    out.push(Notice {
                        event: "raised",
                        dataset: row.name.clone(),
                        site: cell.site.clone(),
                        lag_seconds: cell.lag_seconds,
                        rpo_seconds: row.rpo_seconds,
                        message: format!("{} at {}: {}", row.name, cell.site, cell.reason),
                        at: now,
                    });
                }
            }
        }
    }
    for (key, a) in &state.alarms {
        if !still_red.contains(key) {
            let (lag, rpo) = rows
                .iter()
                .find(|r| r.name == a.dataset)
                .map(|r| {
                    (
                        r.cells
                            .iter()
                            .find(|c| c.site == a.site)
                            .and_then(|c| c.lag_seconds),
                        r.rpo_seconds,
                    )
                })
                .unwrap_or((None, 0.0));
            out.push(Notice {
                event: "cleared",
                dataset: a.dataset.clone(),
                site: a.site.clone(),
                lag_seconds: lag,
                rpo_seconds: rpo,
                message: format!("{} at {}: healthy again", a.dataset, a.site),
                at: now,
            });
        }
    }
    out
}

/// Records a delivered notice in the state.
pub fn mark_delivered(state: &mut AgentState, n: &Notice) {
    let key = format!("{}@{}", n.dataset, n.site);
    if n.event == "raised" {
        state.alarms.insert(
            key,
            RaisedAlarm {
                dataset: n.dataset.clone(),
                site: n.site.clone(),
                since: n.at,
                message: n.message.clone(),
            },
        );
    } else {
        state.alarms.remove(&key);
    }
}

/// Delivers a notice through every configured channel (the command runs in `dir`). Ok when at least one channel took it
/// (or none is configured: the log line is the alarm); Err lists what failed.
pub fn deliver(settings: &AlarmSettings, n: &Notice, dir: &Path) -> Result<(), String> {
    let mut failures = Vec::new();
    let mut delivered = 0;
    if let Some(url) = &settings.webhook {
        match post_json(url, &n.to_json().to_string()) {
            Ok(()) => delivered += 1,
            Err(e) => failures.push(format!("webhook {url}: {e}")),
        }
    }
    if let Some(command) = &settings.command {
        match run_command(command, n, dir) {
            Ok(()) => delivered += 1,
            Err(e) => failures.push(format!("command `{command}`: {e}")),
        }
    }
    if delivered > 0 || failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

fn run_command(command: &str, n: &Notice, dir: &Path) -> Result<(), String> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("EMBASSY_ALARM_EVENT", n.event)
        .env("EMBASSY_ALARM_DATASET", &n.dataset)
        .env("EMBASSY_ALARM_SITE", &n.site)
        .env(
            "EMBASSY_ALARM_LAG_SECONDS",
            n.lag_seconds.map_or(String::new(), |l| format!("{l:.0}")),
        )
        .env("EMBASSY_ALARM_RPO_SECONDS", format!("{:.0}", n.rpo_seconds))
        .env("EMBASSY_ALARM_MESSAGE", &n.message)
        .env("EMBASSY_ALARM_JSON", n.to_json().to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot be started: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("exited with {status}"))
    }
}

/// POSTs `body` as JSON to an http:// URL (10 s timeouts); Ok on a 2xx answer.
pub fn post_json(url: &str, body: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {hostport}: {e}"))?
        .next()
        .ok_or_else(|| format!("{hostport} has no address"))?;
    let timeout = Duration::from_secs(10);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: data-embassy-agent\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The status line is enough; read until it is complete or the server closes.
    while !answer.contains(&b'\n') {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
        if answer.len() > 8192 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&answer);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| format!("no HTTP answer ({})", line.lines().next().unwrap_or("")))?;
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(format!("answered HTTP {code}"))
    }
}
