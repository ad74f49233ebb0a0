//! Backups and retention run by the command line and by the agent are the same operations
//! (embassy-ops's backup and retention): one scenario, a file tree and a command's output
//! backed up twice and pruned to the newest version, run through `embassy backup` and
//! `embassy prune` into one vault and through `embassy agent --once` into another, gives the
//! same versions (numbers, kinds, sizes) holding the same bytes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use embassy_testkit::status_page::show;

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

/// A folder with the passphrase, the source tree and the two vaults.
struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// `embassy ARGS` in the folder, with vault `name`'s site, key and state.
    fn embassy(&self, name: &str, args: &[&str]) -> Output {
        Command::new(EMBASSY)
            .args(["--site", &format!("sites/{name}")])
            .args(["--key-file", &format!("{name}.key")])
            .args(["--state-dir", &format!("state-{name}")])
            .args(["--passphrase-file", "passphrase"])
            .args(args)
            .current_dir(&self.dir)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .expect("run embassy")
    }

    fn ok(&self, name: &str, args: &[&str]) -> Output {
        let out = self.embassy(name, args);
        assert!(out.status.success(), "embassy {args:?}: {}", show(&out));
        out
    }

    /// What `versions DATASET --json` lists, each version reduced to what both must agree on.
    fn versions(&self, name: &str, dataset: &str) -> Vec<Value> {
        let out = self.ok(name, &["--json", "versions", dataset]);
        let all: Value = serde_json::from_slice(&out.stdout).unwrap();
        all["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v["version"], "kind": v["kind"], "files": v["files"],
                    "dirs": v["dirs"], "bytes": v["bytes"],
                })
            })
            .collect()
    }

    /// The bytes of every file restored from `target`, by path.
    fn restored(&self, name: &str, target: &str) -> Vec<(String, Vec<u8>)> {
        let to = self.path(&format!("restored-{name}-{}", target.replace('@', "-")));
        self.ok(name, &["restore", target, "--to", to.to_str().unwrap()]);
        let mut files = Vec::new();
        collect(&to, &to, &mut files);
        files.sort();
        files
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    if dir.is_file() {
        out.push((String::new(), fs::read(dir).unwrap()));
        return;
    }
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.push((rel, fs::read(&p).unwrap()));
        }
    }
}

fn write_source(dir: &Path, day: u8) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("a.txt"), format!("day {day}\n")).unwrap();
    fs::write(dir.join("sub/b.bin"), vec![day; 100_000 + usize::from(day)]).unwrap();
    fs::write(
        dir.join("export.sh"),
        format!("printf 'rows of day {day}\\n'\n"),
    )
    .unwrap();
}

#[test]
fn the_cli_and_the_agent_record_the_same_versions_and_retention_keeps_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let env = Env {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
    };
    fs::write(env.path("passphrase"), "ops backup parity passphrase\n").unwrap();
    for name in ["cli", "agent"] {
        // Versions seconds old are pruned here: no legal minimum age.
        env.ok(name, &["init", "--min-age", "0"]);
    }
    fs::write(
        env.path("embassy.toml"),
        "[agent]\nstate_dir = \"state-agent\"\nverify_interval = \"never\"\n\
         gc_interval = \"never\"\n\
         [keys]\nfile = \"agent.key\"\npassphrase_file = \"passphrase\"\n\
         [[sites]]\nname = \"agent\"\npath = \"sites/agent\"\n\
         [[datasets]]\nname = \"registry\"\nsource = { files = [\"data\"] }\n\
         interval = \"1h\"\nrpo = \"2h\"\nretention = { keep_last = 1 }\n\
         [[datasets]]\nname = \"export\"\nsource = { command = \"sh data/export.sh\" }\n\
         interval = \"1h\"\nrpo = \"2h\"\nretention = { keep_last = 1 }\n",
    )
    .unwrap();
    for day in 1..=2 {
        write_source(&env.path("data"), day);
        env.ok("cli", &["backup", "registry", "data"]);
        env.ok(
            "cli",
            &["backup", "export", "--command", "sh data/export.sh"],
        );
        let out = Command::new(EMBASSY)
            .args(["agent", "--config", "embassy.toml", "--once"])
            .current_dir(&env.dir)
            .env_remove("EMBASSY_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "agent --once: {}", show(&out));
    }
    // The agent applied its retention after each run; the command line prunes after its own.
    for dataset in ["registry", "export"] {
        env.ok("cli", &["prune", dataset, "--keep-last", "1"]);
    }
    for dataset in ["registry", "export"] {
        let cli = env.versions("cli", dataset);
        let agent = env.versions("agent", dataset);
        assert_eq!(cli.len(), 1, "{dataset}: {cli:?}");
        assert_eq!(
            cli, agent,
            "{dataset}: the command line and the agent differ"
        );
        let target = format!("{dataset}@2");
        assert_eq!(
            env.restored("cli", &target),
            env.restored("agent", &target),
            "{target} restores other bytes"
        );
    }
}
