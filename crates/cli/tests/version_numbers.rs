//! Version numbers through the `embassy` binary: a dataset's versions are numbered 1, 2, 3 in
//! the order its history added them, whatever other ledger entries (a key issued, a deletion)
//! take sequence numbers between them; `DATASET@N`, `versions`, `history`, `status` and their
//! JSON use that number and show the ledger sequence number beside it; a version keeps its
//! number after retention deletes older ones (docs/format.md §9, *Version numbers*).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const PASS: &str = "correct horse battery staple";

struct Env {
    tmp: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Env {
    /// A vault made through the library with no legal minimum age (so retention may delete
    /// seconds-old versions) and a key file under the cheapest Argon2 parameters.
    fn new() -> Self {
        use embassy_core::format::config::VaultConfig;
        use embassy_core::keys::keyfile::{KdfParams, KeyFile};
        use embassy_core::keys::RootSecret;
        let env = Env {
            tmp: tempfile::tempdir().unwrap(),
        };
        std::fs::write(env.path("pass"), format!("{PASS}\n")).unwrap();
        let site = embassy_sites::LocalSite::new(env.path("site")).unwrap();
        let root = RootSecret::generate();
        let mut config = VaultConfig::new(&root);
        config.min_age_secs = 0;
        config.create(&site, &root).unwrap();
        let cheap = KdfParams {
            memory_kib: 8 * 1024,
            iterations: 1,
            parallelism: 1,
        };
        KeyFile::seal(&root, &config.vault_id, PASS.as_bytes(), cheap)
            .unwrap()
            .store(&env.path("vault.key"))
            .unwrap();
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Out {
        let out = Command::new(EXE)
            .args(["--site", self.path("site").to_str().unwrap()])
            .args(["--key-file", self.path("vault.key").to_str().unwrap()])
            .args(["--passphrase-file", self.path("pass").to_str().unwrap()])
            .args(["--state-dir", self.path("state").to_str().unwrap()])
            .arg("--quiet")
            .args(args)
            .output()
            .expect("run embassy");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend(args);
        let out = self.ok(&all);
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"))
    }

    /// Stores generation `i` of a one-file tree as a new version of `dataset`.
    fn backup(&self, dataset: &str, i: usize) {
        let src = self.path(&format!("src-{dataset}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("register.csv"), content(dataset, i)).unwrap();
        self.ok(&["backup", dataset, src.to_str().unwrap()]);
    }

    /// `keys issue --sealing` for `dataset`: a ledger entry of the dataset that is no version.
    fn issue_key(&self, dataset: &str, label: &str) {
        let out = self.path(&format!("{label}.cred"));
        self.ok(&[
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            dataset,
            "--label",
            label,
            "--out",
            out.to_str().unwrap(),
        ]);
    }

    /// `(version, ledger_seq)` of each version `versions --json` lists for `dataset`.
    fn numbers(&self, dataset: &str) -> Vec<(u64, u64)> {
        self.json(&["versions", dataset])["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_u64().unwrap(),
                    v["ledger_seq"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// The file `restore DATASET@N` writes.
    fn restored(&self, target: &str) -> String {
        let to = self.path(&format!("restored-{}", target.replace('@', "-")));
        self.ok(&["restore", target, "--to", to.to_str().unwrap()]);
        read(&to.join("register.csv"))
    }
}

fn content(dataset: &str, i: usize) -> String {
    format!("{dataset} generation {i}\n").repeat(100)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn a_key_issued_between_two_backups_leaves_versions_1_and_2() {
    let env = Env::new();
    env.backup("reg", 1);
    env.issue_key("reg", "host-a");
    env.backup("reg", 2);

    // Numbered 1 and 2, with the ledger sequence numbers 1 and 3 beside.
    assert_eq!(env.numbers("reg"), vec![(1, 1), (2, 3)]);
    let listed = env.ok(&["versions", "reg"]);
    let header = listed.stdout.lines().next().unwrap_or_default();
    assert!(
        header.contains("VERSION") && header.contains("ENTRY"),
        "{listed:?}"
    );
    let row: Vec<&str> = listed
        .stdout
        .lines()
        .nth(2)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.get(..3), Some(&["reg", "2", "3"][..]), "{listed:?}");

    // `reg@2` is the second backup; there is no version 3 (that is a ledger entry's number).
    assert_eq!(env.restored("reg@2"), content("reg", 2));
    assert_eq!(env.restored("reg@1"), content("reg", 1));
    let three = env.run(&["restore", "reg@3", "--to", env.path("x").to_str().unwrap()]);
    assert_ne!(three.code, 0, "{three:?}");
    assert!(three.stderr.contains("no version 3"), "{three:?}");
    let said = env.run(&["restore", "reg@2", "--to", env.path("y").to_str().unwrap()]);
    assert!(
        said.stderr
            .contains("restored reg version 2 (ledger entry 3)"),
        "{said:?}"
    );

    // `restore --json` and `history --json` carry both numbers.
    let to = env.path("z");
    let restored = env.json(&["restore", "reg@2", "--to", to.to_str().unwrap()]);
    assert_eq!(restored["version"]["version"], 2, "{restored}");
    assert_eq!(restored["version"]["ledger_seq"], 3, "{restored}");
    let history = env.json(&["history", "reg"]);
    assert_eq!(history["dataset"], "reg", "{history}");
    let rows: Vec<(u64, Option<u64>)> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["seq"].as_u64().unwrap(), r["version"].as_u64()))
        .collect();
    assert_eq!(rows, vec![(1, Some(1)), (2, None), (3, Some(2))]);
    let text = env.ok(&["history", "reg"]);
    assert!(
        text.stdout.contains("version added: version 2, manifest"),
        "{text:?}"
    );

    // `status` names the newest version by its number, the ledger entry beside.
    let status = env.json(&["status"]);
    let row = &status["datasets"][0];
    assert_eq!(row["newest_version"], 2, "{status}");
    assert_eq!(row["newest_version_ledger_seq"], 3, "{status}");
}

#[test]
fn numbers_stay_when_retention_deletes_version_1() {
    let env = Env::new();
    env.backup("land", 1);
    env.issue_key("land", "host-a");
    env.backup("land", 2);
    env.backup("land", 3);
    assert_eq!(env.numbers("land"), vec![(1, 1), (2, 3), (3, 4)]);

    // Retention names the versions by number, and deletes version 1 (ledger entry 1).
    let dry = env.ok(&["prune", "land", "--keep-last", "2", "--dry-run"]);
    assert!(dry.stdout.contains("delete      1"), "{dry:?}");
    assert!(dry.stdout.contains("keep        3"), "{dry:?}");
    let pruned = env.ok(&["prune", "land", "--keep-last", "2"]);
    assert!(
        pruned
            .stdout
            .contains("deleted versions [1] (ledger entry 5"),
        "{pruned:?}"
    );

    // The survivors keep their numbers, and the next version is 4, not 3: a number is never
    // given twice.
    assert_eq!(env.numbers("land"), vec![(2, 3), (3, 4)]);
    env.backup("land", 4);
    assert_eq!(env.numbers("land"), vec![(2, 3), (3, 4), (4, 6)]);
    assert_eq!(env.restored("land@2"), content("land", 2));
    assert_eq!(env.restored("land@4"), content("land", 4));

    // The deleted version is named as deleted, with the entry that deleted it.
    let gone = env.run(&["restore", "land@1", "--to", env.path("x").to_str().unwrap()]);
    assert_ne!(gone.code, 0, "{gone:?}");
    assert!(
        gone.stderr
            .contains("version 1 of dataset land was deleted by ledger entry 5"),
        "{gone:?}"
    );
    let history = env.ok(&["history", "land"]);
    assert!(
        history
            .stdout
            .contains("versions deleted: [1] (entries [1];"),
        "{history:?}"
    );
}

#[test]
fn interleaved_datasets_each_count_from_1() {
    let env = Env::new();
    // Backups of two datasets in turn, and a key issued for one of them between its backups.
    env.backup("alpha", 1);
    env.backup("beta", 1);
    env.issue_key("alpha", "host-a");
    env.backup("alpha", 2);
    env.backup("beta", 2);
    env.backup("alpha", 3);
    env.backup("beta", 3);
    assert_eq!(env.numbers("alpha"), vec![(1, 1), (2, 3), (3, 4)]);
    assert_eq!(env.numbers("beta"), vec![(1, 1), (2, 2), (3, 3)]);
    let all: Vec<(String, u64)> = env.json(&["versions"])["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["dataset"].as_str().unwrap().to_string(),
                v["version"].as_u64().unwrap(),
            )
        })
        .collect();
    for ds in ["alpha", "beta"] {
        let numbers: Vec<u64> = all.iter().filter(|(d, _)| d == ds).map(|v| v.1).collect();
        assert_eq!(numbers, vec![1, 2, 3], "{ds}: {all:?}");
    }
    for i in 1..=3 {
        assert_eq!(env.restored(&format!("alpha@{i}")), content("alpha", i));
        assert_eq!(env.restored(&format!("beta@{i}")), content("beta", i));
    }
}

#[test]
fn the_agents_status_and_dashboard_show_the_version_number() {
    use embassy_agent::state::AgentState;
    use embassy_agent::{dashboard, status};
    let env = Env::new();
    env.backup("reg", 1);
    env.issue_key("reg", "host-a");
    env.backup("reg", 2);
    let site = env.path("site");
    let snap = status::snapshot_site("here", site.to_str().unwrap(), &[], None);
    let facts = &snap.datasets["reg"];
    assert_eq!(facts.held.newest_version, Some(2), "{snap:?}");
    assert_eq!(facts.held.newest_version_ledger_seq, Some(3), "{snap:?}");
    let config = embassy_agent::Config::parse(
        &format!(
            "[keys]\nfile = \"{}\"\npassphrase_env = \"PASS\"\n\n[[sites]]\nname = \"here\"\n\
             path = \"{}\"\n\n[[datasets]]\nname = \"reg\"\nsource = {{ command = \"true\" }}\n\
             interval = \"1h\"\nrpo = \"1d\"\n",
            env.path("vault.key").display(),
            site.display()
        ),
        &env.path("embassy.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let now = embassy_core::format::config::now_unix_nanos();
    let snaps = vec![snap];
    let typed = embassy_agent::report::report(&config, &snaps, &AgentState::default(), now);
    let html = dashboard::render(&config, &typed, &AgentState::default(), now);
    assert!(html.contains(">v2 · "), "{html}");
    let report = serde_json::to_value(&typed).unwrap();
    let cell = &report["datasets"][0]["sites"][0];
    assert_eq!(cell["newest_version"], 2, "{report}");
    assert_eq!(cell["newest_version_ledger_seq"], 3, "{report}");
}
