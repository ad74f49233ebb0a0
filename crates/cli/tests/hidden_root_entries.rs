//! A site hides root-signed entries from a second root client, which then appends its own root
//! entry at their sequence number (red team 6, finding 1; docs/format.md §9 rule 3d). Both
//! competing entries are signed by the root, and the branch whose checkpoint the site shows
//! wins. The left-out branch was validly signed on its own (the root's entries, and entries of
//! a key the root granted there): it must be reported, never dropped as noise behind a
//! "vault OK", and garbage collection must keep its versions' objects.
//!
//! Driven as the red team drove it: real processes, a folder site, copies of the folder.

use std::fs;
use std::path::{Path, PathBuf};

use embassy_testkit::cli::{copy_dir, exec, Embassy, Run};

fn show(out: &Run) -> String {
    format!("{out:?}")
}

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
        fs::create_dir_all(dir.join("src")).unwrap();
        let embassy = Embassy::new(EMBASSY, &dir);
        Env {
            _tmp: tmp,
            dir,
            embassy,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// `embassy` at site `v` with the state folder `state`, the root key file unless `args`
    /// name another.
    fn run(&self, state: &str, args: &[&str]) -> Run {
        let mut cmd = self.embassy.command();
        cmd.current_dir(&self.dir)
            .env("EMBASSY_KEY_FILE", self.path("vault.key"))
            .args(["--site", "v", "--state-dir", state])
            .args(args);
        exec(cmd, None)
    }

    fn ok(&self, state: &str, args: &[&str]) -> Run {
        let out = self.run(state, args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    }

    /// A new version of `reg` (its file `f` holding `n`).
    fn backup(&self, state: &str, n: u32, extra: &[&str]) {
        fs::write(self.path("src/f"), format!("{n}\n")).unwrap();
        let mut args = extra.to_vec();
        args.extend(["backup", "reg", "src"]);
        self.ok(state, &args);
    }

    /// Version 1 by the root, with a copy of the site kept after it (`snapshot`).
    fn one_version(&self) {
        self.ok("st1", &["init", "--min-age", "0"]);
        self.backup("st1", 1, &[]);
        copy_dir(&self.path("v"), &self.path("snapshot"));
    }

    /// The site shows a second root client (state `st2`) the snapshot, on which it raises the
    /// minimum age (a root entry at the sequence number of the hidden ones); then the site
    /// holds both branches again, with only the second client's checkpoints newer.
    fn hide_from_second_root_client(&self) {
        copy_dir(&self.path("v"), &self.path("full"));
        fs::remove_dir_all(self.path("v")).unwrap();
        copy_dir(&self.path("snapshot"), &self.path("v"));
        self.ok("st2", &["policy", "min-age", "reg", "60d"]);
        for folder in ["ledger/reg", "manifests", "packs", "index"] {
            merge_missing(
                &self.path("full").join(folder),
                &self.path("v").join(folder),
            );
        }
    }
}

/// Copies into `to` every file of `from` that `to` lacks (what the site stored before).
fn merge_missing(from: &Path, to: &Path) {
    let Ok(entries) = fs::read_dir(from) else {
        return;
    };
    fs::create_dir_all(to).unwrap();
    for e in entries.flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            merge_missing(&e.path(), &target);
        } else if !target.exists() {
            fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Every file under `root`, relative to it.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out
}

/// The first 64-hex-digit word of a command's output (a key `keys issue` printed).
fn first_key(out: &Run) -> String {
    show(out)
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .unwrap_or_else(|| panic!("no key printed: {}", show(out)))
        .to_string()
}

/// The root grants a new source host a credential, which stores versions 2 and 3; the site
/// hides the grant and both versions from a second root client, which raises the minimum age
/// at their sequence number. A fresh verifier used to follow the second client's branch,
/// drop the grant and both versions as noise and say "vault OK" (exit 0); the versions
/// vanished from `versions` and garbage collection treated their objects as unreferenced.
#[test]
fn hidden_root_grant_and_its_versions_are_reported_and_kept() {
    let env = Env::new();
    env.one_version();
    env.ok(
        "st1",
        &[
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            "reg",
            "--label",
            "newhost",
            "--out",
            "new.cred",
        ],
    );
    for n in [2, 3] {
        env.backup("st-new", n, &["--key-file", "new.cred"]);
    }
    env.hide_from_second_root_client();

    let out = env.run("st3", &["verify"]);
    let text = show(&out);
    assert_eq!(out.code, 3, "{text}");
    assert!(text.contains("fork at entry 2"), "{text}");
    assert!(text.contains("leaves out 3 entries"), "{text}");
    assert!(text.contains("the root's own among them"), "{text}");
    assert!(!text.contains("vault OK"), "{text}");
    // Reported as a problem, and not also listed as noise that "the history is intact
    // without" (red team 6's report).
    assert!(
        !text
            .lines()
            .any(|l| l.contains("NOISE") && l.contains("ledger/")),
        "{text}"
    );

    // Garbage collection keeps the dataset whole while the left-out branch is reported.
    let stored = files(&env.path("full"));
    for _ in 0..2 {
        let out = env.run("st3", &["gc", "--grace", "0s"]);
        let text = show(&out);
        assert!(text.contains("nothing of it is collected"), "{text}");
    }
    for f in stored
        .iter()
        .filter(|f| f.starts_with("packs") || f.starts_with("manifests"))
    {
        assert!(env.path("v").join(f).exists(), "gc deleted {}", f.display());
    }
}

/// The root revokes a stolen credential; the site hides the revocation from a second root
/// client, which raises the minimum age at its sequence number. A fresh verifier used to drop
/// the revocation as noise ("vault OK"), and the stolen credential then wrote the newest
/// version unreported.
#[test]
fn a_hidden_revocation_is_reported_not_undone_silently() {
    let env = Env::new();
    env.one_version();
    let issued = env.ok(
        "st1",
        &[
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            "reg",
            "--label",
            "home",
            "--out",
            "home.cred",
        ],
    );
    let key = first_key(&issued);
    copy_dir(&env.path("v"), &env.path("snapshot-before-revoke"));
    fs::remove_dir_all(env.path("snapshot")).unwrap();
    fs::rename(env.path("snapshot-before-revoke"), env.path("snapshot")).unwrap();
    env.ok(
        "st1",
        &[
            "keys",
            "revoke",
            "--signer",
            &key,
            "--dataset",
            "reg",
            "--reason",
            "stolen",
        ],
    );
    env.hide_from_second_root_client();

    let out = env.run("st3", &["verify"]);
    let text = show(&out);
    assert_eq!(out.code, 3, "{text}");
    assert!(text.contains("fork at entry 3"), "{text}");
    assert!(text.contains("signer revoked"), "{text}");
    assert!(!text.contains("vault OK"), "{text}");
}
