//! A PostgreSQL server started on a restored data directory inside a private scratch folder,
//! for a restore drill: on a free port, with no TCP listener at all and its Unix socket in the
//! scratch folder (so it never touches a live server's port or socket), local connections
//! trusted through an `hba_file` of its own (only its owner can reach the socket), run as the
//! data directory's owner. Stopped when dropped.

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::base_backup::pg_program;
use crate::error::PgError;

/// The table the write probe creates and drops.
const PROBE: &str = "embassy_drill_probe";

/// A server running on a restored data directory in a scratch folder.
pub struct ScratchServer {
    child: Option<Child>,
    data: PathBuf,
    socket: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    log: PathBuf,
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> PgError {
    PgError::Restore(format!("{what}: {e}"))
}

/// A TCP port nothing listens on now on 127.0.0.1 (the server opens no TCP listener; the port
/// only names its socket file, and a free one keeps it apart from any server's number).
fn free_port() -> Result<u16, PgError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| err("finding a free port for the drill's server", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| err("finding a free port for the drill's server", e))
}

fn current_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

impl ScratchServer {
    /// Starts PostgreSQL on `data` (restored, recovering), with its socket, log and
    /// `hba_file` in `folder` (private to the drill), as `owner` when that is not this
    /// process's user. Returns once the server process runs; [`Self::wait_writable`] waits
    /// for the end of recovery.
    pub fn start(data: &Path, folder: &Path, owner: Option<(u32, u32)>) -> Result<Self, PgError> {
        let owner = owner.filter(|(uid, _)| *uid != current_uid());
        let socket = folder.join("socket");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket)
            .map_err(|e| err(format_args!("creating {}", socket.display()), e))?;
        let hba = folder.join("pg_hba.conf");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&hba)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, b"local all all trust\n")?;
                f.sync_all()
            })
            .map_err(|e| err(format_args!("writing {}", hba.display()), e))?;
        let log = folder.join("server.log");
        let log_file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&log)
            .map_err(|e| err(format_args!("creating {}", log.display()), e))?;
        if let Some((uid, gid)) = owner {
            for p in [&socket, &hba, &log] {
                std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                    .map_err(|e| err(format_args!("giving {} to uid {uid}", p.display()), e))?;
            }
        }
        let port = free_port()?;
        let setting = |name: &str, value: &Path| format!("{name}={}", value.display());
        let mut cmd = Self::command(&pg_program("postgres"), owner);
        cmd.arg("-D")
            .arg(data)
            .args(["-c", &format!("port={port}")])
            .args(["-c", "listen_addresses="])
            .args(["-c", &setting("unix_socket_directories", &socket)])
            .args(["-c", &setting("hba_file", &hba)])
            .args(["-c", "external_pid_file="])
            .args(["-c", "logging_collector=off"])
            .args(["-c", "log_destination=stderr"])
            .args(["-c", "ssl=off"])
            // A registry whose commits waited for home's streamer restores that setting: the
            // drill's write would wait for ever for a standby that is not there.
            .args(["-c", "synchronous_standby_names="])
            .current_dir(data)
            .stdout(
                log_file
                    .try_clone()
                    .map_err(|e| err(format_args!("opening {}", log.display()), e))?,
            )
            .stderr(log_file);
        let child = cmd.spawn().map_err(|e| {
            err(
                format_args!("starting {}", cmd.get_program().to_string_lossy()),
                e,
            )
        })?;
        Ok(Self {
            child: Some(child),
            data: data.to_path_buf(),
            socket,
            port,
            owner,
            log,
        })
    }

    /// A command as the owner, with none of this process's environment (the server runs code
    /// of the backup, which could read it from /proc): only a PATH and a locale.
    fn command(program: &Path, owner: Option<(u32, u32)>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null());
        if let Some((uid, gid)) = owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// The port (it names the socket file `.s.PGSQL.<port>` in the scratch folder).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder of its Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.socket
    }

    /// A client program (`psql`, `pg_amcheck`) connecting to this server's socket as the
    /// owner's user name, with the connection's settings winning over per-database and
    /// per-role ones restored in the catalog (no preload libraries of the backup's).
    pub fn client(&self, program: &str) -> Command {
        let mut cmd = Self::command(&pg_program(program), self.owner);
        cmd.arg("-h")
            .arg(&self.socket)
            .args(["-p", &self.port.to_string()])
            .env(
                "PGOPTIONS",
                "-c session_preload_libraries= -c local_preload_libraries=",
            )
            .current_dir("/");
        cmd
    }

    /// Runs `sql` in database `db`; its output (unaligned, tuples only), or psql's error.
    pub fn query(&self, db: &str, sql: &str) -> Result<String, PgError> {
        let out = self
            .client("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| err("running psql", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(PgError::Restore(format!(
                "psql: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Waits until the server has finished recovery and accepts a write (a table created and
    /// dropped in database `postgres`, in one transaction): the end of a drill's recovery time.
    /// Fails when the server exits or `timeout` passes first, with the end of its log.
    pub fn wait_writable(&mut self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        loop {
            // Each attempt is bounded too (a lock or a wait the restored configuration asks for
            // would otherwise hold the drill past its deadline): at most 30 s, never past it.
            let left = deadline.saturating_duration_since(Instant::now());
            let bound_ms = left.as_millis().clamp(1_000, 30_000);
            let probe = format!(
                "SET statement_timeout = {bound_ms}; BEGIN; CREATE TABLE {PROBE} (x int); \
                 DROP TABLE {PROBE}; COMMIT;"
            );
            let last = match self.query("postgres", &probe) {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(PgError::Restore(format!(
                        "the restored server stopped ({status}) before it accepted a write: {}",
                        self.log_tail()
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(PgError::Restore(format!(
                    "the restored server did not accept a write within {} s (last: {}): {}",
                    timeout.as_secs(),
                    last.trim(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join(" | ")
    }

    /// Stops the server (fast shutdown, then immediate after 30 s) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been waited for (its pid is ours).
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let _ = child.wait();
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }
}

impl Drop for ScratchServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a server a killed drill left running on `data` (its postmaster.pid names a process
/// whose working folder is `data`): immediate shutdown, waiting up to 10 s. Nothing else is
/// ever signalled.
pub fn stop_leftover(data: &Path) {
    let Ok(text) = std::fs::read_to_string(data.join("postmaster.pid")) else {
        return;
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<libc::pid_t>().ok())
    else {
        return;
    };
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    let data = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    if pid <= 1 || cwd.ok().as_deref() != Some(data.as_path()) {
        return;
    }
    // SAFETY: pid is a postmaster whose working folder is the leftover data directory.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && running(pid) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True while `pid` exists and is not a zombie (an orphan's parent may be slow to reap it).
fn running(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}
