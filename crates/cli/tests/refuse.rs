//! A site that holds no vault is refused, never created and filled (issue 15, item 1): a
//! moved-away folder, an empty folder (an unmounted disk's mount point) or an empty S3 prefix
//! among the sites of a vault stops the command with the site named and the way to seed it,
//! and that way works. `embassy sync` fills a site without a vault only with `--seed`; the agent
//! refuses to start on such a site and does not suggest `embassy init` (item 2).

use std::path::{Path, PathBuf};

use embassy_testkit::cli::{Embassy, Run};

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    embassy: Embassy,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let embassy = Embassy::new(EMBASSY, &dir);
        Env {
            _tmp: tmp,
            dir,
            embassy,
        }
    }

    fn path(&self, p: &str) -> String {
        self.dir.join(p).display().to_string()
    }

    /// `embassy --key-file KEY --state-dir STATE --site S... ARGS`.
    fn run(&self, sites: &[&str], args: &[&str]) -> Run {
        let mut all = vec![
            "--key-file".to_string(),
            self.path("vault.key"),
            "--state-dir".to_string(),
            self.path("state"),
        ];
        for s in sites {
            all.push("--site".into());
            all.push(self.path(s));
        }
        all.extend(args.iter().map(|a| a.to_string()));
        self.embassy.run(all, None)
    }

    fn ok(&self, sites: &[&str], args: &[&str]) -> Run {
        let run = self.run(sites, args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        run
    }

    /// A vault at sites a and b holding one version of a small tree.
    fn vault(&self) {
        std::fs::create_dir_all(self.dir.join("src")).unwrap();
        std::fs::write(self.dir.join("src/register.txt"), "citizens\n".repeat(100)).unwrap();
        self.ok(&["a", "b"], &["init"]);
        self.ok(&["a", "b"], &["backup", "register", &self.path("src")]);
    }
}

/// The first backquoted `embassy ...` command in `text` that contains `words`, as arguments.
fn advised(text: &str, words: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .find(|c| c.starts_with("embassy ") && c.contains(words))
        .unwrap_or_else(|| panic!("no `embassy ...{words}...` advised in:\n{text}"))
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect()
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_moved_away_site_is_refused_not_recreated_and_the_advised_seed_works() {
    let env = Env::new();
    env.vault();
    let b = env.dir.join("b");
    std::fs::rename(&b, env.dir.join("b.away")).unwrap();

    // With --min-sites 1 the backup used to re-create b and fill it.
    let run = env.run(
        &["a", "b"],
        &["--min-sites", "1", "backup", "register", &env.path("src")],
    );
    run.fails(
        10,
        &["holds no vault", &env.path("b"), "sync --seed --from"],
    );
    assert!(!run.stderr.contains("embassy init"), "{run:?}");
    assert!(!b.exists(), "the missing site was created: {run:?}");
    // Reading commands refuse too, and create nothing.
    env.run(&["a", "b"], &["--min-sites", "1", "versions", "register"])
        .fails(10, &["holds no vault"]);
    assert!(!b.exists());

    // Following the advice seeds b; then both sites are used again.
    let seed = advised(&run.stderr, "sync --seed");
    env.embassy.ok(&seed, None);
    assert!(b.join("config").exists());
    env.ok(&["a", "b"], &["backup", "register", &env.path("src")]);
    env.ok(&["b"], &["verify"]);
}

#[test]
fn an_empty_site_folder_is_refused_and_nothing_is_written_into_it() {
    let env = Env::new();
    env.vault();
    // An unmounted disk: the mount point is there, empty.
    let b = env.dir.join("b");
    std::fs::remove_dir_all(&b).unwrap();
    std::fs::create_dir(&b).unwrap();
    env.run(
        &["a", "b"],
        &["--min-sites", "1", "backup", "register", &env.path("src")],
    )
    .fails(10, &["holds no vault", &env.path("b")]);
    assert_eq!(entries(&b), 0, "something was written into the empty site");
    // `embassy sync` refuses it too, unless asked to seed.
    let run = env.embassy.run(
        ["sync", "--from", &env.path("a"), "--to", &env.path("b")],
        None,
    );
    run.fails(10, &["holds no vault", "--seed"]);
    assert_eq!(entries(&b), 0);
    let missing = env.dir.join("c");
    env.embassy
        .run(
            ["sync", "--from", &env.path("a"), "--to", &env.path("c")],
            None,
        )
        .fails(10, &["holds no vault"]);
    assert!(!missing.exists(), "sync created the missing target");
    env.embassy.ok(
        [
            "sync",
            "--seed",
            "--from",
            &env.path("a"),
            "--to",
            &env.path("c"),
        ],
        None,
    );
    env.ok(&["c"], &["verify"]);
}

#[test]
fn the_agent_refuses_a_site_without_a_vault_and_does_not_suggest_init() {
    let env = Env::new();
    env.vault();
    std::fs::write(env.dir.join("passphrase"), embassy_testkit::cli::PASS).unwrap();
    let config = format!(
        "[agent]\nstate_dir = \"{}\"\nmin_sites = 1\n[keys]\nfile = \"{}\"\npassphrase_file = \
         \"{}\"\n[[sites]]\nname = \"a\"\npath = \"{}\"\n[[sites]]\nname = \"b\"\npath = \
         \"{}\"\n[[datasets]]\nname = \"register\"\nsource = {{ files = [\"{}\"] }}\nrpo = \
         \"1h\"\ninterval = \"1h\"\n",
        env.path("agent-state"),
        env.path("vault.key"),
        env.path("passphrase"),
        env.path("a"),
        env.path("b"),
        env.path("src"),
    );
    std::fs::write(env.dir.join("embassy.toml"), config).unwrap();
    let b = env.dir.join("b");
    std::fs::rename(&b, env.dir.join("b.away")).unwrap();
    let run = env.embassy.run(
        ["agent", "--config", &env.path("embassy.toml"), "--once"],
        None,
    );
    assert_ne!(run.code, 0, "{run:?}");
    let text = run.text();
    assert!(text.contains("holds no vault"), "{run:?}");
    assert!(text.contains("site \"b\""), "{run:?}");
    assert!(!text.contains("embassy init"), "{run:?}");
    assert!(!b.exists(), "the agent created the missing site: {run:?}");
    // The advice works: seed b, and the agent runs.
    let seed = advised(&text, "sync --seed");
    env.embassy.ok(&seed, None);
    env.embassy.ok(
        ["agent", "--config", &env.path("embassy.toml"), "--once"],
        None,
    );
}

#[test]
fn an_empty_s3_prefix_is_refused_and_seeded_only_when_asked() {
    use embassy_core::site::Site;
    use embassy_testkit::s3;
    let server = s3::moto();
    let bucket = s3::unique_bucket("refuse");
    let site = embassy_sites::S3Site::new(s3::s3_config(&server.endpoint, &bucket, "vault"))
        .expect("S3 site");
    assert!(site.create_bucket(false).expect("create bucket"));
    let location = format!(
        "s3://{bucket}/vault?endpoint={}&region=us-east-1",
        server.endpoint
    );
    let tmp = tempfile::tempdir().unwrap();
    let embassy = Embassy::new(EMBASSY, tmp.path())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    let env = Env {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        embassy,
    };
    std::fs::create_dir_all(env.dir.join("src")).unwrap();
    std::fs::write(env.dir.join("src/register.txt"), "citizens\n").unwrap();
    env.ok(&["a"], &["init"]);
    let mut args = vec![
        "--key-file".to_string(),
        env.path("vault.key"),
        "--state-dir".to_string(),
        env.path("state"),
        "--site".to_string(),
        env.path("a"),
        "--site".to_string(),
        location.clone(),
        "--min-sites".to_string(),
        "1".to_string(),
    ];
    args.extend(["backup", "register", &env.path("src")].map(String::from));
    let run = env.embassy.run(&args, None);
    run.fails(10, &["holds no vault", &location, "sync --seed --from"]);
    assert!(
        site.list("").unwrap().is_empty(),
        "written to the empty prefix"
    );
    env.embassy.ok(advised(&run.stderr, "sync --seed"), None);
    env.embassy.ok(&args, None);
    env.embassy.ok(["--site", &location, "verify"], None);
}

#[test]
fn a_site_that_lost_its_configuration_is_refused_and_the_advised_seed_mends_it() {
    let env = Env::new();
    env.vault();
    let b = env.dir.join("b");
    std::fs::remove_file(b.join("config")).unwrap();
    std::fs::remove_file(b.join("config.sig")).unwrap();
    // Alone, it is damage (objects but no configuration), with the way to mend it.
    env.run(&["b"], &["versions", "register"])
        .fails(3, &["no configuration", "sync --seed"]);
    // With the other site, the seed is named in full and works.
    let run = env.run(&["a", "b"], &["backup", "register", &env.path("src")]);
    run.fails(10, &["holds no vault", &env.path("b")]);
    env.embassy.ok(advised(&run.stderr, "sync --seed"), None);
    env.ok(&["b"], &["verify"]);
    env.ok(&["a", "b"], &["backup", "register", &env.path("src")]);
}

#[test]
fn a_running_agent_does_not_refill_a_site_that_lost_its_vault() {
    use embassy_testkit::agent::{wait_until, Agent};
    use std::time::Duration;
    let env = Env::new();
    env.vault();
    std::fs::write(env.dir.join("passphrase"), embassy_testkit::cli::PASS).unwrap();
    let config = format!(
        "[agent]\nstate_dir = \"{}\"\nmin_sites = 1\n[keys]\nfile = \"{}\"\npassphrase_file = \
         \"{}\"\n[[sites]]\nname = \"a\"\npath = \"{}\"\n[[sites]]\nname = \"b\"\npath = \
         \"{}\"\n[[datasets]]\nname = \"register\"\nsource = {{ files = [\"{}\"] }}\nrpo = \
         \"8s\"\ninterval = \"2s\"\n",
        env.path("agent-state"),
        env.path("vault.key"),
        env.path("passphrase"),
        env.path("a"),
        env.path("b"),
        env.path("src"),
    );
    std::fs::write(env.dir.join("embassy.toml"), config).unwrap();
    let log = env.dir.join("agent.log");
    let mut cmd = env.embassy.command();
    cmd.args(["agent", "--config", &env.path("embassy.toml")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let agent = Agent {
        child: cmd.spawn().expect("start embassy agent"),
        log,
    };
    wait_until(Duration::from_secs(30), "a first run", &agent, || {
        agent.log().contains("register: version").then_some(())
    });
    // b's disk goes away: its mount point is left, empty.
    let b = env.dir.join("b");
    std::fs::rename(&b, env.dir.join("b.away")).unwrap();
    std::fs::create_dir(&b).unwrap();
    wait_until(Duration::from_secs(30), "the refusal", &agent, || {
        agent.log().contains("holds no vault").then_some(())
    });
    // Several runs and looks later, b is still empty.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(entries(&b), 0, "the agent filled b; log:\n{}", agent.log());
    let (_, log) = agent.stop(Duration::from_secs(30));
    assert!(!log.contains("embassy init"), "{log}");
}
