//! The disaster test (issue 5): protect three datasets, lose every key file and all local state
//! at home, then recover the root key from K custodian shares and restore every dataset
//! byte-identically from the site alone, trusting only what a witness cosigned.

use std::path::{Path, PathBuf};
use std::process::Command;

use embassy_testkit::cli::{exec, Embassy, Run};

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Runs embassy (the test kit's: clean environment, its passphrase) with the site, key file
    /// and state of "home" (or of `state`).
    fn run(&self, key: &Path, state: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut cmd = Embassy::new(env!("CARGO_BIN_EXE_embassy"), self.dir.path()).command();
        cmd.arg("--site")
            .arg(self.path("site"))
            .arg("--key-file")
            .arg(key)
            .arg("--state-dir")
            .arg(state)
            .arg("--quiet")
            .args(args);
        exec(cmd, stdin)
    }
}

fn ok_bytes(out: Run) -> Vec<u8> {
    assert_eq!(out.code, 0, "embassy failed: {out:?}");
    out.stdout_bytes
}

fn ok(out: Run) -> String {
    assert_eq!(out.code, 0, "embassy failed: {out:?}");
    out.stdout
}

fn write_tree(root: &Path, seed: u64, files: usize) {
    let mut state = seed;
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 1000 + (i * 7919) % 300_000;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if state >> 62 == 0 {
                    (state >> 33) as u8
                } else {
                    b'a' + (state >> 59) as u8 % 4
                }
            })
            .collect();
        std::fs::write(dir.join(format!("f{i}.dat")), bytes).unwrap();
    }
}

fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn recover_everything_from_a_site_and_k_custodian_shares() {
    let home = Home {
        dir: tempfile::tempdir().unwrap(),
    };
    let key = home.path("home/root.key");
    let state = home.path("home/state");
    let witness_key = home.path("witness/witness.key");
    let witness_state = home.path("witness/state");

    // A witness (another party) and the vault, which pins it.
    let w = ok(home.run(
        &key,
        &state,
        &[
            "--json",
            "witness-key",
            "--out",
            witness_key.to_str().unwrap(),
        ],
        None,
    ));
    let witness: serde_json::Value = serde_json::from_str(&w).unwrap();
    let witness_public = witness["public_key"].as_str().unwrap().to_string();
    ok(home.run(
        &key,
        &state,
        &[
            "init",
            "--witness",
            &witness_public,
            "--witness-quorum",
            "1",
        ],
        None,
    ));

    // Three datasets: two trees and a stream; two versions of one.
    let population = home.path("home/data/population");
    let land = home.path("home/data/land");
    write_tree(&population, 1, 40);
    write_tree(&land, 2, 25);
    let dump: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
        .collect();
    ok(home.run(
        &key,
        &state,
        &[
            "backup",
            "population-registry",
            population.to_str().unwrap(),
        ],
        None,
    ));
    ok(home.run(
        &key,
        &state,
        &["backup", "land-registry", land.to_str().unwrap()],
        None,
    ));
    ok(home.run(
        &key,
        &state,
        &["backup", "tax-registry", "--stdin"],
        Some(&dump),
    ));
    std::fs::write(
        population.join("d1/late-change.txt"),
        b"registered after the first backup",
    )
    .unwrap();
    ok(home.run(
        &key,
        &state,
        &[
            "backup",
            "population-registry",
            population.to_str().unwrap(),
        ],
        None,
    ));
    // The witness checks the site and cosigns its newest checkpoint.
    ok(home.run(
        &witness_key,
        &witness_state,
        &["witness", "--witness-key", witness_key.to_str().unwrap()],
        None,
    ));

    // Custodian shares, 3 of 5.
    let split = ok(home.run(
        &key,
        &state,
        &[
            "--json",
            "keys",
            "split",
            "--threshold",
            "3",
            "--shares",
            "5",
        ],
        None,
    ));
    let split: serde_json::Value = serde_json::from_str(&split).unwrap();
    let shares: Vec<String> = split["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 5);

    // Keep what home held only to compare after the disaster.
    let reference = home.path("reference");
    std::fs::rename(home.path("home/data"), &reference).unwrap();
    // Disaster: home is gone, with every key file and all local state.
    std::fs::remove_dir_all(home.path("home")).unwrap();
    assert!(!key.exists());

    // At the embassy: a new machine, the site, and custodians 5, 2 and 4.
    let embassy_state = home.path("embassy/state");
    let new_key = home.path("embassy/recovered.key");
    let too_few = home.run(
        &new_key,
        &embassy_state,
        &[
            "keys",
            "recover",
            "--share",
            &shares[4],
            "--share",
            &shares[1],
            "--out",
            new_key.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(too_few.code, 1);
    let msg = &too_few.stderr;
    assert!(msg.contains("needs 3 of its 5"), "{msg}");
    assert!(!new_key.exists());
    let typed = format!("{}\n{}\n{}\n", shares[4], shares[1], shares[3]);
    ok(home.run(
        &new_key,
        &embassy_state,
        &["keys", "recover", "--out", new_key.to_str().unwrap()],
        Some(typed.as_bytes()),
    ));

    // Everything verifies against the cosigned checkpoint, and every dataset restores.
    let verify = ok(home.run(&new_key, &embassy_state, &["verify", "--deep"], None));
    assert!(verify.contains("vault OK"), "{verify}");
    assert!(verify.contains("cosigned by 1 witnesses"), "{verify}");
    let out = home.path("embassy/restored");
    ok(home.run(
        &new_key,
        &embassy_state,
        &[
            "restore",
            "population-registry",
            "--to",
            out.join("population").to_str().unwrap(),
        ],
        None,
    ));
    ok(home.run(
        &new_key,
        &embassy_state,
        &[
            "restore",
            "land-registry",
            "--to",
            out.join("land").to_str().unwrap(),
        ],
        None,
    ));
    let restored_dump =
        ok_bytes(home.run(&new_key, &embassy_state, &["restore", "tax-registry"], None));
    same_tree(&reference.join("population"), &out.join("population"));
    same_tree(&reference.join("land"), &out.join("land"));
    assert!(restored_dump == dump, "the stream differs");
    // The first version of population too.
    ok(home.run(
        &new_key,
        &embassy_state,
        &[
            "restore",
            "population-registry@1",
            "--to",
            out.join("population-v1").to_str().unwrap(),
        ],
        None,
    ));
    assert!(!out.join("population-v1/d1/late-change.txt").exists());
    assert!(out.join("population-v1/d1/f1.dat").exists());
}
