//! Issue 12, attacks 2 and 4, played through the real `embassy` binary against a local-folder
//! vault: who may delete (rights granted by the root, a default legal minimum age the root can
//! raise but not lower alone), and deletions judged from their signed bytes only (embedded
//! approvals, times compared with the predecessor, refused deletions that are no-ops).
//!
//! Entries an attacker signs by hand are made with the library and stored where a site would
//! store them; every judgement is then made by fresh `embassy` processes (their own state
//! folders), as a first-contact client would.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::history::ledger::{self, Entry, Event};
use embassy_core::history::retention::RetentionPolicy;
use embassy_core::id::ObjectId;
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::{Credential, RootSecret};
use embassy_core::site::Site;

use embassy_testkit::cli::{cheapen, Embassy, Run, CHEAP, PASS};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const DS: &str = "registry";
const DAY_NS: i64 = 86_400 * 1_000_000_000;

/// A vault folder, its root key file (cheap KDF), and the test's scratch space.
struct World {
    tmp: tempfile::TempDir,
    site: PathBuf,
    root_key: PathBuf,
}

impl World {
    /// `embassy init` with `extra` arguments, then the root key re-sealed under a cheap KDF so
    /// each process start costs milliseconds.
    fn init(extra: &[&str]) -> (World, Run) {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path().join("site");
        let slow = tmp.path().join("init.key");
        let mut args = vec![
            "--site",
            site.to_str().unwrap(),
            "--key-file",
            slow.to_str().unwrap(),
            "init",
        ];
        args.extend(extra);
        let out = embassy(tmp.path(), &args, None);
        assert_eq!(out.code, 0, "{out:?}");
        let file = KeyFile::load(&slow).unwrap();
        let root = file.open(PASS.as_bytes(), &slow).unwrap();
        let root_key = tmp.path().join("root.key");
        KeyFile::seal(&root, &file.vault_id, PASS.as_bytes(), CHEAP)
            .unwrap()
            .store(&root_key)
            .unwrap();
        (
            World {
                tmp,
                site,
                root_key,
            },
            out,
        )
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// Runs `embassy` as `machine` (its own state folder) with key file `key`.
    fn run_as(&self, machine: &str, key: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let state = self.path(&format!("state-{machine}"));
        let mut all = vec![
            "--site",
            self.site.to_str().unwrap(),
            "--quiet",
            "--key-file",
            key.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        all.extend(args);
        embassy(self.tmp.path(), &all, stdin)
    }

    fn root(&self, args: &[&str]) -> Run {
        self.run_as("home", &self.root_key.clone(), args, None)
    }

    fn root_ok(&self, args: &[&str]) -> Run {
        let out = self.root(args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    }

    fn backup(&self, machine: &str, key: &Path, data: &[u8]) -> u64 {
        let out = self.run_as(
            machine,
            key,
            &["--json", "backup", DS, "--stdin"],
            Some(data),
        );
        assert_eq!(out.code, 0, "{out:?}");
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        v["ledger_seq"].as_u64().unwrap()
    }

    /// `restore DS@target` by a fresh client (its own new state folder).
    fn restore(&self, machine: &str, target: &str) -> (Run, Option<Vec<u8>>) {
        let out = self.path(&format!("restored-{machine}-{}", target.replace('@', "-")));
        let run = self.run_as(
            machine,
            &self.root_key.clone(),
            &["restore", target, "--to", out.to_str().unwrap()],
            None,
        );
        let bytes = std::fs::read(&out).ok();
        (run, bytes)
    }

    /// The live versions a fresh client lists, by ledger sequence number (these tests forge
    /// entries at sequence numbers).
    fn versions(&self, machine: &str) -> Vec<u64> {
        self.numbered_versions(machine)
            .into_iter()
            .map(|(_, seq)| seq)
            .collect()
    }

    /// The live versions a fresh client lists: `(version number, ledger sequence number)`.
    fn numbered_versions(&self, machine: &str) -> Vec<(u64, u64)> {
        let out = self.run_as(
            machine,
            &self.root_key.clone(),
            &["--json", "versions", DS],
            None,
        );
        assert_eq!(out.code, 0, "{out:?}");
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        v["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_u64().unwrap(),
                    v["ledger_seq"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// `keys issue --sealing` (plus `extra`), re-sealed under a cheap KDF; returns its path and
    /// the credential.
    fn issue(&self, label: &str, extra: &[&str]) -> (PathBuf, Credential) {
        let slow = self.path(&format!("{label}-slow.cred"));
        let mut args = vec![
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            DS,
            "--label",
            label,
            "--out",
            slow.to_str().unwrap(),
        ];
        args.extend(extra);
        self.root_ok(&args);
        let file = KeyFile::load(&slow).unwrap();
        let payload = file.open_payload(PASS.as_bytes(), &slow).unwrap();
        let credential = Credential::from_bytes(&payload).unwrap();
        let cheap = self.path(&format!("{label}.cred"));
        cheapen(&slow, &cheap);
        (cheap, credential)
    }

    fn vault(&self) -> Vault {
        let site: Arc<dyn Site> = Arc::new(embassy_sites::LocalSite::new(&self.site).unwrap());
        Vault::open(site).unwrap()
    }

    fn root_secret(&self) -> RootSecret {
        KeyFile::load(&self.root_key)
            .unwrap()
            .open(PASS.as_bytes(), &self.root_key)
            .unwrap()
    }

    /// Signs `event` with `key` after the dataset's accepted head, dated `time` (now when none),
    /// and stores it where a site would: the attacker's hand-made entry.
    fn forge(
        &self,
        key: &embassy_core::history::approval::SigningKey,
        time: Option<i64>,
        event: Event,
    ) -> (u64, ObjectId) {
        let vault = self.vault();
        let history = vault.history(DS).unwrap();
        let head = history.last().unwrap();
        let entry = Entry {
            dataset: DS.into(),
            seq: head.entry.seq + 1,
            prev: Some(head.id),
            time_ns: time.unwrap_or_else(embassy_core::format::config::now_unix_nanos),
            signer: key.verifying_key().to_bytes(),
            event,
        };
        let bytes = ledger::encode(&entry, key);
        let id = ObjectId::of(&bytes);
        vault
            .site()
            .put(
                &embassy_core::format::layout::ledger_entry(DS, entry.seq, &id),
                &bytes,
            )
            .unwrap();
        (entry.seq, id)
    }

    /// Two gc runs a grace period apart; returns how many objects the second deleted.
    fn gc_twice(&self) -> usize {
        self.root_ok(&["gc", "--grace", "1s"]);
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let out = self.root_ok(&["--json", "gc", "--grace", "1s"]);
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
        v["report"]["deleted"].as_array().unwrap().len()
    }

    fn verify_ok(&self, machine: &str) -> Run {
        let out = self.run_as(machine, &self.root_key.clone(), &["verify"], None);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("vault OK"), "{out:?}");
        out
    }
}

fn embassy(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
    Embassy::new(EXE, home).run(args, stdin)
}

/// Distinct, incompressible-enough content for version `i`.
fn data(i: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(300_000);
    let mut s = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < 300_000 {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

fn keep_last(n: u32) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: n,
        ..Default::default()
    }
}

fn deletion(seqs: Vec<u64>, policy: Option<RetentionPolicy>, as_of_ns: Option<i64>) -> Event {
    Event::VersionsDeleted {
        seqs,
        reason: "retention".into(),
        policy,
        as_of_ns,
        approvals: Vec::new(),
    }
}

/// Every version in `made` restores byte-identically for a fresh client.
/// Restores each version made (by the ledger sequence number of its entry) and compares.
fn all_restore(w: &World, machine: &str, made: &[(u64, Vec<u8>)]) {
    let numbers = w.numbered_versions(machine);
    for (seq, bytes) in made {
        let number = numbers
            .iter()
            .find(|(_, s)| s == seq)
            .map_or(0, |(n, _)| *n);
        let (run, got) = w.restore(machine, &format!("{DS}@{number}"));
        assert_eq!(run.code, 0, "{DS}@{seq}: {run:?}");
        assert!(got.as_deref() == Some(&bytes[..]), "{DS}@{seq} differs");
    }
}

/// `approver-key` for a world not made yet (the keys are pinned at init).
fn approver_key_in(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.approver"));
    let out = embassy(
        dir,
        &["--json", "approver-key", "--out", path.to_str().unwrap()],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    (path, v["public_key"].as_str().unwrap().to_string())
}

#[test]
fn write_only_credential_cannot_delete_history() {
    // No legal minimum age: only the delete right stands between the credential and history.
    let (w, init) = World::init(&["--min-age", "0"]);
    assert!(init.stderr.contains("warning: --min-age 0"), "{init:?}");
    let mut made = Vec::new();
    for i in 1..=3 {
        let seq = w.backup("home", &w.root_key.clone(), &data(i));
        made.push((seq, data(i)));
    }
    let (cred, credential) = w.issue("host", &[]);
    // The intruder on the source host: backs up garbage, then prunes everything older.
    let garbage = w.backup("host", &cred, b"encrypted by ransomware");
    let prune = w.run_as("host", &cred, &["prune", DS, "--keep-last", "1"], None);
    assert_eq!(prune.code, 1, "{prune:?}");
    assert!(
        prune
            .stderr
            .contains("this credential may not delete versions of registry")
            && prune.stderr.contains("hint:")
            && prune
                .stderr
                .contains("`embassy keys issue --sealing --may-delete"),
        "{prune:?}"
    );
    // It signs the deletion by hand and puts it at the site: every verifier refuses it.
    let key = credential.signing_key().unwrap();
    let now = embassy_core::format::config::now_unix_nanos();
    let (forged, _) = w.forge(
        &key,
        Some(now),
        deletion(vec![1, 2, 3], Some(keep_last(1)), Some(now)),
    );
    let mut expected: Vec<u64> = made.iter().map(|(s, _)| *s).collect();
    expected.push(garbage);
    assert_eq!(w.versions("fresh"), expected);
    let history = w.run_as("fresh", &w.root_key.clone(), &["history", DS], None);
    assert!(
        history.stdout.contains("REFUSED") && history.stdout.contains("right delete"),
        "{history:?}"
    );
    let verify = w.verify_ok("fresh");
    assert!(
        verify.stdout.contains(&format!("entry {forged}")) && verify.stdout.contains("refused"),
        "{verify:?}"
    );
    // gc deletes nothing; every old version still restores.
    assert_eq!(w.gc_twice(), 0);
    all_restore(&w, "fresh", &made);
    // The root's own prune still works (the writer key holds every right).
    let pruned = w.root_ok(&["prune", DS, "--keep-last", "1"]);
    assert!(
        pruned.stdout.contains("deleted versions [1, 2, 3]"),
        "{pruned:?}"
    );
}

#[test]
fn credential_granted_delete_still_bound_by_default_min_age() {
    // A default vault: 30 days of legal minimum age.
    let (w, init) = World::init(&[]);
    assert!(!init.stderr.contains("warning"), "{init:?}");
    assert_eq!(
        w.vault().config().min_age_secs,
        embassy_core::format::config::DEFAULT_MIN_AGE_SECS
    );
    assert_eq!(
        embassy_core::format::config::DEFAULT_MIN_AGE_SECS,
        30 * 86_400
    );
    let mut made = Vec::new();
    for i in 1..=3 {
        let seq = w.backup("home", &w.root_key.clone(), &data(i));
        made.push((seq, data(i)));
    }
    let (cred, credential) = w.issue("janitor", &["--may-delete"]);
    let garbage = w.backup("host", &cred, b"garbage");
    // The policy says keep one; the minimum age keeps every young version.
    let prune = w.run_as("host", &cred, &["prune", DS, "--keep-last", "1"], None);
    assert_eq!(prune.code, 0, "{prune:?}");
    assert!(prune.stdout.contains("nothing to delete"), "{prune:?}");
    // Claiming a policy without the minimum age, or evaluated a year after the entry's own
    // time, changes nothing.
    let key = credential.signing_key().unwrap();
    let now = embassy_core::format::config::now_unix_nanos();
    w.forge(
        &key,
        Some(now),
        deletion(vec![1, 2], Some(keep_last(1)), Some(now)),
    );
    w.forge(
        &key,
        Some(now),
        deletion(vec![1, 2, 3], Some(keep_last(1)), Some(now + 365 * DAY_NS)),
    );
    assert_eq!(w.versions("fresh"), vec![1, 2, 3, garbage]);
    let history = w.run_as("fresh", &w.root_key.clone(), &["history", DS], None);
    assert!(
        history.stdout.contains("outside the retention policy"),
        "{history:?}"
    );
    assert!(
        history.stdout.contains("after the entry was made"),
        "{history:?}"
    );
    w.verify_ok("fresh");
    assert_eq!(w.gc_twice(), 0);
    all_restore(&w, "fresh", &made);
}

#[test]
fn min_age_can_be_raised_by_root_but_not_lowered_without_approvals() {
    let dir = tempfile::tempdir().unwrap();
    let (a_key, a) = approver_key_in(dir.path(), "a");
    let (b_key, b) = approver_key_in(dir.path(), "b");
    let (w, _) = World::init(&[
        "--min-age",
        "0",
        "--approver",
        &a,
        "--approver",
        &b,
        "--approvals-required",
        "2",
    ]);
    for i in 1..=3 {
        w.backup("home", &w.root_key.clone(), &data(i));
    }
    // The root raises it: a young version is no longer deletable by policy.
    let raised = w.root_ok(&["policy", "min-age", DS, "30d"]);
    assert!(
        raised.stdout.contains("legal minimum age 30d"),
        "{raised:?}"
    );
    let prune = w.root_ok(&["prune", DS, "--keep-last", "1", "--dry-run"]);
    assert!(prune.stdout.contains("nothing to delete"), "{prune:?}");
    // Lowering needs both approvers.
    let lower = w.root(&["policy", "min-age", DS, "1d"]);
    assert_eq!(lower.code, 1, "{lower:?}");
    assert!(
        lower.stderr.contains("needs 2 distinct pinned approvers"),
        "{lower:?}"
    );
    // Not a credential, even one granted delete: the command needs the root key...
    let (cred, credential) = w.issue("janitor", &["--may-delete"]);
    let by_cred = w.run_as("host", &cred, &["policy", "min-age", DS, "0"], None);
    assert_eq!(by_cred.code, 1, "{by_cred:?}");
    assert!(by_cred.stderr.contains("root key"), "{by_cred:?}");
    // ...and a change it signs by hand is rejected, as is the root's own lowering without
    // approvals.
    w.forge(
        &credential.signing_key().unwrap(),
        None,
        Event::MinAgeChanged {
            min_age_secs: 0,
            approvals: Vec::new(),
        },
    );
    let root_writer = w.root_secret().root_signing_key();
    w.forge(
        &root_writer,
        None,
        Event::MinAgeChanged {
            min_age_secs: 0,
            approvals: Vec::new(),
        },
    );
    let vault = w.vault();
    let history = vault.history(DS).unwrap();
    assert_eq!(vault.authority(DS, &history).min_age_secs(), 30 * 86_400);
    let prune = w.run_as(
        "fresh",
        &w.root_key.clone(),
        &["prune", DS, "--keep-last", "1"],
        None,
    );
    assert!(prune.stdout.contains("nothing to delete"), "{prune:?}");
    // With both approvals it goes through; then retention deletes by policy again.
    for key in [&a_key, &b_key] {
        let out = w.root(&[
            "approve",
            "--approver-key",
            key.to_str().unwrap(),
            "--min-age",
            "0",
            DS,
        ]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let lowered = w.root_ok(&["policy", "min-age", DS, "0"]);
    assert!(lowered.stdout.contains("2 approvals"), "{lowered:?}");
    let pruned = w.root_ok(&["prune", DS, "--keep-last", "1"]);
    assert!(
        pruned.stdout.contains("deleted versions [1, 2]"),
        "{pruned:?}"
    );
    w.verify_ok("fresh2");
}

#[test]
fn withheld_approval_cannot_change_what_a_fresh_client_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (a_key, a) = approver_key_in(dir.path(), "a");
    let (w, _) = World::init(&[
        "--min-age",
        "0",
        "--approver",
        &a,
        "--approvals-required",
        "1",
    ]);
    let mut made = Vec::new();
    for i in 1..=3 {
        let seq = w.backup("home", &w.root_key.clone(), &data(i));
        made.push((seq, data(i)));
    }
    w.root_ok(&[
        "approve",
        "--approver-key",
        a_key.to_str().unwrap(),
        &format!("{DS}@1"),
    ]);
    let forgot = w.root_ok(&["forget", &format!("{DS}@1"), "--reason", "court order"]);
    assert!(forgot.stdout.contains("with 1 approvals"), "{forgot:?}");
    let after = w.backup("home", &w.root_key.clone(), &data(5));
    made.push((after, data(5)));
    made.remove(0);
    let seen_before = w.versions("home");
    // The site withholds every approval object.
    let approvals = w.site.join("approvals");
    assert!(approvals.exists());
    std::fs::remove_dir_all(&approvals).unwrap();
    // A fresh client sees the same history and the same latest version.
    assert_eq!(w.versions("fresh"), seen_before);
    let (latest, bytes) = w.restore("fresh", DS);
    assert_eq!(latest.code, 0, "{latest:?}");
    assert!(
        bytes.as_deref() == Some(&data(5)[..]),
        "latest is not version {after}"
    );
    // Its backup continues the same history (no fork), and verify is clean.
    let next = w.backup("fresh", &w.root_key.clone(), &data(6));
    assert_eq!(next, after + 1);
    made.push((next, data(6)));
    w.verify_ok("fresh");
    w.verify_ok("home");
    // gc removes only version 1's data: every other version restores.
    w.gc_twice();
    all_restore(&w, "fresh3", &made);
    let (gone, _) = w.restore("fresh3", &format!("{DS}@1"));
    assert_eq!(gone.code, 1, "{gone:?}");
}

#[test]
fn invalid_deletion_is_a_noop_that_does_not_reject_later_versions() {
    let (w, _) = World::init(&["--min-age", "0"]);
    let mut made = Vec::new();
    for i in 1..=2 {
        let seq = w.backup("home", &w.root_key.clone(), &data(i));
        made.push((seq, data(i)));
    }
    let writer = w.root_secret().writer_signing_key(0);
    // Outside any policy, without approvals (the vault pins none): refused.
    let (outside, _) = w.forge(&writer, None, deletion(vec![1], None, None));
    // Then a version chained to it, by the honest writer.
    let v = w.backup("home", &w.root_key.clone(), &data(3));
    assert_eq!(v, outside + 1);
    made.push((v, data(3)));
    // A deletion naming a version that does not exist: refused too; later versions stay.
    let (missing, _) = w.forge(&writer, None, deletion(vec![99], None, None));
    let v = w.backup("fresh", &w.root_key.clone(), &data(4));
    assert_eq!(v, missing + 1);
    made.push((v, data(4)));
    assert_eq!(
        w.versions("fresh2"),
        made.iter().map(|(s, _)| *s).collect::<Vec<_>>()
    );
    let verify = w.verify_ok("fresh2");
    for seq in [outside, missing] {
        assert!(
            verify.stdout.contains(&format!("entry {seq} (")) && verify.stdout.contains("refused"),
            "{verify:?}"
        );
    }
    assert_eq!(w.gc_twice(), 0);
    all_restore(&w, "fresh2", &made);
}

#[test]
fn backdated_or_future_dated_deletion() {
    let (w, _) = World::init(&["--min-age", "0"]);
    let mut made = Vec::new();
    for i in 1..=3 {
        let seq = w.backup("home", &w.root_key.clone(), &data(i));
        made.push((seq, data(i)));
    }
    let writer = w.root_secret().writer_signing_key(0);
    let vault = w.vault();
    let head_time = vault.history(DS).unwrap().last().unwrap().entry.time_ns;
    // Policy evaluated after the entry's own time (to age versions early).
    w.forge(
        &writer,
        Some(head_time + 1),
        deletion(vec![1, 2], Some(keep_last(1)), Some(head_time + DAY_NS)),
    );
    // An entry dated before the one it follows.
    let back = w.vault().history(DS).unwrap().last().unwrap().entry.time_ns - DAY_NS;
    w.forge(
        &writer,
        Some(back),
        deletion(vec![1, 2], Some(keep_last(1)), Some(back)),
    );
    assert_eq!(w.versions("fresh"), vec![1, 2, 3]);
    let history = w.run_as("fresh", &w.root_key.clone(), &["history", DS], None);
    assert!(
        history.stdout.contains("after the entry was made"),
        "{history:?}"
    );
    assert!(
        history.stdout.contains("before the entry it follows"),
        "{history:?}"
    );
    // The verifier's clock plays no part: an entry dated in ten years is judged against its
    // predecessor only (accepted: the writer key holds delete and the policy allows it), verify
    // warns about its date, and the next honest entry is dated after it.
    let future = embassy_core::format::config::now_unix_nanos() + 3650 * DAY_NS;
    let (far, _) = w.forge(
        &writer,
        Some(future),
        deletion(vec![1], Some(keep_last(2)), Some(future)),
    );
    assert_eq!(w.versions("fresh"), vec![2, 3]);
    let v = w.backup("home", &w.root_key.clone(), &data(9));
    assert_eq!(v, far + 1);
    let vault = w.vault();
    let history = vault.history(DS).unwrap();
    assert!(history.last().unwrap().entry.time_ns >= future);
    assert!(history.last().unwrap().refused.is_none());
    let verify = w.verify_ok("fresh");
    assert!(
        verify.stdout.contains("ahead of this machine's clock"),
        "{verify:?}"
    );
    made.remove(0);
    made.push((v, data(9)));
    all_restore(&w, "fresh", &made);
}

/// A credential issued with `--may-delete` prunes its datasets but cannot collect the vault's
/// garbage: `gc` refuses it, names why, and its advice (the root key) is what works. The advice
/// once told the operator to issue exactly such a credential, which gc then refused.
#[test]
fn a_may_delete_credential_cannot_collect_and_the_advice_names_the_root_key() {
    let (w, _) = World::init(&["--min-age", "0"]);
    w.backup("home", &w.root_key.clone(), &data(1));
    let (cred, _) = w.issue("janitor", &["--may-delete"]);
    let gc = w.run_as("host", &cred, &["gc"], None);
    assert_eq!(gc.code, 1, "{gc:?}");
    assert!(
        gc.stderr
            .contains("signs its condemnation records with the vault's root key")
            && gc.stderr.contains("hint:")
            && gc.stderr.contains("with the root key file")
            && !gc
                .stderr
                .contains("issued with `embassy keys issue --sealing --may-delete`"),
        "{gc:?}"
    );
    // What the hint says works.
    w.root_ok(&["gc"]);
}
