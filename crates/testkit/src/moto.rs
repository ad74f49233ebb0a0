//! The moto S3 server harness: moto's standalone server started as a child process on
//! loopback (no in-memory fake: every S3 request goes over HTTP to the server process), shared by
//! the tests of one test binary, and the choice of S3 server for the S3 tests ([`s3_target`]).
//! A missing moto makes the test fail, saying how to install it (never skip).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::free_port;

const INSTALL_HINT: &str = "run scripts/install-test-deps (it installs moto[server] 5.x from \
                            PyPI), or set MOTO_SERVER to the moto_server program";

/// A moto S3 server on 127.0.0.1. Killed when dropped, and also when the test process dies
/// (a shell watchdog kills it when our end of its stdin pipe closes).
pub struct MotoServer {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The loopback port it listens on.
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

impl MotoServer {
    /// Starts moto on a free loopback port.
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

/// A bucket name no other test of this process uses (tests share one server).
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
    /// The endpoint the tests talk to.
    pub endpoint: String,
    /// The region to sign for.
    pub region: String,
    /// Access key id (may create buckets).
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// What kind of server it is.
    pub kind: ServerKind,
    /// Every node's endpoint, for tests that stop one node (`EMBASSY_TEST_S3_ENDPOINTS`).
    pub endpoints: Vec<String>,
}

/// The S3 server of this test process (see [`S3Target`]), chosen once.
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
