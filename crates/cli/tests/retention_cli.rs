//! The retention commands end to end through the `embassy` binary: `init --approver
//! --approvals-required --min-age`, `approver-key`, `prune` (dry run and real), `gc` in two
//! phases, `forget` refused with k-1 approvals and accepted with k, `approve`, and a keyless
//! `verify` that stays clean throughout.

use std::path::{Path, PathBuf};

use embassy_testkit::cli::{Embassy, Run as Out};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn run(&self, args: &[&str]) -> Out {
        let mut all = vec![
            "--site".to_string(),
            self.path("site").to_str().unwrap().to_string(),
            "--key-file".to_string(),
            self.path("vault.key").to_str().unwrap().to_string(),
            "--passphrase-file".to_string(),
            self.path("pass").to_str().unwrap().to_string(),
            "--state-dir".to_string(),
            self.path("state").to_str().unwrap().to_string(),
            "--quiet".to_string(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        Embassy::new(EXE, self.tmp.path())
            .without_passphrase()
            .run(all, None)
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    }
}

fn public_key(out: &Out) -> String {
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .expect("public key printed")
        .trim()
        .to_string()
}

fn write_src(dir: &Path, i: usize) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("register.csv"), format!("row {i}\n").repeat(5000)).unwrap();
}

#[test]
fn prune_gc_forget_and_approve_from_the_command_line() {
    let env = Env {
        tmp: tempfile::tempdir().unwrap(),
    };
    std::fs::write(env.path("pass"), "correct horse battery staple\n").unwrap();
    let a = public_key(&env.ok(&["approver-key", "--out", env.path("a.key").to_str().unwrap()]));
    let b = public_key(&env.ok(&["approver-key", "--out", env.path("b.key").to_str().unwrap()]));
    // Bad init input is refused with the way out.
    let bad = env.run(&["init", "--approver", &a, "--approvals-required", "3"]);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("more than the 1 distinct approvers"),
        "{bad:?}"
    );
    // Versions seconds old are pruned here: no legal minimum age (the default is 30 days).
    env.ok(&[
        "init",
        "--approver",
        &a,
        "--approver",
        &b,
        "--approvals-required",
        "2",
        "--min-age",
        "0",
    ]);
    let src = env.path("src");
    for i in 0..4 {
        write_src(&src, i);
        env.ok(&["backup", "registry", src.to_str().unwrap()]);
    }
    // A dry run says what it keeps and why, and deletes nothing.
    let dry = env.ok(&["prune", "registry", "--keep-last", "2", "--dry-run"]);
    assert!(dry.stdout.contains("keep        4"), "{dry:?}");
    assert!(dry.stdout.contains("newest version"), "{dry:?}");
    assert!(dry.stdout.contains("delete      1"), "{dry:?}");
    assert!(
        dry.stdout.contains("would delete versions [1, 2]"),
        "{dry:?}"
    );
    assert!(env.ok(&["versions", "registry"]).stdout.lines().count() >= 4);
    let no_rule = env.run(&["prune", "registry"]);
    assert_eq!(no_rule.code, 1, "{no_rule:?}");
    assert!(no_rule.stderr.contains("no keep rule"), "{no_rule:?}");
    let pruned = env.ok(&["prune", "registry", "--keep-last", "2"]);
    assert!(
        pruned.stdout.contains("deleted versions [1, 2]"),
        "{pruned:?}"
    );
    let history = env.ok(&["history", "registry"]);
    assert!(
        history.stdout.contains("versions deleted: [1, 2]"),
        "{history:?}"
    );
    // gc: the first run condemns, a run after the grace period deletes.
    let first = env.ok(&["gc", "--grace", "1s"]);
    assert!(first.stdout.contains("condemn "), "{first:?}");
    assert!(first.stdout.contains("delete 0 objects"), "{first:?}");
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let second = env.ok(&["gc", "--grace", "1s"]);
    assert!(!second.stdout.contains("delete 0 objects"), "{second:?}");
    let verify = env.ok(&["verify"]);
    assert!(verify.stdout.contains("vault OK"), "{verify:?}");
    // forget: refused with k-1 approvals, naming how many are missing; accepted with k.
    let refused = env.run(&["forget", "registry@3", "--reason", "court order"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("missing 2"), "{refused:?}");
    env.ok(&[
        "approve",
        "--approver-key",
        env.path("a.key").to_str().unwrap(),
        "registry@3",
        "--reason",
        "court order",
    ]);
    let refused = env.run(&["forget", "registry@3", "--reason", "court order"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("missing 1"), "{refused:?}");
    env.ok(&[
        "approve",
        "--approver-key",
        env.path("b.key").to_str().unwrap(),
        "registry@3",
    ]);
    let forgot = env.ok(&["forget", "registry@3", "--reason", "court order"]);
    assert!(
        forgot
            .stdout
            .contains("deleted versions [3] with 2 approvals"),
        "{forgot:?}"
    );
    let versions = env.ok(&["--json", "versions", "registry"]);
    let listed: serde_json::Value = serde_json::from_str(&versions.stdout).unwrap();
    let seqs: Vec<u64> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![4]);
    let verify = env.ok(&["verify"]);
    assert!(verify.stdout.contains("vault OK"), "{verify:?}");
    // Restoring a deleted version says it was deleted, and by which entry.
    let gone = env.run(&[
        "restore",
        "registry@1",
        "--to",
        env.path("r").to_str().unwrap(),
    ]);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(
        gone.stderr
            .contains("version 1 of dataset registry was deleted by ledger entry 5"),
        "{gone:?}"
    );
}

/// A vault made through the library with a key file under the cheapest Argon2 parameters, so
/// each process start costs milliseconds.
fn cheap_vault(env: &Env) {
    use embassy_core::keys::keyfile::{KdfParams, KeyFile};
    use embassy_core::keys::RootSecret;
    use embassy_core::site::Site;
    let site: std::sync::Arc<dyn Site> =
        std::sync::Arc::new(embassy_sites::LocalSite::new(env.path("site")).unwrap());
    let root = RootSecret::generate();
    let vault = embassy_core::engine::vault::Vault::create(site, &root).unwrap();
    let cheap = KdfParams {
        memory_kib: 8 * 1024,
        iterations: 1,
        parallelism: 1,
    };
    KeyFile::seal(
        &root,
        &vault.config().vault_id,
        b"correct horse battery staple",
        cheap,
    )
    .unwrap()
    .store(&env.path("vault.key"))
    .unwrap();
}

fn tree_bytes(i: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![(
        "stable.txt".to_string(),
        "a stable record\n".repeat(40_000).into_bytes(),
    )];
    for (f, generation) in [(0usize, i % 3), (1, i)] {
        let mut bytes = vec![0u8; 1_200_000];
        let mut s = generation as u64 * 31 + f as u64 + 1;
        for b in bytes.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (s >> 56) as u8;
        }
        files.push((format!("part-{f}.bin"), bytes));
    }
    files
}

#[test]
fn backup_processes_run_while_prune_and_gc_processes_run() {
    let env = std::sync::Arc::new(Env {
        tmp: tempfile::tempdir().unwrap(),
    });
    std::fs::write(env.path("pass"), "correct horse battery staple\n").unwrap();
    cheap_vault(&env);
    const BACKUPS: usize = 10;
    let backups = {
        let env = env.clone();
        std::thread::spawn(move || {
            let mut made = std::collections::BTreeMap::new();
            for i in 0..BACKUPS {
                let src = env.path(&format!("src-{i}"));
                std::fs::create_dir_all(&src).unwrap();
                for (name, bytes) in tree_bytes(i) {
                    std::fs::write(src.join(name), bytes).unwrap();
                }
                let out = env.ok(&["--json", "backup", "ledger", src.to_str().unwrap()]);
                let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
                made.insert(v["version"].as_u64().unwrap(), i);
            }
            made
        })
    };
    let mut rounds = 0;
    while !backups.is_finished() {
        // Either may lose a race to a backup's ledger entry: it says so and changes nothing.
        let p = env.run(&["prune", "ledger", "--keep-last", "2"]);
        assert!(
            p.code == 0 || p.stderr.contains("writer") || p.stderr.contains("no version"),
            "{p:?}"
        );
        env.ok(&["gc", "--grace", "1s"]);
        rounds += 1;
    }
    let made = backups.join().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.ok(&["prune", "ledger", "--keep-last", "2"]);
    env.ok(&["gc", "--grace", "1s"]);
    // gc converges: a run may still repack packs the prune left partly dead (which of them
    // depends on where the parallel writers put the chunks) and condemn the old ones; the next
    // runs delete them, and then nothing is left to condemn.
    let mut report = serde_json::Value::Null;
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let last = env.ok(&["--json", "gc", "--grace", "1s"]);
        report = serde_json::from_str(&last.stdout).unwrap();
        if report["report"]["condemned"]
            .as_array()
            .is_some_and(|c| c.is_empty())
        {
            break;
        }
    }
    eprintln!("{rounds} prune+gc process rounds during {BACKUPS} backup processes");
    assert!(rounds >= 2, "prune and gc must overlap the backups");
    let versions = env.ok(&["--json", "versions", "ledger"]);
    let listed: serde_json::Value = serde_json::from_str(&versions.stdout).unwrap();
    let live: Vec<u64> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(live.len(), 2, "{listed}");
    for seq in live {
        let to = env.path(&format!("restored-{seq}"));
        env.ok(&[
            "restore",
            &format!("ledger@{seq}"),
            "--to",
            to.to_str().unwrap(),
        ]);
        for (name, bytes) in tree_bytes(made[&seq]) {
            assert!(
                std::fs::read(to.join(&name)).unwrap() == bytes,
                "version {seq}: {name} differs"
            );
        }
    }
    let deep = env.ok(&["verify", "--deep"]);
    assert!(deep.stdout.contains("vault OK"), "{deep:?}");
    assert!(
        report["report"]["condemned"].as_array().unwrap().is_empty(),
        "nothing left to collect: {report}"
    );
}
