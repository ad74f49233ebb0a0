//! The CLI harness: the real `embassy` binary run with a clean environment (no `EMBASSY_*`
//! variables from the caller, HOME and XDG folders in a temporary home, the passphrase in
//! `EMBASSY_PASSPHRASE`), and a test vault made by `embassy init` whose key is re-sealed cheaply
//! so that each later command does not spend a second on the KDF.
//!
//! Cargo names the binary only to the cli crate's own tests (`env!("CARGO_BIN_EXE_embassy")`),
//! so the caller passes its path in: `Embassy::new(env!("CARGO_BIN_EXE_embassy"), home)`.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use embassy_core::keys::keyfile::{KdfParams, KeyFile};

/// The passphrase of every test key file.
pub const PASS: &str = "correct horse battery staple";

/// KDF settings that take milliseconds (the real defaults take about a second).
pub const CHEAP: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallelism: 1,
};

/// What one run of the binary did.
pub struct Run {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard output as it came (a stream restored to standard output).
    pub stdout_bytes: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    /// Standard output and standard error together, for searching either.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Standard output parsed as JSON (for `--json` runs); panics showing the run if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts exit code 0.
    pub fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    /// Asserts the exit code and that stderr holds every one of `words`.
    pub fn fails(&self, code: i32, words: &[&str]) -> &Self {
        assert_eq!(self.code, code, "{self:?}");
        for w in words {
            assert!(self.stderr.contains(w), "stderr lacks {w:?}: {self:?}");
        }
        self
    }
}

/// Arguments from string slices.
pub fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// The `embassy` binary, run in a temporary home.
#[derive(Debug, Clone)]
pub struct Embassy {
    exe: PathBuf,
    home: PathBuf,
    passphrase: Option<String>,
    vars: Vec<(OsString, OsString)>,
}

impl Embassy {
    /// The binary at `exe`, with HOME and the XDG folders under `home` and [`PASS`] as the
    /// passphrase.
    pub fn new(exe: impl Into<PathBuf>, home: &Path) -> Self {
        Self {
            exe: exe.into(),
            home: home.to_path_buf(),
            passphrase: Some(PASS.to_string()),
            vars: Vec::new(),
        }
    }

    /// The same, with no passphrase in the environment (commands that must ask for one).
    pub fn without_passphrase(mut self) -> Self {
        self.passphrase = None;
        self
    }

    /// The same, with `key=value` in every command's environment (set after the clean-up, so
    /// it may set an `EMBASSY_*` variable).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.vars
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// The temporary home.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// A command with a clean environment, nothing on stdin, output captured; add arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        for var in [
            "EMBASSY_SITE",
            "EMBASSY_KEY_FILE",
            "EMBASSY_STATE_DIR",
            "EMBASSY_VAULT_ID",
            "EMBASSY_PASSPHRASE",
        ] {
            cmd.env_remove(var);
        }
        if let Some(pass) = &self.passphrase {
            cmd.env("EMBASSY_PASSPHRASE", pass);
        }
        cmd.env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_STATE_HOME", self.home.join(".state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `embassy ARGS`, feeding `stdin` if given. Panics if the binary panicked.
    pub fn run<I, S>(&self, args: I, stdin: Option<&[u8]>) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let mut cmd = self.command();
        cmd.args(&args);
        exec(cmd, stdin)
    }

    /// Runs `embassy ARGS` and asserts it succeeded.
    pub fn ok<I, S>(&self, args: I, stdin: Option<&[u8]>) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let run = self.run(args, stdin);
        assert_eq!(run.code, 0, "{run:?}");
        run
    }
}

/// Runs `cmd` to the end, feeding `stdin` if given, and captures its output. Panics if the
/// program panicked (the binary must never panic, whatever it is given).
pub fn exec(mut cmd: Command, stdin: Option<&[u8]>) -> Run {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = child.wait_with_output().expect("the program finishes");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout_bytes: out.stdout,
    };
    assert!(
        !run.stderr.contains("panicked"),
        "{cmd:?} panicked: {run:?}"
    );
    run
}

/// Re-seals the key file at `slow` (any purpose: root key or credential) with [`CHEAP`] KDF
/// settings into `cheap`; returns its vault id.
pub fn cheapen(slow: &Path, cheap: &Path) -> String {
    let file = KeyFile::load(slow).expect("load the key file");
    let payload = file
        .open_payload(PASS.as_bytes(), slow)
        .expect("open the key file with PASS");
    KeyFile::seal_payload(
        &payload,
        &file.purpose,
        &file.vault_id,
        PASS.as_bytes(),
        CHEAP,
    )
    .expect("seal the key file")
    .store(cheap)
    .expect("store the key file");
    file.vault_id
}

/// Writes [`PASS`] to `dir/passphrase` (mode 0600) for `--passphrase-file`; returns its path.
pub fn passphrase_file(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("passphrase");
    std::fs::write(&path, format!("{PASS}\n")).expect("write the passphrase file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod the passphrase file");
    path
}

/// A temporary folder (named `prefix`...) owned by the `postgres` user, holding the passphrase
/// file `pass` ([`PASS`]): where PostgreSQL tests put a vault that the server's
/// `restore_command` (run as `postgres`) must read. Returns it and postgres's uid and gid, to run
/// `embassy` as that user (`CommandExt::uid`/`gid`).
pub fn postgres_home(prefix: &str) -> (tempfile::TempDir, (u32, u32)) {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create a temporary folder");
    let ids = crate::pg::postgres_uid_gid();
    std::fs::write(dir.path().join("pass"), PASS).expect("write the passphrase file");
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{}:{}", ids.0, ids.1))
        .arg(dir.path())
        .status()
        .expect("run chown");
    assert!(status.success(), "chown {} failed", dir.path().display());
    (dir, ids)
}

/// A vault in a local folder made by `embassy init`, its root key re-sealed cheaply; commands
/// run as a named machine (each its own state folder).
#[derive(Debug)]
pub struct TestVault {
    /// The binary, with its home at `base`.
    pub embassy: Embassy,
    /// The folder holding everything (the home).
    pub base: PathBuf,
    /// The site folder (`base/NAME`).
    pub site: PathBuf,
    /// The cheap root key file.
    pub key: PathBuf,
    /// The vault's id.
    pub vault_id: String,
}

impl TestVault {
    /// `embassy init` of a vault at `base/name` (keys under `base/keys`, state under
    /// `base/state`).
    pub fn init(exe: impl Into<PathBuf>, base: &Path, name: &str) -> Self {
        let embassy = Embassy::new(exe, base);
        let site = base.join(name);
        let slow = base.join(format!("keys/{name}.slow"));
        let state = base.join(format!("state/init-{name}"));
        embassy.ok(
            [
                OsStr::new("--json"),
                OsStr::new("--site"),
                site.as_os_str(),
                OsStr::new("--key-file"),
                slow.as_os_str(),
                OsStr::new("--state-dir"),
                state.as_os_str(),
                OsStr::new("init"),
            ],
            None,
        );
        let key = base.join(format!("keys/{name}.key"));
        let vault_id = cheapen(&slow, &key);
        Self {
            embassy,
            base: base.to_path_buf(),
            site,
            key,
            vault_id,
        }
    }

    /// The state folder of `machine`.
    pub fn state(&self, machine: &str) -> PathBuf {
        self.base.join(format!("state/{machine}"))
    }

    /// `embassy --site SITE --quiet --key-file KEY --state-dir STATE EXTRA` as `machine`.
    pub fn run(&self, machine: &str, key: &Path, extra: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut all = vec![
            OsString::from("--site"),
            self.site.clone().into_os_string(),
            OsString::from("--quiet"),
            OsString::from("--key-file"),
            key.as_os_str().to_os_string(),
            OsString::from("--state-dir"),
            self.state(machine).into_os_string(),
        ];
        all.extend(args(extra));
        self.embassy.run(all, stdin)
    }

    /// [`TestVault::run`], asserting success.
    pub fn ok(&self, machine: &str, key: &Path, extra: &[&str], stdin: Option<&[u8]>) -> Run {
        let run = self.run(machine, key, extra, stdin);
        assert_eq!(run.code, 0, "embassy {extra:?}: {run:?}");
        run
    }

    /// Backs up `bytes` as stream dataset `dataset` with the root key, as `machine`.
    pub fn backup_bytes(&self, machine: &str, dataset: &str, bytes: &[u8]) -> Run {
        self.ok(
            machine,
            &self.key,
            &["backup", dataset, "--stdin"],
            Some(bytes),
        )
    }

    /// `embassy restore TARGET --to FILE` as `machine` with `key`: the run and the bytes
    /// restored (empty when none were).
    pub fn restore_bytes(&self, machine: &str, key: &Path, target: &str) -> (Run, Vec<u8>) {
        let out = self.base.join(format!(
            "restored-{machine}-{}",
            target.replace(['@', '/'], "-")
        ));
        let _ = std::fs::remove_file(&out);
        let to = out.to_string_lossy().into_owned();
        let run = self.run(machine, key, &["restore", target, "--to", &to], None);
        (run, std::fs::read(&out).unwrap_or_default())
    }

    /// `embassy verify` as `machine` with the root key.
    pub fn verify(&self, machine: &str) -> Run {
        self.run(machine, &self.key, &["verify"], None)
    }

    /// Writes `bytes` at `rel` in the site folder, as a hostile site would.
    pub fn plant(&self, rel: &str, bytes: &[u8]) {
        let path = self.site.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the folder");
        }
        std::fs::write(path, bytes).expect("write the planted object");
    }
}

/// A temporary folder for a vault at one or more local sites, and the CLI run against them with
/// its key file (`vault.key`) and state folder (`state`) there. The shared environment of the
/// CLI tests that name their sites per command.
pub struct Vaults {
    _tmp: tempfile::TempDir,
    /// The folder everything lives in.
    pub dir: PathBuf,
    /// The CLI, run in `dir`.
    pub embassy: Embassy,
}

impl Vaults {
    /// A fresh folder; `bin` is the `embassy` binary (`env!("CARGO_BIN_EXE_embassy")`).
    pub fn new(bin: &str) -> Vaults {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let embassy = Embassy::new(bin, &dir);
        Vaults {
            _tmp: tmp,
            dir,
            embassy,
        }
    }

    /// The CLI run with `key` set to `value` in its environment (S3 credentials, say).
    pub fn env(mut self, key: &str, value: &str) -> Vaults {
        self.embassy = self.embassy.env(key, value);
        self
    }

    /// `p` under the folder, as a string.
    pub fn path(&self, p: &str) -> String {
        self.dir.join(p).display().to_string()
    }

    /// `embassy --key-file KEY --state-dir STATE --site S... ARGS`, with the state folder
    /// `state`.
    pub fn run(&self, sites: &[&str], args: &[&str]) -> Run {
        self.run_as("state", sites, args)
    }

    /// [`Vaults::run`], which must succeed.
    pub fn ok(&self, sites: &[&str], args: &[&str]) -> Run {
        self.ok_as("state", sites, args)
    }

    /// [`Vaults::run`] with the state folder `state` instead: another machine (its own
    /// remembered heads and queues) using the same key.
    pub fn run_as(&self, state: &str, sites: &[&str], args: &[&str]) -> Run {
        let mut all = vec![
            "--key-file".to_string(),
            self.path("vault.key"),
            "--state-dir".to_string(),
            self.path(state),
        ];
        for s in sites {
            all.push("--site".into());
            all.push(self.path(s));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        self.embassy.run(all, None)
    }

    /// [`Vaults::run_as`], which must succeed.
    pub fn ok_as(&self, state: &str, sites: &[&str], args: &[&str]) -> Run {
        let run = self.run_as(state, sites, args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        run
    }
}

/// Copies the folder `from` to `to` as `cp -a` does (modes, times, links): a site's state kept
/// to show it again later, the way a hostile or restored-from-backup site would.
pub fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("run cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}
