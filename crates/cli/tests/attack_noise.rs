//! A hostile site adds objects: garbage, named by its hash or not, under every prefix. Nothing
//! accepted refers to them, so they are noise (format §9b, §14): `embassy verify` lists each and
//! exits 0, and backups and restores go on. And a key file made for another vault is refused by
//! every command, keyless ones too. Played through the real `embassy` binary.

use std::ffi::OsString;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;

use embassy_core::id::ObjectId;
use embassy_testkit::cli::{args, cheapen, Embassy, Run, TestVault};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

fn embassy(home: &Path, args: &[OsString], stdin: Option<&[u8]>) -> Run {
    Embassy::new(EXE, home).run(args, stdin)
}

/// A vault at `<base>/<name>` with its root key re-wrapped cheaply (the test kit's).
struct World(TestVault);

impl Deref for World {
    type Target = TestVault;
    fn deref(&self) -> &TestVault {
        &self.0
    }
}

impl World {
    fn new(base: &Path, name: &str) -> Self {
        Self(TestVault::init(EXE, base, name))
    }

    fn restore(&self, machine: &str, key: &Path, target: &str) -> (Run, Vec<u8>) {
        self.restore_bytes(machine, key, target)
    }

    /// Issues a reader credential for `dataset`, re-wrapped cheaply.
    fn issue_reader(&self, dataset: &str, label: &str) -> PathBuf {
        let slow = self.base.join(format!("keys/{label}.slow"));
        self.ok(
            "home",
            &self.key,
            &[
                "keys",
                "issue",
                "--reader",
                "--dataset",
                dataset,
                "--label",
                label,
                "--out",
                slow.to_str().unwrap(),
            ],
            None,
        );
        let cheap = self.base.join(format!("keys/{label}.cred"));
        cheapen(&slow, &cheap);
        cheap
    }
}

fn data(tag: u8) -> Vec<u8> {
    (0..150_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ tag)
        .collect()
}

/// Garbage named by its hash and garbage not named by a hash, under every prefix a site holds
/// (finding 3 of the red team: under index/, gc/, sessions/, approvals/ and wal/ they were
/// reported as damage with exit 3).
#[test]
fn site_garbage_under_every_prefix_is_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path(), "site");
    let key = w.key.clone();
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );

    let mut planted = Vec::new();
    for (i, dir) in [
        "ledger/registry/",
        "ledger/",
        "index/registry/",
        "manifests/registry/",
        "packs/registry/ab/",
        "gc/",
        "sessions/",
        "approvals/",
        "checkpoints/",
        "cosignatures/",
        "wal/registry/00000001/p/",
    ]
    .into_iter()
    .enumerate()
    {
        let garbage: Vec<u8> = format!("garbage {i}: no valid signer made this")
            .bytes()
            .collect();
        let hash = ObjectId::of(&garbage).to_hex();
        let hashed = if dir.starts_with("wal/") {
            format!("{dir}0000000001000000-0000000001000010-{hash}")
        } else if dir == "ledger/registry/" {
            format!("{dir}0000000000000099-{hash}")
        } else {
            format!("{dir}{hash}")
        };
        let unnamed = format!("{dir}not-a-hash-{i}.txt");
        w.plant(&hashed, &garbage);
        w.plant(&unnamed, b"not named by a hash");
        planted.push(hashed);
        planted.push(unnamed);
    }
    // Bytes that do not hash to their name, where nothing accepted refers to them.
    let other = ObjectId::of(b"something else").to_hex();
    for dir in ["index/registry/", "manifests/registry/", "gc/"] {
        let rel = format!("{dir}{other}");
        w.plant(&rel, b"these bytes are not what the name says");
        planted.push(rel);
    }

    let v = w.run("home", &key, &["verify"], None);
    assert_eq!(v.code, 0, "{v:?}");
    let noise: Vec<&str> = v
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("NOISE (ignored): "))
        .collect();
    for rel in &planted {
        assert!(
            noise.iter().any(|l| l.contains(rel.as_str())),
            "{rel} is not listed as noise: {v:?}"
        );
    }
    assert!(!v.stdout.contains("PROBLEM"), "{v:?}");

    // Backups and restores go on.
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(2)),
    );
    let (r, bytes) = w.restore("home", &key, "registry");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(2), "the restored bytes differ");
    let v = w.run("home", &key, &["verify"], None);
    assert_eq!(v.code, 0, "{v:?}");
}

/// A reader credential of vault A used against vault B: every command refuses it, naming both
/// vaults (finding 4 of the red team: `versions`, `history` and `status` did not check).
#[test]
fn credential_of_another_vault_is_refused_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let a = World::new(tmp.path(), "a");
    let b = World::new(tmp.path(), "b");
    for w in [&a, &b] {
        let key = w.key.clone();
        w.ok(
            "home",
            &key,
            &["backup", "registry", "--stdin"],
            Some(&data(3)),
        );
    }
    let reader = a.issue_reader("registry", "reader-a");
    // It works in its own vault.
    a.ok("reader", &reader, &["versions", "registry"], None);

    let out = tmp.path().join("restored-b");
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("versions", vec!["versions", "registry"]),
        ("history", vec!["history", "registry"]),
        ("status", vec!["status"]),
        (
            "restore",
            vec!["restore", "registry", "--to", out.to_str().unwrap()],
        ),
    ];
    for (what, extra) in cases {
        let r = b.run("reader", &reader, &extra, None);
        assert_ne!(
            r.code, 0,
            "{what} with vault A's credential on vault B: {r:?}"
        );
        let text = r.text();
        for needle in [
            format!("belongs to vault {}", a.vault_id),
            b.vault_id.clone(),
        ] {
            assert!(text.contains(&needle), "{what}: no '{needle}' in {r:?}");
        }
    }
    assert!(!out.exists(), "restore wrote with the wrong credential");
}

/// `embassy` as `machine` through several sites at once (`--min-sites 1`), in the order given.
fn run_sites(
    w: &World,
    machine: &str,
    sites: &[&Path],
    extra: &[&str],
    stdin: Option<&[u8]>,
) -> Run {
    let mut all = args(&["--quiet", "--min-sites", "1"]);
    for site in sites {
        all.extend(args(&["--site", site.to_str().unwrap()]));
    }
    all.extend(args(&[
        "--key-file",
        w.key.to_str().unwrap(),
        "--state-dir",
        w.base.join(format!("state/{machine}")).to_str().unwrap(),
    ]));
    all.extend(args(extra));
    embassy(&w.base, &all, stdin)
}

/// A second local site holding the same vault as `w` (`embassy sync`).
fn second_site(w: &World, name: &str) -> PathBuf {
    let b = w.base.join(name);
    let r = embassy(
        &w.base,
        &args(&[
            "--quiet",
            "--key-file",
            w.key.to_str().unwrap(),
            "--state-dir",
            w.base.join("state/sync").to_str().unwrap(),
            "sync",
            "--seed",
            "--from",
            w.site.to_str().unwrap(),
            "--to",
            b.to_str().unwrap(),
        ]),
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    b
}

/// Restores `registry` through `sites` and returns the bytes.
fn restore_through(w: &World, machine: &str, sites: &[&Path]) -> (Run, Vec<u8>) {
    let out = w.base.join(format!("restored-{machine}"));
    let _ = std::fs::remove_file(&out);
    let r = run_sites(
        w,
        machine,
        sites,
        &["restore", "registry", "--to", out.to_str().unwrap()],
        None,
    );
    (r, std::fs::read(&out).unwrap_or_default())
}

/// Objects at ONE of two sites that no site can produce intact, under every prefix the history
/// and version loaders list: through both sites they are noise, exactly as on one site (red
/// team: "no object at ledger/..." or "the copy here is damaged" stopped versions, restore,
/// backup and status at every site). The other site lacks them, so each read finds a damaged
/// copy at one site and nothing at the other, in both orders.
#[test]
fn garbage_at_one_of_two_sites_is_noise_through_both() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path(), "a");
    let key = w.key.clone();
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );
    let b = second_site(&w, "b");

    let other = ObjectId::of(b"what the name claims").to_hex();
    let mut planted = Vec::new();
    for dir in [
        "ledger/registry/0000000000000002-",
        "ledger/registry/0000000000000007-",
        "index/registry/",
        "manifests/registry/",
        "packs/registry/ab/",
        "checkpoints/00000000000000000001-",
        "cosignatures/",
        "approvals/registry/",
        "gc/",
        "sessions/",
        "wal/registry/00000001/p/0000000001000000-0000000001000010-",
    ] {
        let rel = format!("{dir}{other}");
        w.plant(&rel, b"these bytes are not what the name says");
        planted.push(rel);
    }
    // And garbage named by its own hash at a fresh ledger-like name.
    let garbage = b"garbage: no valid signer made this".to_vec();
    let hashed = format!(
        "ledger/registry/0000000000000002-{}",
        ObjectId::of(&garbage)
    );
    w.plant(&hashed, &garbage);
    planted.push(hashed);

    let (a, b) = (w.site.as_path(), b.as_path());
    for (n, order) in [[a, b], [b, a]].iter().enumerate() {
        let machine = format!("m{n}");
        let r = run_sites(&w, &machine, order, &["versions", "registry"], None);
        assert_eq!(r.code, 0, "versions through {order:?}: {r:?}");
        let (r, bytes) = restore_through(&w, &machine, order);
        assert_eq!(r.code, 0, "restore through {order:?}: {r:?}");
        assert!(bytes == data(1), "the restored bytes differ");
        let r = run_sites(&w, &machine, order, &["status"], None);
        assert_eq!(r.code, 0, "status through {order:?}: {r:?}");
        let v = run_sites(&w, &machine, order, &["verify"], None);
        assert_eq!(v.code, 0, "verify through {order:?}: {v:?}");
        for rel in &planted {
            assert!(
                v.stdout
                    .lines()
                    .any(|l| l.contains("NOISE") && l.contains(rel.as_str())),
                "{rel} is not listed as noise through {order:?}: {v:?}"
            );
        }
    }
    // Backups go on through both, and what they stored reads back.
    let r = run_sites(
        &w,
        "m0",
        &[a, b],
        &["backup", "registry", "--stdin"],
        Some(&data(2)),
    );
    assert_eq!(r.code, 0, "backup: {r:?}");
    let (r, bytes) = restore_through(&w, "m1", &[b, a]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(2), "the restored bytes differ");

    // A site that lost an accepted entry while the other holds a damaged copy of it: still
    // damage, never noise (the gap before the newer entry shows).
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(3)),
    );
    let entry2 = std::fs::read_dir(a.join("ledger/registry"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .find(|n| {
            n.starts_with("0000000000000002-") && !planted.iter().any(|p| p.ends_with(n.as_str()))
        })
        .expect("the accepted entry 2");
    let rel = format!("ledger/registry/{entry2}");
    std::fs::write(a.join(&rel), b"damaged copy").unwrap();
    let _ = std::fs::remove_file(b.join(&rel));
    let v = run_sites(&w, "m2", &[a, b], &["verify"], None);
    assert_eq!(v.code, 3, "a lost accepted entry is damage: {v:?}");
    assert!(v.text().contains("gap: entry 2 is missing"), "{v:?}");
}

/// A pack whose header is damaged at the first site: reads fall back to the next site's
/// whole copy, as blob reads do (red team: restore exited 3 "not a pack (bad magic or too
/// short)" although the second site held a good copy).
#[test]
fn damaged_pack_header_at_the_first_site_falls_back_to_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path(), "a");
    let key = w.key.clone();
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );
    let b = second_site(&w, "b");
    let packs = walk_files(&w.site.join("packs"));
    assert!(!packs.is_empty());
    for pack in &packs {
        let mut bytes = std::fs::read(pack).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(pack, bytes).unwrap();
    }
    let (r, bytes) = restore_through(&w, "m", &[w.site.as_path(), b.as_path()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(1), "the restored bytes differ");
}

/// A planted link at a pack's name is replaced by `sync --repair` (the write no longer takes
/// the link's name as taken), and a FIFO at a ledger-like name is not listed (red team: the
/// link stayed, "0 repaired"; the FIFO stopped every read of the history).
#[test]
fn planted_links_are_repaired_and_fifos_are_not_objects() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path(), "a");
    let key = w.key.clone();
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );
    let b = second_site(&w, "b");
    let a = w.site.clone();

    // A FIFO at a fresh ledger-like name at a: not an object.
    let fifo = a.join(format!(
        "ledger/registry/0000000000000002-{}",
        ObjectId::of(b"fifo").to_hex()
    ));
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let r = w.run("home", &key, &["versions", "registry"], None);
    assert_eq!(r.code, 0, "{r:?}");
    let r = run_sites(&w, "m", &[&a, &b], &["versions", "registry"], None);
    assert_eq!(r.code, 0, "{r:?}");
    let v = w.run("home", &key, &["verify"], None);
    assert_eq!(v.code, 0, "{v:?}");

    // A pack at a replaced by a link to a file outside the vault.
    let pack = walk_files(&a.join("packs"))[0].clone();
    let outside = w.base.join("outside-target");
    std::fs::write(&outside, b"outside").unwrap();
    std::fs::remove_file(&pack).unwrap();
    std::os::unix::fs::symlink(&outside, &pack).unwrap();
    assert_eq!(w.run("home", &key, &["verify"], None).code, 3);
    let r = embassy(
        &w.base,
        &args(&[
            "--quiet",
            "--key-file",
            key.to_str().unwrap(),
            "--state-dir",
            w.base.join("state/sync").to_str().unwrap(),
            "sync",
            "--from",
            b.to_str().unwrap(),
            "--to",
            a.to_str().unwrap(),
            "--repair",
        ]),
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let meta = std::fs::symlink_metadata(&pack).unwrap();
    assert!(meta.file_type().is_file(), "the link stayed: {r:?}");
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
    let v = w.run("home", &key, &["verify", "--deep"], None);
    assert_eq!(v.code, 0, "{v:?}");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
