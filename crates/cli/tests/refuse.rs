//! A site that holds no vault is refused, never created and filled (issue 15, item 1): a
//! moved-away folder, an empty folder (an unmounted disk's mount point) or an empty S3 prefix
//! among the sites of a vault stops the command with the site named and the way to seed it,
//! and that way works. `embassy sync` fills a site without a vault only with `--seed`; the agent
//! leaves such a site out (never fills it), keeps protecting every dataset at the other sites,
//! shows the site with the way to seed it (not `embassy init`, item 2) and uses it again once
//! seeded.

use std::path::Path;

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
    let env = Env(Vaults::new(EMBASSY)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing"));
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

/// When b loses its vault: before the agent starts, or while it runs.
#[derive(PartialEq)]
enum Lost {
    BeforeStart,
    WhileRunning,
}

/// The agent with sites a and b (`min_sites = 1`) and b without its vault (moved away; while
/// running, an empty mount point is left): the agent keeps backing up to a, never re-creates or
/// fills b, shows b as holding no vault with the way out and raises the alarm (kind config);
/// the advised seed brings b back without a restart, b catches up and the alarm clears.
fn the_agent_leaves_out_b_and_uses_it_again_once_seeded(lost: Lost) {
    use embassy_testkit::agent::{cell, wait_until, Agent};
    use embassy_testkit::status_page::{http_get, status_json};
    use std::time::Duration;
    let env = Env::new();
    env.vault();
    std::fs::write(env.dir.join("passphrase"), embassy_testkit::cli::PASS).unwrap();
    let port = embassy_testkit::free_port();
    let alarms = env.dir.join("alarms.txt");
    let config = format!(
        "[agent]\nstate_dir = \"{}\"\nmin_sites = 1\nverify_interval = \"never\"\n[keys]\nfile = \
         \"{}\"\npassphrase_file = \"{}\"\n[status]\nlisten = \"127.0.0.1:{port}\"\n[alarms]\n\
         command = \"echo \\\"$EMBASSY_ALARM_EVENT $EMBASSY_ALARM_SITE $EMBASSY_ALARM_KIND\\\" \
         >> '{}'\"\n[[sites]]\nname = \"a\"\npath = \"{}\"\n[[sites]]\nname = \"b\"\npath = \
         \"{}\"\n[[datasets]]\nname = \"register\"\nsource = {{ files = [\"{}\"] }}\nrpo = \
         \"30s\"\ninterval = \"2s\"\n",
        env.path("agent-state"),
        env.path("vault.key"),
        env.path("passphrase"),
        alarms.display(),
        env.path("a"),
        env.path("b"),
        env.path("src"),
    );
    std::fs::write(env.dir.join("embassy.toml"), config).unwrap();
    let b = env.dir.join("b");
    let newest_at =
        |r: &serde_json::Value, site: &str| cell(r, "register", site)["newest_version"].as_u64();
    if lost == Lost::BeforeStart {
        std::fs::rename(&b, env.dir.join("b.away")).unwrap();
    }
    let log = env.dir.join("agent.log");
    let mut cmd = env.embassy.command();
    cmd.current_dir(&env.dir)
        .args(["agent", "--config", &env.path("embassy.toml")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let agent = Agent {
        child: cmd.spawn().expect("start embassy agent"),
        log,
    };
    // The vault's one version (from `Env::vault`) is number 1.
    wait_until(Duration::from_secs(60), "a version at a", &agent, || {
        let r = status_json(port)?;
        (newest_at(&r, "a")? >= 2).then_some(())
    });
    if lost == Lost::WhileRunning {
        // b's disk goes away: its mount point is left, empty.
        std::fs::rename(&b, env.dir.join("b.away")).unwrap();
        std::fs::create_dir(&b).unwrap();
    }
    let site_b = |r: &serde_json::Value| {
        r["sites"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "b"))
            .cloned()
            .unwrap_or_default()
    };
    let r = wait_until(
        Duration::from_secs(60),
        "b shown as holding no vault",
        &agent,
        || {
            let r = status_json(port)?;
            site_b(&r)["error"]
                .as_str()?
                .contains("holds no vault")
                .then_some(r)
        },
    );
    let error = site_b(&r)["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("mount its disk"), "{error}");
    assert_eq!(site_b(&r)["problem_kind"], "config", "{r}");
    assert_eq!(cell(&r, "register", "b")["colour"], "red", "{r}");
    assert_eq!(site_b(&r)["holds_no_vault"], true, "{r}");
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("embassy_site_holds_no_vault{site=\"b\"} 1"),
        "{metrics}"
    );
    let page = http_get(port, "/").unwrap_or_default();
    assert!(page.contains("HOLDS NO VAULT"), "{page}");
    assert!(page.contains("sync --seed"), "{page}");
    // The alarm goes out, of kind config.
    wait_until(Duration::from_secs(30), "the alarm for b", &agent, || {
        let text = std::fs::read_to_string(&alarms).ok()?;
        text.lines()
            .any(|l| l.starts_with("raised") && l.contains(" b ") && l.ends_with("config"))
            .then_some(())
    });
    // The agent keeps backing up to a.
    let before = newest_at(&status_json(port).unwrap_or_default(), "a").unwrap_or(0);
    wait_until(
        Duration::from_secs(60),
        "a new version at a",
        &agent,
        || {
            let r = status_json(port)?;
            (newest_at(&r, "a")? > before).then_some(())
        },
    );
    // b is neither re-created nor filled.
    match lost {
        Lost::BeforeStart => assert!(!b.exists(), "the agent created b; log:\n{}", agent.log()),
        Lost::WhileRunning => {
            assert_eq!(entries(&b), 0, "the agent filled b; log:\n{}", agent.log())
        }
    }
    // The advice works, without restarting the agent: seed b.
    let seed = advised(&error, "sync --seed");
    env.embassy.ok(&seed, None);
    let r = wait_until(
        Duration::from_secs(90),
        "b used and caught up",
        &agent,
        || {
            let r = status_json(port)?;
            let pending = site_b(&r)["catch_up_pending"].as_u64().unwrap_or(0);
            (site_b(&r)["error"].is_null()
                && pending == 0
                && r["alarms"].as_array().is_some_and(|a| a.is_empty())
                && newest_at(&r, "b")? > before)
                .then_some(r)
        },
    );
    let (_, log) = agent.stop(Duration::from_secs(30));
    assert!(!log.contains("embassy init"), "{log}");
    // The writes b missed while it was left out were queued for it and drained (by the agent's
    // catch-up, or by the next ledger write, which drains a site's queue first): the wait above
    // saw b's queue empty, and b's versions are compared with a's below.
    let text = std::fs::read_to_string(&alarms).unwrap_or_default();
    assert!(
        text.lines()
            .any(|l| l.starts_with("cleared") && l.contains(" b")),
        "{text}\n{r}"
    );
    // b alone verifies without keys and holds the newest version.
    env.embassy.ok(["verify", "--site", &env.path("b")], None);
    let versions = |site: &str| env.ok(&[site], &["versions", "register"]).stdout;
    assert_eq!(versions("b"), versions("a"));
}

#[test]
fn the_agent_starts_without_a_site_that_holds_no_vault_and_uses_it_once_seeded() {
    the_agent_leaves_out_b_and_uses_it_again_once_seeded(Lost::BeforeStart);
}

#[test]
fn a_running_agent_leaves_out_a_site_that_lost_its_vault_and_catches_it_up_once_seeded() {
    the_agent_leaves_out_b_and_uses_it_again_once_seeded(Lost::WhileRunning);
}
