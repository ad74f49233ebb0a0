//! Issue 17, "more locations": home and two embassy nodes, the vault at three sites (two folders
//! and an S3 bucket on moto), real PostgreSQL 15, the real `embassy` program and two real agents.
//! Home's commits wait for its streamer (synchronous replication to `embassy pg stream`), so a
//! commit is acknowledged only once its WAL is durable at every site; "no acknowledged commit
//! lost" is checked row by row.
//!
//! Home streams under load; both embassies keep a hot standby (`[[standbys]]`). Home is lost
//! under load; embassy A takes over with 2 of 3 officials' approvals bound to its key, promotes
//! and streams timeline 2 into the three sites, its commits acknowledged once durable; embassy B's
//! node follows timeline 2. Home comes back with its old credential: what it writes is fenced.
//! Then the documented way back: A's agent stops, then A's server (a fast shutdown waits for its
//! streamer), home
//! restores a standby from the vault, is approved and promoted (timeline 3) and streams again; A's
//! data directory returns to standby under its agent and follows timeline 3, and so does B.
//!
//! The whole run takes a few minutes: it runs with `EMBASSY_THREE_SITES_FULL=1` (README, "On a
//! fresh machine").
//! Without it, the default suite runs the takeover part (home lost, A promoted and streaming, B
//! following timeline 2, each site verifying on its own).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use embassy_testkit::agent::{self, Agent};
use embassy_testkit::pg::cli::{arg, PgCli};
use embassy_testkit::pg::restored::{node_psql, Restored};
use embassy_testkit::pg::{PgOptions, PgServer, REPL_PASSWORD};
use embassy_testkit::s3;
use embassy_testkit::status_page::status_json;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
/// The streamer's application name: PostgreSQL's synchronous standby.
const SYNC_NAME: &str = "embassy_stream";
const DS: &str = "registry";

/// Runs `sql` on one server (home's, a node's standby, a restored one).
type Psql<'a> = &'a (dyn Fn(&str) -> Result<String, String> + Sync);

/// Makes the server's commits wait for the streamer named [`SYNC_NAME`].
fn commits_wait_for_the_streamer(psql: Psql) {
    psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{SYNC_NAME}'"
    ))
    .and_then(|_| psql("SELECT pg_reload_conf()"))
    .expect("set synchronous_standby_names");
}

/// Commits rows `from..` tagged `site` into `acked`, one per commit, until `stop` or the first
/// failure; returns the last acknowledged row (`from - 1` when none was).
fn write_until(psql: Psql, site: &str, from: u32, stop: &AtomicBool) -> u32 {
    let mut n = from;
    while !stop.load(Ordering::SeqCst) {
        if psql(&format!("INSERT INTO acked VALUES ({n}, '{site}')")).is_err() {
            break;
        }
        n += 1;
    }
    n - 1
}

/// How many of rows `from..=to` tagged `site` the server holds.
fn holds(psql: Psql, site: &str, from: u32, to: u32) -> u32 {
    psql(&format!(
        "SELECT count(*) FROM acked WHERE site = '{site}' AND n BETWEEN {from} AND {to}"
    ))
    .ok()
    .and_then(|c| c.parse().ok())
    .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name")
        .trim()
        .to_string()
}

/// A replication connection string to the server listening on `port`, as the streamer's
/// synchronous standby.
fn conninfo(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user=embassy password={REPL_PASSWORD} dbname=postgres \
         application_name={SYNC_NAME}"
    )
}

/// One embassy node: an agent with one `[[standbys]]` of the registry.
struct Node {
    name: &'static str,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    http: u16,
}

impl Node {
    fn new(env: &PgCli, name: &'static str, s3_bucket: &str) -> Node {
        let dir = env.postgres_folder(&format!("node-{name}"));
        let node = Node {
            name,
            data: dir.join("registry"),
            dir,
            port: embassy_testkit::free_port(),
            http: embassy_testkit::free_port(),
        };
        let moto = s3::moto();
        std::fs::write(
            node.dir.join("embassy.toml"),
            format!(
                "[agent]\nstate_dir = \"agent-state\"\nverify_interval = \"never\"\n\
                 [status]\nlisten = \"127.0.0.1:{http}\"\n\
                 [keys]\nfile = \"{key}\"\npassphrase_file = \"{pass}\"\n\
                 [[sites]]\nname = \"home-folder\"\npath = \"{site_a}\"\n\
                 [[sites]]\nname = \"embassy-folder\"\npath = \"{site_b}\"\n\
                 [[sites]]\nname = \"s3\"\nurl = \"s3://{s3_bucket}/vault\"\n\
                 endpoint = \"{endpoint}\"\nregion = \"us-east-1\"\npath_style = true\n\
                 [[standbys]]\ndataset = \"{DS}\"\ndata_dir = \"{data}\"\nport = {port}\n\
                 hot_standby = true\nlag_alarm = \"30s\"\n",
                http = node.http,
                key = arg(&env.path("vault.key")),
                pass = arg(&env.path("pass")),
                site_a = arg(&env.site()),
                site_b = env.more_sites[0],
                endpoint = moto.endpoint,
                data = arg(&node.data),
                port = node.port,
            ),
        )
        .expect("write embassy.toml");
        node
    }

    fn start(&self, env: &PgCli) -> Agent {
        Agent::start_with(EXE, &self.dir, &env.vars)
    }

    fn psql(&self, sql: &str) -> Result<String, String> {
        node_psql(&self.data, self.port, sql)
    }

    fn status(&self) -> Option<serde_json::Value> {
        status_json(self.http)?["standbys"]
            .as_array()?
            .first()
            .cloned()
    }

    /// Waits until the node's standby follows the vault.
    fn following(&self, agent: &Agent, limit: Duration) -> serde_json::Value {
        agent::wait_until(
            limit,
            &format!("node {} following", self.name),
            agent,
            || {
                self.status()
                    .filter(|s| s["phase"] == "following" && s["lag_bytes"].is_u64())
            },
        )
    }

    /// Waits until the node's standby holds rows `from..=to` of `site`; how long that took.
    fn reads(&self, agent: &Agent, site: &str, from: u32, to: u32, limit: Duration) -> Duration {
        let start = Instant::now();
        let want = to + 1 - from;
        agent::wait_until(
            limit,
            &format!("node {} to read {site}'s rows {from}..={to}", self.name),
            agent,
            || {
                let n = holds(&|sql| self.psql(sql), site, from, to);
                if n == want {
                    return Some(());
                }
                if start.elapsed() > limit - Duration::from_millis(300) {
                    eprintln!(
                        "node {} holds {n} of {want}; its status: {:?}\nits server log:\n{}",
                        self.name,
                        self.status(),
                        std::fs::read_to_string(
                            embassy_agent::node::run_folder(&self.data).join("server.log")
                        )
                        .unwrap_or_default()
                    );
                }
                None
            },
        );
        start.elapsed()
    }
}

/// The run: `full` goes on past the takeover (home back and fenced, the way back).
fn three_sites(full: bool) {
    let began = Instant::now();
    // The sites: a folder at home, a folder at the embassies, an S3 bucket.
    let moto = s3::moto();
    let bucket = s3::unique_bucket("three-sites");
    assert!(
        embassy_sites::S3Site::new(s3::s3_config(&moto.endpoint, &bucket, "vault"))
            .expect("an S3 site")
            .create_bucket(false)
            .expect("create the bucket"),
        "the bucket existed"
    );
    let mut env = PgCli::uninitialised(EXE, "embassy-three-");
    env.more_sites = vec![
        arg(&env.path("site-embassy")).to_string(),
        format!("s3://{bucket}/vault?endpoint={}", moto.endpoint),
    ];
    env.vars = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // Three officials; a takeover needs two of them.
    let officials: Vec<(PathBuf, String)> = (1..=3)
        .map(|i| {
            let key = env.path(&format!("official-{i}.key"));
            let out = std::process::Command::new(EXE)
                .arg("--passphrase-file")
                .arg(env.path("pass"))
                .args(["approver-key", "--out", arg(&key)])
                .output()
                .expect("embassy runs");
            assert!(out.status.success(), "{out:?}");
            let public = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("public key: ").map(|k| k.trim().to_string()))
                .expect("a public key");
            (key, public)
        })
        .collect();
    let mut init = vec!["--promotion-approvals", "2"];
    for (_, public) in &officials {
        init.extend(["--approver", public.as_str()]);
    }
    env.init(&init);
    let issue = |label: &str| env.issue_sealing(DS, label);
    let host = hostname();
    let approve = |official: usize, promoter: &str| {
        let out = env
            .cmd_as_caller(&[
                "approve",
                "--approver-key",
                arg(&officials[official].0),
                "--promote",
                &host,
                "--promoter",
                promoter,
                DS,
            ])
            .output()
            .expect("embassy runs");
        assert!(out.status.success(), "approve: {out:?}");
    };
    let promote = |key: &Path, dir: &Path| -> serde_json::Value {
        let out = env
            .cmd_with_key(
                key,
                &[
                    "--json",
                    "promote",
                    DS,
                    "--data",
                    arg(dir),
                    "--timeout",
                    "60",
                ],
            )
            .output()
            .expect("embassy runs");
        assert!(out.status.success(), "promote: {out:?}");
        serde_json::from_slice(&out.stdout).expect("promote's JSON")
    };
    let (home_key, _) = issue("home");
    let (a_key, a_public) = issue("embassy-a");

    // Home streams into the three sites; a base backup; the table of acknowledged commits.
    let home = PgServer::start(PgOptions::default());
    let home_psql = |sql: &str| home.try_psql(sql);
    commits_wait_for_the_streamer(&home_psql);
    let mut home_streamer = env.stream_from(&home_key, &conninfo(home.port()), DS, "durable.log");
    embassy_testkit::wait_until("the first durable WAL", Duration::from_secs(60), || {
        env.durable() > 0
    });
    home.psql("CREATE TABLE acked (n int PRIMARY KEY, site text NOT NULL)");
    home.pgbench(&["-i", "-s", "2", "-q"]);
    env.run(&[
        "pg",
        "base-backup",
        DS,
        "--conninfo",
        &home.conninfo(),
        "--wal-streamed",
    ]);

    // Two embassy nodes, each with a hot standby of the registry.
    let a = Node::new(&env, "a", &bucket);
    let b = Node::new(&env, "b", &bucket);
    let agent_a = a.start(&env);
    let agent_b = b.start(&env);
    a.following(&agent_a, Duration::from_secs(180));
    b.following(&agent_b, Duration::from_secs(180));
    println!(
        "both nodes following {:.1} s after the start",
        began.elapsed().as_secs_f64()
    );

    // Under load (pgbench and a writer of acknowledged rows), home is lost.
    let mut bench = home
        .pgbench_command(&["-n", "-c", "2", "-T", "600", "-R", "100"])
        .spawn()
        .expect("pgbench runs");
    let stop = AtomicBool::new(false);
    let mut lag = Vec::new();
    let home_last = std::thread::scope(|s| {
        let writer = s.spawn(|| write_until(&home_psql, "home", 1, &stop));
        for _ in 0..6 {
            std::thread::sleep(Duration::from_secs(1));
            let st = b.status().unwrap_or_default();
            lag.push((st["lag_seconds"].as_f64(), st["lag_bytes"].as_u64()));
        }
        home.kill9();
        home_streamer.0.kill().expect("kill home's streamer");
        writer.join().expect("the writer")
    });
    let lost_at = Instant::now();
    drop(home_streamer);
    let _ = bench.kill();
    let _ = bench.wait();
    println!("node b's lag (seconds, bytes) under load at home, one a second: {lag:?}");
    assert!(
        home_last >= 10,
        "only {home_last} commits acknowledged at home"
    );

    // The takeover at A: two of three officials approve A's key; A promotes.
    approve(0, &a_public);
    approve(2, &a_public);
    let promoting = Instant::now();
    let done = promote(&a_key, &a.data);
    let promote_took = promoting.elapsed();
    assert_eq!(done["authoritative"], true, "{done}");
    assert_eq!(done["timeline"], 2, "{done}");
    assert_eq!(done["approvals"], 2, "{done}");
    assert!(done["data_lost_to"].is_null(), "{done}");
    let a_psql = |sql: &str| a.psql(sql);
    assert_eq!(holds(&a_psql, "home", 1, home_last), home_last);

    // A protects the live registry: it streams timeline 2 into every site, its commits
    // acknowledged once durable there.
    commits_wait_for_the_streamer(&a_psql);
    let a_streamer = env.stream_from(&a_key, &conninfo(a.port), DS, "a-durable.log");
    a_psql(&format!("INSERT INTO acked VALUES ({}, 'a')", 100_001)).expect("A's first commit");
    let live_after = lost_at.elapsed();
    let acked_at = Instant::now();
    // B's node sees the promotion and follows timeline 2.
    b.reads(&agent_b, "a", 100_001, 100_001, Duration::from_secs(150));
    let b_follow = acked_at.elapsed();
    println!(
        "promote took {:.2} s; A acknowledged its first commit {:.2} s after home was lost; \
         node b read it {:.2} s after it was acknowledged",
        promote_took.as_secs_f64(),
        live_after.as_secs_f64(),
        b_follow.as_secs_f64()
    );
    let stop = AtomicBool::new(false);
    let mut lag = Vec::new();
    let a_last = std::thread::scope(|s| {
        let writer = s.spawn(|| write_until(&a_psql, "a", 100_002, &stop));
        for _ in 0..5 {
            std::thread::sleep(Duration::from_secs(1));
            let st = b.status().unwrap_or_default();
            lag.push((st["lag_seconds"].as_f64(), st["lag_bytes"].as_u64()));
        }
        stop.store(true, Ordering::SeqCst);
        writer.join().expect("the writer")
    });
    println!("node b's lag behind A (seconds, bytes), one a second: {lag:?}");
    assert!(a_last > 100_010, "A acknowledged only up to {a_last}");
    b.reads(&agent_b, "a", 100_001, a_last, Duration::from_secs(60));
    let b_status = b.status().expect("node b's status");
    assert_eq!(b_status["phase"], "following", "{b_status}");
    assert_eq!(b_status["rebuilds"], 0, "{b_status}");
    // A's node knows its standby is the live registry now: no alarm, never rebuilt.
    let a_status = a.status().expect("node a's status");
    assert_eq!(a_status["phase"], "promoted", "{a_status}");
    assert_eq!(a_status["alarm"], false, "{a_status}");
    assert_eq!(a_status["rebuilds"], 0, "{a_status}");

    if full {
        // Home comes back with its old credential: its server restarts on timeline 1 and its
        // streamer runs again; a base backup it signs is fenced by the takeover.
        home.start_server();
        let home_streamer = env.stream_from(&home_key, &conninfo(home.port()), DS, "home-back.log");
        let wrote = home.try_psql(
            "SET synchronous_commit = local; INSERT INTO acked VALUES (900001, 'home-back')",
        );
        println!("home back: its write: {wrote:?}");
        let backup = env
            .cmd_with_key(
                &home_key,
                &["pg", "base-backup", DS, "--conninfo", &home.conninfo()],
            )
            .output()
            .expect("embassy runs");
        std::thread::sleep(Duration::from_secs(3));
        drop(home_streamer);
        home.stop();
        let verify = env.output(&["verify"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        println!(
            "home back: its base backup: {backup:?}\nits streamer: {}\nverify says:\n{said}",
            std::fs::read_to_string(env.path("home-back.log.err")).unwrap_or_default()
        );
        // The fenced credential's writes are refused before they reach a site (a client that
        // writes all the same is ignored by every verifier: crates/cli/tests/promote_fence.rs).
        assert!(!backup.status.success(), "{backup:?}");
        assert!(
            String::from_utf8_lossy(&backup.stderr).contains("may not add versions"),
            "{backup:?}"
        );
        assert!(verify.status.success(), "{said}");

        // The way back. 1. A's agent stops (it leaves its server running, so that it does not
        // start it again), then A's server stops with a fast shutdown, which waits until A's
        // streamer has flushed all of A's WAL; then the streamer stops.
        let (status, log) = agent_a.stop(Duration::from_secs(60));
        assert!(status.success(), "{log}");
        let stopped = {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(embassy_testkit::pg::pg_bindir().join("pg_ctl"))
                .uid(env.ids.0)
                .gid(env.ids.1)
                .arg("-D")
                .arg(&a.data)
                .args(["-m", "fast", "-w", "-t", "60", "stop"])
                .output()
                .expect("pg_ctl runs")
        };
        assert!(stopped.status.success(), "{stopped:?}");
        drop(a_streamer);
        // 2. Home restores a standby from the vault; it follows timeline 2 to its end.
        let home_dir = env.postgres_folder("restores").join("home");
        env.run(&["standby", DS, "--to", arg(&home_dir)]);
        let home_again = Restored::start(home_dir.clone());
        let home_psql = |sql: &str| home_again.try_psql(sql);
        embassy_testkit::wait_until(
            "home's standby to replay A's commits",
            Duration::from_secs(120),
            || holds(&home_psql, "a", 100_001, a_last) == a_last - 100_000,
        );
        // 3. A new credential for home, approved by two officials, promoted: timeline 3.
        let (home_again_key, home_again_public) = issue("home-again");
        approve(1, &home_again_public);
        approve(2, &home_again_public);
        let back = promote(&home_again_key, &home_dir);
        assert_eq!(back["timeline"], 3, "{back}");
        assert_eq!(back["approvals"], 2, "{back}");
        assert_eq!(back["authoritative"], true, "{back}");
        assert!(back["data_lost_to"].is_null(), "{back}");
        // 4. Home streams again, its commits acknowledged once durable.
        commits_wait_for_the_streamer(&home_psql);
        let port: u16 = std::fs::read_to_string(home_dir.join("postmaster.pid"))
            .ok()
            .and_then(|p| p.lines().nth(3).and_then(|l| l.trim().parse().ok()))
            .expect("home's port");
        let _home_streamer =
            env.stream_from(&home_again_key, &conninfo(port), DS, "home-again.log");
        let mut last = 200_000;
        for _ in 0..30 {
            last += 1;
            home_psql(&format!("INSERT INTO acked VALUES ({last}, 'home-again')"))
                .expect("home's commit");
        }
        // 5. A returns to standby: standby.signal in its data directory, its agent started
        // again; it follows timeline 3. B's node follows timeline 3 too.
        std::fs::write(a.data.join("standby.signal"), "").expect("standby.signal");
        std::os::unix::fs::chown(
            a.data.join("standby.signal"),
            Some(env.ids.0),
            Some(env.ids.1),
        )
        .expect("chown standby.signal");
        let returned = Instant::now();
        let agent_a = a.start(&env);
        a.reads(
            &agent_a,
            "home-again",
            200_001,
            last,
            Duration::from_secs(120),
        );
        println!(
            "A back to standby and reading home's timeline 3 {:.1} s after its agent started",
            returned.elapsed().as_secs_f64()
        );
        let b_took = b.reads(
            &agent_b,
            "home-again",
            200_001,
            last,
            Duration::from_secs(120),
        );
        println!(
            "node b read home's timeline 3 commits {:.1} s after A's node read them",
            b_took.as_secs_f64()
        );
        assert_eq!(a.psql("SELECT pg_is_in_recovery()").as_deref(), Ok("t"));
        for node in [&a, &b] {
            let psql = |sql: &str| node.psql(sql);
            assert_eq!(
                holds(&psql, "home", 1, home_last),
                home_last,
                "{}",
                node.name
            );
            assert_eq!(holds(&psql, "a", 100_001, a_last), a_last - 100_000);
            assert_eq!(holds(&psql, "home-back", 900_001, 900_001), 0);
        }

        // No acknowledged commit lost: home's before the takeover, A's, home's after.
        assert_eq!(holds(&home_psql, "home", 1, home_last), home_last);
        assert_eq!(holds(&home_psql, "a", 100_001, a_last), a_last - 100_000);
        assert_eq!(
            holds(&home_psql, "home-again", 200_001, last),
            last - 200_000
        );
        let history = env.run(&["history", DS]);
        let promoted: Vec<&str> = history.lines().filter(|l| l.contains("promoted")).collect();
        assert_eq!(promoted.len(), 2, "{history}");
        assert!(
            promoted[0].contains("timeline 2") && promoted[0].contains(arg(&a.data)),
            "{history}"
        );
        assert!(
            promoted[1].contains("timeline 3") && promoted[1].contains(arg(&home_dir)),
            "{history}"
        );
        let (status, log) = agent_a.stop(Duration::from_secs(60));
        assert!(status.success(), "{log}");
    } else {
        drop(a_streamer);
        let (status, log) = agent_a.stop(Duration::from_secs(60));
        assert!(status.success(), "{log}");
    }
    let (status, log) = agent_b.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");

    // Every step in the ledger, the same at each site, each site verifying without keys.
    let mut ledgers = Vec::new();
    for site in env.sites() {
        let out = run_at(&env, &site, &["--json", "history", DS], true);
        let entries: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let entries = entries["entries"].as_array().expect("entries").clone();
        let mut seqs: Vec<u64> = entries.iter().filter_map(|e| e["seq"].as_u64()).collect();
        let n = seqs.len();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(
            seqs.len(),
            n,
            "two entries share a sequence number at {site}"
        );
        let promoted: Vec<&serde_json::Value> = entries
            .iter()
            .filter(|e| e["event"]["event"] == "promoted" && e["refused"] != true)
            .collect();
        assert_eq!(promoted.len(), if full { 2 } else { 1 }, "{entries:?}");
        for p in &promoted {
            let approvals = p["event"]["approvals"].as_array().map_or(0, Vec::len);
            assert_eq!(approvals, 2, "{p}");
        }
        ledgers.push(entries);
        let verify = run_at(&env, &site, &["verify"], false);
        assert!(
            verify.status.success(),
            "verify at {site} alone: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    assert!(
        ledgers.windows(2).all(|w| w[0] == w[1]),
        "the sites' ledgers differ"
    );
    for log in ["durable.log.err", "a-durable.log.err"] {
        let said = std::fs::read_to_string(env.path(log)).unwrap_or_default();
        println!("{log}:\n{said}");
        // A's fast shutdown ends its streamer's stream cleanly: no protocol error.
        assert!(!said.contains("unexpected message"), "{log}: {said}");
    }
    println!(
        "three-site run ({}) took {:.1} s",
        if full { "full" } else { "takeover" },
        began.elapsed().as_secs_f64()
    );
}

/// `embassy` at one site alone (as root, with the S3 credentials), with the root key when
/// `key`, else without any key.
fn run_at(env: &PgCli, site: &str, args: &[&str], key: bool) -> std::process::Output {
    let state = env.path(&format!("state-{}", site.len()));
    let mut c = std::process::Command::new(EXE);
    c.arg("--site")
        .arg(site)
        .arg("--state-dir")
        .arg(&state)
        .arg("--quiet");
    if key {
        c.arg("--key-file")
            .arg(env.path("vault.key"))
            .arg("--passphrase-file")
            .arg(env.path("pass"));
    }
    let out = c
        .args(args)
        .env_remove("EMBASSY_SITE")
        .env_remove("EMBASSY_KEY_FILE")
        .env_remove("EMBASSY_PASSPHRASE")
        .envs(env.vars.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("embassy runs");
    assert!(
        !key || out.status.success(),
        "embassy {args:?} at {site}: {out:?}"
    );
    out
}

/// The takeover's default-suite part: home lost under load, A promoted with two of three
/// approvals and streaming timeline 2 to the three sites, B following it.
#[test]
fn an_embassy_takes_over_from_home_and_the_other_embassy_follows_it() {
    if std::env::var_os("EMBASSY_THREE_SITES_FULL").is_some() {
        return three_sites(true);
    }
    three_sites(false);
}
