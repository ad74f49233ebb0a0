//! The PostgreSQL CLI test environment: a vault on a local site, its key file and passphrase
//! file in a temporary home owned by the `postgres` user, and the real `embassy` program run as
//! that user with a clean environment (no `EMBASSY_*` variables of the caller), as the
//! PostgreSQL tests of the cli crate need it (PostgreSQL's tools refuse root, and the restored
//! server's `restore_command` runs as its owner).
//!
//! Cargo names the binary only to the cli crate's own tests, so the caller passes its path:
//! `PgCli::new(env!("CARGO_BIN_EXE_embassy"), "embassy-pgx-")`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use super::PgServer;
use crate::cli::postgres_home;

/// A vault (site folder `site`) made by `embassy init`, in a home owned by `postgres`.
pub struct PgCli {
    /// The home: `site`, `vault.key`, `pass`, `state`, `durable.log`.
    pub dir: tempfile::TempDir,
    /// uid and gid of the `postgres` user, who runs every command.
    pub ids: (u32, u32),
    /// The `embassy` program.
    exe: PathBuf,
    /// Extra environment for every command.
    pub vars: Vec<(String, String)>,
    /// Sites of the vault besides `site` (folders, `s3://` locations), each given to every
    /// command with another `--site`.
    pub more_sites: Vec<String>,
}

impl PgCli {
    /// A new home (folder name starting with `prefix`) with an initialised vault.
    pub fn new(exe: &str, prefix: &str) -> Self {
        Self::with_init(exe, prefix, &[])
    }

    /// The same, `embassy init` given `extra` arguments (`--min-age 0`, say).
    pub fn with_init(exe: &str, prefix: &str, extra: &[&str]) -> Self {
        let env = Self::uninitialised(exe, prefix);
        env.init(extra);
        env
    }

    /// A new home without a vault yet: set `more_sites` and `vars`, then [`PgCli::init`].
    pub fn uninitialised(exe: &str, prefix: &str) -> Self {
        let (dir, ids) = postgres_home(prefix);
        PgCli {
            dir,
            ids,
            exe: PathBuf::from(exe),
            vars: Vec::new(),
            more_sites: Vec::new(),
        }
    }

    /// `embassy init` of the vault at every site, given `extra` arguments.
    pub fn init(&self, extra: &[&str]) {
        let mut args = vec!["init"];
        args.extend_from_slice(extra);
        self.run(&args);
    }

    /// Every site of the vault as `--site` gives it: `site`, then `more_sites`.
    pub fn sites(&self) -> Vec<String> {
        let mut all = vec![arg(&self.site()).to_string()];
        all.extend(self.more_sites.iter().cloned());
        all
    }

    /// A path in the home.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The site folder.
    pub fn site(&self) -> PathBuf {
        self.path("site")
    }

    /// An `embassy` command run by this process's user (root, in the tests), with the vault's
    /// site, key file and passphrase file, and a state folder of its own (`state-caller`: a
    /// state folder is private to one user).
    pub fn cmd_as_caller(&self, args: &[&str]) -> Command {
        self.command("state-caller", args)
    }

    fn command(&self, state: &str, args: &[&str]) -> Command {
        self.command_with_key(state, &self.path("vault.key"), args)
    }

    fn command_with_key(&self, state: &str, key: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        for site in self.sites() {
            c.arg("--site").arg(site);
        }
        c.arg("--key-file")
            .arg(key)
            .arg("--passphrase-file")
            .arg(self.path("pass"))
            .arg("--state-dir")
            .arg(self.path(state))
            .arg("--quiet")
            .args(args)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_KEY_FILE")
            .env_remove("EMBASSY_STATE_DIR")
            .env_remove("EMBASSY_PASSPHRASE")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .env("HOME", self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// An `embassy` command run as the `postgres` user (state folder `state`).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.command("state", args);
        c.uid(self.ids.0).gid(self.ids.1);
        c
    }

    /// An `embassy` command run as `postgres` with another key file (a credential the root
    /// issued, under the same passphrase file).
    pub fn cmd_with_key(&self, key: &Path, args: &[&str]) -> Command {
        let mut c = self.command_with_key("state", key, args);
        c.uid(self.ids.0).gid(self.ids.1);
        c
    }

    /// Runs a command as `postgres`; what it did.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("embassy runs")
    }

    /// Issues a sealing credential of `dataset` labelled `label` into `<label>.cred` in the
    /// home (`embassy keys issue --sealing`); its file and public key (hex).
    pub fn issue_sealing(&self, dataset: &str, label: &str) -> (PathBuf, String) {
        let file = self.path(&format!("{label}.cred"));
        let out = self.run(&[
            "--json",
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            dataset,
            "--label",
            label,
            "--out",
            file.to_str().expect("a UTF-8 home path"),
        ]);
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("keys issue answered {out:?}: {e}"));
        let public = v["signer"]
            .as_str()
            .unwrap_or_else(|| panic!("no signer in {v}"))
            .to_string();
        (file, public)
    }

    /// Runs a command that must succeed; its standard output.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "embassy {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Runs a command that must fail; its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(!out.status.success(), "embassy {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The newest durable WAL position `embassy pg stream --durable-log durable.log` wrote.
    pub fn durable(&self) -> u64 {
        self.durable_in("durable.log")
    }

    /// The newest durable WAL position a streamer wrote to its durable log `log` in the home.
    pub fn durable_in(&self, log: &str) -> u64 {
        std::fs::read_to_string(self.path(log))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    /// Once the stream logging to `durable.log` made its first WAL durable, `embassy pg
    /// base-backup DATASET --wal-streamed` of the server at `conninfo` (its WAL comes from that
    /// stream, started by the caller with [`PgCli::stream`] or [`PgCli::stream_from`]).
    pub fn base_backup_streamed(&self, conninfo: &str, dataset: &str) {
        crate::wait_until("the first durable WAL", Duration::from_secs(60), || {
            self.durable() > 0
        });
        self.run(&[
            "pg",
            "base-backup",
            dataset,
            "--conninfo",
            conninfo,
            "--wal-streamed",
        ]);
    }

    /// `embassy pg stream DATASET` from `pg` (slot `embassy_wal`, created), logging durable
    /// positions to `durable.log`; stopped when the [`Stopper`] is dropped.
    pub fn stream(&self, pg: &PgServer, dataset: &str) -> Stopper {
        self.stream_from(
            &self.path("vault.key"),
            &pg.conninfo(),
            dataset,
            "durable.log",
        )
    }

    /// The same from the server at `conninfo` (an `application_name` there makes the streamer
    /// a synchronous standby), signed with key file `key`, logging to `log` in the home (and
    /// what it says on standard error to `log.err`).
    pub fn stream_from(&self, key: &Path, conninfo: &str, dataset: &str, log: &str) -> Stopper {
        let said = std::fs::File::create(self.path(&format!("{log}.err")))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let log = self.path(log);
        Stopper(
            self.cmd_with_key(
                key,
                &[
                    "pg",
                    "stream",
                    dataset,
                    "--conninfo",
                    conninfo,
                    "--slot",
                    "embassy_wal",
                    "--create-slot",
                    "--durable-log",
                    log.to_str().expect("a UTF-8 path"),
                ],
            )
            .stdout(Stdio::null())
            .stderr(said)
            .spawn()
            .expect("embassy runs"),
        )
    }

    /// A folder in the home owned by `postgres` (for data directories and scratch folders).
    pub fn postgres_folder(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).expect("create a folder");
        std::os::unix::fs::chown(&p, Some(self.ids.0), Some(self.ids.1)).expect("chown");
        p
    }
}

/// Stops a child process (SIGTERM, then wait) when dropped, also when a test fails.
pub struct Stopper(pub Child);

impl Drop for Stopper {
    fn drop(&mut self) {
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A path as a command-line argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
