//! Advice that works (issue 15, item 2): each hint the CLI gives for a typo is followed, and
//! the command it names does what it says. An unknown dataset is an error naming the datasets
//! there are and the nearest one; a mistyped site among sites that hold the vault is not told
//! to `embassy init`; a missing key file names --key-file to the CLI user.

use embassy_testkit::cli::Vaults;

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

/// The shared environment (`testkit::cli::Vaults`), with this file's own steps.
struct Env(Vaults);

impl std::ops::Deref for Env {
    type Target = Vaults;
    fn deref(&self) -> &Vaults {
        &self.0
    }
}

impl Env {
    fn new() -> Env {
        Env(Vaults::new(EMBASSY))
    }
}

/// The `embassy ...` commands `text` puts in backquotes, as arguments.
fn advised(text: &str) -> Vec<Vec<String>> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.starts_with("embassy "))
        .map(|c| c.split_whitespace().skip(1).map(String::from).collect())
        .collect()
}

#[test]
fn an_unknown_dataset_is_an_error_naming_the_nearest_and_the_advice_lists_it() {
    let env = Env::new();
    std::fs::create_dir_all(env.dir.join("src")).unwrap();
    std::fs::write(env.dir.join("src/a.txt"), "x\n").unwrap();
    env.ok(&["a"], &["init"]);
    // An empty vault: the error says it holds none yet.
    env.run(&["a"], &["versions", "population"])
        .fails(1, &["no dataset population", "no dataset yet"]);
    env.ok(&["a"], &["backup", "population", &env.path("src")]);
    env.ok(&["a"], &["backup", "land-registry", &env.path("src")]);
    for args in [
        vec!["versions", "popluation"],
        vec!["history", "popluation"],
        vec!["restore", "popluation", "--to", "out"],
    ] {
        let run = env.run(&["a"], &args);
        run.fails(
            1,
            &[
                "no dataset popluation",
                "did you mean population?",
                "land-registry, population",
            ],
        );
        // The advice names the real dataset, and works.
        let advice = advised(&run.stderr);
        assert_eq!(advice.len(), 1, "{run:?}");
        let mut followed = vec![
            "--key-file".to_string(),
            env.path("vault.key"),
            "--site".into(),
            env.path("a"),
            "--state-dir".into(),
            env.path("state"),
        ];
        followed.extend(advice[0].iter().cloned());
        let listed = env.embassy.ok(&followed, None);
        assert!(listed.stdout.contains("population"), "{listed:?}");
    }
    assert!(!env.dir.join("out").exists());
    // A name far from every dataset: no guess, the list only.
    let run = env.run(&["a"], &["versions", "taxes"]);
    run.fails(1, &["no dataset taxes", "land-registry, population"]);
    assert!(!run.stderr.contains("did you mean"), "{run:?}");
}

#[test]
fn a_mistyped_site_among_sites_with_the_vault_is_not_told_to_init() {
    let env = Env::new();
    env.ok(&["a", "b"], &["init"]);
    std::fs::create_dir_all(env.dir.join("src")).unwrap();
    let run = env.run(
        &["a", "bb"],
        &["--min-sites", "1", "backup", "x", &env.path("src")],
    );
    run.fails(10, &["holds no vault", &env.path("bb")]);
    assert!(!run.stderr.contains("embassy init"), "{run:?}");
    assert!(!env.dir.join("bb").exists());
    // The advice that names init is kept for a vault nowhere, and it works there.
    let run = env.run(&["c"], &["versions"]);
    run.fails(10, &["no vault at site"]);
    let init = advised(&run.stderr)
        .into_iter()
        .find(|c| c[0] == "init")
        .unwrap_or_else(|| panic!("no init advised: {run:?}"));
    let mut followed = vec![
        "--key-file".to_string(),
        env.path("c.key"),
        "--state-dir".into(),
        env.path("state-c"),
    ];
    followed.extend(init[1..].iter().cloned());
    followed.push("init".into());
    env.embassy.ok(&followed, None);
}

#[test]
fn a_missing_key_file_names_the_option_that_gives_it() {
    let env = Env::new();
    env.ok(&["a"], &["init"]);
    std::fs::create_dir_all(env.dir.join("src")).unwrap();
    let mut args = vec![
        "--key-file".to_string(),
        env.path("nokey"),
        "--site".into(),
        env.path("a"),
        "--state-dir".into(),
        env.path("state"),
    ];
    args.extend(["backup", "x", &env.path("src")].map(String::from));
    let run = env.embassy.run(&args, None);
    run.fails(1, &["nokey", "not found", "--key-file"]);
}

#[test]
fn the_agent_names_its_key_file_setting_not_the_cli_option() {
    let env = Env::new();
    env.ok(&["a"], &["init"]);
    std::fs::create_dir_all(env.dir.join("src")).unwrap();
    std::fs::write(env.dir.join("passphrase"), embassy_testkit::cli::PASS).unwrap();
    let config = format!(
        "[agent]\nstate_dir = \"{}\"\n[keys]\nfile = \"{}\"\npassphrase_file = \"{}\"\n\
         [[sites]]\nname = \"a\"\npath = \"{}\"\n[[datasets]]\nname = \"register\"\n\
         source = {{ files = [\"{}\"] }}\nrpo = \"1h\"\ninterval = \"1h\"\n",
        env.path("agent-state"),
        env.path("lost.key"),
        env.path("passphrase"),
        env.path("a"),
        env.path("src"),
    );
    std::fs::write(env.dir.join("embassy.toml"), config).unwrap();
    let run = env.embassy.run(
        ["agent", "--config", &env.path("embassy.toml"), "--once"],
        None,
    );
    assert_ne!(run.code, 0, "{run:?}");
    let text = run.text();
    assert!(text.contains("lost.key"), "{run:?}");
    assert!(text.contains("[keys]"), "{run:?}");
    assert!(!text.contains("--key-file"), "{run:?}");
}
