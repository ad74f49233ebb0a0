//! The documented exit codes (`crates/cli/src/exit.rs`, `embassy --help`, README), each
//! produced by the real binary: a damaged vault 3, an overdue dataset 4, no vault at the site
//! 10, a held lock 11, a wrong passphrase 12.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Env {
    /// A vault at `sites/a` with one version of dataset `population`, and an embassy.toml for it
    /// that also names dataset `never`, which has no version.
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        fs::write(dir.join("passphrase"), "exit code test passphrase\n").unwrap();
        fs::create_dir_all(dir.join("data")).unwrap();
        fs::write(dir.join("data/people.csv"), "1;Mari;Tamm\n").unwrap();
        fs::write(
            dir.join("embassy.toml"),
            r#"[agent]
state_dir = "state"

[keys]
file = "vault.key"
passphrase_file = "passphrase"

[[sites]]
name = "a"
path = "sites/a"

[[datasets]]
name = "population"
source = { files = ["data"] }
interval = "1h"
rpo = "2h"

[[datasets]]
name = "never"
source = { files = ["data"] }
interval = "1h"
rpo = "2h"
"#,
        )
        .unwrap();
        let env = Env { _tmp: tmp, dir };
        let out = env.embassy(&["--site", "sites/a", "init"]);
        assert!(out.status.success(), "init: {}", show(&out));
        let out = env.embassy(&["--site", "sites/a", "backup", "population", "data"]);
        assert!(out.status.success(), "backup: {}", show(&out));
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn embassy(&self, args: &[&str]) -> Output {
        Command::new(EMBASSY)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_PASSPHRASE")
            .env("EMBASSY_STATE_DIR", self.path("cli-state"))
            .env("EMBASSY_KEY_FILE", self.path("vault.key"))
            .env("EMBASSY_PASSPHRASE", "exit code test passphrase")
            .stdin(Stdio::null())
            .output()
            .expect("run embassy")
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every file under `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_help_lists_every_exit_code() {
    let out = Command::new(EMBASSY).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Exit codes:"), "{help}");
    for line in ["  3 ", "  4 ", "  10 ", "  11 ", "  12 "] {
        assert!(help.contains(line), "{line:?} missing: {help}");
    }
}

/// A dataset without a version is overdue, not damaged: 4 (it was 3, like damage); damage
/// stays 3.
#[test]
fn an_overdue_dataset_exits_4_and_damage_exits_3() {
    let env = Env::new();
    let out = env.embassy(&["status", "--config", "embassy.toml"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let out = env.embassy(&["status", "--config", "embassy.toml", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));

    // Damage a pack: verify finds it and exits 3, not 4.
    let pack = files(&env.path("sites/a/packs"))
        .into_iter()
        .next()
        .expect("a pack");
    let mut bytes = fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&pack, bytes).unwrap();
    let out = env.embassy(&["--site", "sites/a", "verify", "--deep"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    // Once the agent's keyless verification has found it, status --config says damage: 3.
    let agent = env.embassy(&["agent", "--config", "embassy.toml", "--once"]);
    let log = String::from_utf8_lossy(&agent.stdout).to_string()
        + &String::from_utf8_lossy(&agent.stderr);
    assert!(log.contains("verify a: FAILED"), "{log}");
    assert!(
        !log.contains("1 problems") && !log.contains("1 files"),
        "{log}"
    );
    let out = env.embassy(&["status", "--config", "embassy.toml"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
}

#[test]
fn no_vault_at_the_site_exits_10() {
    let env = Env::new();
    fs::create_dir_all(env.path("sites/empty")).unwrap();
    let out = env.embassy(&["--site", "sites/empty", "versions"]);
    assert_eq!(out.status.code(), Some(10), "{}", show(&out));
}

#[test]
fn a_wrong_passphrase_exits_12() {
    let env = Env::new();
    let out = Command::new(EMBASSY)
        .args(["--site", "sites/a", "restore", "population", "--to", "out"])
        .current_dir(&env.dir)
        .env_remove("EMBASSY_SITE")
        .env("EMBASSY_STATE_DIR", env.path("cli-state"))
        .env("EMBASSY_KEY_FILE", env.path("vault.key"))
        .env("EMBASSY_PASSPHRASE", "not the passphrase at all")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12), "{}", show(&out));
}

/// Another agent holding the state folder's lock: 11, naming the holder.
#[test]
fn a_held_agent_lock_exits_11() {
    let env = Env::new();
    fs::create_dir_all(env.path("state")).unwrap();
    let mut lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.path("state/agent.lock"))
        .unwrap();
    lock.lock().unwrap();
    write!(lock, "4242").unwrap();
    let out = env.embassy(&["agent", "--config", "embassy.toml", "--once"]);
    assert_eq!(out.status.code(), Some(11), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("4242"),
        "{}",
        show(&out)
    );
}
