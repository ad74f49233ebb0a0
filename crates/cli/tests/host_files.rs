//! The recovery host's own files and terminal: what the client creates cannot be redirected by
//! links planted beside it, the per-host ledger lock stays private and gives up naming its
//! holder, and text that writers or sites control reaches the terminal with its control
//! characters escaped (issue 13).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_sites::LocalSite;

use embassy_testkit::cli::{exec, Embassy, Run, CHEAP, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// A vault with a tree version (`docs`: a.txt, sub/b.txt) and a stream version (`dump`).
struct Env {
    tmp: tempfile::TempDir,
    vault: PathBuf,
    key: PathBuf,
}

impl Env {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let vault = tmp.path().join("vault");
        let key = tmp.path().join("vault.key");
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::write(src.join("a.txt"), b"alpha").unwrap();
        fs::write(src.join("sub/b.txt"), b"beta").unwrap();
        fs::create_dir_all(tmp.path().join("tmpdir")).unwrap();
        let site: Arc<dyn Site> = Arc::new(LocalSite::new(&vault).unwrap());
        let root = RootSecret::generate();
        let v = Vault::create(site, &root).unwrap();
        KeyFile::seal(&root, &v.config().vault_id, PASS.as_bytes(), CHEAP)
            .unwrap()
            .store(&key)
            .unwrap();
        let env = Self { tmp, vault, key };
        env.run(&["backup", "docs"], &[&src]).ok();
        env.run_stdin(&["backup", "dump", "--stdin"], b"stream bytes")
            .ok();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn cmd(&self) -> Command {
        // The test kit's command (clean environment, its passphrase, home in the test's
        // folder), with the state folder where a user without XDG_STATE_HOME has it.
        let home = self.tmp.path();
        let mut cmd = Embassy::new(EXE, home)
            .env("TMPDIR", home.join("tmpdir"))
            .command();
        cmd.env_remove("XDG_STATE_HOME")
            .arg("--site")
            .arg(&self.vault)
            .arg("--key-file")
            .arg(&self.key)
            .arg("--quiet");
        cmd
    }

    fn run(&self, args: &[&str], paths: &[&Path]) -> Run {
        let mut cmd = self.cmd();
        cmd.args(args).args(paths);
        exec(cmd, None)
    }

    fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let mut cmd = self.cmd();
        cmd.args(args);
        exec(cmd, Some(stdin))
    }

    /// The state folder the CLI uses in this home.
    fn state_dir(&self) -> PathBuf {
        self.path(".local/state/data-embassy")
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------------------------------------
// Files we create cannot be redirected
// ---------------------------------------------------------------------------------------------

/// Links planted at the old predictable partial name and at the target itself are never
/// written through: the restored stream lands at the target, the files they point to stay.
#[test]
fn a_stream_restore_never_writes_through_planted_links() {
    let env = Env::new();
    let victim = env.path("victim");
    fs::write(&victim, b"precious").unwrap();
    let out = env.path("out");
    symlink(&victim, env.path("out.embassy-partial")).unwrap();
    env.run(&["restore", "dump", "--to"], &[&out]).ok();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::read(&out).unwrap(), b"stream bytes");
    assert_eq!(
        mode(&out),
        0o600,
        "a restored stream is private to its owner"
    );

    // A link at the target: refused without --overwrite (dangling or not), replaced with it,
    // never followed.
    let dangling = env.path("dangling");
    symlink(env.path("nowhere"), &dangling).unwrap();
    let r = env.run(&["restore", "dump", "--to"], &[&dangling]);
    assert!(r.code == 1 && r.stderr.contains("--overwrite"), "{r:#?}");
    assert!(!env.path("nowhere").exists());
    let linked = env.path("linked");
    symlink(&victim, &linked).unwrap();
    env.run(&["restore", "dump", "--overwrite", "--to"], &[&linked])
        .ok();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(!fs::symlink_metadata(&linked)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read(&linked).unwrap(), b"stream bytes");
    // Nothing temporary is left behind.
    let left: Vec<_> = fs::read_dir(env.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A file-tree restore refuses a target that is a link (it would restore elsewhere), and
/// replaces links planted at file names inside the target instead of writing through them.
#[test]
fn a_tree_restore_never_writes_through_planted_links() {
    let env = Env::new();
    let elsewhere = env.path("elsewhere");
    fs::create_dir(&elsewhere).unwrap();
    let target = env.path("restored");
    symlink(&elsewhere, &target).unwrap();
    let r = env.run(&["restore", "docs", "--to"], &[&target]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("symbolic link"), "{r:#?}");
    assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);

    let victim = env.path("victim");
    fs::write(&victim, b"precious").unwrap();
    let real = env.path("real");
    fs::create_dir(&real).unwrap();
    symlink(&victim, real.join("a.txt")).unwrap();
    env.run(&["restore", "docs", "--overwrite", "--to"], &[&real])
        .ok();
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert_eq!(fs::read(real.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(real.join("sub/b.txt")).unwrap(), b"beta");
}

// ---------------------------------------------------------------------------------------------
// The per-host ledger lock
// ---------------------------------------------------------------------------------------------

/// The lock lives in the state folder (0700), not in `$TMPDIR`: a private folder linked at the
/// old predictable name keeps its mode.
#[test]
fn the_ledger_lock_lives_in_the_private_state_folder() {
    let env = Env::new();
    let private = env.path("private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    let old = env.path("tmpdir/data-embassy-ledger-locks");
    let _ = fs::remove_dir(&old);
    symlink(&private, &old).unwrap();
    env.run_stdin(&["backup", "dump", "--stdin"], b"more bytes")
        .ok();
    assert_eq!(mode(&private), 0o700, "chmod'ed through a link");
    assert_eq!(fs::read_dir(&private).unwrap().count(), 0);
    let locks = env.state_dir().join("locks");
    assert_eq!(mode(&locks), 0o700);
    assert!(fs::read_dir(&locks).unwrap().count() >= 1);
}

/// A lock folder another user could write (red team: pre-created 0777 with a FIFO at the lock's
/// name, which made the pid write block for ever while holding the lock) is refused, and so is
/// a lock that is not a regular file, at once and with the way out.
#[test]
fn a_lock_folder_others_can_write_or_a_fifo_lock_is_refused_not_waited_on() {
    let env = Env::new();
    let locks = env.state_dir().join("locks");
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o777)).unwrap();
    let r = env.run_stdin(&["backup", "dump", "--stdin"], b"x");
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stderr.contains("not a private folder"), "{r:#?}");
    fs::set_permissions(&locks, fs::Permissions::from_mode(0o700)).unwrap();

    for entry in fs::read_dir(&locks).unwrap() {
        let path = entry.unwrap().path();
        fs::remove_file(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }
    let started = std::time::Instant::now();
    let r = env.run_stdin(&["backup", "dump", "--stdin"], b"x");
    assert!(r.stderr.contains("is not a regular file"), "{r:#?}");
    assert_ne!(r.code, 0, "{r:#?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// A lock held by another writer is waited for a bounded time, then the append fails with a
/// message naming the holder's pid (exit 11, locked).
#[test]
fn a_held_ledger_lock_times_out_naming_its_holder() {
    let env = Env::new();
    let locks = env.state_dir().join("locks");
    let files: Vec<PathBuf> = fs::read_dir(&locks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        2,
        "one lock per dataset at the site: {files:?}"
    );
    let mut held = Vec::new();
    for f in &files {
        let mut file = fs::OpenOptions::new().write(true).open(f).unwrap();
        file.lock().unwrap();
        file.set_len(0).unwrap();
        write!(file, "4242").unwrap();
        held.push(file);
    }
    let started = std::time::Instant::now();
    let mut cmd = env.cmd();
    cmd.env("EMBASSY_LEDGER_LOCK_TIMEOUT", "1")
        .args(["backup", "dump", "--stdin"]);
    let r = exec(cmd, Some(b"blocked"));
    assert_eq!(r.code, 11, "a held lock exits 11: {r:#?}");
    assert!(r.stderr.contains("pid 4242"), "{r:#?}");
    assert!(r.stderr.contains("EMBASSY_LEDGER_LOCK_TIMEOUT"), "{r:#?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    drop(held);
    env.run_stdin(&["backup", "dump", "--stdin"], b"unblocked")
        .ok();
}

// ---------------------------------------------------------------------------------------------
// Untrusted text reaches the terminal escaped
// ---------------------------------------------------------------------------------------------

const EVIL: &str = "ok\x1b[2J\x1b]0;owned\x07\nPROBLEM: none, vault OK\r";

/// A revocation reason (any writer's text in the ledger) with terminal escapes and new lines is
/// shown escaped by `history`; an object name at the site likewise by `verify`.
#[test]
fn writer_and_site_text_is_printed_escaped() {
    let env = Env::new();
    let signer = "07".repeat(32);
    env.run(
        &[
            "keys",
            "revoke",
            "--signer",
            &signer,
            "--dataset",
            "docs",
            "--reason",
            EVIL,
        ],
        &[],
    )
    .ok();
    let r = env.run(&["history", "docs"], &[]);
    r.ok();
    assert!(
        !r.stdout.contains('\x1b') && !r.stdout.contains('\r'),
        "{r:#?}"
    );
    assert!(
        r.stdout
            .contains("ok\\u{1b}[2J\\u{1b}]0;owned\\u{7}\\nPROBLEM: none, vault OK\\r"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.lines().any(|l| l.starts_with("PROBLEM")));

    // A site object named with escapes: noise, printed escaped.
    fs::write(env.vault.join(format!("ledger/docs/{EVIL}")), b"x").unwrap();
    let r = env.run(&["verify"], &[]);
    for out in [&r.stdout, &r.stderr] {
        assert!(!out.contains('\x1b') && !out.contains('\r'), "{r:#?}");
    }
    assert!(r.stdout.contains("ok\\u{1b}[2J"), "{r:#?}");
    assert!(!r.stdout.lines().any(|l| l.starts_with("PROBLEM: none")));
}

/// Processes of the same user (a source or alarm command, code in a restored database) cannot
/// read this process's environment through /proc: the passphrase in EMBASSY_PASSPHRASE stays
/// in it (red team: a source command read it from /proc/$PPID/environ). Runs as `nobody`,
/// because root may read any process.
#[test]
fn a_command_of_the_same_user_cannot_read_our_environment() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test becomes user nobody with setpriv: run it as root (CI does)"
    );
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let marker = "passphrase-marker-7f3a9c";
    let run = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(EXE)
            .args(["--site", "s", "--key-file", "k", "--state-dir", "st"])
            .args(args)
            .env("EMBASSY_PASSPHRASE", marker)
            .env("HOME", tmp.path())
            .current_dir(tmp.path())
            .stdin(Stdio::null())
            .output()
            .expect("setpriv (util-linux) runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    run(&["init", "--min-age", "0"]);
    run(&[
        "backup",
        "leak",
        "--command",
        "cat /proc/$PPID/environ > leak.txt 2> err.txt; echo hello",
    ]);
    let leak = fs::read(tmp.path().join("leak.txt")).unwrap();
    assert!(
        !String::from_utf8_lossy(&leak).contains(marker),
        "a command read the passphrase from its parent's /proc/PID/environ"
    );
    let err = fs::read_to_string(tmp.path().join("err.txt")).unwrap();
    assert!(err.contains("Permission denied"), "{err}");
}
