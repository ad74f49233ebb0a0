//! `embassy gc`'s exit status tells damage from an outage, as `verify`'s does: a site whose
//! condemnation records cannot be listed is an outage (exit 1, the problem marked "outage"),
//! a damaged condemnation record is damage (exit 3, marked "integrity"). Real `embassy`
//! processes on a local-folder site.

use std::fs;

use embassy_testkit::cli::TestVault;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

#[test]
fn gc_exits_1_for_a_site_it_cannot_list_and_3_for_a_damaged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    vault.backup_bytes("m", "dump", b"gc kinds: version 1");
    vault.ok("m", &vault.key, &["gc", "--grace", "1s"], None);

    // The outage: the site's `gc/` folder cannot be listed (as root, a folder cannot be made
    // unreadable, so it is a link, which the local site refuses to list through: an I/O error).
    let gc = vault.site.join("gc");
    if gc.exists() {
        fs::remove_dir_all(&gc).unwrap();
    }
    let elsewhere = tmp.path().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &gc).unwrap();
    let run = vault.run("m", &vault.key, &["gc", "--grace", "1s"], None);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stdout.contains("PROBLEM (outage)")
            && run
                .stdout
                .contains("its condemnation records cannot be listed"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("(integrity)"), "{run:?}");
    let json = vault
        .run("m", &vault.key, &["--json", "gc", "--grace", "1s"], None)
        .json();
    assert_eq!(json["ok"], false, "{json}");
    assert_eq!(json["report"]["problems"][0]["kind"], "outage", "{json}");

    // The damage: a condemnation record whose bytes do not hash to its name.
    fs::remove_file(&gc).unwrap();
    let record = gc
        .join("dump")
        .join(format!("{:020}-{}", 1, "ab".repeat(32)));
    fs::create_dir_all(record.parent().unwrap()).unwrap();
    fs::write(&record, b"not a condemnation record").unwrap();
    let run = vault.run("m", &vault.key, &["gc", "--grace", "1s"], None);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stdout.contains("PROBLEM (integrity)"), "{run:?}");
}

/// The agent's scheduled collection finding damage (a manifest of a dataset only the command
/// line backs up, altered) turns it into an integrity problem: with no scheduled verification
/// at all, the sites are verified at once, and `/status.json` and the alarm name it integrity.
#[test]
fn the_agents_gc_finding_damage_raises_an_integrity_problem() {
    use std::process::{Command, Stdio};
    use std::time::Duration;

    use embassy_testkit::agent::{wait_until, Agent};
    use embassy_testkit::free_port;
    use embassy_testkit::status_page::{http_get, show};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    fs::write(dir.join("passphrase"), "gc kinds agent passphrase\n").unwrap();
    let init = Command::new(EXE)
        .args([
            "--site",
            "sites/lux",
            "--passphrase-file",
            "passphrase",
            "init",
        ])
        .current_dir(dir)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_PASSPHRASE")
        .env("EMBASSY_STATE_DIR", dir.join("cli-state"))
        .env("EMBASSY_KEY_FILE", dir.join("vault.key"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(init.status.success(), "init: {}", show(&init));
    fs::create_dir_all(dir.join("data/registry")).unwrap();
    fs::write(dir.join("data/registry/a.txt"), b"gc kinds").unwrap();
    let backup = Command::new(EXE)
        .args(["--site", "sites/lux", "--passphrase-file", "passphrase"])
        .args(["backup", "archive", "--stdin"])
        .current_dir(dir)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_PASSPHRASE")
        .env("EMBASSY_STATE_DIR", dir.join("cli-state"))
        .env("EMBASSY_KEY_FILE", dir.join("vault.key"))
        .stdin(fs::File::open(dir.join("passphrase")).unwrap())
        .output()
        .unwrap();
    assert!(backup.status.success(), "backup: {}", show(&backup));
    let manifest = fs::read_dir(dir.join("sites/lux/manifests/archive"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = fs::read(&manifest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&manifest, bytes).unwrap();
    let port = free_port();
    fs::write(
        dir.join("embassy.toml"),
        format!(
            r#"[agent]
state_dir = "state"
min_sites = 1
verify_interval = "never"
gc_interval = "2s"
[status]
listen = "127.0.0.1:{port}"
[alarms]
command = "echo \"$EMBASSY_ALARM_EVENT $EMBASSY_ALARM_KIND $EMBASSY_ALARM_DATASET $EMBASSY_ALARM_SITE\" >> alarms.txt"
[keys]
file = "vault.key"
passphrase_file = "passphrase"
[[sites]]
name = "lux"
path = "sites/lux"
[[datasets]]
name = "registry"
source = {{ files = ["data/registry"] }}
interval = "1h"
rpo = "1d"
"#
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let child = Command::new(EXE)
        .args(["agent", "--config", "embassy.toml"])
        .current_dir(dir)
        .env_remove("EMBASSY_PASSPHRASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start embassy agent");
    let agent = Agent { child, log };
    let status = wait_until(
        Duration::from_secs(60),
        "an integrity problem at lux in /status.json",
        &agent,
        || {
            let r: serde_json::Value =
                serde_json::from_str(&http_get(port, "/status.json")?).ok()?;
            let lux = r["sites"].as_array()?.iter().find(|s| s["name"] == "lux")?;
            (lux["last_verify"]["problem_kind"] == "integrity"
                && lux["problem_kind"] == "integrity")
                .then(|| r.clone())
        },
    );
    assert!(
        agent
            .log()
            .contains("garbage collection failed: [integrity]"),
        "{}\n{status}",
        agent.log()
    );
    wait_until(
        Duration::from_secs(30),
        "an integrity alarm for registry at lux",
        &agent,
        || {
            fs::read_to_string(dir.join("alarms.txt"))
                .ok()?
                .lines()
                .any(|l| l == "raised integrity registry lux")
                .then_some(())
        },
    );
}

/// Red team 12, #6: after a routine rotation (a new credential, the old one revoked) every
/// collection exited 3 with an integrity problem for the old credential's own session markers,
/// so the agent's scheduled gc failed for good. A former signer's markers are stale and ignored
/// without a word; a marker by a key that never signed the dataset is still reported.
#[test]
fn a_revoked_credentials_session_markers_are_no_integrity_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = TestVault::init(EXE, tmp.path(), "vault");
    let issue = |label: &str| {
        let slow = tmp.path().join(format!("{label}-slow.cred"));
        let run = vault.ok(
            "m",
            &vault.key,
            &[
                "keys",
                "issue",
                "--sealing",
                "--dataset",
                "dump",
                "--label",
                label,
                "--out",
                slow.to_str().unwrap(),
            ],
            None,
        );
        let cheap = tmp.path().join(format!("{label}.cred"));
        embassy_testkit::cli::cheapen(&slow, &cheap);
        let text = run.text();
        let key = text
            .split(|c: char| !c.is_ascii_hexdigit())
            .find(|w| w.len() == 64)
            .unwrap_or_else(|| panic!("no public key in {text}"))
            .to_string();
        (cheap, key)
    };
    let (old, old_key) = issue("home-2025");
    vault.ok(
        "m",
        &old,
        &["backup", "dump", "--stdin"],
        Some(b"version 1"),
    );
    let (new, _) = issue("home-2026");
    vault.ok(
        "m",
        &vault.key,
        &["keys", "revoke", "--signer", &old_key, "--dataset", "dump"],
        None,
    );
    vault.ok(
        "m",
        &new,
        &["backup", "dump", "--stdin"],
        Some(b"version 2"),
    );
    for _ in 0..2 {
        let run = vault.run("m", &vault.key, &["gc", "--grace", "1s"], None);
        assert_eq!(run.code, 0, "{run:?}");
        assert!(!run.stdout.contains("session marker signed by"), "{run:?}");
    }
}
