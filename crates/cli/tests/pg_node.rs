//! The embassy node (issue 17), with real PostgreSQL 15 and the real agent: home streams into a
//! local-folder site under pgbench load; an agent configured with `[[standbys]]` makes a hot
//! standby from the newest base backup, runs it as `postgres` and keeps it following the vault.
//! A row committed at home is readable at the standby within seconds; its lag (seconds and
//! bytes) is in `/status.json` and `/metrics`; it refuses writes; after `kill -9` of its
//! postmaster the agent starts it again and it catches up; a standby whose data directory is
//! broken is rebuilt from the newest base backup, and the agent says so.
//!
//! The second test: an agent killed with SIGKILL leaves its standby's server running and the
//! next agent adopts it (the same postmaster, no rebuild); a stopping agent (SIGTERM) leaves it
//! running too; SIGHUP removes, adds and changes standbys and keeps them on a refused reload;
//! the node runs with a reader credential of its dataset alone, and a credential that cannot
//! read the dataset is named by `config check` and by the agent.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embassy_testkit::agent::{wait_until, Agent};
use embassy_testkit::pg::cli::{arg, PgCli};
use embassy_testkit::pg::restored::node_psql;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::status_page::{http_get, status_json};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");

/// The pid `postmaster.pid` of `data_dir` names.
fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// True while process `pid` runs (not ended, not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Stops the standbys' servers on these data directories when dropped (a stopping agent
/// leaves them running), also when a test fails.
struct Servers(Vec<PathBuf>);

impl Drop for Servers {
    fn drop(&mut self) {
        for dir in &self.0 {
            if let Some(pid) = postmaster_pid(dir).filter(|p| alive(*p)) {
                // SAFETY: a signal (immediate shutdown) to the test's own standby's postmaster.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
                let until = Instant::now() + Duration::from_secs(15);
                while alive(pid) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

fn standby_status(port: u16) -> Option<serde_json::Value> {
    let report = status_json(port)?;
    report["standbys"].as_array()?.first().cloned()
}

/// Commits a row at home and returns how long until the standby reads it.
fn seen_at_standby(pg: &PgServer, data_dir: &Path, port: u16, id: u32, agent: &Agent) -> Duration {
    pg.psql(&format!("INSERT INTO marks VALUES ({id}, 'mark {id}')"));
    let committed = Instant::now();
    wait_until(
        Duration::from_secs(30),
        "the row at the standby",
        agent,
        || {
            let got = node_psql(
                data_dir,
                port,
                &format!("SELECT note FROM marks WHERE id = {id}"),
            );
            (got.as_deref() == Ok(format!("mark {id}").as_str())).then_some(())
        },
    );
    committed.elapsed()
}

#[test]
fn an_embassy_node_keeps_a_hot_standby_within_seconds_of_home_and_rebuilds_it() {
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE marks (id int PRIMARY KEY, note text NOT NULL)");
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let env = PgCli::new(EXE, "embassy-pgnode-");
    let _streamer = env.stream(&pg, "registry");
    env.base_backup_streamed(&pg.conninfo(), "registry");
    // Load at home all along.
    let mut bench = pg
        .pgbench_command(&["-n", "-c", "2", "-T", "600", "-R", "200"])
        .spawn()
        .expect("pgbench runs");

    let node = env.postgres_folder("node");
    let data_dir = node.join("registry");
    let _servers = Servers(vec![data_dir.clone()]);
    let http = embassy_testkit::free_port();
    let pg_port = embassy_testkit::free_port();
    write_alarmed_config(&env, http, &data_dir, pg_port);
    let started = Instant::now();
    let agent = Agent::start_in(EXE, env.dir.path());
    let following = wait_until(
        Duration::from_secs(120),
        "the standby following",
        &agent,
        || standby_status(http).filter(|s| s["phase"] == "following" && s["lag_bytes"].is_u64()),
    );
    println!(
        "standby made and following after {:.1} s: {following}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(following["alarm"], false, "{following}");
    let meta = std::fs::metadata(&data_dir).expect("the standby's data directory");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        env.ids.0,
        "the data directory is the owner's"
    );

    // A row committed at home is read at the embassy within seconds, under load.
    let took = seen_at_standby(&pg, &data_dir, pg_port, 1, &agent);
    println!(
        "row 1 readable at the standby {:.2} s after its commit",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // Lag figures in /status.json and /metrics.
    let mut figures = Vec::new();
    for _ in 0..5 {
        let s = standby_status(http).expect("status");
        figures.push((s["lag_seconds"].as_f64(), s["lag_bytes"].as_u64()));
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("lag (seconds, bytes) under pgbench load, one a second: {figures:?}");
    assert!(
        figures.iter().all(|(s, b)| s.is_some() && b.is_some()),
        "{figures:?}"
    );
    let metrics = http_get(http, "/metrics").expect("/metrics");
    for family in [
        "embassy_standby_lag_seconds{dataset=\"registry\"}",
        "embassy_standby_lag_bytes{dataset=\"registry\"}",
        "embassy_standby_following{dataset=\"registry\"} 1",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }
    let dashboard = http_get(http, "/").expect("dashboard");
    assert!(dashboard.contains("id=\"standby-registry\""), "{dashboard}");

    // Read-only.
    let refused = node_psql(&data_dir, pg_port, "INSERT INTO marks VALUES (99, 'no')")
        .expect_err("a standby accepts no write");
    assert!(refused.contains("read-only"), "{refused}");

    // kill -9 of its postmaster: started again, catches up.
    let pid: i32 = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .expect("postmaster.pid")
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid");
    // SAFETY: a signal to the standby's postmaster, a process of this test's agent.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let killed = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "the standby started again",
        &agent,
        || {
            standby_status(http)
                .filter(|s| s["restarts"].as_u64() >= Some(1) && s["phase"] == "following")
        },
    );
    let took = seen_at_standby(&pg, &data_dir, pg_port, 2, &agent);
    println!(
        "after kill -9: following again and row 2 readable {:.2} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(agent.log().contains("server stopped"), "{}", agent.log());

    // A broken data directory: rebuilt from the newest base backup, said so.
    std::fs::remove_file(data_dir.join("PG_VERSION")).expect("remove PG_VERSION");
    let broken = Instant::now();
    let rebuilt = wait_until(
        Duration::from_secs(120),
        "the standby rebuilt",
        &agent,
        || {
            standby_status(http)
                .filter(|s| s["rebuilds"].as_u64() >= Some(1) && s["phase"] == "following")
        },
    );
    println!(
        "rebuilt and following {:.1} s after its data directory broke: {rebuilt}",
        broken.elapsed().as_secs_f64()
    );
    assert!(
        rebuilt["last_rebuild_reason"].as_str().is_some(),
        "{rebuilt}"
    );
    assert!(
        agent
            .log()
            .contains("rebuilding it from the newest base backup"),
        "{}",
        agent.log()
    );
    let took = seen_at_standby(&pg, &data_dir, pg_port, 3, &agent);
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // A standby that cannot be rebuilt is down: it says why and an alarm is raised until it
    // follows again (here its fetch folder's place is taken by a file).
    let mut fetch = data_dir.as_os_str().to_os_string();
    fetch.push(".wal-fetch");
    std::fs::remove_dir_all(&fetch).expect("remove the fetch folder");
    std::fs::write(&fetch, b"in the way\n").expect("a file in its place");
    std::fs::remove_file(data_dir.join("PG_VERSION")).expect("remove PG_VERSION");
    let alarms = env.path("alarms.txt");
    let down = wait_until(
        Duration::from_secs(60),
        "the standby's alarm",
        &agent,
        || {
            let raised = std::fs::read_to_string(&alarms)
                .unwrap_or_default()
                .contains("raised registry standby");
            standby_status(http).filter(|s| raised && s["phase"] == "down" && s["alarm"] == true)
        },
    );
    println!("down while it cannot be rebuilt: {down}");
    let clears = |alarms: &Path| {
        std::fs::read_to_string(alarms)
            .unwrap_or_default()
            .matches("cleared registry standby")
            .count()
    };
    let cleared_before = clears(&alarms);
    assert!(
        down["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("cannot make it"),
        "{down}"
    );
    let report = wait_until(Duration::from_secs(30), "the alarm listed", &agent, || {
        status_json(http).filter(|r| {
            r["alarms"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|a| a["site"] == "standby" && a["dataset"] == "registry")
            })
        })
    });
    assert_eq!(report["ok"], false, "{report}");
    assert!(report["standbys"][0]["lag_seconds"].is_null(), "{report}");
    let metrics = http_get(http, "/metrics").expect("/metrics");
    assert!(
        metrics.contains("embassy_standby_alarm{dataset=\"registry\"} 1"),
        "{metrics}"
    );
    std::fs::remove_file(&fetch).expect("remove the file in the way");
    wait_until(
        Duration::from_secs(180),
        "the alarm cleared",
        &agent,
        || {
            let cleared = clears(&alarms) > cleared_before;
            standby_status(http).filter(|s| {
                cleared && s["rebuilds"].as_u64() >= Some(2) && s["phase"] == "following"
            })
        },
    );
    let took = seen_at_standby(&pg, &data_dir, pg_port, 4, &agent);
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // The agent leaves its standby running when it stops (the next agent adopts it: the second
    // test); `_servers` stops it.
    let pid = postmaster_pid(&data_dir).expect("a running standby");
    let (status, log) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert!(alive(pid), "{log}");
    let _ = bench.kill();
    let _ = bench.wait();
}

/// `embassy.toml` of the node: its key file and its standbys.
fn write_config(env: &PgCli, http: u16, key: &str, standbys: &str) {
    std::fs::write(
        env.path("embassy.toml"),
        format!(
            "[agent]\nstate_dir = \"agent-state\"\nverify_interval = \"never\"\n\
             [status]\nlisten = \"127.0.0.1:{http}\"\n\
             [keys]\nfile = \"{key}\"\npassphrase_file = \"pass\"\n\
             [[sites]]\nname = \"home\"\npath = \"{}\"\n{standbys}",
            arg(&env.site()),
        ),
    )
    .expect("write embassy.toml");
}

/// `embassy.toml` of a node with the vault's key file and one hot standby of `registry` in
/// `data_dir` (`lag_alarm` 30 s), its alarms appended to `alarms.txt` in the home.
fn write_alarmed_config(env: &PgCli, http: u16, data_dir: &Path, port: u16) {
    let standbys = format!(
        "{}hot_standby = true\nlag_alarm = \"30s\"\n\
         [alarms]\ncommand = \"echo \\\"$EMBASSY_ALARM_EVENT $EMBASSY_ALARM_DATASET \
         $EMBASSY_ALARM_SITE\\\" >> alarms.txt\"\n",
        standby_toml(data_dir, port)
    );
    write_config(env, http, "vault.key", &standbys);
}

fn standby_toml(data_dir: &Path, port: u16) -> String {
    format!(
        "[[standbys]]\ndataset = \"registry\"\ndata_dir = \"{}\"\nport = {port}\n",
        arg(data_dir)
    )
}

/// `embassy config check embassy.toml`: success and what it said.
fn config_check(env: &PgCli) -> (bool, String) {
    let out = Command::new(EXE)
        .args(["config", "check", "embassy.toml"])
        .current_dir(env.dir.path())
        .env_remove("EMBASSY_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("run embassy config check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn following(http: u16, agent: &Agent, what: &str) -> serde_json::Value {
    wait_until(Duration::from_secs(60), what, agent, || {
        standby_status(http).filter(|s| s["phase"] == "following" && s["lag_bytes"].is_u64())
    })
}

#[test]
fn an_embassy_node_adopts_its_running_standby_reloads_its_standbys_and_reads_with_a_reader_credential(
) {
    let t0 = Instant::now();
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE marks (id int PRIMARY KEY, note text NOT NULL)");
    let env = PgCli::new(EXE, "embassy-pgadopt-");
    // The node's reader credential of `registry` alone; a sealing credential (it cannot read).
    for (kind, label) in [("--reader", "embassy-node"), ("--sealing", "home-streamer")] {
        let file = env.path(&format!("{label}.cred"));
        env.run(&[
            "keys",
            "issue",
            kind,
            "--dataset",
            "registry",
            "--label",
            label,
            "--out",
            arg(&file),
        ]);
    }
    let _streamer = env.stream(&pg, "registry");
    env.base_backup_streamed(&pg.conninfo(), "registry");
    let node = env.postgres_folder("node");
    let data_dir = node.join("registry");
    let _servers = Servers(vec![data_dir.clone()]);
    let http = embassy_testkit::free_port();
    let pg_port = embassy_testkit::free_port();

    println!(
        "{:6.1} s: a credential that cannot read",
        t0.elapsed().as_secs_f64()
    );
    // A credential that cannot read the dataset: `config check` and the agent say so, and the
    // standby is not made.
    write_config(
        &env,
        http,
        "home-streamer.cred",
        &standby_toml(&data_dir, pg_port),
    );
    let (ok, said) = config_check(&env);
    assert!(!ok, "{said}");
    assert!(
        said.contains("standbys.registry") && said.contains("cannot read dataset registry"),
        "{said}"
    );
    let agent = Agent::start_in(EXE, env.dir.path());
    let down = wait_until(
        Duration::from_secs(30),
        "the standby down for its credential",
        &agent,
        || {
            standby_status(http).filter(|s| {
                s["phase"] == "down"
                    && s["last_error"]
                        .as_str()
                        .is_some_and(|e| e.contains("cannot read dataset registry"))
            })
        },
    );
    println!("with a sealing credential: {down}");
    assert!(
        agent.log().contains("cannot read dataset registry"),
        "{}",
        agent.log()
    );
    assert!(!data_dir.join("PG_VERSION").exists());
    let (status, log) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");

    println!("{:6.1} s: reader credential", t0.elapsed().as_secs_f64());
    // The reader credential of `registry` alone: enough to make and run the standby.
    write_config(
        &env,
        http,
        "embassy-node.cred",
        &standby_toml(&data_dir, pg_port),
    );
    let (ok, said) = config_check(&env);
    assert!(ok, "{said}");
    let agent = Agent::start_in(EXE, env.dir.path());
    following(http, &agent, "the standby made with a reader credential");
    seen_at_standby(&pg, &data_dir, pg_port, 1, &agent);
    let pid = postmaster_pid(&data_dir).expect("postmaster.pid");

    println!("{:6.1} s: SIGKILL", t0.elapsed().as_secs_f64());
    // SIGKILL: the server keeps running; the next agent adopts it (no second server, no
    // rebuild) and it keeps following.
    let (_, log) = agent.stop_with(libc::SIGKILL, Duration::from_secs(10));
    assert!(alive(pid), "{log}");
    let agent = Agent::start_in(EXE, env.dir.path());
    following(http, &agent, "the adopted standby following");
    let took = seen_at_standby(&pg, &data_dir, pg_port, 2, &agent);
    println!(
        "after the agent's SIGKILL: row 2 readable {:.2} s after its commit",
        took.as_secs_f64()
    );
    // Longer than the old agent took to count its failed starts and rebuild.
    std::thread::sleep(Duration::from_secs(4));
    let log = agent.log();
    assert_eq!(postmaster_pid(&data_dir), Some(pid), "{log}");
    assert!(alive(pid), "{log}");
    assert!(log.contains("adopted its server"), "{log}");
    assert!(!log.contains("newest base backup"), "{log}");
    assert!(!log.contains("server stopped"), "{log}");

    // The adopted server killed: started again, following again.
    // SAFETY: a signal to the test's own standby's postmaster.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(
        Duration::from_secs(60),
        "the adopted standby started again",
        &agent,
        || {
            standby_status(http)
                .filter(|s| s["restarts"].as_u64() >= Some(1) && s["phase"] == "following")
        },
    );
    assert!(
        agent.log().contains("the adopted server, pid"),
        "{}",
        agent.log()
    );
    let pid = postmaster_pid(&data_dir).expect("postmaster.pid");

    println!("{:6.1} s: refused reload", t0.elapsed().as_secs_f64());
    // A reload refused (a mistake in the file): the standby keeps running.
    std::fs::write(
        env.path("embassy.toml"),
        std::fs::read_to_string(env.path("embassy.toml")).expect("read") + "port = \"x\"\n",
    )
    .expect("write");
    agent.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(10),
        "the reload refused",
        &agent,
        || agent.log().contains("reload refused").then_some(()),
    );
    assert!(alive(pid));
    following(http, &agent, "the standby following after a refused reload");

    println!("{:6.1} s: removed", t0.elapsed().as_secs_f64());
    // Removed: its server stops, its data directory stays.
    write_config(&env, http, "embassy-node.cred", "");
    agent.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(40),
        "the removed standby stopped",
        &agent,
        || {
            let gone = status_json(http)
                .is_some_and(|r| r["standbys"].as_array().is_some_and(|a| a.is_empty()));
            (gone && !alive(pid)).then_some(())
        },
    );
    assert!(data_dir.join("PG_VERSION").exists());
    assert!(!data_dir.join("postmaster.pid").exists(), "a clean stop");

    println!("{:6.1} s: reused pid", t0.elapsed().as_secs_f64());
    // A postmaster.pid naming a pid the kernel gave to another process since (PostgreSQL
    // refuses to start while that process lives): stale, removed, not adopted.
    let mut other = Command::new("sleep")
        .arg("600")
        .current_dir("/")
        .spawn()
        .expect("run sleep");
    std::fs::write(
        data_dir.join("postmaster.pid"),
        format!(
            "{}\n{}\n1\n{pg_port}\n/tmp\nlocalhost\n  1234567 1\nready   \n",
            other.id(),
            data_dir.display()
        ),
    )
    .expect("write a stale postmaster.pid");

    // Added again: started on its data directory (not made again).
    write_config(
        &env,
        http,
        "embassy-node.cred",
        &standby_toml(&data_dir, pg_port),
    );
    agent.signal(libc::SIGHUP);
    following(http, &agent, "the added standby following");
    seen_at_standby(&pg, &data_dir, pg_port, 3, &agent);
    let _ = other.kill();
    let _ = other.wait();
    let log = agent.log();
    assert!(!log.contains("newest base backup"), "{log}");
    assert!(log.contains("postmaster.pid is stale"), "{log}");

    println!("{:6.1} s: changed port", t0.elapsed().as_secs_f64());
    // Changed (another port): restarted on it.
    let port2 = embassy_testkit::free_port();
    write_config(
        &env,
        http,
        "embassy-node.cred",
        &standby_toml(&data_dir, port2),
    );
    agent.signal(libc::SIGHUP);
    wait_until(
        Duration::from_secs(40),
        "the standby on its new port",
        &agent,
        || {
            let port = std::fs::read_to_string(data_dir.join("postmaster.pid"))
                .ok()
                .and_then(|t| t.lines().nth(3).map(|l| l.trim().to_string()));
            standby_status(http).filter(|s| {
                s["phase"] == "following" && port.as_deref() == Some(port2.to_string().as_str())
            })
        },
    );
    seen_at_standby(&pg, &data_dir, port2, 4, &agent);

    println!("{:6.1} s: SIGTERM", t0.elapsed().as_secs_f64());
    // SIGTERM: the agent stops, the server keeps serving; the next agent adopts it.
    let pid = postmaster_pid(&data_dir).expect("postmaster.pid");
    let (status, log) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    assert!(alive(pid), "{log}");
    assert!(log.contains("keeps running"), "{log}");
    assert!(
        node_psql(&data_dir, port2, "SELECT count(*) FROM marks").is_ok(),
        "readable while no agent runs"
    );
    let agent = Agent::start_in(EXE, env.dir.path());
    following(http, &agent, "the standby adopted after SIGTERM");
    seen_at_standby(&pg, &data_dir, port2, 5, &agent);
    assert_eq!(postmaster_pid(&data_dir), Some(pid));
    assert!(
        agent.log().contains("adopted its server"),
        "{}",
        agent.log()
    );
    let (status, log) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    println!("{:6.1} s: done", t0.elapsed().as_secs_f64());
}

/// A standby's data directory that left recovery (promoted: no `standby.signal` or
/// `recovery.signal`) is the live registry and may hold the only copy of recent writes: the node
/// never removes it to rebuild, even when its server keeps failing to start. The data directory
/// here is only its shape (PG_VERSION, a file that must survive), so the server fails at once.
#[test]
fn a_promoted_data_directory_is_never_rebuilt() {
    let env = PgCli::new(EXE, "embassy-pgnode-promoted-");
    let data_dir = env.postgres_folder("node").join("registry");
    std::fs::create_dir_all(&data_dir).expect("the data directory");
    std::fs::write(data_dir.join("PG_VERSION"), "15\n").expect("PG_VERSION");
    std::fs::write(data_dir.join("live-writes"), "the only copy\n").expect("a live file");
    let (uid, gid) = env.ids;
    for p in [
        &data_dir,
        &data_dir.join("PG_VERSION"),
        &data_dir.join("live-writes"),
    ] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown");
    }
    let http = embassy_testkit::free_port();
    write_config(
        &env,
        http,
        "vault.key",
        &standby_toml(&data_dir, embassy_testkit::free_port()),
    );
    let agent = Agent::start_in(EXE, env.dir.path());
    wait_until(
        Duration::from_secs(90),
        "the node refusing to rebuild",
        &agent,
        || agent.log().contains("not rebuilt").then_some(()),
    );
    let status = standby_status(http).expect("the standby's status");
    let (_, log) = agent.stop(Duration::from_secs(30));
    assert!(log.contains("no longer a standby's"), "{log}");
    assert!(!log.contains("rebuilding it from"), "{log}");
    assert_eq!(
        std::fs::read_to_string(data_dir.join("live-writes"))
            .ok()
            .as_deref(),
        Some("the only copy\n"),
        "agent log:\n{log}"
    );
    assert_eq!(status["phase"], "down", "{status}");
    assert_eq!(status["alarm"], true, "{status}");
}

fn lsn_of(s: &str) -> u64 {
    s.trim()
        .parse::<embassy_postgres::Lsn>()
        .unwrap_or_else(|e| panic!("{s:?} is not an LSN: {e}"))
        .0
}

/// Red team 7. #2: a hostile site adds an object named like WAL far past the real end (junk
/// bytes under their own hash): the node's `vault_lsn` and lag stay those of the checked WAL,
/// no alarm, no rebuild. #1: embassy A, a standby that replayed less than the node's standby B,
/// is promoted with `--accept-data-loss`: its timeline 2 forks before what B replayed of home's
/// timeline 1. PostgreSQL on B can never follow timeline 2, and the node once showed it
/// "following, lag 0, no alarm" while it served the discarded rows. Now it is `diverged` (an
/// alarm, the fork point named), rebuilt from a base backup on timeline 2's history, and reads
/// A's rows and not the discarded ones; whenever it shows "following, lag 0" it holds A's row.
#[test]
fn a_standby_past_a_promotions_fork_is_diverged_and_rebuilt_and_junk_wal_names_move_nothing() {
    let t0 = Instant::now();
    let pg = PgServer::start(PgOptions::default());
    pg.psql("CREATE TABLE marks (id int PRIMARY KEY, note text NOT NULL)");
    pg.psql("CREATE TABLE filler (n int, pad text)");
    let env = PgCli::new(EXE, "embassy-pgnode-fork-");
    let mut home_streamer = env.stream(&pg, "registry");
    env.base_backup_streamed(&pg.conninfo(), "registry");
    // Embassy A: a standby made by `embassy standby`.
    let a_dir = env.postgres_folder("restores").join("a");
    env.run(&["standby", "registry", "--to", arg(&a_dir)]);
    let a = embassy_testkit::pg::restored::Restored::start(a_dir.clone());
    // Embassy B: the node's standby.
    let data_dir = env.postgres_folder("node").join("registry");
    let _servers = Servers(vec![data_dir.clone()]);
    let http = embassy_testkit::free_port();
    let pg_port = embassy_testkit::free_port();
    write_alarmed_config(&env, http, &data_dir, pg_port);
    let agent = Agent::start_in(EXE, env.dir.path());
    following(http, &agent, "node B following");
    seen_at_standby(&pg, &data_dir, pg_port, 1, &agent);
    wait_until(Duration::from_secs(30), "A to replay row 1", &agent, || {
        (a.try_psql("SELECT count(*) FROM marks WHERE id = 1")
            .as_deref()
            == Ok("1"))
        .then_some(())
    });
    println!("{:6.1} s: A and B follow home", t0.elapsed().as_secs_f64());

    // #2: junk named far past the real end, at the site's folder (its true hash in its name).
    let real_end = env.durable();
    let junk = b"junk a hostile site added".to_vec();
    let id = embassy_core::id::ObjectId::of(&junk);
    let far = real_end + (1 << 30);
    let junk_dir = env.site().join("wal/registry/00000001/p");
    std::fs::write(
        junk_dir.join(format!("{far:016x}-{:016x}-{id}", far + (1 << 20))),
        &junk,
    )
    .expect("write the junk object");
    let mut seen = Vec::new();
    for _ in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        let s = standby_status(http).expect("status");
        let vault_lsn = s["vault_lsn"].as_str().map(lsn_of).unwrap_or(0);
        assert!(
            vault_lsn > 0 && vault_lsn < far && s["alarm"] == false && s["rebuilds"] == 0,
            "the junk name moved the node: {s}"
        );
        assert!(s["lag_bytes"].as_u64() < Some(1 << 24), "{s}");
        seen.push((vault_lsn, s["lag_bytes"].as_u64()));
    }
    println!("with a junk WAL name at the site: (vault_lsn, lag_bytes) {seen:?}");

    // A stops fetching WAL; home goes on and B replays far past A: row 2 and ~20 MB of WAL.
    a.try_psql("ALTER SYSTEM SET restore_command = 'false'")
        .expect("restore_command");
    a.try_psql("SELECT pg_reload_conf()").expect("reload");
    std::thread::sleep(Duration::from_secs(2));
    let a_replayed = lsn_of(
        &a.try_psql("SELECT pg_last_wal_replay_lsn()")
            .expect("A's replay"),
    );
    pg.psql("INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g");
    seen_at_standby(&pg, &data_dir, pg_port, 2, &agent);
    let b_replayed = lsn_of(
        &node_psql(&data_dir, pg_port, "SELECT pg_last_wal_replay_lsn()").expect("B's replay"),
    );
    assert!(
        b_replayed > a_replayed + (16 << 20),
        "{b_replayed:X} {a_replayed:X}"
    );
    // Home is lost.
    home_streamer.0.kill().expect("kill home's streamer");
    drop(home_streamer);
    pg.kill9();

    // A is promoted short of what the vault holds: timeline 2 forks at A's replay.
    let out = env.run(&[
        "--json",
        "promote",
        "registry",
        "--data",
        arg(&a_dir),
        "--accept-data-loss",
        "--timeout",
        "60",
    ]);
    let done: serde_json::Value = serde_json::from_str(&out).expect("promote's JSON");
    assert_eq!(done["timeline"], 2, "{done}");
    assert!(!done["data_lost_to"].is_null(), "{done}");
    let fork = done["lsn"].as_str().expect("the fork point").to_string();
    assert!(lsn_of(&fork) < b_replayed, "{done}");
    // A streams timeline 2; its row 3 is durable in the vault.
    let a_conninfo = format!(
        "host=127.0.0.1 port={} user=embassy password={} dbname=postgres",
        std::fs::read_to_string(a_dir.join("postmaster.pid"))
            .expect("A's postmaster.pid")
            .lines()
            .nth(3)
            .expect("A's port")
            .trim(),
        embassy_testkit::pg::REPL_PASSWORD
    );
    let _a_streamer = env.stream_from(
        &env.path("vault.key"),
        &a_conninfo,
        "registry",
        "a-durable.log",
    );
    a.try_psql("INSERT INTO marks VALUES (3, 'a')")
        .expect("A's commit");
    let a_end = lsn_of(&a.try_psql("SELECT pg_current_wal_lsn()").expect("A's LSN"));
    embassy_testkit::wait_until("A's row durable", Duration::from_secs(60), || {
        env.durable_in("a-durable.log") >= a_end
    });
    let promoted = Instant::now();
    println!(
        "{:6.1} s: A promoted at {fork} (B replayed to {b_replayed:X}), its row durable",
        t0.elapsed().as_secs_f64()
    );

    // B: never "following, lag 0, no alarm" without A's row; diverged, rebuilt, reads A's row.
    // (B replayed more past the fork than A wrote since: by positions alone B is ahead.)
    assert!(a_end < b_replayed, "{a_end:X} {b_replayed:X}");
    let holds = |id: u32| {
        node_psql(
            &data_dir,
            pg_port,
            &format!("SELECT count(*) FROM marks WHERE id = {id}"),
        )
        .ok()
            == Some("1".to_string())
    };
    let mut phases = Vec::new();
    let mut diverged = None;
    let rebuilt = wait_until(
        Duration::from_secs(150),
        "node B rebuilt onto timeline 2 and reading A's row",
        &agent,
        || {
            let s = standby_status(http)?;
            let phase = s["phase"].as_str().unwrap_or("").to_string();
            if phases.last() != Some(&phase) {
                phases.push(phase.clone());
            }
            let has_a = holds(3);
            if phase == "diverged" && diverged.is_none() {
                diverged = Some(s.clone());
            }
            // Judged once the node has looked at the vault since A's row was durable (it
            // looks every second).
            let looked = promoted.elapsed() > Duration::from_secs(3);
            if looked && phase == "following" && s["lag_bytes"] == 0 && s["alarm"] == false {
                assert!(
                    has_a,
                    "node B shows following, lag 0, no alarm without A's row: {s}\n{:?}\n{}\n{:?}",
                    std::fs::read_dir(data_dir.join("pg_wal")).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect::<Vec<_>>()),
                    std::fs::read_to_string(embassy_agent::node::run_folder(&data_dir).join("server.log")).unwrap_or_default(),
                    node_psql(&data_dir, pg_port, "SELECT (SELECT timeline_id FROM pg_control_checkpoint()), (SELECT min_recovery_end_timeline FROM pg_control_recovery())"),
                );
            }
            (has_a && phase == "following").then_some(s)
        },
    );
    println!(
        "B rebuilt and reading A's row {:.1} s after it was durable; phases {phases:?}: {rebuilt}",
        promoted.elapsed().as_secs_f64()
    );
    let diverged = diverged.expect("node B seen diverged");
    println!("diverged: {diverged}");
    assert_eq!(diverged["alarm"], true, "{diverged}");
    assert!(diverged["lag_bytes"].is_null(), "{diverged}");
    assert!(
        diverged["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&fork)),
        "{diverged}"
    );
    assert!(rebuilt["rebuilds"].as_u64() >= Some(1), "{rebuilt}");
    let reason = rebuilt["last_rebuild_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("diverged") && reason.contains(&fork),
        "{rebuilt}"
    );
    assert_eq!(rebuilt["timeline"], 2, "{rebuilt}");
    assert_eq!(rebuilt["vault_timeline"], 2, "{rebuilt}");
    assert!(!holds(2), "B still serves home's discarded row 2");
    let log = agent.log();
    assert!(log.contains("diverged"), "{log}");
    let alarms = std::fs::read_to_string(env.path("alarms.txt")).unwrap_or_default();
    assert!(alarms.contains("raised registry standby"), "{alarms}");
    let (status, log) = agent.stop(Duration::from_secs(60));
    assert!(status.success(), "{log}");
    drop(a);
    println!("{:6.1} s: done", t0.elapsed().as_secs_f64());
}
