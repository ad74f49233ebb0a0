//! What is generated from the CLI definition and what every command shares: `--help` in task
//! order, shell completions and manual pages (clap_complete, clap_mangen), `"ok": true` in every
//! `--json` success, counts and sizes for people, and the workspace's `rust-version` against
//! Cargo.lock.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn embassy(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(EMBASSY)
        .args(args)
        .current_dir(dir)
        .env_remove("EMBASSY_SITE")
        .env("EMBASSY_STATE_DIR", dir.join("cli-state"))
        .env("EMBASSY_KEY_FILE", dir.join("vault.key"))
        .env("EMBASSY_PASSPHRASE", "help test passphrase")
        .env("HOME", dir)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run embassy");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `embassy --help` lists the commands by task: protect, prove, recover, custody, operate.
#[test]
fn help_lists_the_commands_in_task_order() {
    let out = Command::new(EMBASSY).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let at = |name: &str| {
        help.find(&format!("\n  {name} "))
            .unwrap_or_else(|| panic!("{name} not listed: {help}"))
    };
    let order = [
        "init", "backup", "versions", "verify", "restore", "sync", "keys", "agent", "gc",
    ];
    for pair in order.windows(2) {
        assert!(at(pair[0]) < at(pair[1]), "{pair:?} out of order:\n{help}");
    }
    assert!(help.contains("Commands by task:"), "{help}");
    assert!(!help.contains("\n  man "), "man is hidden: {help}");
}

/// The bash completion script loads and registers a completion for `embassy`.
#[test]
fn bash_completion_loads() {
    let script = format!(r#"source <("{EMBASSY}" completions bash) && complete -p embassy"#);
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("embassy"),
        "{}",
        show(&out)
    );
    for shell in ["zsh", "fish"] {
        let out = Command::new(EMBASSY)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", show(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("embassy") && text.contains("backup"),
            "{shell}: {text}"
        );
    }
}

/// `embassy man --out DIR` writes embassy.1 naming every command and a page per command; the
/// pages are valid roff that `man -l` renders.
#[test]
fn man_pages_render_and_name_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(EMBASSY)
        .args(["man", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let main = fs::read_to_string(tmp.path().join("embassy.1")).expect("embassy.1");
    assert!(main.starts_with(".ie") || main.contains(".TH"), "{main}");
    let help = Command::new(EMBASSY).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let commands: Vec<String> = help
        .split("Commands:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() > 15, "{commands:?}");
    for c in &commands {
        // roff writes a hyphen in a name as `\-`.
        assert!(
            main.contains(c.as_str()) || main.contains(&c.replace('-', "\\-")),
            "{c} not in embassy.1"
        );
        assert!(
            tmp.path().join(format!("embassy-{c}.1")).exists(),
            "no page for {c}"
        );
    }
    let rendered = Command::new("man")
        .args(["-l"])
        .arg(tmp.path().join("embassy-backup.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man (apt package man-db) renders the page");
    assert!(rendered.status.success(), "{}", show(&rendered));
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(text.contains("backup"), "{text}");
}

/// Every `--json` success carries `"ok": true`, as errors carry `"ok": false`.
#[test]
fn every_json_success_says_ok() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("passphrase"), "help test passphrase\n").unwrap();
    fs::create_dir_all(dir.join("data/sub")).unwrap();
    fs::write(dir.join("data/one.txt"), "one").unwrap();
    fs::write(
        dir.join("embassy.toml"),
        "[agent]\nstate_dir = \"state\"\n[keys]\nfile = \"vault.key\"\npassphrase_file = \"passphrase\"\n\
         [[sites]]\nname = \"a\"\npath = \"sites/a\"\n[[datasets]]\nname = \"tree\"\n\
         source = { files = [\"data\"] }\ninterval = \"1h\"\nrpo = \"2h\"\n",
    )
    .unwrap();
    let runs: Vec<(Vec<&str>, Option<&[u8]>)> = vec![
        (vec!["--site", "sites/a", "init"], None),
        (vec!["--site", "sites/a", "backup", "tree", "data"], None),
        (
            vec!["--site", "sites/a", "backup", "dump", "--stdin"],
            Some(b"bytes"),
        ),
        (
            vec!["--site", "sites/a", "restore", "tree", "--to", "out"],
            None,
        ),
        (vec!["--site", "sites/a", "verify"], None),
        (vec!["--site", "sites/a", "versions"], None),
        (vec!["--site", "sites/a", "versions", "tree"], None),
        (vec!["--site", "sites/a", "history", "tree"], None),
        (vec!["--site", "sites/a", "status"], None),
        (
            vec!["sync", "--seed", "--from", "sites/a", "--to", "sites/b"],
            None,
        ),
        (vec!["witness-key", "--out", "witness.key"], None),
        (vec!["approver-key", "--out", "approver.key"], None),
        (vec!["config", "check", "embassy.toml"], None),
        (vec!["status", "--config", "embassy.toml"], None),
    ];
    for (args, stdin) in runs {
        let mut all = vec!["--json"];
        all.extend(&args);
        let out = embassy(dir, &all, stdin);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert_eq!(v["ok"], true, "embassy {args:?}: {}", show(&out));
    }
    // The lists sit under a name, each element as before.
    let listed = |args: &[&str]| -> Value {
        let out = embassy(dir, args, None);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let versions = listed(&["--json", "--site", "sites/a", "versions"]);
    let all = versions["versions"].as_array().cloned().unwrap_or_default();
    assert_eq!(all.len(), 2, "{versions}");
    assert!(
        all.iter()
            .all(|v| v["version"] == 1 && v["ledger_seq"].is_u64()),
        "{versions}"
    );
    let history = listed(&["--json", "--site", "sites/a", "history", "tree"]);
    assert_eq!(history["dataset"], "tree", "{history}");
    let entries = history["entries"].as_array().cloned().unwrap_or_default();
    assert!(
        entries
            .iter()
            .any(|e| e["version"] == 1 && e["seq"].is_u64()),
        "{history}"
    );
    let out = embassy(
        dir,
        &[
            "--json", "--site", "sites/a", "restore", "nothing", "--to", "x",
        ],
        None,
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(v["ok"], false, "{}", show(&out));

    // For people: one file is "1 file", sizes in binary units with IEC names.
    let out = embassy(
        dir,
        &["--site", "sites/a", "restore", "tree", "--to", "again"],
        None,
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("1 file,"), "{}", show(&out));
    assert!(text.contains("1 folder,"), "{}", show(&out));
    assert!(text.contains("3 B into"), "{}", show(&out));
    let out = embassy(
        dir,
        &["--site", "sites/a", "backup", "big", "--stdin"],
        Some(&[7u8; 3 << 20]),
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("3.0 MiB"), "{}", show(&out));
    assert!(
        !text.contains(" MB") && !text.contains(" kB"),
        "{}",
        show(&out)
    );
}

/// `rust-version` is the newest any locked dependency needs (it said 1.85 while the aws-smithy
/// crates need 1.94.1).
#[test]
fn rust_version_is_what_the_lockfile_needs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // This machine's platform only: the packages of other platforms (Windows crates) are not
    // downloaded by a build here, and `--offline` cannot read them.
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc names its host");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(&root)
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", show(&out));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let parse = |v: &str| -> Vec<u64> { v.split('.').filter_map(|p| p.parse().ok()).collect() };
    let manifest = fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let ours = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim().trim_matches('"').to_string())
        .expect("rust-version in the workspace Cargo.toml");
    let needed = m["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["rust_version"].as_str())
        .map(parse)
        .max()
        .unwrap();
    // Every package inherits it (else the workspace value binds none of them).
    assert_eq!(
        env!("CARGO_PKG_RUST_VERSION"),
        ours,
        "the cli's rust-version"
    );
    assert!(
        parse(&ours) >= needed,
        "rust-version {ours}, the lockfile needs {needed:?}"
    );
}

/// An error whose message already includes its cause ("reading passphrase file missing: No such
/// file or directory") does not print that cause again as "caused by".
#[test]
fn a_cause_is_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let init = embassy(tmp.path(), &["--site", "s", "init"], None);
    assert!(init.status.success(), "{}", show(&init));
    let out = embassy(
        tmp.path(),
        &[
            "--site",
            "s",
            "--passphrase-file",
            "missing",
            "backup",
            "x",
            "--stdin",
        ],
        Some(b""),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(err.contains("No such file or directory"), "{err}");
    assert_eq!(
        err.matches("No such file or directory").count(),
        1,
        "a doubled cause: {err}"
    );
}
