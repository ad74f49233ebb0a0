//! Bad input gets a clear error naming the problem and the way out, a non-zero exit code, no
//! panic — and changes nothing it should not.
//!
//! Exit codes: 0 ok, 1 failure, 2 usage (argument parsing), 3 integrity problem.
//!
//! Vaults are created through the library with a key file wrapped under the cheapest Argon2
//! parameters the format accepts, so each invocation costs milliseconds; `init` itself (64 MiB
//! Argon2) runs only where it is the subject.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_sites::LocalSite;

use embassy_testkit::cli::{Embassy, Run, CHEAP, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// A vault (with one tree version and one stream version) and a key file, in a temporary home.
struct Env {
    tmp: tempfile::TempDir,
    vault: PathBuf,
    key: PathBuf,
    src: PathBuf,
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
        let site: Arc<dyn Site> = Arc::new(LocalSite::new(&vault).unwrap());
        let root = RootSecret::generate();
        let v = Vault::create(site, &root).unwrap();
        KeyFile::seal(&root, &v.config().vault_id, PASS.as_bytes(), CHEAP)
            .unwrap()
            .store(&key)
            .unwrap();
        let env = Self {
            tmp,
            vault,
            key,
            src,
        };
        env.run(&["backup", "docs"], &[&env.src]).ok();
        env.run_stdin(&["backup", "dump", "--stdin"], b"stream bytes")
            .ok();
        env
    }

    fn home(&self) -> &Path {
        self.tmp.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// A command with a clean environment: no EMBASSY_* variables, HOME in the temp dir.
    fn bare(&self) -> Command {
        Embassy::new(EXE, self.home())
            .without_passphrase()
            .command()
    }

    /// `--site VAULT --key-file KEY --quiet`, the passphrase in the environment.
    fn cmd(&self) -> Command {
        self.cmd_at(&self.vault, &self.key)
    }

    /// `--site SITE --key-file KEY --quiet`, the passphrase in the environment.
    fn cmd_at(&self, site: &Path, key: &Path) -> Command {
        let mut cmd = self.bare();
        cmd.env("EMBASSY_PASSPHRASE", PASS)
            .arg("--site")
            .arg(site)
            .arg("--key-file")
            .arg(key)
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

    /// The JSON list of a dataset's versions.
    fn versions(&self, dataset: &str) -> Vec<serde_json::Value> {
        let r = self.run(&["--json", "versions", dataset], &[]);
        r.ok();
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()["versions"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn exec(cmd: Command, stdin: Option<&[u8]>) -> Run {
    let run = embassy_testkit::cli::exec(cmd, stdin);
    assert!(run.code >= 0, "killed by a signal: {run:?}");
    run
}

fn os(s: &str) -> OsString {
    OsStr::new(s).to_os_string()
}

// ---------------------------------------------------------------------------------------------
// Keys and passphrases
// ---------------------------------------------------------------------------------------------

#[test]
fn wrong_passphrase() {
    let env = Env::new();
    let mut cmd = env.cmd();
    cmd.env("EMBASSY_PASSPHRASE", "not the passphrase")
        .args(["restore", "docs", "--to"])
        .arg(env.path("out"));
    exec(cmd, None).fails(12, &["wrong passphrase", &env.key.display().to_string()]);
    assert!(!env.path("out").exists(), "nothing is restored");

    // Same from a passphrase file.
    let pass_file = env.path("pass");
    fs::write(&pass_file, "still wrong\n").unwrap();
    let mut cmd = env.cmd();
    cmd.env_remove("EMBASSY_PASSPHRASE")
        .arg("--passphrase-file")
        .arg(&pass_file)
        .args(["backup", "docs"])
        .arg(&env.src);
    exec(cmd, None).fails(12, &["wrong passphrase"]);
    assert_eq!(env.versions("docs").len(), 1, "no version was added");

    // An empty passphrase file is named as such.
    fs::write(&pass_file, "\n").unwrap();
    let mut cmd = env.cmd();
    cmd.env_remove("EMBASSY_PASSPHRASE")
        .arg("--passphrase-file")
        .arg(&pass_file)
        .args(["backup", "docs"])
        .arg(&env.src);
    exec(cmd, None).fails(1, &["passphrase file", "empty"]);
}

#[test]
fn missing_key_file() {
    let env = Env::new();
    let mut cmd = env.bare();
    cmd.env("EMBASSY_PASSPHRASE", PASS)
        .arg("--site")
        .arg(&env.vault)
        .arg("--key-file")
        .arg(env.path("nowhere.key"))
        .args(["restore", "docs", "--to"])
        .arg(env.path("out"));
    exec(cmd, None).fails(1, &["nowhere.key", "not found", "--key-file"]);

    // No --key-file at all: the default location is looked up, and named.
    let mut cmd = env.bare();
    cmd.env("EMBASSY_PASSPHRASE", PASS)
        .arg("--site")
        .arg(&env.vault)
        .args(["backup", "docs"])
        .arg(&env.src);
    exec(cmd, None).fails(1, &["data-embassy/keys", "not found", "--key-file"]);
}

#[test]
fn key_file_of_another_vault() {
    let env = Env::new();
    let other = Env::new();
    let mut cmd = env.cmd_at(&env.vault, &other.key);
    cmd.args(["restore", "docs", "--to"]).arg(env.path("out"));
    let r = exec(cmd, None);
    r.fails(1, &["belongs to vault", "wrong key"]);
    assert!(!env.path("out").exists());

    // A key file whose vault id was edited to match is still refused (its secret is not this
    // vault's root).
    let mut forged = KeyFile::load(&other.key).unwrap();
    forged.vault_id = KeyFile::load(&env.key).unwrap().vault_id;
    let forged_path = env.path("forged.key");
    fs::write(&forged_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let mut cmd = env.cmd_at(&env.vault, &forged_path);
    cmd.args(["backup", "docs"]).arg(&env.src);
    exec(cmd, None).fails(12, &["wrong passphrase"]);
    assert_eq!(env.versions("docs").len(), 1);
}

#[test]
fn corrupt_key_file() {
    let env = Env::new();
    let bad = env.path("bad.key");
    for (content, words) in [
        (
            &b"{ this is not json"[..],
            &["bad.key", "not a valid key file"][..],
        ),
        (b"", &["bad.key", "not a valid key file"]),
        (b"\xff\xfe\x00binary", &["bad.key", "not a valid key file"]),
        (
            br#"{"format":"data-embassy-key-v1","vault_id":"x"}"#,
            &["bad.key", "not a valid key file"],
        ),
    ] {
        fs::write(&bad, content).unwrap();
        let mut cmd = env.cmd_at(&env.vault, &bad);
        cmd.args(["restore", "docs", "--to"]).arg(env.path("out"));
        exec(cmd, None).fails(1, words);
    }

    // Valid JSON, damaged values: the vault id is checked first, then the contents.
    let mut file: serde_json::Value = serde_json::from_slice(&fs::read(&env.key).unwrap()).unwrap();
    file["salt"] = "zz-not-hex".into();
    fs::write(&bad, file.to_string()).unwrap();
    let mut cmd = env.cmd_at(&env.vault, &bad);
    cmd.args(["backup", "docs"]).arg(&env.src);
    exec(cmd, None).fails(1, &["bad.key", "salt", "not hex"]);

    let mut file: serde_json::Value = serde_json::from_slice(&fs::read(&env.key).unwrap()).unwrap();
    file["kdf_params"]["memory_kib"] = 1.into();
    fs::write(&bad, file.to_string()).unwrap();
    let mut cmd = env.cmd_at(&env.vault, &bad);
    cmd.args(["backup", "docs"]).arg(&env.src);
    exec(cmd, None).fails(1, &["bad.key", "Argon2 memory"]);
}

#[test]
fn no_passphrase_and_no_terminal() {
    let env = Env::new();
    let mut cmd = env.bare();
    cmd.arg("--site")
        .arg(&env.vault)
        .arg("--key-file")
        .arg(&env.key)
        .args(["backup", "docs"])
        .arg(&env.src);
    exec(cmd, None).fails(
        1,
        &["EMBASSY_PASSPHRASE", "--passphrase-file", "not a terminal"],
    );

    let mut cmd = env.cmd();
    cmd.env("EMBASSY_PASSPHRASE", "")
        .args(["backup", "docs"])
        .arg(&env.src);
    exec(cmd, None).fails(1, &["EMBASSY_PASSPHRASE", "empty"]);
    assert_eq!(env.versions("docs").len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Sites and vaults
// ---------------------------------------------------------------------------------------------

#[test]
fn no_site() {
    let env = Env::new();
    let mut cmd = env.bare();
    cmd.arg("versions");
    exec(cmd, None).fails(1, &["no site given", "--site", "EMBASSY_SITE"]);

    let mut cmd = env.bare();
    cmd.args(["--site", "", "verify"]);
    exec(cmd, None).fails(1, &["empty site location", "--site"]);

    let mut cmd = env.bare();
    cmd.args(["--site", "ftp://host/vault", "verify"]);
    exec(cmd, None).fails(1, &["ftp://", "not supported"]);
}

#[test]
fn site_without_vault() {
    let env = Env::new();
    let empty = env.path("empty-site");
    fs::create_dir(&empty).unwrap();
    for args in [
        &["verify"][..],
        &["versions"],
        &["backup", "docs", "."],
        &["restore", "docs", "--to", "x"],
    ] {
        let mut cmd = env.cmd_at(&empty, &env.key);
        cmd.args(args);
        exec(cmd, None).fails(10, &["no vault at site", "embassy init"]);
    }
    // A folder that does not exist at all: the same, and nothing is created by reading.
    let mut cmd = env.cmd_at(&env.path("missing"), &env.key);
    cmd.arg("verify");
    exec(cmd, None).fails(10, &["no vault at site", "embassy init"]);
    assert!(!env.path("missing").exists());
}

#[test]
fn init_refuses_an_existing_vault_and_existing_key_files() {
    let env = Env::new();
    let config_before = fs::read(env.vault.join("config")).unwrap();
    let new_key = env.path("second.key");
    let mut cmd = env.bare();
    cmd.env("EMBASSY_PASSPHRASE", PASS)
        .arg("--site")
        .arg(&env.vault)
        .arg("--key-file")
        .arg(&new_key)
        .arg("init");
    exec(cmd, None).fails(1, &["already holds a vault", "refusing"]);
    assert_eq!(fs::read(env.vault.join("config")).unwrap(), config_before);
    assert!(
        !new_key.exists(),
        "no key file is left for a vault that was not made"
    );

    // A new site but an existing key file: refused, the key file is untouched.
    let key_before = fs::read(&env.key).unwrap();
    let mut cmd = env.bare();
    cmd.env("EMBASSY_PASSPHRASE", PASS)
        .arg("--site")
        .arg(env.path("new-site"))
        .arg("--key-file")
        .arg(&env.key)
        .arg("init");
    exec(cmd, None).fails(1, &["already exists", "never overwritten"]);
    assert_eq!(fs::read(&env.key).unwrap(), key_before);
    assert!(!env.path("new-site").join("config").exists());

    // And a real init works (the one 64 MiB Argon2 run of this file).
    let mut cmd = env.bare();
    cmd.env("EMBASSY_PASSPHRASE", PASS)
        .arg("--site")
        .arg(env.path("new-site"))
        .arg("--key-file")
        .arg(env.path("new.key"))
        .arg("init");
    let r = exec(cmd, None);
    r.ok();
    assert!(r.stdout.contains("created vault"), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Datasets and versions
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_dataset_names() {
    let env = Env::new();
    for name in ["Docs", "-x", "a/b", "..", "a b", "", &"x".repeat(65)] {
        // `--` so that a name starting with '-' reaches the dataset check.
        env.run(&["backup", "--", name], &[&env.src])
            .fails(1, &["not a valid dataset name", "a-z"]);
        let target = format!("{name}@1");
        env.run(&["restore", "--to", "/nonexistent/x", "--", &target], &[])
            .fails(1, &["not a valid dataset name"]);
    }
    let r = env.run(&["--json", "versions"], &[]);
    r.ok();
    let all: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        all["versions"].as_array().unwrap().len(),
        2,
        "only the two good versions"
    );
}

#[test]
fn unknown_versions() {
    let env = Env::new();
    let out = env.path("out");
    let out_s = out.to_str().unwrap();
    env.run(&["restore", "docs@99", "--to", out_s], &[])
        .fails(1, &["no version 99", "embassy versions docs"]);
    env.run(&["restore", "docs@abc", "--to", out_s], &[])
        .fails(1, &["not a version", "version number"]);
    env.run(&["restore", "docs@ffffffff", "--to", out_s], &[])
        .fails(1, &["no version whose id starts with ffffffff"]);
    env.run(&["restore", "nothing", "--to", out_s], &[])
        .fails(1, &["no dataset nothing", "the datasets are"]);
    assert!(!out.exists());
    // `versions` of an unknown dataset is an error too (issue 15, item 2): a typo, not an
    // empty dataset.
    env.run(&["versions", "nothing"], &[])
        .fails(1, &["no dataset nothing", "the datasets are"]);
}

#[test]
fn restore_into_non_empty_folder() {
    let env = Env::new();
    let out = env.path("out");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("a.txt"), b"precious").unwrap();
    let out_s = out.to_str().unwrap();
    env.run(&["restore", "docs", "--to", out_s], &[])
        .fails(1, &["not empty", "--overwrite"]);
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"precious");
    assert!(!out.join("sub").exists(), "nothing was restored");

    env.run(&["restore", "docs", "--to", out_s, "--overwrite"], &[])
        .ok();
    assert_eq!(fs::read(out.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(out.join("sub/b.txt")).unwrap(), b"beta");

    // A stream onto an existing file: refused without --overwrite.
    let file = env.path("dump.out");
    fs::write(&file, b"keep me").unwrap();
    let file_s = file.to_str().unwrap();
    env.run(&["restore", "dump", "--to", file_s], &[])
        .fails(1, &["dump.out", "--overwrite"]);
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
    env.run(&["restore", "dump", "--to", file_s, "--overwrite"], &[])
        .ok();
    assert_eq!(fs::read(&file).unwrap(), b"stream bytes");
}

#[test]
fn restoring_a_tree_needs_a_folder() {
    let env = Env::new();
    let r = env.run(&["restore", "docs"], &[]);
    r.fails(1, &["needs --to DIR"]);
    assert!(r.stdout.is_empty(), "nothing on stdout: {r:?}");
    env.run(&["restore", "docs", "--to", "-"], &[])
        .fails(1, &["needs --to DIR"]);
    // A stream goes to stdout without --to.
    let r = env.run(&["restore", "dump"], &[]);
    r.ok();
    assert_eq!(r.stdout, "stream bytes");
    // --path outside the version, or escaping it.
    let out = env.path("out");
    let out_s = out.to_str().unwrap();
    env.run(&["restore", "docs", "--to", out_s, "--path", "nope"], &[])
        .fails(1, &["nope", "not in version 1"]);
    env.run(&["restore", "docs", "--to", out_s, "--path", "../etc"], &[])
        .fails(1, &["may not contain '..'"]);
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

#[test]
fn backup_of_a_missing_path() {
    let env = Env::new();
    let missing = env.path("no-such-dir");
    env.run(&["backup", "docs"], &[&missing]).fails(
        1,
        &["no-such-dir", "cannot be read", "no version was recorded"],
    );
    // One good path and one missing: still nothing recorded.
    env.run(&["backup", "docs"], &[&env.src, &missing])
        .fails(1, &["no-such-dir", "no version was recorded"]);
    assert_eq!(env.versions("docs").len(), 1);
    // Nothing at all to back up.
    env.run(&["backup", "docs"], &[])
        .fails(1, &["nothing to back up", "--stdin", "--command"]);
}

#[test]
fn failing_command_records_no_version() {
    let env = Env::new();
    // Output first (several chunks' worth), then a failure.
    let r = env.run(
        &[
            "backup",
            "dump",
            "--command",
            "head -c 3000000 /dev/zero; echo oops >&2; exit 7",
        ],
        &[],
    );
    r.fails(1, &["exited with status 7", "no version was recorded"]);
    assert!(
        r.stderr.contains("oops"),
        "the command's stderr is shown: {r:?}"
    );
    assert_eq!(env.versions("dump").len(), 1, "no new version");

    // A command that is not found is the same case (sh exits 127).
    env.run(&["backup", "dump", "--command", "no-such-program-xyz"], &[])
        .fails(1, &["exited with status 127"]);
    assert_eq!(env.versions("dump").len(), 1);

    // What was stored on the way is unreferenced, and the vault still verifies.
    let v = env.run(&["verify"], &[]);
    v.ok();
    assert!(v.stdout.contains("vault OK"), "{v:?}");
    // A good command after the failures.
    env.run(&["backup", "dump", "--command", "printf fine"], &[])
        .ok();
    let versions = env.versions("dump");
    assert_eq!(versions.len(), 2);
    let r = env.run(&["restore", "dump@2"], &[]);
    r.ok();
    assert_eq!(r.stdout, "fine");
}

#[test]
fn command_killed_by_a_signal() {
    let env = Env::new();
    env.run(
        &["backup", "dump", "--command", "printf partial; kill -9 $$"],
        &[],
    )
    .fails(1, &["was killed", "no version was recorded"]);
    env.run(
        &["backup", "dump", "--command", "printf x; kill -TERM $$"],
        &[],
    )
    .fails(1, &["was killed"]);
    assert_eq!(env.versions("dump").len(), 1);
}

#[test]
fn stdin_conflicts_with_paths_and_command() {
    let env = Env::new();
    let src = env.src.to_str().unwrap();
    env.run(&["backup", "docs", "--stdin", src], &[])
        .fails(2, &["--stdin", "cannot be used with"]);
    env.run(&["backup", "docs", "--stdin", "--command", "true"], &[])
        .fails(2, &["--stdin", "cannot be used with"]);
    env.run(&["backup", "docs", "--command", "true", src], &[])
        .fails(2, &["--command", "cannot be used with"]);
    assert_eq!(env.versions("docs").len(), 1);
    // Unknown subcommands and flags are usage errors too.
    let mut cmd = env.bare();
    cmd.arg("frobnicate");
    exec(cmd, None).fails(2, &["frobnicate"]);
    let mut cmd = env.bare();
    cmd.args([os("verify"), os("--deeep")]);
    exec(cmd, None).fails(2, &["--deeep"]);
}

/// What cannot be read or checked this time is an outage, not damage (red team: a full or
/// missing `$TMPDIR` made `verify --deep` call an intact vault corrupt and advise a repair). The
/// intact vault verifies; without a usable `$TMPDIR` the deep check cannot spool packs: exit 1,
/// each pack NOT CHECKED, no PROBLEM, no "repair" advice.
#[test]
fn what_cannot_be_checked_is_not_called_damage() {
    let env = Env::new();
    env.run(&["verify", "--deep"], &[]).ok();
    let mut cmd = env.cmd();
    cmd.env("TMPDIR", env.path("no-such-folder"))
        .args(["verify", "--deep"]);
    let r = exec(cmd, None);
    assert_eq!(r.code, 1, "{r:?}");
    for words in ["NOT CHECKED", "$TMPDIR", "no damage found"] {
        assert!(r.text().contains(words), "no {words:?} in {r:?}");
    }
    assert!(!r.text().contains("PROBLEM"), "{r:?}");
    assert!(!r.text().contains("repair this site"), "{r:?}");
    let mut cmd = env.cmd();
    cmd.env("TMPDIR", env.path("no-such-folder"))
        .args(["--json", "verify", "--deep"]);
    let json = exec(cmd, None).json();
    assert_eq!(json["ok"], false, "{json}");
    assert_eq!(json["problems"], serde_json::json!([]), "{json}");
    assert!(
        json["unreadable"].as_array().is_some_and(|u| !u.is_empty()),
        "{json}"
    );
}
