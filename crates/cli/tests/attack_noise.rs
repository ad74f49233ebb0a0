//! A hostile site adds objects: garbage, named by its hash or not, under every prefix. Nothing
//! accepted refers to them, so they are noise (format §9b, §14): `embassy verify` lists each and
//! exits 0, and backups and restores go on. And a key file made for another vault is refused by
//! every command, keyless ones too. Played through the real `embassy` binary.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use embassy_core::id::ObjectId;
use embassy_core::keyfile::{KdfParams, KeyFile};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const PASS: &str = "correct horse battery staple";
const CHEAP: KdfParams = KdfParams {
    memory_kib: 8 * 1024,
    iterations: 1,
    parallelism: 1,
};

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn embassy(home: &Path, args: &[OsString], stdin: Option<&[u8]>) -> Run {
    let mut child = Command::new(EXE)
        .args(args)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_KEY_FILE")
        .env_remove("EMBASSY_STATE_DIR")
        .env_remove("EMBASSY_VAULT_ID")
        .env("EMBASSY_PASSPHRASE", PASS)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_STATE_HOME", home.join(".state"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the embassy binary runs");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = child.wait_with_output().expect("embassy finishes");
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(!run.stderr.contains("panicked"), "{args:?}: {run:?}");
    run
}

/// A vault at `<base>/<name>` with its root key re-wrapped cheaply.
struct World {
    base: PathBuf,
    site: PathBuf,
    key: PathBuf,
    vault_id: String,
}

impl World {
    fn new(base: &Path, name: &str) -> Self {
        let site = base.join(name);
        let slow = base.join(format!("keys/{name}.slow"));
        let r = embassy(
            base,
            &args(&[
                "--json",
                "--site",
                site.to_str().unwrap(),
                "--key-file",
                slow.to_str().unwrap(),
                "--state-dir",
                base.join(format!("state/init-{name}")).to_str().unwrap(),
                "init",
            ]),
            None,
        );
        assert_eq!(r.code, 0, "{r:?}");
        let file = KeyFile::load(&slow).unwrap();
        let root = file.open(PASS.as_bytes(), &slow).unwrap();
        let key = base.join(format!("keys/{name}.key"));
        KeyFile::seal(&root, &file.vault_id, PASS.as_bytes(), CHEAP)
            .unwrap()
            .store(&key)
            .unwrap();
        Self {
            base: base.to_path_buf(),
            site,
            key,
            vault_id: file.vault_id,
        }
    }

    /// `embassy` as `machine` (its own state folder) with key file `key`.
    fn run(&self, machine: &str, key: &Path, extra: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut all = args(&[
            "--site",
            self.site.to_str().unwrap(),
            "--quiet",
            "--key-file",
            key.to_str().unwrap(),
            "--state-dir",
            self.base.join(format!("state/{machine}")).to_str().unwrap(),
        ]);
        all.extend(args(extra));
        embassy(&self.base, &all, stdin)
    }

    fn ok(&self, machine: &str, key: &Path, extra: &[&str], stdin: Option<&[u8]>) -> Run {
        let r = self.run(machine, key, extra, stdin);
        assert_eq!(r.code, 0, "embassy {extra:?}: {r:?}");
        r
    }

    fn restore(&self, machine: &str, key: &Path, target: &str) -> (Run, Vec<u8>) {
        let out = self
            .base
            .join(format!("restored-{machine}-{}", target.replace('@', "-")));
        let _ = std::fs::remove_file(&out);
        let r = self.run(
            machine,
            key,
            &["restore", target, "--to", out.to_str().unwrap()],
            None,
        );
        (r, std::fs::read(&out).unwrap_or_default())
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
        let file = KeyFile::load(&slow).unwrap();
        let payload = file.open_payload(PASS.as_bytes(), &slow).unwrap();
        let cheap = self.base.join(format!("keys/{label}.cred"));
        KeyFile::seal_payload(
            &payload,
            &file.purpose,
            &file.vault_id,
            PASS.as_bytes(),
            CHEAP,
        )
        .unwrap()
        .store(&cheap)
        .unwrap();
        cheap
    }

    /// Writes `bytes` at `rel` in the site folder, as a hostile site would.
    fn plant(&self, rel: &str, bytes: &[u8]) {
        let path = self.site.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
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
