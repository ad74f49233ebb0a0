//! An `embassy agent` run as a real child process by the tests: its log, signals, a clean
//! stop, and reading its `/status.json` cells.

use std::fs;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

/// An `embassy agent` child process and the file its log goes to; killed when dropped.
pub struct Agent {
    /// The process.
    pub child: Child,
    /// Its log (stderr).
    pub log: PathBuf,
}

impl Agent {
    /// Starts `exe agent --config embassy.toml` in `dir` (its passphrase and site come from the
    /// configuration, never from the test's environment), its log in `dir/agent.log`.
    pub fn start_in(exe: &str, dir: &std::path::Path) -> Agent {
        Self::start_with(exe, dir, &[])
    }

    /// The same with `vars` in its environment (an S3 site's credentials, say).
    pub fn start_with(exe: &str, dir: &std::path::Path, vars: &[(String, String)]) -> Agent {
        let log = dir.join("agent.log");
        let child = std::process::Command::new(exe)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .args(["agent", "--config", "embassy.toml"])
            .current_dir(dir)
            .env_remove("EMBASSY_PASSPHRASE")
            .env_remove("EMBASSY_SITE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                fs::File::create(&log).expect("create the agent's log"),
            ))
            .spawn()
            .expect("start embassy agent");
        Agent { child, log }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Sends `sig` to the agent.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: sending a signal to our own child process by its id.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }
    /// SIGTERM and wait (at most `limit`); returns the exit status.
    pub fn stop(self, limit: Duration) -> (std::process::ExitStatus, String) {
        self.stop_with(libc::SIGTERM, limit)
    }

    /// Sends `sig` and waits (at most `limit`); returns the exit status.
    pub fn stop_with(
        mut self,
        sig: libc::c_int,
        limit: Duration,
    ) -> (std::process::ExitStatus, String) {
        self.signal(sig);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "agent did not stop within {limit:?} of SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it gives a value; panics with the agent's log after `limit`.
pub fn wait_until<T>(
    limit: Duration,
    what: &str,
    agent: &Agent,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}; agent log:\n{}",
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cell of `dataset` at `site` in a `/status.json` document (`Null` when absent).
pub fn cell<'a>(report: &'a Value, dataset: &str, site: &str) -> &'a Value {
    report["datasets"]
        .as_array()
        .and_then(|ds| ds.iter().find(|d| d["name"] == dataset))
        .and_then(|d| d["sites"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["site"] == site))
        .unwrap_or(&Value::Null)
}

/// When the tests run as root (CI does), a folder made unwritable with `chmod` stays writable to
/// the agent: this hands `dir` (recursively) to the `postgres` user and returns its uid and gid,
/// for running the agent as that user (`CommandExt::uid`/`gid`) so that `chmod` takes. `None`
/// when not root: the agent runs as the tests' own user.
pub fn unprivileged(dir: &std::path::Path) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let ids = crate::pg::postgres_uid_gid();
    let status = std::process::Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", ids.0, ids.1))
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(status.success(), "chown {} failed", dir.display());
    Some(ids)
}
