//! Red team 4's breaks of promise 9 (never an older version shown as the newest in silence;
//! damage at one site is never hidden by another) and the exit codes of a site without a vault:
//! a site whose newest ledger entry is tampered is an integrity problem in `status --site`
//! (exit 3) and `status --config` (integrity, not "behind"); `verify --site a --site b` checks
//! each site on its own; `sync --pending` and `status --site` with a site that lost its vault
//! exit 10 (crates/cli/src/exit.rs). Real binary, real folders.

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

    /// A vault at sites a and b holding `backups` versions of dataset `register`.
    fn vault(&self, backups: usize) {
        std::fs::create_dir_all(self.dir.join("src")).unwrap();
        self.ok(&["a", "b"], &["init"]);
        for i in 0..backups {
            std::fs::write(
                self.dir.join(format!("src/register{i}.txt")),
                format!("citizens {i}\n").repeat(2000),
            )
            .unwrap();
            self.ok(&["a", "b"], &["backup", "register", &self.path("src")]);
        }
    }

    /// Flips one byte of a file of site `site`, `from_end` bytes before its end.
    fn flip(&self, site: &str, rel: &str, from_end: usize) {
        let p = self.dir.join(site).join(rel);
        let mut bytes = std::fs::read(&p).unwrap();
        let at = bytes.len() - from_end;
        bytes[at] ^= 1;
        std::fs::write(&p, bytes).unwrap();
    }

    /// The vault's root secret, from its key file.
    fn root(&self) -> embassy_core::keys::RootSecret {
        let key_path = self.dir.join("vault.key");
        let file = embassy_core::keys::keyfile::KeyFile::load(&key_path).unwrap();
        let root = file
            .open(embassy_testkit::cli::PASS.as_bytes(), &key_path)
            .unwrap();
        embassy_core::keys::RootSecret::from_bytes(root.expose())
    }

    /// `status --json` of `site` on a machine with state folder `state` (never the writer's):
    /// exit 3, dataset `register` an integrity problem that names a rollback.
    fn assert_register_rolled_back(&self, state: &str, site: &str) {
        let run = self.run_as(state, &[site], &["--json", "status"]);
        assert_eq!(run.code, 3, "{run:?}");
        let rows = run.json()["datasets"].as_array().unwrap().clone();
        let register = rows.iter().find(|r| r["dataset"] == "register").unwrap();
        assert_eq!(register["kind"], "integrity", "{run:?}");
        assert!(
            register["error"].as_str().unwrap().contains("rollback"),
            "{run:?}"
        );
    }

    /// The files under `site`/`folder`, relative to the site, sorted.
    fn files(&self, site: &str, folder: &str) -> Vec<String> {
        let root = self.dir.join(site);
        let mut out = Vec::new();
        let mut todo = vec![root.join(folder)];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.push(p.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }
}

#[test]
fn a_tampered_newest_ledger_entry_is_an_integrity_problem_in_status_never_an_older_version() {
    let env = Env::new();
    env.vault(2);
    let newest = env
        .files("b", "ledger/register")
        .pop()
        .expect("a ledger entry at b");
    env.flip("b", &newest, 5);

    // status --site: exit 3, the row at b is an integrity problem naming the unprovable entries.
    // This machine verified entry 2 before, so b is judged against that remembered head too
    // (a rollback, naming the damaged copy it holds in the entry's place).
    let run = env.run(&["a", "b"], &["status"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout.contains("cannot be proved") || run.stdout.contains("rolled back"),
        "{run:?}"
    );
    assert!(run.stdout.contains("do not hash"), "{run:?}");
    let run = env.run(&["b"], &["--json", "status"]);
    assert_eq!(run.code, 3, "{run:?}");
    let rows = run.json()["datasets"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 1, "{run:?}");
    assert_eq!(rows[0]["kind"], "integrity", "{run:?}");
    let error = rows[0]["error"].as_str().unwrap();
    assert!(
        error.contains("newer entries exist that cannot be proved")
            || error.contains("rolled back"),
        "{run:?}"
    );
    // The untouched site still shows version 2.
    let run = env.ok(&["a"], &["--json", "status"]);
    assert_eq!(run.json()["datasets"][0]["newest_version"], 2, "{run:?}");

    // status --config (the agent's judgement): b's cell is an integrity problem, not "behind".
    std::fs::write(
        env.dir.join("embassy.toml"),
        format!(
            r#"[agent]
state_dir = "{state}"

[keys]
file = "{key}"

[[sites]]
name = "a"
path = "{a}"

[[sites]]
name = "b"
path = "{b}"

[[datasets]]
name = "register"
source = {{ files = ["{src}"] }}
interval = "1h"
rpo = "2h"
"#,
            state = env.path("agent-state"),
            key = env.path("vault.key"),
            a = env.path("a"),
            b = env.path("b"),
            src = env.path("src"),
        ),
    )
    .unwrap();
    let config = env.path("embassy.toml");
    let run = env
        .embassy
        .run(["--json", "status", "--config", &config], None);
    assert_eq!(run.code, 3, "{run:?}");
    let text = run.stdout.to_lowercase();
    assert!(text.contains("integrity"), "{run:?}");
    assert!(
        text.contains("cannot be proved") || text.contains("rolled back"),
        "{run:?}"
    );
    assert!(text.contains("do not hash"), "{run:?}");
    let run = env.embassy.run(["status", "--config", &config], None);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("DAMAGED OR TAMPERED WITH"), "{run:?}");
}

#[test]
fn verify_over_several_sites_checks_each_site_on_its_own() {
    let env = Env::new();
    env.vault(1);
    let run = env.ok(&["a", "b"], &["verify"]);
    assert!(run.stdout.contains("site "), "per-site report: {run:?}");

    // A tampered pack at b: reads must not fall through to a.
    let pack = env.files("b", "packs").into_iter().next().expect("a pack");
    let len = std::fs::metadata(env.dir.join("b").join(&pack))
        .unwrap()
        .len() as usize;
    env.flip("b", &pack, len / 2);
    let run = env.run(&["a", "b"], &["verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("site {}: DAMAGED", env.path("b"))),
        "{run:?}"
    );
    assert!(
        run.stdout.contains(&format!("site {}: OK", env.path("a"))),
        "{run:?}"
    );
    let run = env.run(&["a", "b"], &["--json", "verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    let v = run.json();
    assert_eq!(v["ok"], false, "{run:?}");
    assert_eq!(v["sites"][0]["ok"], true, "{run:?}");
    assert_eq!(v["sites"][1]["ok"], false, "{run:?}");

    // The pack missing at b.
    std::fs::remove_file(env.dir.join("b").join(&pack)).unwrap();
    let run = env.run(&["a", "b"], &["verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stdout
            .contains(&format!("site {}: DAMAGED", env.path("b"))),
        "{run:?}"
    );

    // One site alone: the output as before (no per-site lines).
    let run = env.ok(&["a"], &["verify"]);
    assert!(run.stdout.ends_with("vault OK\n"), "{run:?}");
}

#[test]
fn a_site_whose_vault_was_moved_away_exits_10_in_sync_pending_and_status() {
    let env = Env::new();
    env.vault(1);
    // b cannot take packs: the next backup (at least one site) queues b's missed writes.
    std::fs::rename(env.dir.join("b/packs"), env.dir.join("b.packs")).unwrap();
    std::fs::write(env.dir.join("b/packs"), "x").unwrap();
    std::fs::write(env.dir.join("src/more.txt"), "more\n").unwrap();
    env.ok(
        &["a", "b"],
        &["--min-sites", "1", "backup", "register", &env.path("src")],
    );
    // b's vault moved away; an empty folder in its place.
    std::fs::rename(env.dir.join("b"), env.dir.join("b.moved")).unwrap();
    std::fs::create_dir(env.dir.join("b")).unwrap();

    let run = env.run(&["a", "b"], &["sync", "--pending"]);
    assert_eq!(run.code, 10, "{run:?}");
    assert!(run.text().contains("holds no vault"), "{run:?}");
    assert_eq!(
        std::fs::read_dir(env.dir.join("b")).unwrap().count(),
        0,
        "nothing written to b"
    );

    let run = env.run(&["a", "b"], &["status"]);
    assert_eq!(run.code, 10, "{run:?}");
    let run = env.run(&["b"], &["status"]);
    assert_eq!(run.code, 10, "{run:?}");
}

/// Red team 5, #1c: a signer whose clock runs ahead (a stolen credential dating its version ten
/// years on) must not hold the dataset fresh: `status --site` reports an integrity problem
/// naming the date (exit 3), never a negative age that reads as "current".
#[test]
fn data_dated_ahead_of_this_clock_is_a_problem_in_status_not_fresh() {
    use embassy_core::history::ledger::{self, Event};
    let env = Env::new();
    env.vault(1);
    let fresh = env.ok(&["a"], &["--json", "status"]);
    assert_eq!(fresh.code, 0, "{fresh:?}");
    // A validly signed version dated ten years ahead, naming version 1's manifest.
    let root = env.root();
    let site: std::sync::Arc<dyn embassy_core::site::Site> =
        std::sync::Arc::new(embassy_sites::LocalSite::new(env.dir.join("a")).unwrap());
    let vault = embassy_core::engine::vault::Vault::open(site.clone()).unwrap();
    let history = vault.history("register").unwrap();
    let Event::VersionAdded {
        manifest,
        kind,
        stats,
        wal_start,
        ..
    } = history.last().unwrap().entry.event.clone()
    else {
        panic!("the newest entry is a version")
    };
    let ahead = embassy_core::format::config::now_unix_nanos() + 10 * 365 * 86_400 * 1_000_000_000;
    ledger::append(
        site.as_ref(),
        &root.writer_signing_key(0),
        "register",
        history.last(),
        Event::VersionAdded {
            manifest,
            kind,
            captured_at_ns: ahead,
            stats,
            wal_start,
        },
    )
    .unwrap();
    let r = env.run(&["a"], &["status"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.text().contains("ahead of this machine's clock"),
        "the status names the future date: {r:?}"
    );
}

/// `status` judges each site's histories by the site's checkpoints (the newest naming each
/// dataset, and the newest of all), so a machine that never saw the vault (a fresh state
/// folder: no remembered head) still finds a site that withholds a dataset's newest entry, or
/// every entry of a dataset, an integrity problem, never an older version or a dataset gone.
#[test]
fn status_judges_a_site_by_its_checkpoints_on_a_machine_that_never_saw_it() {
    let env = Env::new();
    env.vault(2);
    std::fs::write(env.dir.join("src/other.txt"), "other\n").unwrap();
    env.ok(
        &["a", "b"],
        &["backup", "other", &env.path("src/other.txt")],
    );
    // b withholds register's newest entry.
    let newest = env.files("b", "ledger/register").pop().unwrap();
    std::fs::remove_file(env.dir.join("b").join(&newest)).unwrap();
    env.assert_register_rolled_back("fresh-1", "b");
    // Nor when b also shows an older checkpoint under a name that sorts after every other
    // (red team 10: status took it for the newest and reported nothing).
    let checkpoints = env.files("b", "checkpoints");
    let oldest = &checkpoints[0];
    let name = oldest.rsplit('/').next().unwrap();
    std::fs::copy(
        env.dir.join("b").join(oldest),
        env.dir
            .join("b/checkpoints")
            .join(format!("99999999999999999999-{name}")),
    )
    .unwrap();
    let run = env.run_as("fresh-1b", &["b"], &["--json", "status"]);
    assert_eq!(run.code, 3, "{run:?}");
    // b withholds every entry of other too: other is still there, as an integrity problem.
    for f in env.files("b", "ledger/other") {
        std::fs::remove_file(env.dir.join("b").join(f)).unwrap();
    }
    let run = env.run_as("fresh-2", &["b"], &["--json", "status"]);
    assert_eq!(run.code, 3, "{run:?}");
    let rows = run.json()["datasets"].as_array().unwrap().clone();
    let other = rows
        .iter()
        .find(|r| r["dataset"] == "other")
        .unwrap_or_else(|| panic!("other is not shown: {run:?}"));
    assert_eq!(other["kind"], "integrity", "{run:?}");
    // b withholds every ledger entry: both datasets are still there, as integrity problems.
    for f in env.files("b", "ledger") {
        std::fs::remove_file(env.dir.join("b").join(f)).unwrap();
    }
    let run = env.run_as("fresh-3", &["b"], &["--json", "status"]);
    assert_eq!(run.code, 3, "{run:?}");
    let rows = run.json()["datasets"].as_array().unwrap().clone();
    for name in ["register", "other"] {
        let row = rows
            .iter()
            .find(|r| r["dataset"] == name)
            .unwrap_or_else(|| panic!("{name} is not shown: {run:?}"));
        assert_eq!(row["kind"], "integrity", "{run:?}");
    }
    // The untouched site, judged the same way, is fine.
    let run = env.run_as("fresh-4", &["a"], &["--json", "status"]);
    assert_eq!(run.code, 0, "{run:?}");
}

/// Red team 11, break 2: a checkpoint's time is judged against the entries it names, and a
/// site withheld the very entry that kept the newest checkpoint's time in range (the other
/// dataset it names was last written an hour before). The checkpoint was then dropped as
/// "dated more than 10 minutes after the newest entry it names", and status, verify and a
/// restore on a fresh machine took the rolled-back history for whole. A validly signed
/// checkpoint proves the entries it names existed: it is judged by its time only when every
/// one of them is found, and the missing entry is a rollback.
#[test]
fn withholding_the_entry_that_dates_the_newest_checkpoint_is_still_a_rollback() {
    use embassy_core::history::checkpoint::{self, Head};
    use embassy_core::history::ledger::{self, Entry};
    use embassy_core::site::Site;
    const SEC: i64 = 1_000_000_000;
    let env = Env::new();
    env.vault(2);
    let root = env.root();
    let writer = root.writer_signing_key(0);
    let site: std::sync::Arc<dyn Site> =
        std::sync::Arc::new(embassy_sites::LocalSite::new(env.dir.join("b")).unwrap());
    let vault = embassy_core::engine::vault::Vault::open(site.clone()).unwrap();
    let register = vault.history("register").unwrap();
    let (v1, v2) = (&register[0], &register[1]);
    // Dataset daily, last written an hour before register's version 2.
    let daily = ledger::encode(
        &Entry {
            dataset: "daily".into(),
            seq: 1,
            prev: None,
            time_ns: v2.entry.time_ns - 3600 * SEC,
            signer: writer.verifying_key().to_bytes(),
            event: v2.entry.event.clone(),
        },
        &writer,
    );
    let daily_id = embassy_core::id::ObjectId::of(&daily);
    site.put(
        &embassy_core::format::layout::ledger_entry("daily", 1, &daily_id),
        &daily,
    )
    .unwrap();
    // The site's checkpoints: one after version 1, and the newest naming version 2 and daily.
    for f in env.files("b", "checkpoints") {
        std::fs::remove_file(env.dir.join("b").join(f)).unwrap();
    }
    let head = |r: &ledger::Record| Head {
        seq: r.entry.seq,
        id: r.id,
    };
    let vault_id = vault.config().vault_id.clone();
    checkpoint::write_at(
        site.as_ref(),
        &vault_id,
        [("register".to_string(), head(v1))].into(),
        &writer,
        v1.entry.time_ns + SEC,
    )
    .unwrap();
    checkpoint::write_at(
        site.as_ref(),
        &vault_id,
        [
            ("register".to_string(), head(v2)),
            (
                "daily".to_string(),
                Head {
                    seq: 1,
                    id: daily_id,
                },
            ),
        ]
        .into(),
        &writer,
        v2.entry.time_ns + SEC,
    )
    .unwrap();
    let before = env.run_as("fresh-0", &["b"], &["--json", "status"]);
    let rows = before.json()["datasets"].as_array().unwrap().clone();
    let row = rows.iter().find(|r| r["dataset"] == "register").unwrap();
    assert_eq!(row["newest_version"], 2, "{before:?}");
    // b withholds register's version 2 entry.
    std::fs::remove_file(
        env.dir
            .join("b")
            .join(embassy_core::format::layout::ledger_entry(
                "register", 2, &v2.id,
            )),
    )
    .unwrap();
    env.assert_register_rolled_back("fresh-1", "b");
    let run = env.run_as("fresh-2", &["b"], &["verify"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.text().contains("rollback"), "{run:?}");
    let out = env.path("restored");
    let run = env.run_as(
        "fresh-3",
        &["b"],
        &["restore", "register@latest", "--to", &out],
    );
    assert_eq!(run.code, 3, "a rolled-back latest restored: {run:?}");
    assert!(
        run.text().contains("rollback") && run.text().contains("restore register@1"),
        "{run:?}"
    );
}
