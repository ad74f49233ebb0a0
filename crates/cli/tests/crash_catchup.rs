//! Issue 19's reported case, driven as the operator drove it: an agent with two local sites, one
//! made unwritable (chmod) and then given back, stopped with SIGTERM during the backup and the
//! catch-up that follow; afterwards each site alone must pass a keyless `embassy verify`. A site
//! that came back holds a prefix of the vault (lagging: the next drain clears it), never a newer
//! ledger entry without the entries and objects before it (which `verify` rightly calls damage).
//!
//! The SIGTERM lands `k` ms after the site is given back, for several `k` (and one drawn from a
//! printed seed: `EMBASSY_CRASH_SEED=N` replays it).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use embassy_testkit::agent::{unprivileged, wait_until, Agent};
use embassy_testkit::status_page::show;

const EMBASSY: &str = env!("CARGO_BIN_EXE_embassy");

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// The user the agent runs as when the tests run as root (so that `chmod` takes).
    agent_user: Option<(u32, u32)>,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        fs::write(dir.join("passphrase"), "crash test passphrase\n").unwrap();
        Env {
            _tmp: tmp,
            dir,
            agent_user: None,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn embassy(&self, args: &[&str]) -> Output {
        Command::new(EMBASSY)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_PASSPHRASE")
            .env("EMBASSY_STATE_DIR", self.path("cli-state"))
            .env("EMBASSY_KEY_FILE", self.path("vault.key"))
            .stdin(Stdio::null())
            .output()
            .expect("run embassy")
    }

    fn spawn_agent(&self) -> Agent {
        let log = self.path("agent.log");
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(EMBASSY);
        if let Some((uid, gid)) = self.agent_user {
            command.uid(uid).gid(gid);
        }
        let child = command
            .args(["agent", "--config", "embassy.toml"])
            .current_dir(&self.dir)
            .env_remove("EMBASSY_PASSPHRASE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start embassy agent");
        Agent { child, log }
    }

    /// Versions of `dataset` one site holds (0 before the dataset's first).
    fn versions(&self, site: &str, dataset: &str) -> usize {
        let out = self.embassy(&[
            "--site",
            site,
            "--passphrase-file",
            "passphrase",
            "--json",
            "versions",
            dataset,
        ]);
        let answer = serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null);
        answer["versions"].as_array().map_or(0, Vec::len)
    }
}

/// Every folder under `root` (and `root`) set to `mode`: a local site made unwritable (0o555)
/// or given back (0o755).
fn chmod_dirs(root: &Path, mode: u32) {
    fs::set_permissions(root, fs::Permissions::from_mode(mode)).unwrap();
    for e in fs::read_dir(root).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            chmod_dirs(&e.path(), mode);
        }
    }
}

fn write_files(root: &Path, round: u64) {
    fs::create_dir_all(root).unwrap();
    for i in 0..24u64 {
        // A few files change every round; the rest stay (deduplicated).
        let seed = if i % 6 == round % 6 {
            round * 100 + i
        } else {
            i
        };
        fs::write(
            root.join(format!("f{i:02}.bin")),
            embassy_testkit::random_bytes(96 << 10, seed),
        )
        .unwrap();
    }
}

/// One try: SIGTERM `k` ms after the site `hel` is given back. Returns what a keyless verify of
/// each site said when it failed.
fn one_try(k: u64) -> Vec<String> {
    let mut env = Env::new();
    let out = env.embassy(&[
        "--site",
        "sites/lux",
        "--site",
        "sites/hel",
        "--passphrase-file",
        "passphrase",
        "init",
    ]);
    assert!(out.status.success(), "init failed: {}", show(&out));
    write_files(&env.path("data/reg"), 0);
    fs::write(
        env.path("embassy.toml"),
        r#"[agent]
state_dir = "state"
min_sites = 1
verify_interval = "never"
shutdown_grace = "30s"
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
name = "reg"
source = { files = ["data/reg"] }
interval = "1s"
rpo = "1h"
[[datasets]]
name = "cmd"
source = { command = "head -c 200000 data/reg/f00.bin; date +%s%N" }
interval = "1s"
rpo = "1h"
"#,
    )
    .unwrap();
    env.agent_user = unprivileged(&env.dir);
    let agent = env.spawn_agent();
    let limit = Duration::from_secs(60);
    wait_until(limit, "a version of both datasets at hel", &agent, || {
        (env.versions("sites/hel", "reg") >= 1 && env.versions("sites/hel", "cmd") >= 1)
            .then_some(())
    });
    // hel stops taking writes; lux goes on (min_sites = 1) and hel's misses are queued.
    chmod_dirs(&env.path("sites/hel"), 0o555);
    let at_lux = env.versions("sites/lux", "reg");
    let mut round = 1;
    wait_until(limit, "two versions more at lux", &agent, || {
        write_files(&env.path("data/reg"), round);
        round += 1;
        (env.versions("sites/lux", "reg") >= at_lux + 2).then_some(())
    });
    // hel comes back; the next runs write to it while its queue still holds what it missed.
    write_files(&env.path("data/reg"), round);
    chmod_dirs(&env.path("sites/hel"), 0o755);
    std::thread::sleep(Duration::from_millis(k));
    let (status, log) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "agent exit {status:?}; log:\n{log}");
    // Verified as the operator did: the healthy site first, then the one that came back, from
    // one machine (its remembered heads now those of lux), with the agent's state folder (its
    // catch-up queues). hel lacking what its queue says it lacks is behind, not rolled back.
    let mut failures = Vec::new();
    for site in ["sites/lux", "sites/hel"] {
        let out = env.embassy(&["--site", site, "--state-dir", "state", "verify"]);
        if !out.status.success() {
            failures.push(format!(
                "k = {k} ms: keyless verify of {site} failed: {}\nagent log:\n{log}",
                show(&out)
            ));
        }
    }
    // The next drain clears what hel still lacks: then it holds every version lux holds.
    let out = env.embassy(&[
        "--site",
        "sites/lux",
        "--site",
        "sites/hel",
        "--state-dir",
        "state",
        "sync",
        "--pending",
    ]);
    assert!(
        out.status.success(),
        "k = {k} ms: sync --pending: {}",
        show(&out)
    );
    let out = env.embassy(&["--site", "sites/hel", "verify"]);
    assert!(
        out.status.success(),
        "k = {k} ms: verify of hel after the drain: {}",
        show(&out)
    );
    for d in ["reg", "cmd"] {
        assert_eq!(
            env.versions("sites/hel", d),
            env.versions("sites/lux", d),
            "k = {k} ms: {d} after the drain"
        );
    }
    failures
}

/// The seed of the drawn timing: `EMBASSY_CRASH_SEED` to replay, else the clock.
fn seed() -> u64 {
    std::env::var("EMBASSY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

#[test]
fn sigterm_during_the_catch_up_of_a_site_that_came_back_leaves_every_site_verifiable() {
    let seed = seed();
    let drawn = seed.wrapping_mul(6364136223846793005).rotate_left(17) % 2500;
    eprintln!("crash seed {seed} (EMBASSY_CRASH_SEED={seed} replays it): k = {drawn} ms");
    let mut failures = Vec::new();
    for k in [0, 700, 1500, drawn] {
        failures.extend(one_try(k));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A site that lacks exactly what this machine's catch-up queue says it lacks is behind: a
/// keyless `verify` of it (after the other site's, whose newer heads this machine now
/// remembers) says BEHIND and passes, instead of "rollback ... 2 problems found"; once the
/// queue is drained, it verifies against the remembered heads again.
#[test]
fn a_site_behind_by_its_queue_is_reported_behind_not_rolled_back() {
    let env = Env::new();
    let both = |args: &[&str]| {
        let mut all = vec!["--site", "sites/lux", "--site", "sites/hel"];
        all.extend(["--state-dir", "state", "--passphrase-file", "passphrase"]);
        all.extend(args);
        env.embassy(&all)
    };
    let out = both(&["init"]);
    assert!(out.status.success(), "init: {}", show(&out));
    write_files(&env.path("data/reg"), 0);
    let out = both(&["backup", "reg", "data/reg"]);
    assert!(out.status.success(), "backup: {}", show(&out));
    // hel misses the next version; what it missed is queued for it, as a write through both
    // sites records it when hel fails.
    let before: std::collections::BTreeSet<String> = listing(&env.path("sites/hel"));
    write_files(&env.path("data/reg"), 1);
    let out = env.embassy(&[
        "--site",
        "sites/lux",
        "--state-dir",
        "state",
        "--passphrase-file",
        "passphrase",
        "backup",
        "reg",
        "data/reg",
    ]);
    assert!(out.status.success(), "backup at lux: {}", show(&out));
    let hel = env.path("sites/hel").display().to_string();
    let queue = embassy_sites::SiteQueue::open(&env.path("state"), &hel).unwrap();
    let missed: Vec<String> = listing(&env.path("sites/lux"))
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(!missed.is_empty());
    for p in &missed {
        queue.record_missing(p).unwrap();
    }
    let verify = |site: &str| env.embassy(&["--site", site, "--state-dir", "state", "verify"]);
    let out = verify("sites/lux");
    assert!(out.status.success(), "lux: {}", show(&out));
    let out = verify("sites/hel");
    let text = show(&out);
    assert!(out.status.success(), "hel, behind, judged damaged: {text}");
    assert!(
        text.contains(&format!("BEHIND: {} missed objects queued", missed.len()))
            && text.contains("sync --pending"),
        "{text}"
    );
    // The drain clears it; hel then holds lux's history and verifies against it.
    let out = both(&["sync", "--pending"]);
    assert!(out.status.success(), "sync --pending: {}", show(&out));
    let out = verify("sites/hel");
    let text = show(&out);
    assert!(out.status.success() && !text.contains("BEHIND"), "{text}");
    assert_eq!(env.versions("sites/hel", "reg"), 2);
}

/// Every object path a folder site holds (relative to it).
fn listing(root: &Path) -> std::collections::BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeSet<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.insert(rel.display().to_string());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(root, root, &mut out);
    out
}
