//! Attacks on the trust root, on checkpoints and on key epochs (issue 12, attacks 10, 6 and 8),
//! played through the real `embassy` binary against local-folder vaults. The attacker writes
//! objects into the vault folder directly (a hostile site, or a host holding a credential); each
//! client is its own machine with its own `--state-dir`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::history::checkpoint::{self, Head};
use embassy_core::id::ObjectId;
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::site::Site;

use embassy_testkit::cli::{cheapen, Embassy, Run, CHEAP, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const DAY_NS: i64 = 86_400 * 1_000_000_000;

fn embassy(home: &Path, args: &[OsString], stdin: Option<&[u8]>) -> Run {
    Embassy::new(EXE, home).run(args, stdin)
}

/// A vault at `site` with one pinned witness (quorum `quorum`) and its root key file
/// re-wrapped with cheap KDF parameters.
struct World {
    tmp: tempfile::TempDir,
    site: PathBuf,
    key: PathBuf,
    witness_key: PathBuf,
    vault_id: String,
    fingerprint: String,
}

impl World {
    fn new(quorum: u32) -> Self {
        let tmp = tempfile::tempdir().expect("a temporary folder");
        let path = tmp.path().to_path_buf();
        let witness_key = path.join("witness/witness.key");
        let w = embassy(
            &path,
            &args(&[
                "--json",
                "witness-key",
                "--out",
                witness_key.to_str().unwrap(),
            ]),
            None,
        );
        assert_eq!(w.code, 0, "{w:?}");
        let public = w.json()["public_key"].as_str().unwrap().to_string();
        let (site, key, init) = init_vault(
            &path,
            "site",
            &[
                "--witness",
                &public,
                "--witness-quorum",
                &quorum.to_string(),
            ],
        );
        Self {
            tmp,
            site,
            key,
            witness_key,
            vault_id: init["vault_id"].as_str().unwrap().to_string(),
            fingerprint: init["fingerprint"].as_str().unwrap().to_string(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
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
            self.path(&format!("state/{machine}")).to_str().unwrap(),
        ]);
        all.extend(args(extra));
        embassy(self.tmp.path(), &all, stdin)
    }

    fn ok(&self, machine: &str, key: &Path, extra: &[&str], stdin: Option<&[u8]>) -> Run {
        let r = self.run(machine, key, extra, stdin);
        assert_eq!(r.code, 0, "embassy {extra:?}: {r:?}");
        r
    }

    fn backup(&self, machine: &str, key: &Path, dataset: &str, data: &[u8]) -> Run {
        self.run(machine, key, &["backup", dataset, "--stdin"], Some(data))
    }

    fn witness(&self, machine: &str) -> Run {
        let key = self.witness_key.clone();
        self.run(
            machine,
            &key,
            &["--json", "witness", "--witness-key", key.to_str().unwrap()],
            None,
        )
    }

    /// Restores `target` to a file; returns the run and the bytes.
    fn restore(&self, machine: &str, key: &Path, target: &str) -> (Run, Vec<u8>) {
        let out = self.path(&format!("restored-{machine}-{}", target.replace('@', "-")));
        let _ = std::fs::remove_file(&out);
        let r = self.run(
            machine,
            key,
            &["restore", target, "--to", out.to_str().unwrap()],
            None,
        );
        let bytes = std::fs::read(&out).unwrap_or_default();
        (r, bytes)
    }

    fn root(&self) -> RootSecret {
        KeyFile::load(&self.key)
            .unwrap()
            .open(PASS.as_bytes(), &self.key)
            .unwrap()
    }

    fn site(&self) -> Arc<dyn Site> {
        Arc::new(embassy_sites::LocalSite::new(&self.site).unwrap())
    }

    /// The vault through the library, as the attacker reads it (no state).
    fn vault(&self) -> Vault {
        Vault::open(self.site()).unwrap()
    }

    /// Issues a credential (`--sealing` or `--reader`) for `dataset`, re-wrapped cheaply.
    fn issue(&self, kind: &str, dataset: &str, label: &str) -> PathBuf {
        let slow = self.path(&format!("keys/{label}.slow"));
        self.ok(
            "home",
            &self.key.clone(),
            &[
                "keys",
                "issue",
                kind,
                "--dataset",
                dataset,
                "--label",
                label,
                "--out",
                slow.to_str().unwrap(),
            ],
            None,
        );
        let cheap = self.path(&format!("keys/{label}.cred"));
        cheapen(&slow, &cheap);
        cheap
    }

    /// The heads of every dataset, as a checkpoint names them.
    fn heads(&self) -> BTreeMap<String, Head> {
        let vault = self.vault();
        let (histories, failed) = vault.histories().unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        histories
            .into_iter()
            .filter_map(|(name, h)| {
                h.last().map(|r| {
                    (
                        name,
                        Head {
                            seq: r.entry.seq,
                            id: r.id,
                        },
                    )
                })
            })
            .collect()
    }

    /// The id of the newest checkpoint stored, by the time in its name, other than `except`.
    fn newest_checkpoint_except(&self, except: &ObjectId) -> ObjectId {
        let mut names: Vec<String> = std::fs::read_dir(self.site.join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(&except.to_hex()))
            .collect();
        names.sort();
        let newest = names.pop().expect("a checkpoint");
        ObjectId::from_hex(newest.rsplit('-').next().unwrap()).unwrap()
    }

    /// Ids of the valid checkpoints, oldest first (as the library judges them).
    fn valid_checkpoints(&self) -> Vec<ObjectId> {
        let vault = self.vault();
        let (histories, _) = vault.histories().unwrap();
        let (valid, _) = vault.checkpoints(&histories).unwrap();
        valid.into_iter().map(|cp| cp.id).collect()
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// `embassy init` at `<base>/<name>` with a key file re-wrapped cheaply; returns the site, the
/// key file and init's JSON.
fn init_vault(base: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf, serde_json::Value) {
    let site = base.join(name);
    let slow = base.join(format!("keys/{name}.slow"));
    let mut all = args(&[
        "--json",
        "--site",
        site.to_str().unwrap(),
        "--key-file",
        slow.to_str().unwrap(),
        "--state-dir",
        base.join(format!("state/init-{name}")).to_str().unwrap(),
        "init",
    ]);
    all.extend(args(extra));
    let r = embassy(base, &all, None);
    assert_eq!(r.code, 0, "{r:?}");
    let file = KeyFile::load(&slow).unwrap();
    let root = file.open(PASS.as_bytes(), &slow).unwrap();
    let key = base.join(format!("keys/{name}.key"));
    KeyFile::seal(&root, &file.vault_id, PASS.as_bytes(), CHEAP)
        .unwrap()
        .store(&key)
        .unwrap();
    (site, key, r.json())
}

fn data(tag: u8) -> Vec<u8> {
    (0..150_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ tag)
        .collect()
}

fn refused(what: &str, run: &Run, code: i32, needles: &[&str]) {
    assert_eq!(run.code, code, "{what}: {run:?}");
    let text = run.text();
    for n in needles {
        assert!(text.contains(n), "{what}: no {n:?} in {run:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Attack 10: a substituted configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn substituted_config_is_refused() {
    let w = World::new(1);
    let key = w.key.clone();
    // init prints the fingerprint: the vault id, derived from the root key, grouped.
    assert_eq!(w.fingerprint.replace('-', ""), w.vault_id);
    assert_eq!(w.fingerprint.len(), 32 + 7, "{}", w.fingerprint);
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );
    let host = w.issue("--sealing", "registry", "host");
    assert_eq!(w.backup("host", &host, "registry", &data(2)).code, 0);
    assert_eq!(w.witness("witness").code, 0);
    // A first-contact verifier that knows the fingerprint accepts the genuine vault.
    let first = w.run(
        "auditor-genuine",
        &key,
        &["--vault-id", &w.fingerprint, "verify"],
        None,
    );
    assert_eq!(first.code, 0, "{first:?}");

    // The attacker makes a vault of their own and puts its config over the real one: the
    // attacker's root key then signs whatever it likes (signers, witnesses, checkpoints).
    let (evil_site, _evil_key, evil) = init_vault(w.tmp.path(), "evil", &[]);
    let evil_id = evil["vault_id"].as_str().unwrap().to_string();
    let genuine_config = std::fs::read(w.site.join("config")).unwrap();
    let genuine_sig = std::fs::read(w.site.join("config.sig")).unwrap();
    for name in ["config", "config.sig"] {
        std::fs::copy(evil_site.join(name), w.site.join(name)).unwrap();
    }
    let held = format!("held vault {}, it now holds vault {evil_id}", w.vault_id);

    // The credential holder (who met the site before) refuses to back up.
    let r = w.backup("host", &host, "registry", &data(3));
    refused(
        "credential holder with state",
        &r,
        3,
        &[&held, "--forget-site-pin"],
    );
    // A credential holder on a new machine: the credential names the genuine vault.
    let r = w.backup("host-new-machine", &host, "registry", &data(3));
    refused(
        "credential holder without state",
        &r,
        1,
        &[
            &format!("this credential belongs to vault {}", w.vault_id),
            &evil_id,
            "substituted configuration",
        ],
    );
    // The machine that made the backups.
    let r = w.run("home", &key, &["verify"], None);
    refused("stateful client", &r, 3, &[&held]);
    // A first-contact verifier that was told the fingerprint.
    let r = w.run(
        "auditor",
        &key,
        &["--vault-id", &w.fingerprint, "verify"],
        None,
    );
    refused(
        "first-contact verifier with --vault-id",
        &r,
        3,
        &[
            &format!(
                "it holds vault {evil_id}, but vault {} was expected",
                w.vault_id
            ),
            "substituted configuration",
        ],
    );
    // The same, through the environment and with the plain hex id.
    let mut all = args(&[
        "--site",
        w.site.to_str().unwrap(),
        "--state-dir",
        w.path("state/auditor-env").to_str().unwrap(),
        "versions",
    ]);
    all.insert(0, OsString::from("--quiet"));
    let mut cmd_env = Command::new(EXE);
    cmd_env
        .args(&all)
        .env("EMBASSY_VAULT_ID", &w.vault_id)
        .env("HOME", w.tmp.path())
        .env_remove("EMBASSY_SITE");
    let out = cmd_env.output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was expected"),
        "{out:?}"
    );
    // The witness refuses to cosign.
    let r = w.witness("witness");
    refused("witness", &r, 3, &[&held]);
    // The way out, when a vault really was replaced: forget the pin (here it is an attack, so
    // the genuine configuration is put back instead, and everyone accepts the site again).
    std::fs::write(w.site.join("config"), &genuine_config).unwrap();
    std::fs::write(w.site.join("config.sig"), &genuine_sig).unwrap();
    assert_eq!(w.witness("witness").code, 0);
    assert_eq!(w.backup("host", &host, "registry", &data(4)).code, 0);

    // A config that copies the genuine vault id but carries the attacker's root key (signed
    // by it): refused by anyone, a first-contact client without --vault-id included.
    let evil_root = KeyFile::load(&w.path("keys/evil.key"))
        .unwrap()
        .open(PASS.as_bytes(), &w.path("keys/evil.key"))
        .unwrap();
    let mut forged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(evil_site.join("config")).unwrap()).unwrap();
    forged["vault_id"] = serde_json::Value::String(w.vault_id.clone());
    let body = serde_json::to_vec_pretty(&forged).unwrap();
    let sig = embassy_core::keys::sign(
        &evil_root.root_signing_key(),
        b"data-embassy config v1",
        &body,
    );
    std::fs::write(w.site.join("config"), &body).unwrap();
    std::fs::write(w.site.join("config.sig"), hex(&sig)).unwrap();
    let names = format!(
        "names vault {} but its root key belongs to vault {evil_id}",
        w.vault_id
    );
    for (who, machine, k) in [
        ("first contact, no --vault-id", "stranger", key.clone()),
        ("stateful client", "home", key.clone()),
        ("credential holder", "host", host.clone()),
    ] {
        let r = w.run(machine, &k, &["verify"], None);
        refused(who, &r, 3, &[&names, "substituted configuration"]);
    }
    let r = w.witness("witness");
    refused("witness", &r, 3, &[&names]);
    // A witness key made for this vault refuses any other.
    std::fs::write(w.site.join("config"), &genuine_config).unwrap();
    std::fs::write(w.site.join("config.sig"), &genuine_sig).unwrap();
    let bound = w.path("witness/bound.key");
    let r = embassy(
        w.tmp.path(),
        &args(&[
            "--vault-id",
            &evil_id,
            "witness-key",
            "--out",
            bound.to_str().unwrap(),
        ]),
        None,
    );
    assert_eq!(r.code, 0, "{r:?}");
    let r = w.run(
        "witness-2",
        &bound,
        &["witness", "--witness-key", bound.to_str().unwrap()],
        None,
    );
    refused(
        "witness key bound to another vault",
        &r,
        3,
        &[&format!("was made for vault {evil_id}")],
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// Attack 6: checkpoints by the wrong keys, and from the future
// ---------------------------------------------------------------------------------------------

#[test]
fn rogue_checkpoint_by_credential_or_revoked_key_is_noise() {
    let w = World::new(1);
    let key = w.key.clone();
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );
    let host = w.issue("--sealing", "registry", "host");
    assert_eq!(w.backup("host", &host, "registry", &data(2)).code, 0);
    // The credential's backup wrote no checkpoint: it may not sign one.
    let credential = {
        let file = KeyFile::load(&host).unwrap();
        Credential::from_bytes(&file.open_payload(PASS.as_bytes(), &host).unwrap()).unwrap()
    };
    let host_key = credential.signing_key().unwrap();
    let host_public = hex(&host_key.verifying_key().to_bytes());
    // The host's holder (an intruder) writes a checkpoint naming a head that does not exist,
    // to make every verifier see a rollback.
    let bogus = BTreeMap::from([(
        "registry".to_string(),
        Head {
            seq: 9,
            id: ObjectId::of(b"no such entry"),
        },
    )]);
    let (rogue, _) =
        checkpoint::write(w.site().as_ref(), &w.vault_id, bogus.clone(), &host_key).unwrap();
    // The host is revoked; the revoked key writes another.
    w.ok(
        "home",
        &key,
        &[
            "keys",
            "revoke",
            "--signer",
            &host_public,
            "--dataset",
            "registry",
        ],
        None,
    );
    let newest_valid = *w.valid_checkpoints().last().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (revoked, _) = checkpoint::write(w.site().as_ref(), &w.vault_id, bogus, &host_key).unwrap();

    for machine in ["home", "fresh"] {
        let r = w.run(machine, &key, &["verify"], None);
        assert_eq!(r.code, 0, "{machine}: rogue checkpoints are noise: {r:?}");
        for id in [&rogue, &revoked] {
            let line = r
                .stdout
                .lines()
                .find(|l| l.contains(&id.to_hex()))
                .unwrap_or_else(|| panic!("{machine}: checkpoint {id} not reported: {r:?}"));
            assert!(line.trim_start().starts_with("NOISE (ignored)"), "{line}");
            assert!(line.contains("may not sign checkpoints"), "{line}");
        }
        assert!(r.stdout.contains("vault OK"), "{r:?}");
    }
    // The witness cosigns the newest valid checkpoint, not a rogue one.
    let r = w.witness("witness");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["checkpoint"], newest_valid.to_hex(), "{r:?}");
    // And a restore under the quorum returns the host's version.
    let (r, bytes) = w.restore("fresh-2", &key, "registry");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(bytes, data(2));
    assert!(!w.valid_checkpoints().contains(&rogue));
    assert!(!w.valid_checkpoints().contains(&revoked));
}

#[test]
fn future_dated_checkpoint_cannot_freeze_witnessing() {
    let w = World::new(1);
    let key = w.key.clone();
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );
    assert_eq!(w.witness("witness").code, 0);
    // Someone holding a root-derived writer key (validly signed) dates a checkpoint a day
    // ahead, naming today's heads.
    let writer = w.root().writer_signing_key(0);
    let future = embassy_core::format::config::now_unix_nanos() + DAY_NS;
    let (ahead, _) =
        checkpoint::write_at(w.site().as_ref(), &w.vault_id, w.heads(), &writer, future).unwrap();
    // Version 2, with its honest checkpoint.
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(2)),
    );
    let honest = w.newest_checkpoint_except(&ahead);

    let r = w.witness("witness");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["checkpoint"],
        honest.to_hex(),
        "the witness cosigns the newest valid one: {r:?}"
    );
    let r = w.run("fresh", &key, &["verify"], None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim_start().starts_with("NOISE (ignored)")
                && l.contains(&ahead.to_hex())
                && l.contains("more than 10 minutes after")),
        "{r:?}"
    );
    // A restore under the quorum returns version 2, the newest witnessed.
    let (r, bytes) = w.restore("fresh-2", &key, "registry");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(bytes, data(2));
    assert!(!r.stderr.contains("not yet witnessed"), "{r:?}");
    // Version 3 is not witnessed yet: the restore returns 2 and says so.
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(3)),
    );
    let (r, bytes) = w.restore("fresh-3", &key, "registry");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(bytes, data(2));
    assert!(
        r.stderr.contains("restoring version 2")
            && r.stderr
                .contains("1 newer version (3) is not yet witnessed"),
        "{r:?}"
    );
    // Two newer versions: how many, how new and how to take one, on stderr and in --json.
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(4)),
    );
    let out = w.path("restored-json");
    let r = w.ok(
        "fresh-json",
        &key,
        &[
            "--json",
            "restore",
            "registry",
            "--to",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(std::fs::read(&out).unwrap(), data(2));
    assert!(
        r.stderr
            .contains("2 newer versions (3 to 4) are not yet witnessed")
            && r.stderr.contains("the newest, version 4, captured")
            && r.stderr.contains("--unwitnessed"),
        "{r:?}"
    );
    let newer = &r.json()["newer_unwitnessed"];
    assert_eq!(newer["count"], 2, "{r:?}");
    assert_eq!(newer["versions"], serde_json::json!([3, 4]), "{r:?}");
    assert_eq!(newer["newest"], 4, "{r:?}");
    assert!(newer["newest_age_seconds"].as_u64().unwrap() < 600, "{r:?}");
    assert!(
        newer["hint"].as_str().unwrap().contains("--unwitnessed"),
        "{r:?}"
    );
    // The hint's way to take one now.
    let r = w.ok(
        "fresh-json",
        &key,
        &[
            "restore",
            "registry",
            "--unwitnessed",
            "--to",
            w.path("restored-newest").to_str().unwrap(),
        ],
        None,
    );
    assert!(!r.stderr.contains("not yet witnessed"), "{r:?}");
    assert_eq!(std::fs::read(w.path("restored-newest")).unwrap(), data(4));
    // Once witnessed, version 4 is the latest.
    assert_eq!(w.witness("witness").code, 0);
    let (r, bytes) = w.restore("fresh-4", &key, "registry");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(bytes, data(4));
    assert!(!w.valid_checkpoints().contains(&ahead));
}

// ---------------------------------------------------------------------------------------------
// Attack 8: credentials issued after a rotation
// ---------------------------------------------------------------------------------------------

/// Under a witness quorum a fresh client (home lost, no remembered heads) restoring the
/// newest version from a site that withholds one unwitnessed ledger entry gets the gap, as
/// without a quorum, never a silent restore of the older witnessed version (red team 5, #7);
/// the witnessed version is taken when asked for by number.
#[test]
fn a_withheld_entry_under_a_witness_quorum_is_a_gap_not_a_silent_older_restore() {
    let w = World::new(1);
    let key = w.key.clone();
    w.backup("home", &key, "registry", &data(1));
    assert_eq!(w.witness("witness").code, 0);
    w.backup("home", &key, "registry", &data(2));
    w.backup("home", &key, "registry", &data(3));
    let ledger = w.site.join("ledger/registry");
    let second: Vec<PathBuf> = std::fs::read_dir(&ledger)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("0000000000000002-"))
        })
        .collect();
    assert_eq!(second.len(), 1, "{second:?}");
    std::fs::rename(&second[0], w.path("withheld-entry")).unwrap();

    let (r, bytes) = w.restore("fresh", &key, "registry");
    refused(
        "restore of the newest past a withheld entry",
        &r,
        3,
        &["entry 2 is missing", "restore registry@1 to take it"],
    );
    assert!(bytes.is_empty(), "{r:?}");
    let (r, bytes) = w.restore("fresh-2", &key, "registry@1");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(bytes, data(1));
}

#[test]
fn rotation_then_keys_issue_works() {
    let w = World::new(0);
    let key = w.key.clone();
    w.ok(
        "home",
        &key,
        &["backup", "registry", "--stdin"],
        Some(&data(1)),
    );
    w.ok(
        "home",
        &key,
        &["keys", "rotate", "--dataset", "registry"],
        None,
    );
    // A sealing credential issued now backs up (at epoch 1).
    let host = w.issue("--sealing", "registry", "host");
    let r = w.backup("host", &host, "registry", &data(2));
    assert_eq!(r.code, 0, "sealing credential after rotation: {r:?}");
    // A reader issued now reads versions of both epochs.
    let reader = w.issue("--reader", "registry", "reader");
    // Versions 1 and 2, at ledger entries 1 and 4 (the rotation and the new signer between).
    let listed = w
        .ok("reader", &reader, &["--json", "versions", "registry"], None)
        .json();
    let numbered: Vec<(u64, u64)> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["ledger_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(numbered, [(1, 1), (2, 4)], "{listed}");
    for (n, tag) in [(1, 1u8), (2, 2u8)] {
        let (r, bytes) = w.restore("reader", &reader, &format!("registry@{n}"));
        assert_eq!(r.code, 0, "reader, version {n}: {r:?}");
        assert_eq!(bytes, data(tag), "version {n}");
    }
    // The sealing credential holds the current epoch only: it cannot open anything.
    let (r, _) = w.restore("host", &host, "registry@2");
    assert_ne!(r.code, 0, "{r:?}");
}
