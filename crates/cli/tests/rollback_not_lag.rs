//! A site that was rolled back (put back to an old copy of its folder) is never reported as
//! merely lagging or OK (red team 5, finding 3). Driven as the red team drove it: real
//! processes, folder sites, the site's folder replaced by a copy kept after version 1.
//!
//! - Verified against the heads this machine remembers with one site (`verify --site B`) and
//!   with several (`verify --site A --site B`): damaged, exit 3.
//! - A queued write for the site excuses only the entries it holds: one queued later version
//!   does not make a rollback of two earlier ones "behind".
//! - A catch-up never copies a ledger entry onto a site that holds another entry at its place
//!   (a fork): it refuses and says so.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use embassy_testkit::cli::{copy_dir, passphrase_file, Run, Vaults};

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

struct Env {
    vaults: Vaults,
    dir: PathBuf,
}

impl Env {
    fn new() -> Env {
        let vaults = Vaults::new(EMBASSY);
        let dir = vaults.dir.clone();
        passphrase_file(&dir);
        fs::create_dir_all(dir.join("src")).unwrap();
        Env { vaults, dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    /// `embassy` with these sites, the state folder `state` and the key file; its output names
    /// sites by their folder's name (`site b: DAMAGED`).
    fn run(&self, sites: &[&str], state: &str, args: &[&str]) -> Run {
        let mut out = self.vaults.run_as(state, sites, args);
        let folder = format!("{}/", self.dir.display());
        out.stdout = out.stdout.replace(&folder, "");
        out.stderr = out.stderr.replace(&folder, "");
        out
    }

    fn ok(&self, sites: &[&str], state: &str, args: &[&str]) -> Run {
        let out = self.run(sites, state, args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        out
    }

    /// A new version of `reg` at these sites.
    fn backup(&self, sites: &[&str], state: &str, n: u32, extra: &[&str]) {
        fs::write(self.path(&format!("src/f{n}")), format!("{n}\n")).unwrap();
        let mut args = extra.to_vec();
        let src = self.vaults.path("src");
        args.extend(["backup", "reg", &src]);
        self.ok(sites, state, &args);
    }

    /// Versions 1..3 at both sites, a copy of site b kept after version 1 (`b.after-v1`).
    fn three_versions(&self) {
        self.ok(&["a", "b"], "state", &["init", "--min-age", "0"]);
        self.backup(&["a", "b"], "state", 1, &[]);
        copy_dir(&self.path("b"), &self.path("b.after-v1"));
        for n in [2, 3] {
            self.backup(&["a", "b"], "state", n, &[]);
        }
        self.ok(&["a", "b"], "state", &["verify"]);
    }

    /// What a writer killed mid-session leaves behind: its session file, naming both sites, no
    /// longer locked (the next command turns it into a "full comparison" record in each
    /// site's catch-up queue).
    fn killed_writer_session(&self, state: &str) {
        let dir = self.path(state).join("queues/sessions");
        fs::create_dir_all(&dir).unwrap();
        let root = fs::canonicalize(&self.dir).unwrap();
        fs::write(
            dir.join("4242-1-0badc0de"),
            format!(
                "{}\n{}\n",
                root.join("a").display(),
                root.join("b").display()
            ),
        )
        .unwrap();
    }

    /// Site b put back to its copy after version 1.
    fn roll_back_b(&self) {
        fs::remove_dir_all(self.path("b")).unwrap();
        copy_dir(&self.path("b.after-v1"), &self.path("b"));
    }
}

fn code(out: &Run) -> Option<i32> {
    Some(out.code)
}

fn show(out: &Run) -> String {
    format!("{out:?}")
}

/// 3b: no queue. `verify --site a --site b` used to read each site without the remembered
/// heads and called the rolled-back b OK (exit 0).
#[test]
fn a_multi_site_verify_reports_a_rolled_back_site_damaged() {
    let env = Env::new();
    env.three_versions();
    env.roll_back_b();
    let out = env.run(&["a", "b"], "state", &["verify"]);
    let text = show(&out);
    assert_eq!(code(&out), Some(3), "{text}");
    assert!(text.contains("rollback"), "{text}");
    assert!(text.contains("site b: DAMAGED"), "{text}");
    assert!(text.contains("site a: OK"), "{text}");
}

/// 3: one queued write (version 4) for b, which was rolled back past versions 2 and 3: the
/// queue does not hold entries 2 and 3, so b is rolled back, not behind; it used to print
/// "BEHIND ... behind, not damaged", "vault OK" and exit 0.
#[test]
fn one_queued_write_does_not_excuse_a_rollback() {
    let env = Env::new();
    env.three_versions();
    // b is down (a file where its folder was: reads fail) while version 4 is written: queued.
    fs::rename(env.path("b"), env.path("b.down")).unwrap();
    fs::write(env.path("b"), "not a folder\n").unwrap();
    env.backup(&["a", "b"], "state", 4, &["--min-sites", "1"]);
    fs::remove_file(env.path("b")).unwrap();
    fs::rename(env.path("b.down"), env.path("b")).unwrap();
    env.roll_back_b();
    for sites in [&["b"][..], &["a", "b"][..]] {
        let out = env.run(sites, "state", &["verify"]);
        let text = show(&out);
        assert_eq!(code(&out), Some(3), "{sites:?}: {text}");
        assert!(text.contains("rollback"), "{sites:?}: {text}");
        assert!(!text.contains("BEHIND"), "{sites:?}: {text}");
    }
}

/// Red team 6, finding 3: a writer killed mid-session leaves a "full comparison" record in
/// each site's queue; site b then drops entries 2 and 3, which it stored and acknowledged
/// (nothing verified b on its own before). It is rolled back, not behind: it used to be
/// "BEHIND ... not damaged", "site b: OK", exit 0.
#[test]
fn a_killed_writers_full_comparison_does_not_excuse_a_rollback() {
    let env = Env::new();
    env.ok(&["a", "b"], "state", &["init", "--min-age", "0"]);
    env.backup(&["a", "b"], "state", 1, &[]);
    copy_dir(&env.path("b"), &env.path("b.after-v1"));
    for n in [2, 3] {
        env.backup(&["a", "b"], "state", n, &[]);
    }
    env.killed_writer_session("state");
    env.roll_back_b();
    for sites in [&["b"][..], &["a", "b"][..]] {
        let out = env.run(sites, "state", &["verify"]);
        let text = show(&out);
        assert_eq!(code(&out), Some(3), "{sites:?}: {text}");
        assert!(text.contains("rollback"), "{sites:?}: {text}");
        assert!(text.contains("showed entry 3"), "{sites:?}: {text}");
        // Site a (complete) may be BEHIND by the same record; b must not be.
        let at_b = text.split("== site b").nth(1).unwrap_or(&text);
        assert!(!at_b.contains("BEHIND"), "{sites:?}: {text}");
    }
    let out = env.run(&["a", "b"], "state", &["verify"]);
    assert!(show(&out).contains("site b: DAMAGED"), "{}", show(&out));
}

/// The same record still counts as lag for a site that never showed the entries it lacks:
/// versions 2 and 3 went to a alone (b never held them), then a writer through both was killed.
#[test]
fn a_killed_writers_full_comparison_excuses_a_site_that_never_showed_the_entries() {
    let env = Env::new();
    env.ok(&["a", "b"], "state", &["init", "--min-age", "0"]);
    env.backup(&["a", "b"], "state", 1, &[]);
    for n in [2, 3] {
        env.backup(&["a"], "state", n, &[]);
    }
    env.killed_writer_session("state");
    let out = env.run(&["a", "b"], "state", &["verify"]);
    let text = show(&out);
    assert_eq!(code(&out), Some(0), "{text}");
    assert!(text.contains("BEHIND"), "{text}");
    assert!(text.contains("site b: OK"), "{text}");
}

/// A catch-up that would copy a ledger entry onto a site holding another entry at the same
/// sequence number refuses (it used to copy it, leaving an unresolved fork at the healthy site:
/// only version 1 readable, no more appends).
#[test]
fn a_catch_up_never_forks_a_site() {
    let env = Env::new();
    env.ok(&["a", "b"], "state", &["init", "--min-age", "0"]);
    env.backup(&["a", "b"], "state", 1, &[]);
    copy_dir(&env.path("b"), &env.path("b.after-v1"));
    env.backup(&["a", "b"], "state", 2, &[]);
    env.roll_back_b();
    // Another machine (its own state folder, no remembered heads) writes a version 2 at b
    // while a is down: queued there for a (the agent of finding 3d did this).
    fs::rename(env.path("a"), env.path("a.down")).unwrap();
    fs::write(env.path("a"), "down\n").unwrap();
    env.backup(&["a", "b"], "other", 5, &["--min-sites", "1"]);
    fs::remove_file(env.path("a")).unwrap();
    fs::rename(env.path("a.down"), env.path("a")).unwrap();
    // Its catch-up of a (the queue) and a full copy from b both refuse to fork a.
    let out = env.run(&["a", "b"], "other", &["sync", "--pending"]);
    let text = show(&out);
    assert_ne!(out.code, 0, "sync --pending: {text}");
    assert!(text.contains("fork"), "sync --pending: {text}");
    let (from, to) = (env.vaults.path("b"), env.vaults.path("a"));
    let out = env.run(
        &["a", "b"],
        "state",
        &["sync", "--from", &from, "--to", &to],
    );
    let text = show(&out);
    assert_ne!(out.code, 0, "sync --from b: {text}");
    assert!(text.contains("fork"), "sync --from b: {text}");
    // a keeps its own history, readable and verifiable, with both versions.
    let out = env.run(&["a"], "state", &["verify"]);
    assert!(out.code == 0, "a after the refused copies: {}", show(&out));
    let out = env.ok(&["a"], "state", &["--json", "versions", "reg"]);
    let answer = out.json();
    assert_eq!(
        answer["versions"].as_array().map_or(0, Vec::len),
        2,
        "{answer}"
    );
}

/// 3c/3d: the agent, its state folder the one where the command line verified versions 1..3,
/// meets site b rolled back while site a is down. Its per-site check must call b damaged
/// (`/metrics` `embassy_site_verify_ok{site="b"} 0`, b's cell red with an integrity problem),
/// never green, and its backup must not append a new version on top of the rolled-back b (it
/// used to: "verify b: OK", green, a version 2 at b that its catch-up then forked a with).
#[test]
fn the_agent_reports_a_rolled_back_site_and_writes_nothing_on_it() {
    let env = Env::new();
    env.three_versions();
    env.roll_back_b();
    fs::rename(env.path("a"), env.path("a.down")).unwrap();
    fs::write(env.path("a"), "down\n").unwrap();
    let port = embassy_testkit::free_port();
    fs::write(
        env.path("embassy.toml"),
        format!(
            r#"[agent]
state_dir = "state"
verify_interval = "2s"
min_sites = 1
[status]
listen = "127.0.0.1:{port}"
[keys]
file = "vault.key"
passphrase_file = "passphrase"
[[sites]]
name = "a"
path = "a"
[[sites]]
name = "b"
path = "b"
[[datasets]]
name = "reg"
source = {{ files = ["src"] }}
interval = "2s"
rpo = "1d"
"#
        ),
    )
    .unwrap();
    fs::write(env.path("src/f9"), "9\n").unwrap();
    let log = env.path("agent.log");
    let child = Command::new(EMBASSY)
        .args(["agent", "--config", "embassy.toml"])
        .current_dir(&env.dir)
        .env_remove("EMBASSY_PASSPHRASE")
        .env_remove("EMBASSY_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&log).unwrap()))
        .spawn()
        .expect("start embassy agent");
    let agent = embassy_testkit::agent::Agent { child, log };
    let limit = std::time::Duration::from_secs(60);
    embassy_testkit::agent::wait_until(limit, "b's verification to fail", &agent, || {
        let metrics = embassy_testkit::status_page::http_get(port, "/metrics")?;
        metrics
            .lines()
            .any(|l| {
                l.starts_with("embassy_site_verify_ok{")
                    && l.contains("site=\"b\"")
                    && l.ends_with(" 0")
            })
            .then_some(())
    });
    let report = embassy_testkit::agent::wait_until(limit, "b's cell", &agent, || {
        let report = embassy_testkit::status_page::status_json(port)?;
        let cell = embassy_testkit::agent::cell(&report, "reg", "b").clone();
        (cell["colour"] == "red").then_some(report)
    });
    let cell = embassy_testkit::agent::cell(&report, "reg", "b");
    assert_ne!(cell["colour"], "green", "{cell}");
    // A few backup attempts later, b still holds only version 1: nothing appended on it.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let (_, text) = agent.stop(std::time::Duration::from_secs(20));
    assert!(text.contains("rollback"), "agent log:\n{text}");
    assert!(!text.contains("verify b: OK"), "agent log:\n{text}");
    let listing: Vec<String> = fs::read_dir(env.path("b/ledger/reg"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listing.len(), 1, "entries at b: {listing:?}");
}

/// A catch-up from one site never drops a queued write that a down site alone may hold (crash
/// campaign seed 1796630629705382569 kill 18). Checkpoint and entries of version 2 reached
/// site c alone (a and b down); b got the entries later but not the checkpoint; then c went
/// down and the agent caught a up from b. That catch-up asked b alone, found the checkpoint
/// "nowhere" and dropped it from a's queue, so a keyless `verify` of a with the state folder
/// said "replay: ... the site hides newer checkpoints or was rolled back" of a site that only
/// lagged. Now the queue is drained from every site, and the checkpoint stays queued while c is
/// down: a is BEHIND. Once c is back the next catch-up copies it and a verifies clean; a site
/// that then withholds the newest checkpoint is still called out (the replay check stands).
#[test]
fn a_write_only_a_down_site_holds_stays_queued_through_a_catch_up_from_another() {
    let env = Env::new();
    let all = ["a", "b", "c"];
    env.ok(&all, "state", &["init", "--min-age", "0"]);
    env.backup(&all, "state", 1, &[]);
    let down = |s: &str| {
        fs::rename(env.path(s), env.path(&format!("{s}.down"))).unwrap();
        fs::write(env.path(s), "not a folder\n").unwrap();
    };
    let up = |s: &str| {
        fs::remove_file(env.path(s)).unwrap();
        fs::rename(env.path(&format!("{s}.down")), env.path(s)).unwrap();
    };
    // Version 2 (its entry and checkpoint) reaches c alone: queued for a and b.
    down("a");
    down("b");
    env.backup(&all, "state", 2, &["--min-sites", "1"]);
    up("a");
    up("b");
    // b gets what c holds but the checkpoints a lacks (it stays queued for b).
    let names = |s: &str| -> Vec<String> {
        fs::read_dir(env.path(s).join("checkpoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let at_a = names("a");
    let newer: Vec<String> = names("c")
        .into_iter()
        .filter(|n| !at_a.contains(n))
        .collect();
    assert!(!newer.is_empty(), "version 2 wrote no checkpoint");
    fs::remove_dir_all(env.path("b")).unwrap();
    copy_dir(&env.path("c"), &env.path("b"));
    for n in &newer {
        fs::remove_file(env.path("b").join("checkpoints").join(n)).unwrap();
    }
    // c is down while the agent catches a up from b (the most complete site it can read).
    down("c");
    let locations: Vec<String> = all.iter().map(|s| env.vaults.path(s)).collect();
    let state = env.path("state");
    let _ = embassy_ops::catchup::catch_up(
        &state,
        &locations[1],
        &locations[0],
        &locations,
        &embassy_core::progress::Silent,
    );
    let keyless_verify = |site: &str| {
        let state = env.vaults.path("state");
        let site = env.vaults.path(site);
        let out = env
            .vaults
            .embassy
            .run(["--state-dir", &state, "--site", &site, "verify"], None);
        show(&out)
    };
    let text = keyless_verify("a");
    assert!(text.contains("BEHIND"), "{text}");
    assert!(!text.contains("replay"), "{text}");
    assert!(!text.contains("PROBLEM"), "{text}");
    // c is back: the next catch-up copies the checkpoint, and a is whole.
    up("c");
    let report = embassy_ops::catchup::catch_up(
        &state,
        &locations[1],
        &locations[0],
        &locations,
        &embassy_core::progress::Silent,
    )
    .unwrap();
    assert!(report.is_complete(), "{report:?}");
    let text = keyless_verify("a");
    assert!(
        !text.contains("BEHIND") && !text.contains("PROBLEM"),
        "{text}"
    );
    for n in &newer {
        assert!(env.path("a").join("checkpoints").join(n).exists(), "{n}");
    }
    // A site that withholds the newest checkpoint it held is still reported.
    for n in &newer {
        fs::remove_file(env.path("a").join("checkpoints").join(n)).unwrap();
    }
    let text = keyless_verify("a");
    assert!(text.contains("replay"), "{text}");
}
