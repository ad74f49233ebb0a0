//! A program run on a real pseudo-terminal, for tests of what a person at a terminal sees and
//! types (prompts without echo, questions asked again). The pty is made with libc's
//! `posix_openpt`; the program gets it as its standard streams and controlling terminal (so
//! `/dev/tty`, which password prompts read, is the pty too).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// A program running on a pseudo-terminal.
pub struct Pty {
    master: File,
    child: Child,
    output: Receiver<Vec<u8>>,
    /// Everything the program wrote so far (prompts and messages), lossily decoded.
    seen: String,
    /// Where [`Pty::expect`] last stopped in `seen`.
    cursor: usize,
}

fn master_pty() -> (File, String) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain libc calls on a descriptor we own; each result is checked.
    unsafe {
        let fd = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(
            fd >= 0,
            "posix_openpt failed: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(libc::grantpt(fd), 0, "grantpt failed");
        assert_eq!(libc::unlockpt(fd), 0, "unlockpt failed");
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(
            libc::ptsname_r(fd, name.as_mut_ptr(), name.len()),
            0,
            "ptsname_r failed"
        );
        let name = std::ffi::CStr::from_ptr(name.as_ptr())
            .to_string_lossy()
            .into_owned();
        (File::from_raw_fd(fd), name)
    }
}

impl Pty {
    /// Runs `cmd` with the pty as its standard input, output and error and as its controlling
    /// terminal (in a new session).
    pub fn spawn(mut cmd: Command) -> Self {
        let (master, slave_name) = master_pty();
        let slave = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&slave_name)
            .unwrap_or_else(|e| panic!("open {slave_name}: {e}"));
        let stdio = |f: &File| Stdio::from(f.try_clone().expect("dup the pty"));
        cmd.stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        // The program holds the only copies of the terminal's end now: when it exits, reading
        // the master ends.
        drop(cmd);
        drop(slave);
        let mut reader = master.try_clone().expect("dup the pty master");
        let (tx, output) = channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the program has exited and closed the terminal.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            master,
            child,
            output,
            seen: String::new(),
            cursor: 0,
        }
    }

    /// Waits (up to 30 s) until the program has written `text` after what the last
    /// `expect` matched; returns what it wrote up to and including it. Panics showing what
    /// was written if it never comes.
    pub fn expect(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(at) = self.seen[self.cursor..].find(text) {
                let end = self.cursor + at + text.len();
                let got = self.seen[self.cursor..end].to_string();
                self.cursor = end;
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(_) => panic!(
                    "the program never wrote {text:?}; it wrote:\n{}",
                    &self.seen[self.cursor..]
                ),
            }
        }
    }

    /// Types `line` and Enter.
    pub fn send_line(&mut self, line: &str) {
        self.master
            .write_all(format!("{line}\r").as_bytes())
            .expect("write to the pty");
    }

    /// Waits (up to 60 s) for the program to exit; returns its exit code (-1 when killed by
    /// a signal) and everything it wrote after the last `expect`.
    pub fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.output.recv_timeout(Duration::from_millis(100)) {
                Ok(bytes) => self.seen.push_str(&String::from_utf8_lossy(&bytes)),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if Instant::now() > deadline {
                        let _ = self.child.kill();
                        panic!("the program did not exit; it wrote:\n{}", self.seen);
                    }
                }
            }
        }
        let status = self.child.wait().expect("wait for the program");
        (
            status.code().unwrap_or(-1),
            self.seen[self.cursor..].to_string(),
        )
    }
}
