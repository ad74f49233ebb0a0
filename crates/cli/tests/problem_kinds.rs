//! Integrity against outage, the same scenario through the CLI and through the agent: a vault at
//! two local-folder sites, a dataset backed up every second, then one fault at site `hel`: one
//! of its packs tampered with, or the site gone (its folder replaced by a file). The CLI's exit
//! status (3: damage, 1: anything else), the agent's alarm kind, its `/status.json` and its
//! `/metrics` must all tell the same story. Real `embassy` processes throughout.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use embassy_testkit::agent::{cell, wait_until, Agent};
use embassy_testkit::free_port;
use embassy_testkit::status_page::{http_get, show};

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

/// These tests listen on ports and run backups: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn embassy(dir: &Path, args: &[&str]) -> Output {
    Command::new(EMBASSY)
        .args(args)
        .current_dir(dir)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_PASSPHRASE")
        .env("EMBASSY_STATE_DIR", dir.join("cli-state"))
        .env("EMBASSY_KEY_FILE", dir.join("vault.key"))
        .stdin(Stdio::null())
        .output()
        .expect("run embassy")
}

fn site<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["sites"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The fault injected at site `hel`.
enum Fault {
    /// One pack's bytes changed: damage, tampering.
    TamperedPack,
    /// The site's folder replaced by a file: the site cannot be used at all.
    SiteGone,
}

/// What each front end said about the fault.
struct Verdict {
    cli_exit: i32,
    cli_json_kind: String,
    alarm_kind: String,
    status_kind: String,
    cell_kind: String,
    integrity_metric: String,
    site_metric: String,
    cli_status_kind: String,
    /// `embassy status --config` for people: the registry row.
    cli_status_row: String,
    dashboard_problem: String,
    dashboard_text: String,
}

/// Runs the scenario with `fault` and gathers what the CLI and the agent say.
fn scenario(fault: Fault, expect: &str) -> Verdict {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    fs::write(dir.join("passphrase"), "problem kinds passphrase\n").unwrap();
    let out = embassy(
        dir,
        &[
            "--site",
            "sites/lux",
            "--site",
            "sites/hel",
            "--passphrase-file",
            "passphrase",
            "init",
        ],
    );
    assert!(out.status.success(), "init: {}", show(&out));
    let data = dir.join("data/registry");
    fs::create_dir_all(&data).unwrap();
    for i in 0..20u32 {
        let bytes: Vec<u8> = (0..8192u32)
            .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 7) as u8)
            .collect();
        fs::write(data.join(format!("f{i:02}.bin")), bytes).unwrap();
    }
    let port = free_port();
    fs::write(
        dir.join("embassy.toml"),
        format!(
            r#"[agent]
state_dir = "state"
min_sites = 1
verify_interval = "2s"
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
[[sites]]
name = "hel"
path = "sites/hel"
[[datasets]]
name = "registry"
source = {{ files = ["data/registry"] }}
interval = "1s"
rpo = "6s"
"#
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let child = Command::new(EMBASSY)
        .args(["agent", "--config", "embassy.toml"])
        .current_dir(dir)
        .env_remove("EMBASSY_PASSPHRASE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start embassy agent");
    let agent = Agent { child, log };
    let status = || http_get(port, "/status.json").and_then(|b| serde_json::from_str(&b).ok());
    wait_until(
        Duration::from_secs(60),
        "green at both sites and a clean verification of hel",
        &agent,
        || {
            let r: Value = status()?;
            (cell(&r, "registry", "lux")["colour"] == "green"
                && cell(&r, "registry", "hel")["colour"] == "green"
                && site(&r, "hel")["last_verify"]["ok"] == true)
                .then_some(())
        },
    );
    let hel = dir.join("sites/hel");
    match fault {
        Fault::TamperedPack => {
            let pack = walk(&hel.join("packs"))
                .into_iter()
                .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
                .expect("a pack at hel");
            let mut bytes = fs::read(&pack).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            fs::write(&pack, bytes).unwrap();
        }
        Fault::SiteGone => {
            fs::rename(&hel, dir.join("hel-away")).unwrap();
            fs::write(&hel, "not a vault").unwrap();
        }
    }
    // The CLI: keyless verification of the site, for people and as JSON.
    let verify = embassy(dir, &["--site", "sites/hel", "verify"]);
    let cli_exit = verify.status.code().unwrap_or(-1);
    let json = embassy(dir, &["--site", "sites/hel", "--json", "verify"]);
    let cli_json: Value = serde_json::from_slice(&json.stdout).unwrap_or(Value::Null);
    let cli_json_kind = if json.status.code() == Some(3) && cli_json["ok"] == false {
        // Problems found: a report, not an error; its exit status is the verdict.
        "integrity".to_string()
    } else {
        cli_json["kind"].as_str().unwrap_or("?").to_string()
    };
    // The agent: an alarm for registry@hel of the fault's kind.
    let alarm = wait_until(
        Duration::from_secs(60),
        "the alarm of registry at hel",
        &agent,
        || {
            let lines = fs::read_to_string(dir.join("alarms.txt")).ok()?;
            // The first alarm raised for registry at hel, by its kind.
            lines
                .lines()
                .find(|l| l.starts_with("raised ") && l.ends_with(" registry hel"))
                .map(|l| l.split(' ').nth(1).unwrap_or("").to_string())
        },
    );
    let r: Value = wait_until(
        Duration::from_secs(20),
        "the problem in /status.json",
        &agent,
        || {
            let r: Value = status()?;
            (site(&r, "hel")["problem_kind"] == expect).then_some(r)
        },
    );
    let metrics = http_get(port, "/metrics").unwrap_or_default();
    let metric = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or("")
            .to_string()
    };
    // The dashboard's cell: its data-problem attribute and its text.
    let html = http_get(port, "/").unwrap_or_default();
    let td = html
        .split("<td ")
        .find(|t| t.contains("id=\"cell-registry-hel\""))
        .unwrap_or("")
        .to_string();
    let dashboard_problem = td
        .split("data-problem=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
        .to_string();
    let dashboard_text = td
        .split('>')
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or("")
        .to_string();
    // `embassy status --config` reads the same state and sites.
    let cli_status = embassy(dir, &["status", "--config", "embassy.toml", "--json"]);
    let cli_report: Value = serde_json::from_slice(&cli_status.stdout).unwrap_or(Value::Null);
    let human = embassy(dir, &["status", "--config", "embassy.toml"]);
    let cli_status_row = String::from_utf8_lossy(&human.stdout)
        .lines()
        .find(|l| l.starts_with("registry"))
        .unwrap_or("")
        .to_string();
    Verdict {
        cli_exit,
        cli_json_kind,
        alarm_kind: alarm,
        status_kind: site(&r, "hel")["problem_kind"]
            .as_str()
            .unwrap_or("")
            .into(),
        cell_kind: cell(&r, "registry", "hel")["problem_kind"]
            .as_str()
            .unwrap_or("")
            .into(),
        integrity_metric: metric("embassy_integrity_problems "),
        site_metric: metric("embassy_site_problem{site=\"hel\""),
        cli_status_kind: site(&cli_report, "hel")["problem_kind"]
            .as_str()
            .unwrap_or("")
            .into(),
        cli_status_row,
        dashboard_problem,
        dashboard_text,
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_tampered_pack_is_integrity_for_the_cli_and_the_agent_alike() {
    let _g = serial();
    let v = scenario(Fault::TamperedPack, "integrity");
    assert_eq!(v.cli_exit, 3, "embassy verify: damage exits 3");
    assert_eq!(v.cli_json_kind, "integrity");
    assert_eq!(v.alarm_kind, "integrity");
    assert_eq!(v.status_kind, "integrity");
    assert_eq!(v.cell_kind, "integrity");
    assert_eq!(v.integrity_metric, "embassy_integrity_problems 1");
    assert_eq!(
        v.site_metric,
        "embassy_site_problem{site=\"hel\",kind=\"integrity\"} 1"
    );
    assert_eq!(v.cli_status_kind, "integrity");
    assert!(
        v.cli_status_row.contains("RED DAMAGED OR TAMPERED WITH"),
        "{}",
        v.cli_status_row
    );
    assert_eq!(v.dashboard_problem, "integrity");
    assert_eq!(v.dashboard_text, "DAMAGED OR TAMPERED WITH");
}

#[test]
fn a_site_that_is_gone_is_an_outage_for_the_cli_and_the_agent_alike() {
    let _g = serial();
    let v = scenario(Fault::SiteGone, "outage");
    assert_eq!(
        v.cli_exit, 1,
        "embassy verify: a site that cannot be used exits 1"
    );
    assert_eq!(v.cli_json_kind, "outage");
    assert_eq!(v.alarm_kind, "outage");
    assert_eq!(v.status_kind, "outage");
    assert_eq!(v.cell_kind, "outage");
    assert_eq!(v.integrity_metric, "embassy_integrity_problems 0");
    assert_eq!(
        v.site_metric,
        "embassy_site_problem{site=\"hel\",kind=\"outage\"} 1"
    );
    assert_eq!(v.cli_status_kind, "outage");
    assert!(
        v.cli_status_row.contains("(unreachable)") && !v.cli_status_row.contains("DAMAGED"),
        "{}",
        v.cli_status_row
    );
    assert_eq!(v.dashboard_problem, "outage");
    assert!(
        v.dashboard_text.contains("unreachable"),
        "{}",
        v.dashboard_text
    );
}

/// The agent refuses to start when a site now serves another vault than the one it held on first
/// contact (a substituted configuration): an integrity error, so `embassy agent` exits 3 like
/// every command facing damage or tampering, not 1 like a site that is down.
#[test]
fn an_agent_facing_a_substituted_vault_exits_with_the_integrity_status() {
    let _g = serial();
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    fs::write(dir.join("passphrase"), "problem kinds passphrase\n").unwrap();
    fs::create_dir_all(dir.join("data")).unwrap();
    fs::write(dir.join("data/a.txt"), "a file").unwrap();
    for (site, key) in [("sites/lux", "vault.key"), ("sites/other", "other.key")] {
        let out = embassy(
            dir,
            &[
                "--site",
                site,
                "--key-file",
                key,
                "--passphrase-file",
                "passphrase",
                "init",
            ],
        );
        assert!(out.status.success(), "init {site}: {}", show(&out));
    }
    fs::write(
        dir.join("embassy.toml"),
        r#"[agent]
state_dir = "state"
verify_interval = "never"
[keys]
file = "vault.key"
passphrase_file = "passphrase"
[[sites]]
name = "lux"
path = "sites/lux"
[[datasets]]
name = "docs"
source = { files = ["data"] }
interval = "1h"
rpo = "1h"
"#,
    )
    .unwrap();
    let agent = |dir: &Path| {
        Command::new(EMBASSY)
            .args(["agent", "--config", "embassy.toml", "--once"])
            .current_dir(dir)
            .env_remove("EMBASSY_PASSPHRASE")
            .stdin(Stdio::null())
            .output()
            .expect("run embassy agent")
    };
    let first = agent(dir);
    assert!(first.status.success(), "first cycle: {}", show(&first));
    // Someone puts another vault's configuration at lux.
    for f in ["config", "config.sig"] {
        fs::copy(
            dir.join("sites/other").join(f),
            dir.join("sites/lux").join(f),
        )
        .unwrap();
    }
    let second = agent(dir);
    assert_eq!(second.status.code(), Some(3), "{}", show(&second));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("substituted configuration"), "{stderr}");
    assert!(
        !stderr.contains("embassy init"),
        "no init hint for a tampered vault: {stderr}"
    );
}
