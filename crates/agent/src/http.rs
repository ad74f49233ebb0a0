//! The status server: `/` (the dashboard), `/status.json` and `/metrics`, rendered from a
//! consistent copy of what the scheduler publishes ([`Shared`]), optionally behind a token.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::report::{self, StatusReport};
use crate::state::AgentState;
use crate::status::SiteSnapshot;

/// What the HTTP server and `status` read.
#[derive(Debug)]
pub struct Shared {
    /// The configuration in force.
    pub config: Mutex<Arc<Config>>,
    /// The agent's state.
    pub state: Mutex<AgentState>,
    /// The last reading of every site.
    pub snapshots: Mutex<Vec<SiteSnapshot>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Calls `view` with a consistent copy of config, site readings and state, and the time now.
    /// The locks are held only while copying, one at a time, so a slow render never blocks the agent.
    fn view<R>(&self, view: fn(&Config, &[SiteSnapshot], &AgentState, i64) -> R) -> R {
        let config = lock(&self.config).clone();
        let snaps = lock(&self.snapshots).clone();
        let state = lock(&self.state).clone();
        view(
            &config,
            &snaps,
            &state,
            embassy_core::format::config::now_unix_nanos(),
        )
    }
    /// The status document now.
    pub fn report(&self) -> StatusReport {
        self.view(report::report)
    }
    /// The status document now, as JSON (`/status.json`).
    pub fn report_json(&self) -> String {
        serde_json::to_string(&self.report()).unwrap_or_else(|e| {
            serde_json::json!({"ok": false, "error": format!("status cannot be encoded: {e}")})
                .to_string()
        })
    }
    /// Prometheus metrics now, from the same document.
    pub fn metrics(&self) -> String {
        crate::metrics::metrics(&self.report())
    }
    /// The dashboard now, from the same document (and the lag history of the state).
    pub fn dashboard(&self) -> String {
        self.view(|config, snaps, state, now_ns| {
            let report = report::report(config, snaps, state, now_ns);
            crate::dashboard::render(config, &report, state, now_ns)
        })
    }
}

/// The bearer token the status page asks for (`[status] token_file`), held zeroized.
#[derive(Clone)]
pub struct StatusToken(Arc<Zeroizing<Vec<u8>>>);

impl std::fmt::Debug for StatusToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusToken(..)")
    }
}

/// Shortest token accepted: a guessable token is no protection.
const MIN_TOKEN_LEN: usize = 16;

impl StatusToken {
    /// Reads the first line of `path`: at least 16 characters.
    pub fn read(path: &Path) -> Result<StatusToken, String> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            format!(
                "the token file {} cannot be read: {e}\n  (create it with `openssl rand -hex 32 > {}`)",
                path.display(),
                path.display()
            )
        })?);
        let line = text.lines().next().unwrap_or_default().trim();
        if line.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the token in {} is shorter than {MIN_TOKEN_LEN} characters: write a long random one (`openssl rand -hex 32 > {}`)",
                path.display(),
                path.display()
            ));
        }
        Ok(StatusToken(Arc::new(Zeroizing::new(
            line.as_bytes().to_vec(),
        ))))
    }

    /// True when `given` is the token (compared in constant time).
    pub fn matches(&self, given: &[u8]) -> bool {
        bool::from(given.ct_eq(self.0.as_slice()))
    }

    /// True when the request carries the token: `Authorization: Bearer TOKEN`, or HTTP Basic
    /// with the token as password (what a browser sends after asking for it).
    fn admits(&self, request: &tiny_http::Request) -> bool {
        request
            .headers()
            .iter()
            .filter(|h| h.field.equiv("Authorization"))
            .any(|h| self.admits_authorization(h.value.as_str()))
    }

    /// True when an `Authorization` header's value carries the token: `Bearer TOKEN`, or HTTP
    /// Basic with the token as password (any user name). The token is compared in constant time.
    pub fn admits_authorization(&self, value: &str) -> bool {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            self.matches(rest.trim().as_bytes())
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine as _;
            let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest.trim()) else {
                return false;
            };
            let decoded = Zeroizing::new(decoded);
            let password = decoded
                .iter()
                .position(|&b| b == b':')
                .map_or(&decoded[..0], |i| &decoded[i + 1..]);
            self.matches(password)
        } else {
            false
        }
    }
}

/// Serves `/`, `/status.json`, `/metrics` from `shared` on `listen` until `stop` is set. With a
/// token, every request without it is answered 401.
pub fn serve(
    listen: &str,
    token: Option<StatusToken>,
    shared: Arc<Shared>,
) -> Result<(Arc<tiny_http::Server>, JoinHandle<()>), String> {
    let server = Arc::new(
        tiny_http::Server::http(listen)
            .map_err(|e| format!("cannot listen on {listen} for the status page: {e}"))?,
    );
    let s = server.clone();
    let handle = std::thread::Builder::new()
        .name("embassy-http".into())
        .spawn(move || {
            for request in s.incoming_requests() {
                let url = request.url().split('?').next().unwrap_or("/").to_string();
                let admitted = token.as_ref().is_none_or(|t| t.admits(&request));
                let (body, ctype, code) = match url.as_str() {
                    _ if !admitted => (
                        "this status page needs its token: send `Authorization: Bearer TOKEN`\n"
                            .to_string(),
                        "text/plain",
                        401,
                    ),
                    "/" | "/index.html" => (shared.dashboard(), "text/html; charset=utf-8", 200),
                    "/status.json" => (
                        format!("{}\n", shared.report_json()),
                        "application/json",
                        200,
                    ),
                    "/metrics" => (shared.metrics(), "text/plain; version=0.0.4", 200),
                    _ => ("not found\n".to_string(), "text/plain", 404),
                };
                let mut response = tiny_http::Response::from_string(body).with_status_code(code);
                let mut headers = vec![("Content-Type", ctype), ("Cache-Control", "no-store")];
                if !admitted {
                    headers.push(("WWW-Authenticate", "Bearer realm=\"Data Embassy\""));
                    headers.push(("WWW-Authenticate", "Basic realm=\"Data Embassy\""));
                }
                for (name, value) in headers {
                    if let Ok(h) = tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
                    {
                        response.add_header(h);
                    }
                }
                let _ = request.respond(response);
            }
        })
        .map_err(|e| format!("cannot start the HTTP thread: {e}"))?;
    Ok((server, handle))
}
