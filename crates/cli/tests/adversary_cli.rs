//! Hostile-site attacks through the `embassy` binary, where the refusals are CLI behaviour:
//! restore without `--unwitnessed` under a witness quorum, `witness` refusing to cosign, and
//! exit code 3 for integrity problems.
//!
//! A CLI process reaches a site by path, so the hostile site is played with folders: the real
//! vault folder, and for each client the view the site chooses to serve it (a copy of the real
//! folder with objects left out, or an older copy taken earlier). What a client writes into its
//! view is merged back into the real folder, as a site storing it would. Each client is its own
//! machine: its own `--state-dir`. The library suite (`crates/sources/tests/adversary.rs`)
//! covers every attack with a scriptable `HostileSite`; this one proves the user-facing
//! commands act on those detections.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use embassy_core::keys::keyfile::KeyFile;

use embassy_testkit::cli::{Embassy, Run, CHEAP, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// The test's world: a home folder, the real vault folder, key files.
struct Home {
    tmp: tempfile::TempDir,
    real: PathBuf,
    key: PathBuf,
    witness_key: PathBuf,
}

impl Home {
    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Runs `embassy` as machine `machine` (its own state folder) against `site`.
    fn run(&self, machine: &str, site: &Path, args: &[&OsStr], stdin: Option<&[u8]>) -> Run {
        let mut all: Vec<OsString> = vec![
            "--site".into(),
            site.into(),
            "--quiet".into(),
            "--key-file".into(),
            self.key.clone().into(),
            "--state-dir".into(),
            self.path().join("state").join(machine).into(),
        ];
        all.extend(args.iter().map(|a| a.to_os_string()));
        embassy(self.path(), &all, stdin)
    }

    fn backup(&self, machine: &str, site: &Path, dataset: &str, data: &[u8]) -> Run {
        self.run(
            machine,
            site,
            &[os("backup"), os(dataset), os("--stdin")],
            Some(data),
        )
    }

    fn restore(&self, machine: &str, site: &Path, target: &str, extra: &[&str]) -> (Run, PathBuf) {
        let n = RESTORES.fetch_add(1, Ordering::SeqCst);
        let out = self.path().join(format!("restored-{n}"));
        let mut args = vec![os("restore"), os(target), os("--to"), out.as_os_str()];
        args.extend(extra.iter().map(os));
        (self.run(machine, site, &args, None), out)
    }

    fn witness(&self, machine: &str, site: &Path) -> Run {
        self.run(
            machine,
            site,
            &[
                os("witness"),
                os("--witness-key"),
                self.witness_key.as_os_str(),
            ],
            None,
        )
    }

    /// What the site serves a client: the real folder without the objects `hide` names
    /// (exact paths, or prefixes ending in `/`).
    fn view(&self, name: &str, from: &Path, hide: &[String]) -> PathBuf {
        let to = self.path().join(name);
        copy_tree(from, &to, Path::new(""), hide);
        to
    }
}

static RESTORES: AtomicUsize = AtomicUsize::new(0);

fn embassy<A: AsRef<OsStr> + std::fmt::Debug>(
    home: &Path,
    args: &[A],
    stdin: Option<&[u8]>,
) -> Run {
    Embassy::new(EXE, home).run(args, stdin)
}

fn os<S: AsRef<OsStr> + ?Sized>(s: &S) -> &OsStr {
    s.as_ref()
}

fn hidden(rel: &str, hide: &[String]) -> bool {
    hide.iter()
        .any(|h| rel == h || (h.ends_with('/') && rel.starts_with(h.as_str())))
}

fn copy_tree(from: &Path, to: &Path, rel: &Path, hide: &[String]) {
    fs::create_dir_all(to.join(rel)).unwrap();
    for entry in fs::read_dir(from.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let child = rel.join(entry.file_name());
        let name = child.to_str().unwrap().to_string();
        if name == "tmp" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_tree(from, to, &child, hide);
        } else if !hidden(&name, hide) {
            fs::copy(entry.path(), to.join(&child)).unwrap();
        }
    }
}

/// Copies into `into` every object of `from` it does not hold (the site storing a write).
fn merge(from: &Path, into: &Path) {
    for rel in objects(from, "") {
        let target = into.join(&rel);
        if !target.exists() {
            fs::create_dir_all(target.parent().unwrap()).unwrap();
            fs::copy(from.join(&rel), target).unwrap();
        }
    }
}

/// Object paths under a vault folder starting with `prefix`, sorted.
fn objects(vault: &Path, prefix: &str) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if rel == "tmp" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(vault, vault, &mut out);
    out.retain(|p| p.starts_with(prefix));
    out.sort();
    out
}

fn only(mut found: Vec<String>, what: &str) -> String {
    assert_eq!(found.len(), 1, "expected one {what}: {found:?}");
    found.remove(0)
}

/// The id at the end of an object path.
fn id_of(path: &str) -> String {
    path.rsplit('-').next().unwrap().to_string()
}

fn data(tag: u8) -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ tag)
        .collect()
}

/// A vault at `real` with one pinned witness and a quorum of 1. `init` makes the key file
/// (Argon2id at 64 MiB); it is re-wrapped with the cheapest accepted parameters for speed.
fn home() -> Home {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path();
    let witness_key = path.join("keys/witness.key");
    let r = embassy(
        path,
        &[
            os("--json"),
            os("witness-key"),
            os("--out"),
            witness_key.as_os_str(),
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let json: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let public = json["public_key"].as_str().unwrap().to_string();
    let real = path.join("site");
    let slow = path.join("keys/init.key");
    let r = embassy(
        path,
        &[
            os("--site"),
            real.as_os_str(),
            os("--key-file"),
            slow.as_os_str(),
            os("init"),
            os("--witness"),
            os(&public),
            os("--witness-quorum"),
            os("1"),
        ],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let file = KeyFile::load(&slow).unwrap();
    let root = file.open(PASS.as_bytes(), &slow).unwrap();
    let key = path.join("keys/cheap.key");
    KeyFile::seal(&root, &file.vault_id, PASS.as_bytes(), CHEAP)
        .unwrap()
        .store(&key)
        .unwrap();
    Home {
        tmp,
        real,
        key,
        witness_key,
    }
}

// ---------------------------------------------------------------------------------------------
// Tally
// ---------------------------------------------------------------------------------------------

const TESTS: usize = 2;
static FINISHED: AtomicUsize = AtomicUsize::new(0);
static TRIED: AtomicUsize = AtomicUsize::new(0);
static DETECTED: AtomicUsize = AtomicUsize::new(0);
static LIMITS: AtomicUsize = AtomicUsize::new(0);

struct Tally {
    test: &'static str,
    lines: Vec<String>,
}

impl Tally {
    fn new(test: &'static str) -> Self {
        Self {
            test,
            lines: Vec::new(),
        }
    }

    /// Asserts the run failed with `code` and says every needle; counts a detection.
    fn detected(&mut self, attack: &str, run: &Run, code: i32, needles: &[&str]) {
        TRIED.fetch_add(1, Ordering::SeqCst);
        assert_eq!(run.code, code, "{attack}: {run:?}");
        let text = run.text();
        for needle in needles {
            assert!(text.contains(needle), "{attack}: no {needle:?} in {run:?}");
        }
        DETECTED.fetch_add(1, Ordering::SeqCst);
        let line = text
            .lines()
            .find(|l| needles.first().is_some_and(|n| l.contains(n)))
            .unwrap_or("")
            .trim()
            .to_string();
        self.lines.push(format!(
            "  detected  {attack} (exit {code})\n            -> {line}"
        ));
    }

    fn limit(&mut self, what: &str) {
        TRIED.fetch_add(1, Ordering::SeqCst);
        LIMITS.fetch_add(1, Ordering::SeqCst);
        self.lines.push(format!("  LIMIT     {what}"));
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let status = if std::thread::panicking() {
            "FAILED"
        } else {
            "ok"
        };
        let mut text = format!("[adversary-cli] {} ({status})\n", self.test);
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        if FINISHED.fetch_add(1, Ordering::SeqCst) + 1 == TESTS {
            text.push_str(&format!(
                "[adversary-cli] TALLY: {} attacks tried, {} detected, {} known limits\n",
                TRIED.load(Ordering::SeqCst),
                DETECTED.load(Ordering::SeqCst),
                LIMITS.load(Ordering::SeqCst)
            ));
        }
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------------------------

/// Attack 6 through the CLI: v2 for machine A and the witness, v2' (written by machine B, from
/// which the site hid v2) for B.
#[test]
fn cli_fork_with_a_witness_quorum() {
    let mut t = Tally::new("fork: v2 shown to A and the witness, v2' to B");
    let h = home();
    let real = h.real.clone();
    assert_eq!(h.backup("a", &real, "court", &data(1)).code, 0);
    assert_eq!(h.witness("witness", &real).code, 0);
    let r = h.backup("a", &real, "court", &data(2));
    assert_eq!(r.code, 0, "{r:?}");
    let r = h.witness("witness", &real);
    assert_eq!(r.code, 0, "{r:?}");
    let v2 = only(objects(&real, "ledger/court/0000000000000002-"), "entry 2");
    let cp_a = objects(&real, "checkpoints/").pop().unwrap();
    let cosigs_a = format!("cosignatures/{}/", id_of(&cp_a));
    assert_eq!(
        objects(&real, &cosigs_a).len(),
        1,
        "the witness cosigned A's checkpoint"
    );

    // The site hides v2 and what proves it from B, which writes its own entry 2.
    let view_b = h.view(
        "view-b",
        &real,
        &[v2.clone(), cp_a.clone(), cosigs_a.clone()],
    );
    let r = h.backup("b", &view_b, "court", &data(22));
    assert_eq!(r.code, 0, "{r:?}");
    let v2b = only(
        objects(&view_b, "ledger/court/0000000000000002-"),
        "entry 2'",
    );
    let cp_b = objects(&view_b, "checkpoints/").pop().unwrap();
    merge(&view_b, &real);

    // Shown both: every command refuses.
    let r = h.run("c", &real, &[os("verify")], None);
    t.detected(
        "a fresh machine shown both entries 2 (verify)",
        &r,
        3,
        &[
            "fork",
            "court",
            "sequence 2",
            &id_of(&v2)[..8],
            &id_of(&v2b)[..8],
        ],
    );
    let (r, out) = h.restore("c", &real, "court", &[]);
    t.detected(
        "a fresh machine shown both (restore)",
        &r,
        3,
        &["fork", "court"],
    );
    assert!(
        !out.exists(),
        "restore wrote something from a forked history"
    );

    // A (which verified v2) served B's branch.
    let r = h.run("a", &view_b, &[os("verify")], None);
    t.detected(
        "machine A served v2' (verify)",
        &r,
        3,
        &[
            "fork",
            "court",
            "entry 2",
            &id_of(&v2b)[..16],
            &id_of(&v2)[..16],
        ],
    );
    let (r, out) = h.restore("a", &view_b, "court", &["--unwitnessed"]);
    t.detected(
        "machine A served v2' (restore --unwitnessed)",
        &r,
        3,
        &["fork"],
    );
    assert!(!out.exists());

    // The witness (which saw v2) served B's branch: refuses, cosigns nothing.
    let before = objects(&view_b, "cosignatures/");
    let r = h.witness("witness", &view_b);
    t.detected(
        "the witness served v2'",
        &r,
        3,
        &["fork", "nothing was cosigned"],
    );
    assert_eq!(objects(&view_b, "cosignatures/"), before);

    // B, quorum 1: v2' is not witnessed.
    let (r, out) = h.restore("b", &view_b, "court@2", &[]);
    t.detected(
        "machine B restores v2' as trusted",
        &r,
        1,
        &["version 2 of court is not yet covered", "--unwitnessed"],
    );
    assert!(!out.exists());
    let (r, out) = h.restore("b", &view_b, "court", &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read(&out).unwrap(),
        data(1),
        "latest trusted = the witnessed v1"
    );
    let (r, out) = h.restore("b", &view_b, "court@2", &["--unwitnessed"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read(&out).unwrap(),
        data(22),
        "B's own write, authentic, on request"
    );

    // B's branch with A's witnessed checkpoint left visible.
    let view_d = h.view("view-d", &real, &[v2.clone(), cp_b]);
    let r = h.run("d", &view_d, &[os("verify")], None);
    t.detected(
        "a fresh machine served v2' beside A's witnessed checkpoint (verify)",
        &r,
        3,
        &[
            "fork",
            "court",
            &format!("says entry 2 is {}", &id_of(&v2)[..8]),
        ],
    );
    let (r, out) = h.restore("d2", &view_d, "court", &[]);
    t.detected(
        "a fresh machine served v2' beside A's witnessed checkpoint (restore)",
        &r,
        3,
        &["fork", "court", "witness cosignatures"],
    );
    assert!(!out.exists());
}

/// Attacks 1 and 3 through the CLI: the newest entry deleted, then the whole site rolled back
/// to a copy taken after version 1.
#[test]
fn cli_rollback_with_a_witness_quorum() {
    let mut t = Tally::new("rollback: newest entry deleted; whole site rolled back");
    let h = home();
    let real = h.real.clone();
    assert_eq!(h.backup("a", &real, "tax", &data(1)).code, 0);
    assert_eq!(h.witness("witness", &real).code, 0);
    let old_copy = h.view("copy-after-v1", &real, &[]);
    assert_eq!(h.backup("a", &real, "tax", &data(2)).code, 0);
    assert_eq!(h.witness("witness", &real).code, 0);
    let r = h.run("a", &real, &[os("verify")], None);
    assert_eq!(r.code, 0, "{r:?}");
    let v2 = only(objects(&real, "ledger/tax/0000000000000002-"), "entry 2");

    // Only the newest entry deleted.
    let no_v2 = h.view("no-v2", &real, std::slice::from_ref(&v2));
    let r = h.run("a", &no_v2, &[os("versions"), os("tax")], None);
    t.detected(
        "newest entry deleted, machine A (versions)",
        &r,
        3,
        &["rollback", "tax", "entry 2", &id_of(&v2)[..16]],
    );
    let r = h.run("fresh-1", &no_v2, &[os("verify")], None);
    t.detected(
        "newest entry deleted, fresh machine (verify, through the checkpoint)",
        &r,
        3,
        &["rollback", "tax", "says entry 2"],
    );
    let (r, out) = h.restore("fresh-2", &no_v2, "tax", &[]);
    t.detected(
        "newest entry deleted, fresh machine (restore: the witnessed checkpoint names entry 2)",
        &r,
        3,
        &["rollback", "tax", "witness cosignatures"],
    );
    assert!(!out.exists());

    // The whole site rolled back to the copy.
    let r = h.run("a", &old_copy, &[os("verify")], None);
    t.detected(
        "whole-site rollback, machine A (verify)",
        &r,
        3,
        &["rollback", "tax", "replay"],
    );
    let (r, out) = h.restore("a", &old_copy, "tax", &["--unwitnessed"]);
    t.detected(
        "whole-site rollback, machine A (restore)",
        &r,
        3,
        &["rollback"],
    );
    assert!(!out.exists());
    let r = h.witness("witness", &old_copy);
    t.detected(
        "whole-site rollback, the witness",
        &r,
        3,
        &["rollback", "nothing was cosigned"],
    );
    // A fresh machine: a consistent older vault. The known limit.
    let r = h.run("fresh-3", &old_copy, &[os("verify")], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("vault OK"), "{r:?}");
    let (r, out) = h.restore("fresh-3", &old_copy, "tax", &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(fs::read(&out).unwrap(), data(1));
    t.limit(
        "fresh machine on a whole-site rollback: verify OK, restore gives version 1 (authentic, \
         witnessed): needs state or witness cosignatures kept off the site",
    );
    // A writer with no state writes on the rolled-back site; nobody cosigns it.
    let r = h.backup("b-rebuilt", &old_copy, "tax", &data(22));
    assert_eq!(r.code, 0, "{r:?}");
    let r = h.witness("witness", &old_copy);
    t.detected(
        "a new entry 2 on the rolled-back site, the witness",
        &r,
        3,
        &["fork", "entry 2", "nothing was cosigned"],
    );
    let (r, out) = h.restore("fresh-3", &old_copy, "tax@2", &[]);
    t.detected(
        "a new entry 2 on the rolled-back site, trusted restore of it",
        &r,
        1,
        &["version 2 of tax is not yet covered"],
    );
    assert!(!out.exists());
    let (r, out) = h.restore("fresh-4", &old_copy, "tax", &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read(&out).unwrap(),
        data(1),
        "latest trusted stays the witnessed v1"
    );
}
