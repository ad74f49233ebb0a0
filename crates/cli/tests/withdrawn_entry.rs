//! Red team 8, finding 1, through the real `embassy` binary on a local-folder vault: two writers
//! raced for entry 2 of a dataset; the loser withdrew its entry (signed a withdrawal, then deleted
//! the entry), but a site kept the entry all the same (stale, or hostile). Before withdrawals
//! were signed, that made a fork of one signer's two entries: a fresh machine's `restore
//! DATASET` (the latest) refused ("the newest version cannot be proved") and `verify` failed.
//!
//! The race's outcome is built with real processes: the loser's backup runs against a copy of
//! the site taken before the winner's (so its entry 2, manifest and packs are real), its
//! withdrawal is signed with the library as the losing writer signs it (the writer's key from
//! the key file), and the site is then given back everything the loser wrote, its withdrawn
//! entry included.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use embassy_core::format::layout;
use embassy_core::history::withdrawal;
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::RootSecret;
use embassy_sites::LocalSite;
use embassy_testkit::cli::{copy_dir, Embassy, Run, CHEAP, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const DS: &str = "registry";

struct Home {
    tmp: tempfile::TempDir,
    key: PathBuf,
    root: RootSecret,
}

fn data(n: u8) -> Vec<u8> {
    (0..200_000u32)
        .map(|i| (i.wrapping_mul(31) as u8) ^ n)
        .collect()
}

impl Home {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let slow = tmp.path().join("keys/init.key");
        let home = Home {
            key: slow.clone(),
            root: RootSecret::from_slice(&[0; 32]).unwrap(),
            tmp,
        };
        let r = home.run("site", "a", &["init", "--min-age", "0"], None);
        assert_eq!(r.code, 0, "{r:?}");
        let file = KeyFile::load(&slow).unwrap();
        let root = file.open(PASS.as_bytes(), &slow).unwrap();
        let cheap = home.tmp.path().join("keys/cheap.key");
        KeyFile::seal(&root, &file.vault_id, PASS.as_bytes(), CHEAP)
            .unwrap()
            .store(&cheap)
            .unwrap();
        Home {
            key: cheap,
            root: RootSecret::from_bytes(root.expose()),
            ..home
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// `embassy` at folder `site` as machine `machine` (its own remembered state).
    fn run(&self, site: &str, machine: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut all: Vec<OsString> = vec![
            "--site".into(),
            self.path(site).into_os_string(),
            "--key-file".into(),
            self.key.clone().into_os_string(),
            "--state-dir".into(),
            self.path("state").join(machine).into_os_string(),
        ];
        all.extend(args.iter().map(OsString::from));
        Embassy::new(EXE, self.tmp.path()).run(&all, stdin)
    }

    fn backup(&self, site: &str, machine: &str, n: u8) {
        let r = self.run(site, machine, &["backup", DS, "--stdin"], Some(&data(n)));
        assert_eq!(r.code, 0, "{r:?}");
    }

    /// The one ledger entry at `seq` in folder `site`: its path in the vault.
    fn entry_at(&self, site: &str, seq: u64) -> String {
        let prefix = format!("{}{seq:016}-", layout::ledger_prefix(DS));
        let dir = self.path(site).join(layout::ledger_prefix(DS));
        let held: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                format!(
                    "{}{}",
                    layout::ledger_prefix(DS),
                    e.unwrap().file_name().to_string_lossy()
                )
            })
            .filter(|p| p.starts_with(&prefix))
            .collect();
        assert_eq!(held.len(), 1, "{held:?}");
        held[0].clone()
    }
}

/// Copies every file of `from` that `to` lacks (what the loser wrote: packs, index, manifest,
/// its ledger entry), but checkpoints: the loser failed before it would have written one.
fn give_back(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if ["checkpoints", "cosignatures"].contains(&entry.file_name().to_str().unwrap()) {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&target).unwrap();
            give_back(&entry.path(), &target);
        } else if !target.exists() {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir`, as paths relative to it.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            all.extend(
                files(&entry.path())
                    .into_iter()
                    .map(|p| PathBuf::from(entry.file_name()).join(p)),
            );
        } else {
            all.push(PathBuf::from(entry.file_name()));
        }
    }
    all
}

/// Writers X (acknowledged, entry 2) and Y (withdrawn) raced at folder `site`, which keeps
/// Y's entry all the same. Returns the vault, Y's entry's path and the files only Y's backup
/// wrote (its entry, manifest, index and packs).
fn site_keeping_a_withdrawn_entry() -> (Home, String, Vec<PathBuf>) {
    let home = Home::new();
    home.backup("site", "a", 1);
    copy_dir(&home.path("site"), &home.path("loser-view"));
    // Writer X appends entry 2 alone: acknowledged.
    home.backup("site", "a", 2);
    // Writer Y listed entry 2's place before X's put (the copy), stored its version there...
    home.backup("loser-view", "b", 3);
    let x = home.entry_at("site", 2);
    let y = home.entry_at("loser-view", 2);
    assert_ne!(x, y);
    // ... then found X's entry after its put: it signs its withdrawal at the site, naming X,
    // and deletes its entry, which this site keeps all the same.
    let site = LocalSite::new(home.path("site")).unwrap();
    withdrawal::write(
        &site,
        &home.root.writer_signing_key(0),
        DS,
        2,
        layout::id_in_path(&y).unwrap(),
        vec![layout::id_in_path(&x).unwrap()],
    )
    .unwrap();
    let at_site = files(&home.path("site"));
    let only_y: Vec<PathBuf> = files(&home.path("loser-view"))
        .into_iter()
        .filter(|p| {
            let data = ["ledger", "manifests", "index", "packs"];
            !at_site.contains(p) && data.iter().any(|d| p.starts_with(d))
        })
        .collect();
    give_back(&home.path("loser-view"), &home.path("site"));
    assert!(home.path("site").join(&y).exists());
    (home, y, only_y)
}

#[test]
fn restore_at_the_latest_and_verify_work_where_a_site_keeps_a_withdrawn_entry() {
    let (home, _, _) = site_keeping_a_withdrawn_entry();

    // A fresh machine restores the latest version: X's.
    let out = home.path("restored");
    let r = home.run(
        "site",
        "fresh",
        &["restore", DS, "--to", out.to_str().unwrap()],
        None,
    );
    assert_eq!(r.code, 0, "restore of the latest refused: {r:?}");
    assert!(fs::read(&out).unwrap() == data(2), "not X's version");
    // Verify passes, for the writer that saw X and for a fresh machine, and names the kept
    // entry as noise.
    for machine in ["a", "fresh2"] {
        let r = home.run("site", machine, &["verify"], None);
        assert_eq!(r.code, 0, "{machine}: {r:?}");
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(
            all.contains("withdrawn by its own signer"),
            "{machine}: {all}"
        );
    }
    // And the next backup appends after X.
    home.backup("site", "fresh3", 4);
    let r = home.run("site", "fresh4", &["verify"], None);
    assert_eq!(r.code, 0, "{r:?}");
}

/// docs/format.md §9 rule 3w: garbage collection keeps every object a withdrawn entry
/// references. A withdrawal takes an entry out of history, never its data: else the holder of a
/// stolen writer key could withdraw its own acknowledged newest entry in favour of another of
/// its own and have a fresh machine's `gc` delete the version's data.
#[test]
fn gc_keeps_what_a_withdrawn_entry_references() {
    let (home, y, only_y) = site_keeping_a_withdrawn_entry();
    assert!(
        only_y.iter().any(|p| p.starts_with("manifests")),
        "{only_y:?}"
    );
    assert!(only_y.iter().any(|p| p.starts_with("packs")), "{only_y:?}");
    for _ in 0..2 {
        let r = home.run("site", "fresh-gc", &["gc", "--grace", "1s"], None);
        assert_eq!(r.code, 0, "{r:?}");
        std::thread::sleep(std::time::Duration::from_millis(1200));
    }
    for p in &only_y {
        assert!(
            home.path("site").join(p).exists(),
            "gc deleted {} of withdrawn entry {y}",
            p.display()
        );
    }
    let r = home.run("site", "fresh-gc", &["verify"], None);
    assert_eq!(r.code, 0, "{r:?}");
}
