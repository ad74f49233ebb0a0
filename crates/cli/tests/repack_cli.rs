//! `embassy gc` repacks partly-dead packs (issue 15 item 6), through the real binary: a pruned
//! version whose unique data is interleaved with kept data in the same packs is freed (the
//! figures are printed: without repacking, then with it); a gc killed with SIGKILL leaves a vault
//! that verifies and restores, and a rerun completes; a backup running in another process while
//! gc repacks loses nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use embassy_testkit::cli::{Embassy, Run as Out};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const MIB: usize = 1024 * 1024;

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Env {
            tmp: tempfile::tempdir().unwrap(),
        };
        std::fs::write(env.path("pass"), "correct horse battery staple\n").unwrap();
        env.ok(&["init", "--min-age", "0"]);
        env
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn embassy(&self) -> Embassy {
        Embassy::new(EXE, self.tmp.path()).without_passphrase()
    }

    fn args(&self, args: &[&str]) -> Vec<String> {
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
        all
    }

    fn run(&self, args: &[&str]) -> Out {
        self.embassy().run(self.args(args), None)
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    }

    fn spawn(&self, args: &[&str]) -> Child {
        let mut cmd = self.embassy().command();
        cmd.args(self.args(args))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().unwrap()
    }

    /// Bytes the site stores under `packs/`, `index/` and `manifests/`.
    fn stored(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p).map_or(0, |d| {
                d.map(|e| {
                    let e = e.unwrap();
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        walk(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
            })
        }
        ["packs", "index", "manifests"]
            .iter()
            .map(|d| walk(&self.path("site").join(d)))
            .sum()
    }

    fn verify_keyless(&self) {
        let out = self.embassy().run(
            vec![
                "--site".to_string(),
                self.path("site").to_str().unwrap().to_string(),
                "--state-dir".to_string(),
                self.path("state").to_str().unwrap().to_string(),
                "verify".to_string(),
            ],
            None,
        );
        assert_eq!(out.code, 0, "keyless verify: {out:?}");
        assert!(out.stdout.contains("vault OK"), "{out:?}");
    }

    fn restores(&self, version: &str, expected: &Path) {
        let target = self.path(&format!("restore-{version}-{}", rand_suffix()));
        self.ok(&[
            "restore",
            &format!("registry@{version}"),
            "--to",
            target.to_str().unwrap(),
        ]);
        for e in std::fs::read_dir(expected).unwrap() {
            let e = e.unwrap();
            let got = std::fs::read(target.join(e.file_name())).unwrap();
            assert!(
                got == std::fs::read(e.path()).unwrap(),
                "{version}: {:?} differs",
                e.file_name()
            );
        }
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            std::fs::read_dir(expected).unwrap().count()
        );
        std::fs::remove_dir_all(&target).unwrap();
    }

    fn gc(&self, extra: &[&str]) -> Out {
        let mut args = vec!["gc", "--grace", "1s"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        out
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Incompressible bytes from `seed`.
fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in out.iter_mut() {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *b = (s >> 56) as u8;
    }
    out
}

/// A folder of `pairs` kept files (`fNN-kept`, 3 MiB each) and, when `unique`, a file of unique
/// data after each (`fNN-unique`, 3 MiB): in name order, so each pack mixes both.
fn write_tree(dir: &Path, pairs: u64, unique: bool) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..pairs {
        std::fs::write(dir.join(format!("f{i:02}-kept")), random(100 + i, 3 * MIB)).unwrap();
        if unique {
            std::fs::write(
                dir.join(format!("f{i:02}-unique")),
                random(500 + i, 3 * MIB),
            )
            .unwrap();
        }
    }
}

#[test]
fn gc_frees_a_pruned_versions_data_mixed_into_kept_packs_and_survives_sigkill() {
    let env = Env::new();
    let src = env.path("src");
    let kept = env.path("kept");
    write_tree(&src, 10, true);
    env.ok(&["backup", "registry", src.to_str().unwrap()]);
    write_tree(&kept, 10, false);
    env.ok(&["backup", "registry", kept.to_str().unwrap()]);
    env.ok(&["prune", "registry", "--keep-last", "1"]);
    let unique_bytes = 10 * 3 * MIB as u64;

    // Without repacking (what gc did before): only wholly dead packs go.
    let before = env.stored();
    env.gc(&["--max-unused", "unlimited"]);
    env.gc(&["--max-unused", "unlimited"]);
    let without = env.stored();
    // A gc killed at several moments of a repacking run: the vault verifies and restores.
    for delay_ms in [150u64, 600, 1500] {
        let mut child = env.spawn(&["gc", "--grace", "1s"]);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        env.verify_keyless();
        env.restores("2", &kept);
    }
    // Reruns complete.
    let first = env.gc(&[]);
    let second = env.gc(&[]);
    let third = env.gc(&[]);
    let after = env.stored();
    println!(
        "pruned version: {unique_bytes} bytes of unique data; stored {before} bytes; gc without \
         repacking freed {} bytes; with repacking (10 %) {} more ({} in all)\n{}\n{}\n{}",
        before - without,
        without.saturating_sub(after),
        before.saturating_sub(after),
        first.stdout,
        second.stdout,
        third.stdout
    );
    assert!(
        (before - without) * 2 < unique_bytes,
        "without repacking, most of the dead data stays (the issue's symptom)"
    );
    // The documented rule (`--max-unused 10%`): what stays dead is at most 10 % of what the
    // dataset stores afterwards (half a percent of slack for the pruned version's metadata).
    // How much of the dead data that is depends on where the kills above left the packs.
    let dead_left = after.saturating_sub(before - unique_bytes);
    assert!(
        dead_left * 1000 <= after * 105,
        "with repacking at most 10 % of what is stored stays dead: {dead_left} of {after} \
         (freed {} of {unique_bytes})",
        before.saturating_sub(after)
    );
    env.verify_keyless();
    env.ok(&["verify", "--deep"]);
    env.restores("2", &kept);
    std::fs::remove_dir_all(env.path("site")).unwrap();
}

#[test]
fn a_backup_process_running_while_gc_repacks_loses_nothing() {
    let env = Env::new();
    let src = env.path("src");
    let kept = env.path("kept");
    write_tree(&src, 6, true);
    env.ok(&["backup", "registry", src.to_str().unwrap()]);
    write_tree(&kept, 6, false);
    env.ok(&["backup", "registry", kept.to_str().unwrap()]);
    env.ok(&["prune", "registry", "--keep-last", "1"]);
    // A backup of the pruned data again (it reuses the dead chunks it finds) runs in its own
    // process while gc processes repack, condemn and delete.
    let mut backup = env.spawn(&["backup", "registry", src.to_str().unwrap()]);
    let mut runs = 0;
    loop {
        let done = backup.try_wait().unwrap();
        let out = env.run(&["gc", "--grace", "1s"]);
        assert_eq!(out.code, 0, "{out:?}");
        runs += 1;
        if done.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(backup.wait().unwrap().success());
    assert!(runs >= 1);
    for _ in 0..3 {
        env.gc(&[]);
    }
    env.verify_keyless();
    env.restores("2", &kept);
    env.restores("3", &src);
    std::fs::remove_dir_all(env.path("site")).unwrap();
}
