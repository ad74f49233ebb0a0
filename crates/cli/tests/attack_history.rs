//! Issue 12, attacks 1 and 7 through the real `embassy` binary on a local-folder vault: a
//! sealing credential forks a dataset below a later entry (revoked, or still active until
//! `keys revoke` resolves it), and foreign or garbage objects sit in the dataset's ledger folder.
//! The attacker's objects are made with the library (it holds the credential's key) and put
//! straight into the site folder, as anyone who can write to the site could.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::format::layout;
use embassy_core::format::manifest::VersionKind;
use embassy_core::history::approval::SigningKey;
use embassy_core::history::ledger::{self, Entry, Event, Record};
use embassy_core::id::ObjectId;
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::{Credential, RootSecret};
use embassy_sites::LocalSite;

use embassy_testkit::cli::{Embassy, Run, CHEAP, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const DS: &str = "registry";

struct Home {
    tmp: tempfile::TempDir,
    site: PathBuf,
    key: PathBuf,
    witness_key: PathBuf,
    root: RootSecret,
}

fn embassy(home: &Path, args: &[OsString], stdin: Option<&[u8]>) -> Run {
    Embassy::new(EXE, home).run(args, stdin)
}

fn strs(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

impl Home {
    /// A vault with a pinned witness (quorum 0: restores do not wait for it).
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path();
        let witness_key = path.join("keys/witness.key");
        let r = embassy(
            path,
            &[
                "--json".into(),
                "witness-key".into(),
                "--out".into(),
                witness_key.clone().into_os_string(),
            ],
            None,
        );
        assert_eq!(r.code, 0, "{r:?}");
        let json: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
        let public = json["public_key"].as_str().unwrap().to_string();
        let site = path.join("site");
        let slow = path.join("keys/init.key");
        let mut args: Vec<OsString> = vec![
            "--site".into(),
            site.clone().into_os_string(),
            "--key-file".into(),
            slow.clone().into_os_string(),
        ];
        args.extend(strs(&["init", "--witness", &public]));
        let r = embassy(path, &args, None);
        assert_eq!(r.code, 0, "{r:?}");
        let file = KeyFile::load(&slow).unwrap();
        let root = file.open(PASS.as_bytes(), &slow).unwrap();
        let key = path.join("keys/cheap.key");
        KeyFile::seal(&root, &file.vault_id, PASS.as_bytes(), CHEAP)
            .unwrap()
            .store(&key)
            .unwrap();
        let root = RootSecret::from_bytes(root.expose());
        Self {
            tmp,
            site,
            key,
            witness_key,
            root,
        }
    }

    /// Runs `embassy` as machine `machine` (its own remembered state).
    fn run(&self, machine: &str, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut all: Vec<OsString> = vec![
            "--site".into(),
            self.site.clone().into_os_string(),
            "--quiet".into(),
            "--key-file".into(),
            self.key.clone().into_os_string(),
            "--state-dir".into(),
            self.tmp.path().join("state").join(machine).into_os_string(),
        ];
        all.extend(strs(args));
        embassy(self.tmp.path(), &all, stdin)
    }

    fn backup(&self, machine: &str, n: u8) -> Run {
        self.run(machine, &["backup", DS, "--stdin"], Some(&data(n)))
    }

    /// Restores `target` to a file; returns the run and the bytes.
    fn restore(&self, machine: &str, target: &str) -> (Run, Vec<u8>) {
        let out = self.tmp.path().join(format!("restored-{machine}-{target}"));
        let _ = fs::remove_file(&out);
        let r = self.run(
            machine,
            &["restore", target, "--to", out.to_str().unwrap()],
            None,
        );
        let bytes = fs::read(&out).unwrap_or_default();
        (r, bytes)
    }

    fn vault(&self) -> Vault {
        Vault::open(Arc::new(LocalSite::new(&self.site).unwrap())).unwrap()
    }

    /// A sealing credential's key, added as a signer of the dataset by the root.
    fn credential(&self) -> SigningKey {
        let vault = self.vault();
        let credential =
            Credential::sealing(&self.root, &vault.config().vault_id, "host-1", &[DS.into()]);
        let key = credential.signing_key().unwrap();
        vault
            .append_root_event(
                &self.root,
                DS,
                Event::SignerAdded {
                    key: key.verifying_key().to_bytes(),
                    role: "host-1".into(),
                    rights: embassy_core::history::rights::Right::sealing(false),
                },
            )
            .unwrap();
        key
    }

    fn record(&self, seq: u64) -> Record {
        self.vault().history(DS).unwrap()[seq as usize - 1].clone()
    }

    fn put(&self, path: &str, bytes: &[u8]) {
        let file = self.site.join(path);
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(file, bytes).unwrap();
    }
}

fn data(tag: u8) -> Vec<u8> {
    (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ tag)
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The attacker's entry: a version at `seq` after `prev`, signed by `key`, stored at the site,
/// dated now (an entry dated before its predecessor would be refused on that ground alone).
fn forge(home: &Home, key: &SigningKey, seq: u64, prev: ObjectId) -> String {
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let entry = Entry {
        dataset: DS.into(),
        seq,
        prev: Some(prev),
        time_ns: now_ns,
        signer: key.verifying_key().to_bytes(),
        event: Event::VersionAdded {
            manifest: ObjectId::of(b"rogue"),
            kind: VersionKind::Stream,
            captured_at_ns: 1_000,
            stats: Default::default(),
            wal_start: None,
        },
    };
    let bytes = ledger::encode(&entry, key);
    let path = layout::ledger_entry(DS, seq, &ObjectId::of(&bytes));
    home.put(&path, &bytes);
    path
}

#[test]
fn cli_revoked_key_cannot_brick_history_and_site_noise_is_harmless() {
    let home = Home::new();
    assert_eq!(home.backup("a", 1).code, 0);
    assert_eq!(home.backup("a", 2).code, 0);
    let k = home.credential(); // entry 3
    assert_eq!(home.backup("a", 4).code, 0); // entry 4
    let k_hex = hex(&k.verifying_key().to_bytes());
    let r = home.run(
        "a",
        &["keys", "revoke", "--signer", &k_hex, "--dataset", DS],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}"); // entry 5
    assert_eq!(home.backup("a", 6).code, 0); // entry 6

    // The thief signs a version at 4, where the key was still a signer.
    let rogue = forge(&home, &k, 4, home.record(3).id);
    // Site noise: another vault's entry, garbage under a valid name, a stray file.
    let other = Home::new();
    assert_eq!(other.backup("x", 9).code, 0);
    let foreign_entry = other.record(1);
    let foreign = layout::ledger_entry(DS, 1, &foreign_entry.id);
    home.put(&foreign, &fs::read(other.site.join(&foreign)).unwrap());
    let garbage = b"garbage".to_vec();
    let garbage_path = layout::ledger_entry(DS, 7, &ObjectId::of(&garbage));
    home.put(&garbage_path, &garbage);
    let stray = format!("{}stray.txt", layout::ledger_prefix(DS));
    home.put(&stray, b"hello");

    for machine in ["a", "fresh"] {
        let r = home.run(machine, &["versions", DS], None);
        assert_eq!(r.code, 0, "{r:?}");
        let (r, bytes) = home.restore(machine, &format!("{DS}@1"));
        assert_eq!(r.code, 0, "{r:?}");
        assert!(bytes == data(1), "{machine}: version 1 differs");
        let (r, bytes) = home.restore(machine, DS);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(bytes == data(6), "{machine}: the newest version differs");
        let r = home.run(machine, &["verify"], None);
        assert_eq!(r.code, 0, "noise is not damage: {r:?}");
        for path in [&rogue, &foreign, &garbage_path, &stray] {
            assert!(
                r.stdout
                    .lines()
                    .any(|l| l.contains("NOISE") && l.contains(path.as_str())),
                "{machine}: verify does not name {path} as noise: {r:?}"
            );
        }
    }
    let r = home.backup("fresh", 7);
    assert_eq!(r.code, 0, "{r:?}");
    let (r, bytes) = home.restore("fresh", DS);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(7));
    let r = home.run(
        "witness",
        &[
            "witness",
            "--witness-key",
            home.witness_key.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(r.code, 0, "the witness cosigns despite the noise: {r:?}");
    assert!(r.text().contains("cosigned"), "{r:?}");
}

#[test]
fn cli_keys_revoke_resolves_a_fork_by_a_still_active_key() {
    let home = Home::new();
    assert_eq!(home.backup("a", 1).code, 0);
    let k = home.credential(); // entry 2
    assert_eq!(home.backup("a", 3).code, 0);
    assert_eq!(home.backup("a", 4).code, 0);
    // The site withholds the checkpoints; the key, still a signer, forks at 3.
    fs::remove_dir_all(home.site.join("checkpoints")).unwrap();
    let rogue = forge(&home, &k, 3, home.record(2).id);
    let rogue_id = &rogue[rogue.len() - 64..];
    let k_hex = hex(&k.verifying_key().to_bytes());

    // A fresh machine cannot decide: verify fails naming both sides, the versions before the
    // fork restore, 'latest' and backups are refused with the way out.
    let r = home.run("fresh", &["verify"], None);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stdout.contains("fork") && r.stdout.contains(&rogue_id[..8]) && r.stdout.contains(&k_hex),
        "{r:?}"
    );
    let (r, bytes) = home.restore("fresh", &format!("{DS}@1"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(1));
    let (r, _) = home.restore("fresh", DS);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("newest version cannot be proved"),
        "{r:?}"
    );
    let r = home.run("fresh", &["versions", DS], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("WARNING") && r.stderr.contains("fork"),
        "{r:?}"
    );
    let r = home.backup("fresh", 5);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("hint: if one signer is rogue, revoke it: `embassy keys revoke")
            && r.stderr.contains(&k_hex),
        "the refusal names the way out: {r:?}"
    );

    // The way out.
    let r = home.run(
        "fresh",
        &["keys", "revoke", "--signer", &k_hex, "--dataset", DS],
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = home.run("fresh", &["verify"], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains("NOISE") && l.contains(&rogue)),
        "{r:?}"
    );
    let r = home.backup("fresh", 5);
    assert_eq!(r.code, 0, "{r:?}");
    let (r, bytes) = home.restore("another", DS);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(5));
    // Entry 4 is version 3 (entry 2 added the credential's key).
    let (r, bytes) = home.restore("another", &format!("{DS}@3"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(4));
}

/// Red-team finding: a stolen key that is still a signer signs *every* side of a fork (two
/// entries of its own at one sequence number). No branch is free of the key, so the revocation
/// takes the fork's sequence number itself and, root-signed there, wins it.
#[test]
fn cli_keys_revoke_resolves_a_fork_where_the_stolen_key_signed_every_side() {
    let home = Home::new();
    assert_eq!(home.backup("a", 1).code, 0);
    let k = home.credential(); // entry 2
    fs::remove_dir_all(home.site.join("checkpoints")).unwrap();
    let first = forge(&home, &k, 3, home.record(2).id);
    let second = forge(&home, &k, 3, home.record(2).id);
    assert_ne!(first, second);
    let k_hex = hex(&k.verifying_key().to_bytes());
    let r = home.run("fresh", &["verify"], None);
    assert_eq!(
        r.code, 3,
        "an unresolved fork is an integrity failure: {r:?}"
    );
    let r = home.backup("fresh", 5);
    assert_ne!(r.code, 0, "{r:?}");

    let r = home.run(
        "fresh",
        &["keys", "revoke", "--signer", &k_hex, "--dataset", DS],
        None,
    );
    assert_eq!(r.code, 0, "the revocation is the way out: {r:?}");
    for machine in ["fresh", "another"] {
        let r = home.run(machine, &["verify"], None);
        assert_eq!(r.code, 0, "{machine}: {r:?}");
        for rogue in [&first, &second] {
            assert!(
                r.stdout
                    .lines()
                    .any(|l| l.contains("NOISE") && l.contains(rogue.as_str())),
                "{machine}: {rogue} is noise: {r:?}"
            );
        }
    }
    assert_eq!(home.backup("fresh", 5).code, 0);
    let (r, bytes) = home.restore("third", DS);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(5));
    let (r, bytes) = home.restore("third", &format!("{DS}@1"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(bytes == data(1));
}

/// Red-team finding: `keys rotate` retires the old epoch's sealing credentials. A credential
/// issued before the rotation (never revoked) that signs a version afterwards is noise, so it
/// cannot make an old manifest the newest version.
#[test]
fn old_epoch_credential_cannot_add_versions_after_rotation() {
    let home = Home::new();
    assert_eq!(home.backup("a", 1).code, 0);
    let k = home.credential(); // entry 2
    let r = home.run("a", &["keys", "rotate", "--dataset", DS], None);
    assert_eq!(r.code, 0, "{r:?}"); // entry 3
    assert_eq!(home.backup("a", 4).code, 0); // entry 4
    let rogue = forge(&home, &k, 5, home.record(4).id);
    for machine in ["a", "fresh"] {
        let r = home.run(machine, &["verify"], None);
        assert_eq!(r.code, 0, "{machine}: {r:?}");
        assert!(
            r.stdout
                .lines()
                .any(|l| l.contains("NOISE") && l.contains(rogue.as_str())),
            "{machine}: the old-epoch credential's entry is noise: {r:?}"
        );
        let (r, bytes) = home.restore(machine, DS);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(
            bytes == data(4),
            "{machine}: the newest version is the honest one"
        );
    }
}
