//! Issue 19's crash campaign: a real `embassy agent` with three sites (two local folders, one S3
//! bucket on moto behind the fault proxy), a file tree that changes between kills and a
//! command's output, retention and garbage collection on short intervals, sites going down and
//! coming back (a folder made unwritable with chmod, the S3 site answering 503 through the
//! proxy), killed at random points (SIGKILL; SIGTERM waited out past the grace period; SIGTERM
//! then SIGKILL within it) and started again.
//!
//! After each kill: every site alone passes a keyless `verify`, no two ledger entries of a
//! folder site share a sequence number, and the newest versions each site holds restore byte for
//! byte. At the end, with every site back and the queues drained: every site verifies, holds
//! the same versions, and every version restores byte for byte from every site.
//!
//! The default suite runs a short campaign (12 kills, under two minutes). `EMBASSY_CRASH_CAMPAIGN=N` runs N kills
//! (`scripts/crash-campaign --kills N`); `EMBASSY_CRASH_SEED=S` (`--seed S`) replays a campaign
//! exactly: every kill's draw comes from the seed printed at the start, and each kill prints its
//! own draw.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use embassy_testkit::agent::{unprivileged, Agent};
use embassy_testkit::proxy::{FaultProxy, FaultRates};
use embassy_testkit::s3;
use embassy_testkit::status_page::show;

/// The binary under test: this build's, or `EMBASSY_CRASH_BIN` (a copy, so that a long campaign
/// runs on while the tree is rebuilt).
fn embassy_bin() -> String {
    std::env::var("EMBASSY_CRASH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_embassy").into())
}
/// Kills of the short campaign in the default suite.
const SHORT: usize = 12;
const FILES: usize = 12;
const FILE_SIZE: usize = 24 << 10;
const COMMAND_SIZE: usize = 40 << 10;
const DATASETS: [&str; 2] = ["tree", "cmd"];

/// A small deterministic generator (xorshift64*): every draw of a campaign comes from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How the agent is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    /// SIGKILL: no chance to do anything.
    Sigkill,
    /// SIGTERM, waited out: in-flight runs get the grace period, then are abandoned.
    Sigterm,
    /// SIGTERM, then SIGKILL this many ms later (within the grace period).
    SigtermThenKill(u64),
}

/// The contents the sources hold in one round (data changes only while the agent is stopped,
/// so every version made in a round holds that round's contents).
#[derive(Debug, Clone)]
struct Round {
    /// Per file of the tree: the generation its bytes are drawn from.
    files: Vec<u64>,
    /// The command's output's generation.
    command: u64,
}

fn file_bytes(i: usize, generation: u64) -> Vec<u8> {
    embassy_testkit::random_bytes(FILE_SIZE, generation * 1000 + i as u64)
}

fn command_bytes(generation: u64) -> Vec<u8> {
    embassy_testkit::random_bytes(COMMAND_SIZE, 7_000_000 + generation)
}

struct Campaign {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    /// Site name → location as the agent and the CLI name it.
    sites: Vec<(String, String)>,
    proxy: FaultProxy,
    /// Folder sites made unwritable now, and whether the S3 site is down.
    down: BTreeSet<String>,
    /// Ledger entry id of each version seen → the round whose contents it holds.
    seen: HashMap<String, usize>,
    rounds: Vec<Round>,
    log: PathBuf,
    /// The user the agent runs as when the tests run as root (so that `chmod` takes).
    agent_user: Option<(u32, u32)>,
    /// Restores compared byte for byte so far.
    restores: usize,
    /// Keyless verifications that found a site behind (writes queued for it), not damaged.
    behind: usize,
}

impl Campaign {
    fn new() -> Campaign {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let server = s3::moto();
        let port: u16 = server
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("moto's port");
        let proxy = FaultProxy::start(port, FaultRates::default());
        let bucket = s3::unique_bucket("crash");
        let site = embassy_sites::S3Site::new(s3::s3_config(&server.endpoint, &bucket, "vault"))
            .expect("S3 site");
        assert!(site.create_bucket(false).expect("create bucket"));
        let sites = vec![
            ("a".to_string(), dir.join("sites/a").display().to_string()),
            ("b".to_string(), dir.join("sites/b").display().to_string()),
            (
                "s3".to_string(),
                format!(
                    "s3://{bucket}/vault?endpoint={}&region=us-east-1",
                    proxy.endpoint
                ),
            ),
        ];
        let mut c = Campaign {
            _tmp: tmp,
            log: dir.join("agent.log"),
            dir,
            sites,
            proxy,
            down: BTreeSet::new(),
            seen: HashMap::new(),
            rounds: Vec::new(),
            agent_user: None,
            restores: 0,
            behind: 0,
        };
        fs::write(c.path("passphrase"), embassy_testkit::cli::PASS).unwrap();
        let mut init = Vec::new();
        for (_, l) in &c.sites {
            init.extend(["--site", l.as_str()]);
        }
        init.extend(["--passphrase-file", "passphrase", "init", "--min-age", "0"]);
        let out = c.embassy(&init);
        assert!(out.status.success(), "init: {}", show(&out));
        // The root key re-sealed with cheap KDF settings: the checks unlock it often.
        embassy_testkit::cli::cheapen(&c.path("vault.key"), &c.path("cheap.key"));
        fs::rename(c.path("cheap.key"), c.path("vault.key")).unwrap();
        let mut config = format!(
            r#"[agent]
state_dir = "state"
min_sites = 1
verify_interval = "never"
shutdown_grace = "2s"
retry_initial = "1s"
retry_max = "2s"
gc_interval = "3s"
gc_grace = "10min"
[keys]
file = "vault.key"
passphrase_file = "passphrase"
[[sites]]
name = "a"
path = "{}"
[[sites]]
name = "b"
path = "{}"
[[sites]]
name = "s3"
url = "s3://{bucket}/vault"
endpoint = "{}"
region = "us-east-1"
"#,
            c.sites[0].1, c.sites[1].1, c.proxy.endpoint
        );
        config.push_str(
            r#"[[datasets]]
name = "tree"
source = { files = ["data/tree"] }
interval = "1s"
rpo = "1h"
retention = { keep_last = 3 }
[[datasets]]
name = "cmd"
source = { command = "cat data/cmd.bin" }
interval = "1s"
rpo = "1h"
retention = { keep_last = 3 }
"#,
        );
        fs::write(c.path("embassy.toml"), config).unwrap();
        c.agent_user = unprivileged(&c.dir);
        c
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn embassy(&self, args: &[&str]) -> Output {
        self.embassy_as("cli", args)
    }

    /// The CLI with its own state folder `cli-state-<machine>`: reading one site, one machine
    /// per site, so each remembers the heads that site served (and catches it rolling back),
    /// not the newer ones of another site it may lag behind.
    fn embassy_as(&self, machine: &str, args: &[&str]) -> Output {
        Command::new(embassy_bin())
            .args(args)
            .current_dir(&self.dir)
            .env_remove("EMBASSY_SITE")
            .env_remove("EMBASSY_PASSPHRASE")
            .env(
                "EMBASSY_STATE_DIR",
                self.path(&format!("cli-state-{machine}")),
            )
            .env("EMBASSY_KEY_FILE", self.path("vault.key"))
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdin(Stdio::null())
            .output()
            .expect("run embassy")
    }

    fn location(&self, site: &str) -> &str {
        &self.sites.iter().find(|(n, _)| n == site).expect("site").1
    }

    /// Writes round `r`'s contents to the sources.
    fn write_sources(&mut self, rng: &mut Rng) {
        let r = self.rounds.len() as u64;
        let mut round = self.rounds.last().cloned().unwrap_or(Round {
            files: vec![0; FILES],
            command: 0,
        });
        for (i, g) in round.files.iter_mut().enumerate() {
            if r == 0 || rng.chance(25) {
                *g = r * 100 + i as u64 + 1;
            }
        }
        round.command = r + 1;
        fs::create_dir_all(self.path("data/tree")).unwrap();
        for (i, g) in round.files.iter().enumerate() {
            let p = self.path(&format!("data/tree/f{i:02}.bin"));
            fs::write(p, file_bytes(i, *g)).unwrap();
        }
        fs::write(self.path("data/cmd.bin"), command_bytes(round.command)).unwrap();
        self.rounds.push(round);
    }

    /// Sites go down or come back; at least one folder site stays writable.
    fn change_sites(&mut self, rng: &mut Rng) -> String {
        let mut what = Vec::new();
        for name in ["a", "b"] {
            if !rng.chance(30) {
                continue;
            }
            let root = PathBuf::from(self.location(name));
            if self.down.contains(name) {
                chmod_dirs(&root, 0o755);
                self.down.remove(name);
                what.push(format!("{name} back"));
            } else if !self.down.contains(if name == "a" { "b" } else { "a" }) {
                chmod_dirs(&root, 0o555);
                self.down.insert(name.to_string());
                what.push(format!("{name} down"));
            }
        }
        if rng.chance(25) {
            if self.down.remove("s3") {
                self.proxy.set_rates(FaultRates::default());
                what.push("s3 back".into());
            } else {
                self.proxy.set_rates(FaultRates {
                    http_503: 1.0,
                    ..FaultRates::default()
                });
                self.down.insert("s3".into());
                what.push("s3 down".into());
            }
        }
        what.join(", ")
    }

    fn all_up(&mut self) {
        for name in ["a", "b"] {
            if self.down.remove(name) {
                chmod_dirs(Path::new(&self.location(name).to_string()), 0o755);
            }
        }
        self.down.remove("s3");
        self.proxy.set_rates(FaultRates::default());
    }

    fn spawn_agent(&self) -> Agent {
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(embassy_bin());
        if let Some((uid, gid)) = self.agent_user {
            command.uid(uid).gid(gid);
        }
        let child = command
            .args(["agent", "--config", "embassy.toml"])
            .current_dir(&self.dir)
            .env_remove("EMBASSY_PASSPHRASE")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start embassy agent");
        Agent {
            child,
            log: self.log.clone(),
        }
    }

    /// The versions of `dataset` a site holds: (number, ledger entry id).
    fn versions(&self, site: &str, dataset: &str) -> Result<Vec<(u64, String)>, String> {
        let out = self.embassy_as(
            site,
            &[
                "--site",
                self.location(site),
                "--passphrase-file",
                "passphrase",
                "--json",
                "versions",
                dataset,
            ],
        );
        let answer = serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null);
        if answer["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&format!("no dataset {dataset} ")))
        {
            return Ok(Vec::new());
        }
        if !out.status.success() {
            return Err(format!("versions {dataset} at {site}: {}", show(&out)));
        }
        Ok(answer["versions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|v| {
                (
                    v["version"].as_u64().unwrap_or(0),
                    v["ledger_entry"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Restores `dataset@number` from `site` and compares it with round `round`'s contents.
    fn check_restore(
        &self,
        site: &str,
        dataset: &str,
        number: u64,
        round: usize,
    ) -> Result<(), String> {
        let target = self.path(&format!("restored-{site}-{dataset}-{number}"));
        let _ = fs::remove_dir_all(&target);
        let _ = fs::remove_file(&target);
        let spec = format!("{dataset}@{number}");
        let out = self.embassy_as(
            site,
            &[
                "--site",
                self.location(site),
                "--passphrase-file",
                "passphrase",
                "restore",
                &spec,
                "--to",
                &target.display().to_string(),
            ],
        );
        let result = if !out.status.success() {
            Err(format!("restore {spec} from {site}: {}", show(&out)))
        } else {
            let want = &self.rounds[round];
            if dataset == "cmd" {
                (fs::read(&target).ok() == Some(command_bytes(want.command)))
                    .then_some(())
                    .ok_or_else(|| format!("{spec} from {site}: not round {round}'s output"))
            } else {
                let mut bad = Vec::new();
                for (i, g) in want.files.iter().enumerate() {
                    let got = fs::read(target.join(format!("f{i:02}.bin"))).ok();
                    if got != Some(file_bytes(i, *g)) {
                        bad.push(format!("f{i:02}.bin"));
                    }
                }
                let count = fs::read_dir(&target).map_or(0, |d| d.count());
                if count != FILES {
                    bad.push(format!("{count} files, not {FILES}"));
                }
                bad.is_empty().then_some(()).ok_or_else(|| {
                    format!("{spec} from {site}: differs from round {round}: {bad:?}")
                })
            }
        };
        let _ = fs::remove_dir_all(&target);
        let _ = fs::remove_file(&target);
        result
    }

    /// Every check after a kill (or at the end, `full`: every version, not only new ones).
    fn check(&mut self, full: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let round = self.rounds.len() - 1;
        let names: Vec<String> = self.sites.iter().map(|(n, _)| n.clone()).collect();
        let mut held: BTreeMap<(String, String), Vec<(u64, String)>> = BTreeMap::new();
        for site in &names {
            // An S3 site that is down cannot be read: checked once it is back.
            if site == "s3" && self.down.contains("s3") {
                continue;
            }
            // With the agent's state folder: its catch-up queues say what a site still lacks
            // (behind, not damaged); its remembered heads are those of every site verified.
            let out = self.embassy(&[
                "--site",
                self.location(site),
                "--state-dir",
                "state",
                "verify",
            ]);
            if !out.status.success() {
                problems.push(format!("keyless verify of {site}: {}", show(&out)));
            }
            if String::from_utf8_lossy(&out.stdout).contains("BEHIND") {
                self.behind += 1;
            }
            if site != "s3" {
                problems.extend(duplicate_sequence_numbers(Path::new(self.location(site))));
            }
            for d in DATASETS {
                match self.versions(site, d) {
                    Ok(v) => {
                        held.insert((site.clone(), d.to_string()), v);
                    }
                    Err(e) => problems.push(e),
                }
            }
        }
        // What the CLI wrote in the agent's state folder goes back to the agent's user.
        if self.agent_user.is_some() {
            unprivileged(&self.path("state"));
        }
        // Versions first seen now hold this round's contents.
        for v in held.values() {
            for (_, entry) in v {
                self.seen.entry(entry.clone()).or_insert(round);
            }
        }
        for ((site, d), versions) in &held {
            let newest = versions.iter().map(|(n, _)| *n).max();
            for (number, entry) in versions {
                if !full && Some(*number) != newest {
                    continue;
                }
                let r = self.seen[entry];
                self.restores += 1;
                if let Err(e) = self.check_restore(site, d, *number, r) {
                    problems.push(e);
                }
            }
        }
        if full {
            for d in DATASETS {
                let at: Vec<(&String, BTreeSet<&String>)> = held
                    .iter()
                    .filter(|((_, ds), _)| ds == d)
                    .map(|((s, _), v)| (s, v.iter().map(|(_, e)| e).collect()))
                    .collect();
                for w in at.windows(2) {
                    if w[0].1 != w[1].1 {
                        problems.push(format!(
                            "{d}: {} and {} hold different versions after the drain",
                            w[0].0, w[1].0
                        ));
                    }
                }
            }
        }
        problems
    }
}

/// Every folder under `root` (and `root`) set to `mode`.
fn chmod_dirs(root: &Path, mode: u32) {
    let _ = fs::set_permissions(root, fs::Permissions::from_mode(mode));
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                chmod_dirs(&e.path(), mode);
            }
        }
    }
}

/// Ledger entries of a folder site that share a sequence number (a fork: never allowed).
fn duplicate_sequence_numbers(site: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let Ok(datasets) = fs::read_dir(site.join("ledger")) else {
        return problems;
    };
    for d in datasets.flatten() {
        let mut seqs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in fs::read_dir(d.path()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((seq, _)) = name.split_once('-') {
                seqs.entry(seq.to_string()).or_default().push(name.clone());
            }
        }
        for (seq, names) in seqs.into_iter().filter(|(_, n)| n.len() > 1) {
            problems.push(format!(
                "{}: entries {names:?} share sequence number {seq}",
                d.path().display()
            ));
        }
    }
    problems
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// Runs a campaign of `kills` kills from `seed`; panics naming the seed and the kill at the
/// first inconsistency.
fn campaign(seed: u64, kills: usize) {
    eprintln!(
        "crash campaign: seed {seed}, {kills} kills (replay: EMBASSY_CRASH_SEED={seed} \
         EMBASSY_CRASH_CAMPAIGN={kills}, or scripts/crash-campaign --seed {seed} --kills {kills})"
    );
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut c = Campaign::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for k in 0..kills {
        let sites = c.change_sites(&mut rng);
        c.write_sources(&mut rng);
        let after_ms = 300 + rng.below(3700);
        let kill = match rng.below(3) {
            0 => Stop::Sigkill,
            1 => Stop::Sigterm,
            _ => Stop::SigtermThenKill(rng.below(2000)),
        };
        eprintln!(
            "kill {k} (seed {seed}): sites [{sites}], {kill:?} after {after_ms} ms, {:.0?} in",
            started.elapsed()
        );
        let mut agent = c.spawn_agent();
        std::thread::sleep(Duration::from_millis(after_ms));
        // It must be running when it is killed: an agent that stopped on its own (a refused
        // configuration, a crash) is a failure, not a kill.
        if let Ok(Some(status)) = agent.child.try_wait() {
            panic!(
                "kill {k} (seed {seed}): the agent exited on its own ({status}) before the kill; \
                 log:\n{}",
                tail(&c.log, 40)
            );
        }
        match kill {
            Stop::Sigkill => {
                agent.signal(libc::SIGKILL);
                *counts.entry("SIGKILL").or_default() += 1;
            }
            Stop::Sigterm => {
                agent.signal(libc::SIGTERM);
                *counts.entry("SIGTERM").or_default() += 1;
            }
            Stop::SigtermThenKill(ms) => {
                agent.signal(libc::SIGTERM);
                std::thread::sleep(Duration::from_millis(ms));
                agent.signal(libc::SIGKILL);
                *counts.entry("SIGTERM+SIGKILL").or_default() += 1;
            }
        }
        let limit = Instant::now() + Duration::from_secs(60);
        while agent.child.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < limit,
                "kill {k} (seed {seed}): the agent did not stop within 60 s of {kill:?}; log:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(agent);
        let problems = c.check(false);
        assert!(
            problems.is_empty(),
            "kill {k} of campaign seed {seed} ({kill:?} after {after_ms} ms, sites [{sites}]):\n{}\n\
             agent log (tail):\n{}",
            problems.join("\n"),
            tail(&c.log, 80)
        );
    }
    // Every site back, the queues drained: every site complete on its own.
    c.all_up();
    let mut args: Vec<String> = Vec::new();
    for (_, l) in &c.sites {
        args.extend(["--site".into(), l.clone()]);
    }
    args.extend([
        "--state-dir".into(),
        "state".into(),
        "sync".into(),
        "--pending".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.embassy(&args);
    assert!(
        out.status.success(),
        "seed {seed}: the final drain: {}",
        show(&out)
    );
    let problems = c.check(true);
    assert!(
        problems.is_empty(),
        "campaign seed {seed}, after {kills} kills and the final drain:\n{}",
        problems.join("\n")
    );
    // Not a vacuous pass: versions were made and restored.
    assert!(
        c.seen.len() >= 2 && c.restores >= 2,
        "seed {seed}: only {} versions seen and {} restores compared in the campaign; log:\n{}",
        c.seen.len(),
        c.restores,
        tail(&c.log, 80)
    );
    eprintln!(
        "crash campaign seed {seed}: {kills} kills ({counts:?}) in {:.0?}, {} versions seen, \
         {} restores compared byte for byte, {} verifications of a site behind its queue, no \
         inconsistency",
        started.elapsed(),
        c.seen.len(),
        c.restores,
        c.behind
    );
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The short campaign of the default suite (or the long one with `EMBASSY_CRASH_CAMPAIGN=N`).
#[test]
fn the_agent_killed_anywhere_leaves_every_site_consistent() {
    let seed = env_u64("EMBASSY_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let kills = env_u64("EMBASSY_CRASH_CAMPAIGN").map_or(SHORT, |n| n as usize);
    campaign(seed, kills);
}
