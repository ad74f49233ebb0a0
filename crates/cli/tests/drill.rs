//! Issue 16, drills, through the real `embassy` binary against a local-folder vault: a drill
//! of a file tree and of a stream (restored into a scratch folder, every byte checked, RTO and
//! RPO reported, the result signed into the ledger), a damaged vault's failing drill recorded,
//! the last drill shown by a keyless `verify` and by `drill --report`, and forged drill
//! entries (a sealing credential's, a "pass" that hides a failed check) taken for noise.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use embassy_core::engine::vault::Vault;
use embassy_core::history::ledger::{self, DrillCheck, DrillResult, Entry, Event};
use embassy_core::id::ObjectId;
use embassy_core::keys::keyfile::KeyFile;
use embassy_core::keys::Credential;
use embassy_core::site::Site;
use embassy_testkit::cli::{cheapen, Run, TestVault, PASS};

use embassy_testkit::agent::Agent;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

fn vault(tmp: &Path) -> TestVault {
    TestVault::init(EXE, tmp, "site")
}

/// A tree of a few files (one empty, one nested, one larger than a chunk).
fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    std::fs::write(dir.join("a.txt"), b"hello drills\n").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("sub/deeper/big.bin"), big).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("link")).unwrap();
}

/// `embassy` with the site and a state folder but no key file: what anyone can run.
fn keyless(v: &TestVault, args: &[&str]) -> Run {
    let mut all = vec![
        "--site".to_string(),
        v.site.display().to_string(),
        "--state-dir".into(),
        v.state("auditor").display().to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    v.embassy.run(all, None)
}

fn drill(v: &TestVault, args: &[&str]) -> Run {
    let scratch = v.base.join("scratch");
    let mut all = vec!["--json", "drill", "--scratch", scratch.to_str().unwrap()];
    all.extend(args);
    v.run("home", &v.key, &all, None)
}

/// The scratch folder holds nothing once a drill is over.
fn scratch_is_clean(v: &TestVault) {
    let left: Vec<_> = std::fs::read_dir(v.base.join("scratch"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

#[test]
fn a_drill_of_a_tree_and_a_stream_checks_every_byte_and_is_signed_into_the_ledger() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    let src = tmp.path().join("src");
    tree(&src);
    v.ok(
        "home",
        &v.key,
        &["backup", "docs", src.to_str().unwrap()],
        None,
    );
    v.backup_bytes("home", "dump", &vec![7u8; 2_500_000]);

    let out = drill(&v, &["docs", "dump"]);
    assert_eq!(out.code, 0, "{out:?}");
    let j = out.json();
    let docs = &j["drills"][0];
    assert_eq!(docs["dataset"], "docs");
    assert_eq!(docs["kind"], "tree");
    assert_eq!(docs["passed"], true, "{out:?}");
    assert_eq!(docs["files"], 3, "{out:?}");
    assert_eq!(docs["bytes"], 3_000_000 + 13, "{out:?}");
    let names: Vec<&str> = docs["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["restore", "bytes"]);
    assert!(docs["rto_ms"].as_u64().is_some());
    assert_eq!(docs["rpo_ms"], 0, "the newest version was drilled");
    assert!(docs["recorded_seq"].as_u64().is_some(), "{out:?}");
    let dump = &j["drills"][1];
    assert_eq!(dump["kind"], "stream");
    assert_eq!(dump["passed"], true, "{out:?}");
    assert_eq!(dump["bytes"], 2_500_000);
    assert_eq!(dump["files"], 1);
    scratch_is_clean(&v);

    // Anyone (no key) sees the last drill of each dataset.
    let verify = keyless(&v, &["verify"]);
    assert_eq!(verify.code, 0, "{verify:?}");
    assert!(
        verify.stdout.contains("last drill of docs: PASSED"),
        "{verify:?}"
    );
    assert!(
        verify.stdout.contains("last drill of dump: PASSED"),
        "{verify:?}"
    );
    let vj = keyless(&v, &["--json", "verify"]).json();
    let drills = vj["drills"].as_array().unwrap();
    assert_eq!(drills.len(), 2, "{vj}");
    assert_eq!(drills[0]["version"], 1);

    // The auditor's table, and its JSON.
    let report = keyless(&v, &["drill", "--report"]);
    assert_eq!(report.code, 0, "{report:?}");
    let lines: Vec<&str> = report.stdout.lines().collect();
    assert!(lines[0].starts_with("DATASET"), "{report:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("docs ") && l.contains("passed")),
        "{report:?}"
    );
    let rj = keyless(&v, &["--json", "drill", "--report"]).json();
    assert_eq!(rj["drills"].as_array().unwrap().len(), 2, "{rj}");
    assert!(
        rj["drills"][0]["host"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{rj}"
    );

    // The entry is in the signed history, and the vault still verifies (with the key).
    let history = v.ok("home", &v.key, &["history", "docs"], None);
    assert!(
        history.stdout.contains("drill recorded: passed"),
        "{history:?}"
    );
    let verify = v.verify("other");
    assert_eq!(verify.code, 0, "{verify:?}");
}

#[test]
fn a_damaged_vault_fails_its_drill_and_the_failure_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    let src = tmp.path().join("src");
    tree(&src);
    v.ok(
        "home",
        &v.key,
        &["backup", "docs", src.to_str().unwrap()],
        None,
    );
    // Flip a byte in the middle of every pack.
    let mut packs = 0;
    for entry in walk(&v.site.join("packs")) {
        let mut bytes = std::fs::read(&entry).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        let mut perms = std::fs::metadata(&entry).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&entry, perms).unwrap();
        std::fs::write(&entry, bytes).unwrap();
        packs += 1;
    }
    assert!(packs > 0);

    let out = drill(&v, &["docs"]);
    assert_eq!(
        out.code, 3,
        "a failed drill is an integrity problem: {out:?}"
    );
    let d = &out.json()["drills"][0];
    assert_eq!(d["passed"], false, "{out:?}");
    assert_eq!(d["checks"][0]["name"], "restore");
    assert_eq!(d["checks"][0]["passed"], false);
    assert!(
        d["recorded_seq"].as_u64().is_some(),
        "the failure is recorded: {out:?}"
    );
    scratch_is_clean(&v);

    let report = keyless(&v, &["drill", "--report"]);
    assert!(
        report
            .stdout
            .lines()
            .any(|l| l.starts_with("docs ") && l.contains("FAILED")),
        "{report:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Signs `event` after the dataset's accepted head with `key` and stores it where a site
/// would: an attacker's hand-made entry.
fn forge(
    v: &TestVault,
    dataset: &str,
    key: &embassy_core::history::approval::SigningKey,
    event: Event,
) -> ObjectId {
    let site: Arc<dyn Site> = Arc::new(embassy_sites::LocalSite::new(&v.site).unwrap());
    let vault = Vault::open(site).unwrap();
    let head = vault.history(dataset).unwrap().last().unwrap().clone();
    let entry = Entry {
        dataset: dataset.into(),
        seq: head.entry.seq + 1,
        prev: Some(head.id),
        time_ns: embassy_core::format::config::now_unix_nanos(),
        signer: key.verifying_key().to_bytes(),
        event,
    };
    let bytes = ledger::encode(&entry, key);
    let id = ObjectId::of(&bytes);
    vault
        .site()
        .put(
            &embassy_core::format::layout::ledger_entry(dataset, entry.seq, &id),
            &bytes,
        )
        .unwrap();
    id
}

fn passing(version_seq: u64, manifest: ObjectId) -> DrillResult {
    DrillResult {
        version_seq,
        manifest,
        lsn: None,
        started_ns: embassy_core::format::config::now_unix_nanos(),
        rto_ms: 1,
        rpo_ms: 0,
        checks: vec![DrillCheck {
            name: "bytes".into(),
            passed: true,
            detail: "all fine, trust me".into(),
        }],
        passed: true,
        host: "forger".into(),
        tool: "forgery 1.0".into(),
    }
}

/// The threat: a stolen sealing credential (it adds versions, cannot read) signs a passing
/// drill to hide a broken vault. Its entry needs the `drill` right, which no sealing
/// credential holds: it is noise, and the last drill anyone sees stays the real, failed one.
#[test]
fn a_forged_passing_drill_is_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    v.backup_bytes("home", "dump", &vec![9u8; 100_000]);
    // A failed drill on record (the packs damaged).
    for p in walk(&v.site.join("packs")) {
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 1;
        std::fs::write(&p, b).unwrap();
    }
    let out = drill(&v, &["dump"]);
    assert_eq!(out.code, 3, "{out:?}");

    // The thief's sealing credential.
    let slow = tmp.path().join("thief-slow.cred");
    v.ok(
        "home",
        &v.key,
        &[
            "keys",
            "issue",
            "--sealing",
            "--dataset",
            "dump",
            "--label",
            "thief",
            "--out",
            slow.to_str().unwrap(),
        ],
        None,
    );
    let file = KeyFile::load(&slow).unwrap();
    let credential =
        Credential::from_bytes(&file.open_payload(PASS.as_bytes(), &slow).unwrap()).unwrap();
    let thief = credential.signing_key().unwrap();
    let cheap = tmp.path().join("thief.cred");
    cheapen(&slow, &cheap);

    // It cannot run a drill (it cannot read) ...
    let run = v.run(
        "thief",
        &cheap,
        &[
            "drill",
            "dump",
            "--scratch",
            tmp.path().join("s").to_str().unwrap(),
        ],
        None,
    );
    assert_ne!(run.code, 0, "{run:?}");
    // ... and its hand-made passing drill is noise.
    let site: Arc<dyn Site> = Arc::new(embassy_sites::LocalSite::new(&v.site).unwrap());
    let version = Vault::open(site).unwrap().versions("dump").unwrap()[0].clone();
    forge(
        &v,
        "dump",
        &thief,
        Event::DrillRecorded(Box::new(passing(version.seq, version.manifest))),
    );
    let verify = keyless(&v, &["verify"]);
    assert!(
        verify.stdout.contains("last drill of dump: FAILED"),
        "{verify:?}"
    );
    assert!(!verify.stdout.contains("PASSED"), "{verify:?}");
    assert!(verify.stdout.contains("NOISE"), "{verify:?}");
    assert!(verify.text().contains("drill"), "{verify:?}");
}

/// The holder of the `drill` right cannot record a "pass" whose checks failed (nor, so, hide a
/// failed check behind it): such an entry is noise, and the last drill stays the real one.
#[test]
fn a_drill_that_calls_itself_passed_with_a_failed_check_is_noise() {
    let tmp = tempfile::tempdir().unwrap();
    let v = vault(tmp.path());
    v.backup_bytes("home", "dump", &vec![9u8; 100_000]);
    let out = drill(&v, &["dump"]);
    assert_eq!(out.code, 0, "{out:?}");
    let site: Arc<dyn Site> = Arc::new(embassy_sites::LocalSite::new(&v.site).unwrap());
    let version = Vault::open(site).unwrap().versions("dump").unwrap()[0].clone();
    let root = KeyFile::load(&v.key)
        .unwrap()
        .open(PASS.as_bytes(), &v.key)
        .unwrap();
    let mut lie = passing(version.seq, version.manifest);
    lie.checks[0].passed = false;
    forge(
        &v,
        "dump",
        &root.writer_signing_key(0),
        Event::DrillRecorded(Box::new(lie)),
    );
    let report = keyless(&v, &["--json", "drill", "--report"]).json();
    assert_eq!(report["drills"][0]["dataset"], "dump", "{report}");
    assert_ne!(report["drills"][0]["host"], "forger", "{report}");
    let verify = keyless(&v, &["verify"]);
    assert!(verify.stdout.contains("NOISE"), "{verify:?}");
}

/// An `embassy agent` over a one-site vault, with `dataset` as the one dataset's table body
/// (after its name), its status page on a free port and alarms appended to `alarms.txt`.
fn agent_with(tmp: &Path, dataset: &str) -> (embassy_testkit::agent::Agent, u16, TestVault) {
    let v = vault(tmp);
    std::fs::write(tmp.join("passphrase"), format!("{PASS}\n")).unwrap();
    let port = embassy_testkit::free_port();
    std::fs::write(
        tmp.join("embassy.toml"),
        format!(
            r#"[agent]
state_dir = "agent-state"
verify_interval = "never"
[status]
listen = "127.0.0.1:{port}"
[alarms]
command = "echo \"$EMBASSY_ALARM_EVENT $EMBASSY_ALARM_DATASET $EMBASSY_ALARM_SITE\" >> alarms.txt"
[keys]
file = "{key}"
passphrase_file = "passphrase"
[[sites]]
name = "home"
path = "{site}"
[[datasets]]
name = "docs"
{dataset}
"#,
            key = v.key.display(),
            site = v.site.display(),
        ),
    )
    .unwrap();
    let agent = Agent::start_in(EXE, tmp);
    (agent, port, v)
}

#[test]
fn the_agent_runs_a_scheduled_drill_and_shows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    tree(&src);
    let (agent, port, v) = agent_with(
        tmp.path(),
        &format!(
            "source = {{ files = [\"{}\"] }}\ninterval = \"1h\"\nrpo = \"2h\"\ndrill = \"1h\"",
            src.display()
        ),
    );
    let drill = embassy_testkit::agent::wait_until(
        std::time::Duration::from_secs(120),
        "a passed drill in /status.json",
        &agent,
        || {
            let r = embassy_testkit::status_page::status_json(port)?;
            let d = r["datasets"][0]["drill"].clone();
            (d["passed"] == true).then_some(d)
        },
    );
    assert!(drill["rto_ms"].as_u64().is_some(), "{drill}");
    assert_eq!(drill["version"], 1, "{drill}");
    assert_eq!(drill["overdue"], false, "{drill}");
    assert!(drill["recorded_seq"].as_u64().is_some(), "{drill}");
    let metrics = embassy_testkit::status_page::http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("embassy_drill_passed{dataset=\"docs\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("embassy_drill_rto_seconds{dataset=\"docs\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("embassy_drill_overdue{dataset=\"docs\"} 0"),
        "{metrics}"
    );
    let page = embassy_testkit::status_page::http_get(port, "/").unwrap();
    assert!(page.contains("drill: passed"), "{page}");
    let (status, log) = agent.stop(std::time::Duration::from_secs(30));
    assert!(status.success(), "{log}");
    // The signed result is in the ledger: anyone sees it.
    let verify = keyless(&v, &["verify"]);
    assert!(
        verify.stdout.contains("last drill of docs: PASSED"),
        "{verify:?}"
    );
    assert!(
        std::fs::read_dir(tmp.path().join("agent-state/drills"))
            .unwrap()
            .next()
            .is_none(),
        "the agent's scratch folder is empty"
    );
}

#[test]
fn a_drill_that_cannot_run_in_time_is_overdue_and_raises_the_alarm() {
    let tmp = tempfile::tempdir().unwrap();
    // The dataset's first backup never finishes within the test: nothing to drill.
    let (agent, port, _v) = agent_with(
        tmp.path(),
        "source = { command = \"sleep 60; echo late\" }\ninterval = \"1h\"\nrpo = \"2h\"\ndrill = \"2s\"",
    );
    let alarm = embassy_testkit::agent::wait_until(
        std::time::Duration::from_secs(60),
        "the overdue drill's alarm",
        &agent,
        || {
            let lines = std::fs::read_to_string(tmp.path().join("alarms.txt")).ok()?;
            lines
                .lines()
                .find(|l| l.starts_with("raised docs drill"))
                .map(str::to_string)
        },
    );
    assert_eq!(alarm, "raised docs drill");
    let r = embassy_testkit::status_page::status_json(port).unwrap();
    assert_eq!(r["datasets"][0]["drill"]["overdue"], true, "{r}");
    assert!(
        r["alarms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["site"] == "drill" && a["message"].as_str().unwrap().contains("overdue")),
        "{r}"
    );
    let metrics = embassy_testkit::status_page::http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("embassy_drill_overdue{dataset=\"docs\"} 1"),
        "{metrics}"
    );
    drop(agent);
}

/// A drill entry needs no special handling by witnesses: the drill writes a checkpoint naming
/// it (as a backup does), and a witness verifies the vault and cosigns that checkpoint.
#[test]
fn a_witness_cosigns_the_checkpoint_that_names_the_drill() {
    let tmp = tempfile::tempdir().unwrap();
    let e = embassy_testkit::cli::Embassy::new(EXE, tmp.path());
    let wk = tmp.path().join("keys/witness.key");
    let r = e.ok(
        ["--json", "witness-key", "--out", wk.to_str().unwrap()],
        None,
    );
    let public = r.json()["public_key"].as_str().unwrap().to_string();
    let site = tmp.path().join("site");
    let slow = tmp.path().join("keys/init.key");
    let state = tmp.path().join("state/init");
    e.ok(
        [
            "--site",
            site.to_str().unwrap(),
            "--key-file",
            slow.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "init",
            "--witness",
            &public,
        ],
        None,
    );
    let key = tmp.path().join("keys/root.key");
    let vault_id = cheapen(&slow, &key);
    let v = TestVault {
        embassy: e,
        base: tmp.path().to_path_buf(),
        site,
        key,
        vault_id,
    };
    v.backup_bytes("home", "dump", &vec![3u8; 200_000]);
    let out = drill(&v, &["dump"]);
    assert_eq!(out.code, 0, "{out:?}");
    let seq = out.json()["drills"][0]["recorded_seq"].as_u64().unwrap();
    let w = v.run(
        "witness",
        &v.key,
        &["witness", "--witness-key", wk.to_str().unwrap()],
        None,
    );
    assert_eq!(w.code, 0, "{w:?}");
    assert!(w.text().contains("cosigned"), "{w:?}");
    let site: Arc<dyn Site> = Arc::new(embassy_sites::LocalSite::new(&v.site).unwrap());
    let vault = Vault::open(site).unwrap();
    let (histories, _) = vault.histories().unwrap();
    let cp = vault.trusted_checkpoint(&histories).unwrap().unwrap();
    assert!(!cp.cosigners.is_empty(), "cosigned");
    assert_eq!(
        cp.checkpoint.heads["dump"].seq, seq,
        "the cosigned checkpoint names the drill"
    );
}
