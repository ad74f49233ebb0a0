//! `embassy config check` checks what it can without running a backup (issue 15, item 8): the
//! key file and the passphrase are there, the source folders exist, the site folders exist
//! and hold a vault. Each problem names its setting and the fix; once fixed, the check passes.

use embassy_testkit::cli::{Embassy, Run};

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

fn config(passphrase: &str) -> String {
    format!(
        "[agent]\nstate_dir = \"state\"\n[keys]\nfile = \"vault.key\"\n{passphrase}\n\
         [[sites]]\nname = \"lux\"\npath = \"sites/lux\"\n[[sites]]\nname = \"hel\"\n\
         path = \"sites/hel\"\n[[datasets]]\nname = \"register\"\n\
         source = {{ files = [\"data\"] }}\ninterval = \"1h\"\nrpo = \"2h\"\n"
    )
}

#[test]
fn config_check_names_missing_keys_sources_and_sites_with_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let embassy = Embassy::new(EMBASSY, dir);
    let file = dir.join("embassy.toml");
    let check = || -> Run { embassy.run(["config", "check", file.to_str().unwrap()], None) };
    std::fs::write(&file, config("passphrase_file = \"passphrase\"")).unwrap();
    // Nothing there yet: every missing piece is named, and the check fails.
    std::fs::create_dir_all(dir.join("sites/hel")).unwrap();
    let run = check();
    run.fails(
        2,
        &[
            "keys.file",
            "vault.key",
            "set `file` under [keys]",
            "keys.passphrase_file",
            "datasets.register.source",
            "data",
            "sites.lux",
            "does not exist",
            "sites.hel",
            "holds no vault",
            "sync --seed",
        ],
    );
    assert!(!run.stdout.contains("configuration OK"), "{run:?}");
    let json = embassy.run(["--json", "config", "check", file.to_str().unwrap()], None);
    assert_eq!(json.json()["ok"], false, "{json:?}");
    assert!(
        json.json()["findings"].as_array().unwrap().len() >= 5,
        "{json:?}"
    );

    // Fixed one by one, as the messages say.
    std::fs::write(dir.join("passphrase"), embassy_testkit::cli::PASS).unwrap();
    std::fs::remove_dir(dir.join("sites/hel")).unwrap();
    let sites = [dir.join("sites/lux"), dir.join("sites/hel")];
    embassy.ok(
        [
            "--key-file".as_ref(),
            dir.join("vault.key").as_os_str(),
            "--state-dir".as_ref(),
            dir.join("cli-state").as_os_str(),
            "--site".as_ref(),
            sites[0].as_os_str(),
            "--site".as_ref(),
            sites[1].as_os_str(),
            "init".as_ref(),
        ],
        None,
    );
    let run = check();
    run.fails(2, &["datasets.register.source"]);
    assert!(!run.stderr.contains("keys."), "{run:?}");
    assert!(!run.stderr.contains("sites."), "{run:?}");
    std::fs::create_dir(dir.join("data")).unwrap();
    let run = check();
    run.ok();
    assert!(run.stdout.contains("configuration OK"), "{run:?}");

    // An unset passphrase variable is a warning (the agent's environment may differ).
    std::fs::write(
        &file,
        config("passphrase_env = \"EMBASSY_TEST_UNSET_PASSPHRASE\""),
    )
    .unwrap();
    let run = check();
    run.ok();
    assert!(
        run.stderr.contains("warning: keys.passphrase_env")
            && run.stderr.contains("EMBASSY_TEST_UNSET_PASSPHRASE"),
        "{run:?}"
    );

    // One site without its vault while the other holds it: a warning (the agent leaves it out
    // and keeps protecting at the other), not an error.
    std::fs::rename(dir.join("sites/hel"), dir.join("hel.away")).unwrap();
    let run = check();
    run.ok();
    assert!(
        run.stderr.contains("warning: sites.hel")
            && run.stderr.contains("leaves it out and never fills it"),
        "{run:?}"
    );
}
