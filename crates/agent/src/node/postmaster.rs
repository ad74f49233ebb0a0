//! Which PostgreSQL server runs on a standby's data directory, when the node did not start it
//! (an agent killed with SIGKILL, or stopped, leaves its standbys' servers running; the next
//! agent adopts them): `postmaster.pid` names a process, which must be alive and really that
//! data directory's postmaster (a pid file left by a killed server may name a pid the kernel
//! has since given to another process). Read from `/proc`, Linux only, as the node is.

use std::path::Path;
use std::time::{Duration, Instant};

/// What `postmaster.pid` of a data directory says, checked against the running processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PidFile {
    /// No `postmaster.pid`: no server runs on the data directory.
    Absent,
    /// The data directory's postmaster runs as this process, listening on this port.
    Live { pid: i32, port: Option<u16> },
    /// A `postmaster.pid` that no running server owns: the server was killed (PostgreSQL
    /// replaces such a file itself when it starts, after checking that no process of the old
    /// server still uses its shared memory), or its pid now belongs to another process or to
    /// a zombie (`in_the_way`: PostgreSQL would refuse to start while that process exists).
    Stale {
        pid: i32,
        why: String,
        in_the_way: bool,
    },
    /// The server has ended but its parent has not reaped it yet (a zombie): PostgreSQL
    /// refuses to start while its pid exists, and the pid is not reused before it is reaped.
    /// Nothing is started until then.
    Unreaped { pid: i32 },
    /// A process that may be the server and cannot be told apart from one (its working folder
    /// cannot be read and its start time does not match): neither adopted nor replaced.
    Unsure { pid: i32, why: String },
}

/// Seconds a process's start may differ from the start time in `postmaster.pid` (the postmaster
/// writes its pid file shortly after it started).
const START_SLACK_S: i64 = 5;

/// Looks at `data_dir/postmaster.pid` and the process it names.
pub(crate) fn look(data_dir: &Path) -> PidFile {
    let text = match std::fs::read_to_string(data_dir.join("postmaster.pid")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return PidFile::Absent,
        Err(e) => {
            return PidFile::Unsure {
                pid: 0,
                why: format!("its postmaster.pid cannot be read: {e}"),
            }
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let Some(pid) = lines
        .first()
        .and_then(|l| l.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
    else {
        // A pid file being written (PostgreSQL writes it whole, but a reader may race it) or
        // garbage: no process to adopt; a starting server would say what it finds.
        return PidFile::Stale {
            pid: 0,
            why: "its postmaster.pid names no process".into(),
            in_the_way: false,
        };
    };
    let started: Option<i64> = lines.get(2).and_then(|l| l.trim().parse().ok());
    let port: Option<u16> = lines.get(3).and_then(|l| l.trim().parse().ok());
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        // Hidden from this user (/proc mounted with hidepid) is not absent: ask the kernel.
        // SAFETY: signal 0 sends nothing; it only asks whether the process exists.
        let exists = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
        return if exists {
            PidFile::Unsure {
                pid,
                why: format!("process {pid} runs but cannot be looked at (/proc/{pid})"),
            }
        } else {
            PidFile::Stale {
                pid,
                why: format!("process {pid} does not run"),
                in_the_way: false,
            }
        };
    };
    let Some((comm, fields)) = parse_stat(&stat) else {
        return PidFile::Unsure {
            pid,
            why: format!("/proc/{pid}/stat cannot be read"),
        };
    };
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return PidFile::Unreaped { pid };
    }
    if comm != "postgres" && comm != "postmaster" {
        return PidFile::Stale {
            pid,
            why: format!("process {pid} is now {comm:?}, not a PostgreSQL server"),
            in_the_way: true,
        };
    }
    // PostgreSQL works in its data directory: the strongest sign, when it can be read.
    if let Ok(cwd) = std::fs::read_link(proc_dir.join("cwd")) {
        let ours = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
        return if cwd == ours {
            PidFile::Live { pid, port }
        } else {
            PidFile::Stale {
                pid,
                why: format!(
                    "process {pid} is the server of another data directory ({})",
                    cwd.display()
                ),
                in_the_way: true,
            }
        };
    }
    match (started, process_start(&fields)) {
        (Some(recorded), Some(actual)) if (recorded - actual).abs() <= START_SLACK_S => {
            PidFile::Live { pid, port }
        }
        _ => PidFile::Unsure {
            pid,
            why: format!(
                "process {pid} is a PostgreSQL process whose working folder cannot be read and \
                 whose start time is not the one its postmaster.pid records"
            ),
        },
    }
}

/// The command name and the fields after it of `/proc/PID/stat` (the name is in parentheses
/// and may hold spaces and parentheses itself).
fn parse_stat(stat: &str) -> Option<(String, Vec<&str>)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let rest = stat.get(close + 1..)?;
    Some((comm, rest.split_whitespace().collect()))
}

/// When the process started, in Unix seconds: boot time plus its start in clock ticks
/// (`/proc/PID/stat` field 22, the 20th after the name).
fn process_start(fields: &[&str]) -> Option<i64> {
    let ticks: i64 = fields.get(19)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return None;
    }
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + ticks / i64::from(hz as i32))
}

/// Stops the postmaster `pid` of `data_dir` that this agent did not start: fast shutdown
/// (SIGINT), SIGKILL after `limit` (its children too: they would keep working in the data
/// directory for a moment); returns once it is verified gone, or says why not. A signal goes
/// only to a process [`look`] found to be that data directory's postmaster just before, never
/// to a pid alone.
pub(crate) fn stop(data_dir: &Path, pid: i32, limit: Duration) -> Result<(), String> {
    let running = || match look(data_dir) {
        PidFile::Live { pid: now, .. } if now == pid => Ok(true),
        PidFile::Live { pid: other, .. } => Err(format!(
            "another server (pid {other}) runs on {} now; stop it (pg_ctl stop -D {0})",
            data_dir.display()
        )),
        PidFile::Unsure { why, .. } => Err(format!(
            "cannot tell whether its server stopped: {why}; stop it (pg_ctl stop -D {})",
            data_dir.display()
        )),
        PidFile::Absent | PidFile::Stale { .. } | PidFile::Unreaped { .. } => Ok(false),
    };
    let wait = |limit: Duration| -> Result<bool, String> {
        let until = Instant::now() + limit;
        loop {
            if !running()? {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    if !running()? {
        return Ok(());
    }
    // SAFETY: kill has no memory preconditions; `pid` was just found to be this data
    // directory's postmaster.
    unsafe { libc::kill(pid, libc::SIGINT) };
    if wait(limit)? {
        return Ok(());
    }
    let children = children_of(pid);
    if !running()? {
        return Ok(());
    }
    // SAFETY: as above, checked just before.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for child in &children {
        // SAFETY: the postmaster's children, listed while it ran; a child's pid cannot be
        // reused before its parent (or init, after the SIGKILL) reaped it, moments ago at most.
        unsafe { libc::kill(*child, libc::SIGKILL) };
    }
    if wait(Duration::from_secs(10))? {
        let until = Instant::now() + Duration::from_secs(10);
        while children
            .iter()
            .any(|c| Path::new("/proc").join(c.to_string()).exists())
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        return Ok(());
    }
    Err(format!(
        "its server (pid {pid}) did not stop, even after SIGKILL; stop it (pg_ctl stop -D {})",
        data_dir.display()
    ))
}

/// The PostgreSQL processes working in `data_dir` (`/proc/PID/cwd`): a killed server's
/// backends, until they noticed their postmaster is gone. While any runs, its `postmaster.pid`
/// must stay (PostgreSQL checks their shared memory through it). Other programs working there
/// (the WAL fetch helper waiting for its next request) do not count.
pub(crate) fn working_in(data_dir: &Path) -> Vec<i32> {
    let ours = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c == ours))
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s).map(|(comm, _)| comm))
                .is_some_and(|comm| comm == "postgres" || comm == "postmaster")
        })
        .collect()
}

/// The processes whose parent is `pid` (a postmaster's backends and helpers).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, fields) = parse_stat(&s)?;
                    fields.get(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(pid_file: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("postmaster.pid"), pid_file).expect("write");
        d
    }

    /// A pid file whose pid now belongs to another process (this test's own, which is not a
    /// PostgreSQL server) is stale: never adopted, never signalled.
    #[test]
    fn a_pid_reused_by_another_process_is_stale() {
        let me = std::process::id();
        let d = dir_with(&format!("{me}\n/srv/x\n1\n5433\n"));
        assert!(
            matches!(look(d.path()), PidFile::Stale { pid, .. } if pid == me as i32),
            "{:?}",
            look(d.path())
        );
        assert_eq!(
            look(tempfile::tempdir().expect("tempdir").path()),
            PidFile::Absent
        );
        let gone = dir_with("999999999\n/srv/x\n1\n5433\n");
        assert!(matches!(look(gone.path()), PidFile::Stale { .. }));
        let garbage = dir_with("not a pid\n");
        assert!(matches!(look(garbage.path()), PidFile::Stale { .. }));
    }

    /// A pid file naming a server that ended but is not reaped yet (a zombie, as a killed
    /// postmaster is until its parent reaps it) is neither adopted nor treated as gone:
    /// PostgreSQL refuses to start while that pid exists.
    #[test]
    fn an_ended_server_not_yet_reaped_is_waited_for() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        let until = Instant::now() + Duration::from_secs(10);
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s).map(|(_, f)| f.first() == Some(&"Z")))
                .unwrap_or(false)
        };
        while !zombie() {
            assert!(Instant::now() < until, "process {pid} did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
        let d = dir_with(&format!("{pid}\n/srv/x\n1\n5433\n"));
        assert_eq!(look(d.path()), PidFile::Unreaped { pid: pid as i32 });
        child.wait().expect("reap");
        assert!(matches!(look(d.path()), PidFile::Stale { .. }));
    }

    #[test]
    fn the_stat_line_is_read_past_a_name_with_parentheses() {
        let (comm, fields) = parse_stat("42 (a (b) c) S 1 2 3").expect("parsed");
        assert_eq!(comm, "a (b) c");
        assert_eq!(fields, ["S", "1", "2", "3"]);
    }
}
