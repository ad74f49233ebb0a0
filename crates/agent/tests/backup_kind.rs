//! A scheduled backup's failure keeps its kind through embassy-ops's backup: a PostgreSQL base
//! backup refused for a configuration reason (`sslmode=disable` to a server off this machine) is a
//! configuration problem on the agent's dashboard and alarms, not a generic source failure.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use embassy_agent::config::Config;
use embassy_agent::run;
use embassy_core::ErrorKind;
use embassy_ops::init::{init, InitOptions};
use embassy_ops::unlock::{Passphrase, PassphraseSource};
use embassy_testkit::cli::{CHEAP, PASS};

#[test]
fn a_refused_base_backup_is_a_configuration_problem_for_the_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let site = dir.join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(dir.join("pass"), PASS).unwrap();
    let pass_file = dir.join("pass");
    let sources = [PassphraseSource::File(&pass_file)];
    let passphrase = Passphrase {
        sources: &sources,
        missing: "no passphrase",
    };
    init(
        &InitOptions {
            key_file: Some(dir.join("vault.key")),
            kdf: CHEAP,
            ..InitOptions::new(vec![site.display().to_string()], dir.join("init-state"))
        },
        &passphrase,
    )
    .unwrap();
    let text = format!(
        "[agent]\nstate_dir = \"{state}\"\n[keys]\nfile = \"vault.key\"\npassphrase_file = \
         \"pass\"\n[[sites]]\nname = \"a\"\npath = \"{site}\"\n[[datasets]]\nname = \
         \"registry\"\nsource = {{ postgres = {{ conninfo = \"host=192.0.2.7 user=embassy sslmode=disable\" }} }}\n\
         interval = \"1h\"\nrpo = \"2h\"\n",
        state = dir.join("state").display(),
        site = site.display(),
    );
    let config = Config::parse(&text, &dir.join("embassy.toml")).unwrap_or_else(|e| panic!("{e}"));
    let cancel = Arc::new(AtomicBool::new(false));
    let vault = run::open_vault(&config, &cancel).unwrap();
    let keyring = run::unlock(&config.keys, &vault).unwrap();
    let e = run::backup_dataset(&config, &keyring, "registry", &cancel).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.to_string().contains("192.0.2.7"), "{e}");
}
