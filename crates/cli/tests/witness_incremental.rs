//! The incremental witness (issue 16): `embassy witness` remembers what it verified (its memory
//! under the state folder) and reads only what is new at the next cosign, while still refusing
//! a rolled-back site, tampered new objects and deleted old ones; `--full` reads everything.
//! Real processes, the CLI binary, local folder sites. Bytes read are the witness process's
//! `rchar` (every byte it read through system calls), taken by a `sh` that waits for it.
//!
//! `WITNESS_VAULT_MB` sets the size of the vault of the bytes test (default 24): the figures
//! in the report were taken with a few hundred MB.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use embassy_testkit::cli::{cheapen, exec, Embassy, Run};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// A vault in a local folder with one pinned witness (quorum 1), keys re-sealed cheaply.
struct World {
    tmp: tempfile::TempDir,
    embassy: Embassy,
    site: PathBuf,
    key: PathBuf,
    witness_key: PathBuf,
    rng: StdRng,
}

/// One witness run: the process, its bytes read (`rchar`) and its wall time.
struct Witnessed {
    run: Run,
    bytes_read: u64,
    took: Duration,
}

impl World {
    fn new(seed: u64) -> Self {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let base = tmp.path().to_path_buf();
        let embassy = Embassy::new(EXE, &base);
        let slow_witness = base.join("keys/witness.slow");
        let w = embassy.ok(
            [
                "--json",
                "witness-key",
                "--out",
                slow_witness.to_str().unwrap(),
            ],
            None,
        );
        let public = w.json()["public_key"].as_str().unwrap().to_string();
        let witness_key = base.join("keys/witness.key");
        cheapen(&slow_witness, &witness_key);
        let site = base.join("site");
        let slow = base.join("keys/root.slow");
        embassy.ok(
            [
                "--json",
                "--site",
                site.to_str().unwrap(),
                "--key-file",
                slow.to_str().unwrap(),
                "--state-dir",
                base.join("state/init").to_str().unwrap(),
                "init",
                "--witness",
                &public,
                "--witness-quorum",
                "1",
            ],
            None,
        );
        let key = base.join("keys/root.key");
        cheapen(&slow, &key);
        Self {
            tmp,
            embassy,
            site,
            key,
            witness_key,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn state(&self, machine: &str) -> PathBuf {
        self.tmp.path().join(format!("state/{machine}"))
    }

    fn args(&self, machine: &str, key: &Path, extra: &[&str]) -> Vec<OsString> {
        let mut all: Vec<OsString> = vec![
            "--site".into(),
            self.site.clone().into(),
            "--quiet".into(),
            "--key-file".into(),
            key.into(),
            "--state-dir".into(),
            self.state(machine).into(),
        ];
        all.extend(extra.iter().map(OsString::from));
        all
    }

    /// Backs up `bytes` fresh random bytes as stream dataset `dataset`.
    fn backup(&mut self, dataset: &str, bytes: usize) {
        let mut data = vec![0u8; bytes];
        self.rng.fill_bytes(&mut data);
        let args = self.args("home", &self.key, &["backup", dataset, "--stdin"]);
        let r = self.embassy.run(args, Some(&data));
        assert_eq!(r.code, 0, "backup: {r:?}");
    }

    /// `embassy --json witness` as the witness machine, through a `sh` that reports the bytes
    /// the witness process read.
    fn witness(&self, extra: &[&str]) -> Witnessed {
        let key = self.witness_key.clone();
        let mut list = vec!["--json", "witness", "--witness-key", key.to_str().unwrap()];
        list.extend(extra);
        let inner = {
            let mut c = self.embassy.command();
            c.args(self.args("witness", &key, &list));
            c
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#""$@"; s=$?; echo "witness-rchar $(grep '^rchar:' /proc/$$/io)" >&2; exit $s"#)
            .arg("sh")
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let start = Instant::now();
        let run = exec(cmd, None);
        let took = start.elapsed();
        let bytes_read = run
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("witness-rchar rchar:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no rchar line from sh: {run:?}"));
        Witnessed {
            run,
            bytes_read,
            took,
        }
    }

    /// Every pack file in the site folder.
    fn packs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut dirs = vec![self.site.join("packs")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read the packs folder") {
                let p = e.expect("a folder entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// The witness's memory files.
    fn memories(&self) -> Vec<PathBuf> {
        let dir = self.state("witness").join("witness");
        let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        out.retain(|p| p.extension().is_some_and(|x| x == "json"));
        out
    }
}

/// The witness's `--json` answer, asserting that it cosigned.
fn cosigned(w: &Witnessed) -> serde_json::Value {
    assert_eq!(w.run.code, 0, "the witness should cosign: {:?}", w.run);
    let json = w.run.json();
    assert!(json["checkpoint"].is_string(), "{:?}", w.run);
    json
}

fn pass_of(w: &Witnessed) -> String {
    cosigned(w)["pass"]["pass"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn refused(w: &Witnessed, words: &[&str]) {
    assert_ne!(w.run.code, 0, "the witness must not cosign: {:?}", w.run);
    assert!(
        !w.run.stdout.contains("\"checkpoint\""),
        "nothing cosigned: {:?}",
        w.run
    );
    let all = format!("{}{}", w.run.stdout, w.run.stderr);
    for word in words {
        assert!(all.contains(word), "expected {word:?} in {:?}", w.run);
    }
}

/// Flips one byte in the middle of `path`, keeping its size.
fn flip(path: &Path) {
    let mut bytes = std::fs::read(path).expect("read the object");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(path, bytes).expect("write the object back");
}

/// (a) The second cosign after a small backup reads a small fraction of what the first read,
/// and still cosigns.
#[test]
fn the_second_cosign_reads_only_what_is_new() {
    let mb: usize = std::env::var("WITNESS_VAULT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut w = World::new(1);
    let per = 8usize.min(mb.max(1));
    for i in 0..mb.div_ceil(per) {
        w.backup(&format!("data{}", i % 3), per << 20);
    }
    let first = w.witness(&[]);
    assert_eq!(pass_of(&first), "full", "{:?}", first.run);
    assert!(
        first
            .run
            .stderr
            .contains("no witness memory of this vault and site yet"),
        "{:?}",
        first.run
    );
    w.backup("data0", 64 << 10);
    let second = w.witness(&[]);
    assert_eq!(pass_of(&second), "incremental", "{:?}", second.run);
    let third = w.witness(&["--full"]);
    assert_eq!(pass_of(&third), "full", "{:?}", third.run);
    eprintln!(
        "vault {mb} MiB: first cosign read {} bytes in {:.2?}; second (after a 64 KiB backup) \
         read {} bytes in {:.2?}; --full read {} bytes in {:.2?}",
        first.bytes_read, first.took, second.bytes_read, second.took, third.bytes_read, third.took
    );
    assert!(
        first.bytes_read > (mb as u64) << 20,
        "the first cosign reads the whole vault: {} bytes",
        first.bytes_read
    );
    assert!(
        second.bytes_read * 10 < first.bytes_read,
        "the second cosign should read far less than the first: {} vs {} bytes",
        second.bytes_read,
        first.bytes_read
    );
    assert!(third.bytes_read * 10 > first.bytes_read * 9);
}

/// (b) A site rolled back to an older, self-consistent copy (ledgers, checkpoints and all) is
/// refused: the witness never cosigns a history that does not extend the one it cosigned, even
/// when this machine's other state about the vault is gone.
#[test]
fn a_rolled_back_site_is_refused() {
    let mut w = World::new(2);
    w.backup("data", 1 << 20);
    cosigned(&w.witness(&[]));
    let old = w.tmp.path().join("site-copy");
    copy_tree(&w.site, &old);
    w.backup("data", 1 << 20);
    cosigned(&w.witness(&[]));
    std::fs::remove_dir_all(&w.site).unwrap();
    copy_tree(&old, &w.site);
    // With the client state of the witness machine in place, its remembered heads refuse too;
    // remove it to show the witness memory alone refuses the older history.
    let state = w.state("witness");
    for e in std::fs::read_dir(&state).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::remove_file(p).unwrap();
        }
    }
    let r = w.witness(&[]);
    refused(&r, &["rollback", "this witness cosigned"]);
    eprintln!("{}", r.run.stderr);
    // And --full does not forget it either.
    refused(&w.witness(&["--full"]), &["rollback"]);
}

/// (c) A new pack tampered after it was stored is read and caught: no cosign.
#[test]
fn a_tampered_new_pack_is_caught() {
    let mut w = World::new(3);
    w.backup("data", 2 << 20);
    cosigned(&w.witness(&[]));
    let before = w.packs();
    w.backup("data", 1 << 20);
    let new: Vec<PathBuf> = w
        .packs()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(!new.is_empty());
    flip(&new[0]);
    refused(&w.witness(&[]), &["do not hash"]);
}

/// (d) An old pack deleted is caught by the listing of the incremental run: no cosign.
#[test]
fn a_deleted_old_pack_is_caught_by_listing() {
    let mut w = World::new(4);
    w.backup("data", 2 << 20);
    cosigned(&w.witness(&[]));
    let old = w.packs();
    w.backup("data", 256 << 10);
    std::fs::remove_file(&old[0]).unwrap();
    refused(&w.witness(&[]), &["missing"]);
}

/// (e) An old pack's bytes swapped in place (same size) are not read by an incremental run
/// (documented: it checks old objects by listing) but are caught by `--full`.
#[test]
fn an_old_pack_swapped_in_place_is_caught_by_full() {
    let mut w = World::new(5);
    w.backup("data", 2 << 20);
    cosigned(&w.witness(&[]));
    let old = w.packs();
    w.backup("data", 256 << 10);
    flip(&old[0]);
    let r = w.witness(&[]);
    assert_eq!(pass_of(&r), "incremental");
    refused(&w.witness(&["--full"]), &["do not hash"]);
    // The memory is not updated by a refused run: the next incremental run may still cosign
    // (old objects are checked by listing), but a full one keeps refusing.
    refused(&w.witness(&["--full"]), &["do not hash"]);
}

/// (f) A damaged, unknown or foreign memory file leads to a full run that says so, never a
/// panic or a skipped check.
#[test]
fn an_unusable_memory_means_a_full_run_with_a_note() {
    let mut w = World::new(6);
    w.backup("data", 1 << 20);
    cosigned(&w.witness(&[]));
    let files = w.memories();
    assert_eq!(files.len(), 1, "one memory file: {files:?}");
    let file = &files[0];
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the memory is private");
    let good = std::fs::read(file).unwrap();
    // Damaged.
    std::fs::write(file, &good[..good.len() / 2]).unwrap();
    let before = w.packs();
    w.backup("data", 256 << 10);
    // ... and an old pack swapped in place: the full run this causes must catch it.
    let old: Vec<&PathBuf> = before.iter().collect();
    flip(old[0]);
    let r = w.witness(&[]);
    refused(&r, &["is not used", "damaged", "do not hash"]);
    flip(old[0]);
    let r = w.witness(&[]);
    assert_eq!(pass_of(&r), "full");
    assert!(r.run.stderr.contains("damaged"), "{:?}", r.run);
    // Foreign: another vault's memory in its place.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    json["vault_id"] = "another-vault".into();
    std::fs::write(file, serde_json::to_vec(&json).unwrap()).unwrap();
    let r = w.witness(&[]);
    assert_eq!(pass_of(&r), "full");
    assert!(
        r.run.stderr.contains("memory of vault another-vault"),
        "{:?}",
        r.run
    );
    // Unknown format.
    std::fs::write(file, br#"{"format": 99}"#).unwrap();
    let r = w.witness(&[]);
    assert_eq!(pass_of(&r), "full");
    assert!(r.run.stderr.contains("format 99"), "{:?}", r.run);
    // Rewritten after each cosign: the next run is incremental again.
    assert_eq!(pass_of(&w.witness(&[])), "incremental");
}

/// The schedule: `--full-every` and `--full-every-runs` make a run full.
#[test]
fn the_schedule_makes_a_run_full() {
    let mut w = World::new(7);
    w.backup("data", 1 << 20);
    cosigned(&w.witness(&[]));
    assert_eq!(pass_of(&w.witness(&[])), "incremental");
    let r = w.witness(&["--full-every-runs", "1"]);
    assert_eq!(pass_of(&r), "full");
    assert!(
        r.run.stderr.contains("incremental runs since"),
        "{:?}",
        r.run
    );
    std::thread::sleep(Duration::from_millis(1100));
    let r = w.witness(&["--full-every", "1s"]);
    assert_eq!(pass_of(&r), "full");
    assert!(
        r.run.stderr.contains("the last full check was on"),
        "{:?}",
        r.run
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
