//! The PostgreSQL server of a standby: started as the data directory's owner, or adopted;
//! stopped and verified stopped.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::postmaster::{self, PidFile};
use super::STOP_LIMIT;
use crate::config::StandbyConfig;

/// Where the standby's server puts its socket and log: `<data dir>.run`, beside the data
/// directory (never inside it: a rebuild removes the data directory).
pub fn run_folder(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.as_os_str().to_os_string();
    name.push(".run");
    PathBuf::from(name)
}

/// The server the keeper runs: one it started (`child`), or one it adopted.
pub(super) struct Server {
    pub(super) pid: i32,
    pub(super) child: Option<Child>,
    pub(super) started: Instant,
}

impl Server {
    /// How it ended, when it has.
    pub(super) fn ended(&mut self, dir: &Path) -> Option<String> {
        match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.to_string()),
                _ => None,
            },
            None => match postmaster::look(dir) {
                PidFile::Live { pid, .. } if pid == self.pid => None,
                _ => Some(format!("the adopted server, pid {}, ended", self.pid)),
            },
        }
    }
}

/// Starts PostgreSQL on the data directory as its owner: `hot_standby = on`, listening on
/// localhost at the configured port and on a socket in the run folder.
pub(super) fn start(standby: &StandbyConfig) -> Result<Server, String> {
    let dir = &standby.data_dir;
    let meta = std::fs::metadata(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let run = run_folder(dir);
    if !run.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&run)
            .map_err(|e| format!("creating {}: {e}", run.display()))?;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        std::os::unix::fs::chown(&run, Some(meta.uid()), Some(meta.gid())).map_err(|e| {
            format!(
                "handing {} to the data directory's owner: {e}",
                run.display()
            )
        })?;
    }
    let log_path = run.join("server.log");
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    if root {
        let _ = std::os::unix::fs::chown(&log_path, Some(meta.uid()), Some(meta.gid()));
    }
    let err_file = log_file
        .try_clone()
        .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
    let postgres = embassy_postgres::base_backup::pg_program("postgres");
    let mut cmd = Command::new(&postgres);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .arg("-D")
        .arg(dir)
        .args(["-p", &standby.port.to_string()])
        .args(["-c", "hot_standby=on", "-c", "listen_addresses=localhost"])
        .arg("-c")
        .arg(format!("unix_socket_directories={}", run.display()))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .process_group(0);
    if root {
        cmd.uid(meta.uid()).gid(meta.gid());
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", postgres.display()))?;
    Ok(Server {
        pid: child.id() as i32,
        child: Some(child),
        started: Instant::now(),
    })
}

/// Stops a server: fast shutdown (SIGINT), SIGKILL after [`STOP_LIMIT`]; returns once it is
/// verified gone, or says why not.
pub(super) fn stop(server: Server, dir: &Path) -> Result<(), String> {
    let Some(mut child) = server.child else {
        return postmaster::stop(dir, server.pid, STOP_LIMIT);
    };
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill has no memory preconditions; the pid is our child's, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let until = Instant::now() + STOP_LIMIT;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    child
        .wait()
        .map(|_| ())
        .map_err(|e| format!("waiting for its server (pid {pid}) to stop: {e}"))
}
