//! Several embassies at once (issue 6): writes fan out, a site that is down only counts against
//! --min-sites and is reported, `status` shows its lag, `sync` catches it up without keys and
//! with no gap, and a damaged object at one site is repaired from another.

use std::path::{Path, PathBuf};
use std::process::Command;

use embassy_testkit::cli::{exec, Embassy, Run};

/// The test kit's `embassy` (clean environment, home in `dir`), run in `dir` with the key file
/// `key` and the state folder `state` there.
fn embassy(dir: &Path, args: &[&str]) -> Run {
    embassy_as(
        Embassy::new(env!("CARGO_BIN_EXE_embassy"), dir),
        dir,
        "key",
        args,
    )
}

/// `embassy` run with the key file `key`.
fn embassy_as(embassy: Embassy, dir: &Path, key: &str, args: &[&str]) -> Run {
    let mut cmd = embassy.command();
    cmd.current_dir(dir)
        .args(["--quiet", "--key-file", key, "--state-dir", "state"])
        .args(args);
    exec(cmd, None)
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = embassy(dir, args);
    assert_eq!(out.code, 0, "{args:?}: {out:?}");
    out.stdout
}

/// Takes a site down the way a dead mount looks: the folder is replaced by a file.
struct Down(PathBuf);

impl Down {
    fn new(site: PathBuf) -> Self {
        std::fs::rename(&site, site.with_extension("away")).unwrap();
        std::fs::write(&site, b"").unwrap();
        Down(site)
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::rename(self.0.with_extension("away"), &self.0);
    }
}

fn status(dir: &Path) -> serde_json::Value {
    let out = embassy(dir, &["--json", "status", "--site", "a", "--site", "b"]);
    serde_json::from_str(&out.stdout).unwrap()
}

fn newest(status: &serde_json::Value, site: &str) -> Option<u64> {
    status["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["site"] == site)
        .and_then(|r| r["newest_version"].as_u64())
}

#[test]
fn a_site_that_was_down_catches_up_without_a_gap_and_damage_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/register.csv"),
        "38001010000;Mari;Tamm\n".repeat(60_000),
    )
    .unwrap();
    ok(dir, &["--site", "a", "--site", "b", "init"]);
    ok(dir, &["--site", "a,b", "backup", "population", "src"]);
    for site in ["a", "b"] {
        assert!(ok(dir, &["--site", site, "verify"]).contains("vault OK"));
    }

    // Site b goes down. With every site required the backup refuses; with one it goes on.
    {
        let _down = Down::new(dir.join("b"));
        std::fs::write(
            dir.join("src/births.csv"),
            "52601010000;Liis;Saar\n".repeat(1000),
        )
        .unwrap();
        let refused = embassy(
            dir,
            &["--site", "a", "--site", "b", "backup", "population", "src"],
        );
        assert_eq!(refused.code, 1);
        assert!(refused.stderr.contains("2 required"));
        let out = embassy(
            dir,
            &[
                "--site",
                "a",
                "--site",
                "b",
                "--min-sites",
                "1",
                "backup",
                "population",
                "src",
            ],
        );
        assert_eq!(out.code, 0, "{out:?}");
        let stderr = &out.stderr;
        assert!(
            stderr.contains("is behind") && stderr.contains("embassy sync --from a --to"),
            "{stderr}"
        );
    }
    // b is back, one version behind, and status says so: judged against the head verified
    // here, it lags (its missing entry is queued for it), an outage, never damage.
    let s = status(dir);
    assert_eq!(newest(&s, "a"), Some(2), "{s}");
    let b = s["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["site"] == "b")
        .unwrap_or_else(|| panic!("no row for b: {s}"));
    assert_eq!(b["kind"], "outage", "{s}");
    assert!(b["error"].as_str().unwrap().contains("site b lags"), "{s}");

    // Catch up without keys: no gap, both sites complete on their own.
    let mut cmd = Embassy::new(env!("CARGO_BIN_EXE_embassy"), dir)
        .without_passphrase()
        .command();
    cmd.current_dir(dir)
        .args(["--json", "sync", "--from", "a", "--to", "b"]);
    let out = exec(cmd, None);
    assert_eq!(out.code, 0, "{out:?}");
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(report["copied"].as_u64().unwrap() > 0, "{report}");
    let s = status(dir);
    assert_eq!(
        (newest(&s, "a"), newest(&s, "b")),
        (Some(2), Some(2)),
        "{s}"
    );
    for site in ["a", "b"] {
        assert!(ok(dir, &["--site", site, "verify", "--deep"]).contains("vault OK"));
        let to = format!("restored-{site}");
        ok(dir, &["--site", site, "restore", "population", "--to", &to]);
        let diff = Command::new("diff")
            .arg("-r")
            .arg(dir.join("src"))
            .arg(dir.join(&to))
            .status()
            .unwrap();
        assert!(diff.success(), "site {site} restores a different tree");
    }

    // Damage every pack at a (a byte in the middle of each, inside a blob); reads through both
    // sites fall back to b's good copies; sync --repair mends a.
    let packs = walk(&dir.join("a/packs"));
    for pack in &packs {
        let mut bytes = std::fs::read(pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(pack, bytes).unwrap();
    }
    assert_eq!(embassy(dir, &["--site", "a", "verify"]).code, 3);
    ok(
        dir,
        &["--site", "a,b", "restore", "population", "--to", "fallback"],
    );
    let diff = Command::new("diff")
        .arg("-r")
        .arg(dir.join("src"))
        .arg(dir.join("fallback"))
        .status()
        .unwrap();
    assert!(
        diff.success(),
        "the fallback restore differs from the source"
    );
    let out = embassy(
        dir,
        &["--json", "sync", "--from", "b", "--to", "a", "--repair"],
    );
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(report["repaired"], packs.len(), "{report}");
    assert!(ok(dir, &["--site", "a", "verify", "--deep"]).contains("vault OK"));

    // A site that holds another vault is never mixed in.
    let other = embassy_as(
        Embassy::new(env!("CARGO_BIN_EXE_embassy"), dir).env("EMBASSY_PASSPHRASE", "another vault"),
        dir,
        "other.key",
        &["--site", "other", "init"],
    );
    assert_eq!(other.code, 0, "{other:?}");
    let mixed = embassy(dir, &["--site", "a", "--site", "other", "versions"]);
    assert_eq!(mixed.code, 1);
    assert!(mixed.stderr.contains("another vault"));
    let mixed = embassy(dir, &["sync", "--from", "a", "--to", "other"]);
    assert_eq!(mixed.code, 1);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
