//! Custody of the keys at the command line: `keys recover` asking a person at a real terminal
//! for each share and for a new passphrase (twice), `keys passwd`, and the one rule for a new
//! passphrase (at least 12 characters, 5 of them different) wherever a new one is set.

use std::ffi::OsStr;
use std::path::Path;

use embassy_core::keys::keyfile::KeyFile;
use embassy_testkit::cli::{TestVault, PASS};
use embassy_testkit::pty::Pty;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const NEW_PASS: &str = "a new and longer passphrase";

/// The 2-of-3 custodian shares of the vault's root key.
fn shares(vault: &TestVault) -> Vec<String> {
    let run = vault.ok(
        "home",
        &vault.key,
        &[
            "--json",
            "keys",
            "split",
            "--threshold",
            "2",
            "--shares",
            "3",
        ],
        None,
    );
    run.json()["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn opens(key: &Path, pass: &str) -> bool {
    KeyFile::load(key)
        .unwrap()
        .open_payload(pass.as_bytes(), key)
        .is_ok()
}

#[test]
fn keys_recover_on_a_terminal_asks_for_each_share_and_a_new_passphrase_twice() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, dir.path(), "lux");
    let shares = shares(&vault);
    let out = dir.path().join("recovered.key");
    let mut cmd = vault.embassy.clone().without_passphrase().command();
    cmd.args([
        OsStr::new("--site"),
        vault.site.as_os_str(),
        OsStr::new("--state-dir"),
        vault.state("embassy").as_os_str(),
        OsStr::new("keys"),
        OsStr::new("recover"),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    let mut pty = Pty::spawn(cmd);
    pty.expect("Share 1: ");
    // A typing mistake is caught at once and asked again.
    let mut typo = shares[2].clone();
    let last = typo.pop().unwrap();
    typo.push(if last == 'q' { 'p' } else { 'q' });
    pty.send_line(&typo);
    pty.expect("typing mistake");
    pty.expect("Share 1: ");
    pty.send_line(&shares[2]);
    pty.expect("needs 2 of its 3 shares: 1 still needed");
    pty.expect("Share 2 of 2 (1 still needed): ");
    pty.send_line(&shares[0]);
    pty.expect("enough to recover");
    // The passphrase asked for is named as new, held to the rule, and asked twice.
    pty.expect("New passphrase: ");
    pty.send_line("too short");
    pty.expect("at least 12");
    pty.expect("New passphrase: ");
    pty.send_line(NEW_PASS);
    pty.expect("Repeat the new passphrase: ");
    pty.send_line("a new and longer passphrasE");
    pty.expect("differ");
    pty.expect("New passphrase: ");
    pty.send_line(NEW_PASS);
    pty.expect("Repeat the new passphrase: ");
    pty.send_line(NEW_PASS);
    let (code, rest) = pty.finish();
    assert_eq!(code, 0, "{rest}");
    assert!(rest.contains("recovered the root key"), "{rest}");
    // Shares are typed without echo: none shows on the terminal.
    assert!(!rest.contains(&shares[0]), "{rest}");
    assert!(opens(&out, NEW_PASS));
}

#[test]
fn keys_recover_from_stdin_keeps_working_and_refuses_a_weak_new_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, dir.path(), "lux");
    let shares = shares(&vault);
    let typed = format!("{}\n{}\n", shares[1], shares[2]);
    let out = dir.path().join("recovered.key");
    let out_s = out.to_str().unwrap();
    let weak = vault.embassy.clone().env("EMBASSY_PASSPHRASE", "short");
    let run = weak.run(
        [
            "--site",
            vault.site.to_str().unwrap(),
            "--state-dir",
            vault.state("weak").to_str().unwrap(),
            "keys",
            "recover",
            "--out",
            out_s,
        ],
        Some(typed.as_bytes()),
    );
    run.fails(1, &["too short", "at least 12"]);
    assert!(!out.exists());
    vault.ok(
        "embassy",
        &out,
        &["keys", "recover", "--out", out_s],
        Some(typed.as_bytes()),
    );
    assert!(opens(&out, PASS));
}

#[test]
fn keys_passwd_changes_the_passphrase_atomically_and_keeps_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, dir.path(), "lux");
    vault.backup_bytes("home", "registry", b"the land registry, before the change");
    let keys = dir.path().join("keys");
    let key = keys.join("mine.key");
    std::fs::copy(&vault.key, &key).unwrap();
    let new_file = dir.path().join("new-pass");
    let key_s = key.to_str().unwrap();
    let new_s = new_file.to_str().unwrap();

    // A weak new passphrase is refused, the key file untouched.
    std::fs::write(&new_file, "password1\n").unwrap();
    let before = std::fs::read(&key).unwrap();
    vault
        .embassy
        .run(
            [
                "--key-file",
                key_s,
                "keys",
                "passwd",
                "--new-passphrase-file",
                new_s,
            ],
            None,
        )
        .fails(1, &["at least 12"]);
    assert_eq!(std::fs::read(&key).unwrap(), before);

    // With no new passphrase and no terminal, it says how to give one.
    vault
        .embassy
        .run(["--key-file", key_s, "keys", "passwd"], None)
        .fails(1, &["--new-passphrase-file"]);

    std::fs::write(&new_file, format!("{NEW_PASS}\n")).unwrap();
    let run = vault.embassy.ok(
        [
            "--json",
            "--key-file",
            key_s,
            "keys",
            "passwd",
            "--new-passphrase-file",
            new_s,
        ],
        None,
    );
    assert_eq!(run.json()["purpose"], "root");
    assert!(
        !opens(&key, PASS),
        "the old passphrase still opens the key file"
    );
    assert!(opens(&key, NEW_PASS));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Nothing is left beside it (the temporary file was renamed into place).
    let left: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!left.iter().any(|n| n.starts_with(".mine.key")), "{left:?}");

    // The vault's keys are unchanged: the backup made before restores with the new passphrase,
    // and the old passphrase no longer opens the file.
    let (run, bytes) = vault.restore_bytes("home", &key, "registry");
    run.fails(12, &["wrong passphrase"]);
    assert!(bytes.is_empty());
    let with_new = TestVault {
        embassy: vault.embassy.clone().env("EMBASSY_PASSPHRASE", NEW_PASS),
        site: vault.site.clone(),
        key: key.clone(),
        base: vault.base.clone(),
        vault_id: vault.vault_id.clone(),
    };
    let (run, bytes) = with_new.restore_bytes("home", &key, "registry");
    run.ok();
    assert_eq!(bytes, b"the land registry, before the change");
}

#[test]
fn keys_passwd_on_a_terminal_asks_the_current_passphrase_then_the_new_one_twice() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, dir.path(), "lux");
    let key = dir.path().join("mine.key");
    std::fs::copy(&vault.key, &key).unwrap();
    let mut cmd = vault.embassy.clone().without_passphrase().command();
    cmd.args([OsStr::new("--key-file"), key.as_os_str()])
        .args(["keys", "passwd"]);
    let mut pty = Pty::spawn(cmd);
    pty.expect("Current passphrase of");
    pty.send_line(PASS);
    pty.expect("New passphrase: ");
    pty.send_line(NEW_PASS);
    pty.expect("Repeat the new passphrase: ");
    pty.send_line(NEW_PASS);
    let (code, rest) = pty.finish();
    assert_eq!(code, 0, "{rest}");
    assert!(rest.contains("passphrase of"), "{rest}");
    assert!(opens(&key, NEW_PASS));
    assert!(!opens(&key, PASS));
}

#[test]
fn a_new_passphrase_too_short_or_too_plain_is_refused_wherever_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, dir.path(), "lux");
    // init
    let weak = vault
        .embassy
        .clone()
        .env("EMBASSY_PASSPHRASE", "aaaaaaaaaaaaaaaa");
    let site = dir.path().join("new-site");
    let key = dir.path().join("new.key");
    weak.run(
        [
            "--site",
            site.to_str().unwrap(),
            "--key-file",
            key.to_str().unwrap(),
            "init",
        ],
        None,
    )
    .fails(1, &["too weak", "at least 5 different"]);
    assert!(!key.exists());
    // keys issue --new-passphrase-file
    let pass_file = dir.path().join("weak");
    std::fs::write(&pass_file, "0123456789\n").unwrap();
    let cred = dir.path().join("reader.key");
    vault
        .run(
            "home",
            &vault.key,
            &[
                "keys",
                "issue",
                "--reader",
                "--dataset",
                "registry",
                "--label",
                "auditors",
                "--out",
                cred.to_str().unwrap(),
                "--new-passphrase-file",
                pass_file.to_str().unwrap(),
            ],
            None,
        )
        .fails(1, &["too short", "at least 12"]);
    assert!(!cred.exists());
    // witness-key
    let witness = dir.path().join("witness.key");
    weak.run(["witness-key", "--out", witness.to_str().unwrap()], None)
        .fails(1, &["too weak"]);
    assert!(!witness.exists());
}
