//! The disaster procedure of docs/keys.md for a PostgreSQL registry, run as written (issue 16):
//! home streams a registry under load whose commits wait for the streamer (synchronous
//! replication to `embassy pg stream`: a commit is acknowledged once its WAL is durable in the
//! vault); custodian shares are made; home is killed with SIGKILL (server and streamer) and its
//! key file, passphrase and state are deleted. At the embassy, from the site alone: 3 of 5
//! shares recover the root key, `verify --deep` passes, a drill restores and opens the registry
//! and reports its RTO, and a restore `--latest`, started, holds every acknowledged commit
//! (RPO 0 for acknowledged data). Real PostgreSQL 15, the real program, as the postgres user.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embassy_testkit::pg::cli::{arg, PgCli};
use embassy_testkit::pg::restored::Restored;
use embassy_testkit::pg::{PgOptions, PgServer};
use embassy_testkit::wait_until;

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
/// The streamer's application name: PostgreSQL's synchronous standby.
const SYNC_NAME: &str = "embassy_home";

#[test]
fn a_registry_comes_back_from_one_site_and_three_shares_with_every_acknowledged_commit() {
    let pg = Arc::new(PgServer::start(PgOptions::default()));
    pg.psql("CREATE TABLE acked (n bigint PRIMARY KEY, pad text NOT NULL)");
    pg.psql(&format!(
        "ALTER SYSTEM SET synchronous_standby_names = '{SYNC_NAME}'"
    ));
    pg.psql("SELECT pg_reload_conf()");
    let home = PgCli::new(EXE, "embassy-pgdisaster-");
    let conninfo = format!("{} application_name={SYNC_NAME}", pg.conninfo());
    let streamer = home.stream_from(
        &home.path("vault.key"),
        &conninfo,
        "registry",
        "durable.log",
    );
    home.base_backup_streamed(&pg.conninfo(), "registry");
    let split: serde_json::Value = serde_json::from_str(&home.run(&[
        "--json",
        "keys",
        "split",
        "--threshold",
        "3",
        "--shares",
        "5",
    ]))
    .unwrap();
    let shares: Vec<String> = split["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(shares.len(), 5);

    // Load: one row a transaction, acknowledged only when psql returns without the warning of
    // a cancelled synchronous wait.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (pg, stop, acked) = (pg.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let out = pg
                    .tool("psql")
                    .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
                    .arg(pg.socket_dir())
                    .arg("-p")
                    .arg(pg.port().to_string())
                    .args(["-U", "postgres", "-d", "postgres", "-c"])
                    .arg(format!(
                        "INSERT INTO acked VALUES ({n}, repeat(md5('{n}'), 16))"
                    ))
                    .stdin(Stdio::null())
                    .output();
                let Ok(out) = out else { continue };
                if out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("WARNING")
                {
                    acked.lock().unwrap().push(n);
                }
            }
        })
    };
    wait_until("acknowledged commits", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 150
    });

    // Home is lost: server and streamer killed mid-load, then its keys and state deleted.
    pg.kill9();
    drop(streamer);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    println!("{} commits acknowledged before the kill", acked.len());
    for lost in ["vault.key", "pass", "state", "state-caller", "durable.log"] {
        let p = home.path(lost);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else if p.exists() {
            std::fs::remove_file(&p).unwrap();
        }
    }

    // At the embassy, with the site alone: custodians 5, 2 and 4, a new passphrase.
    let started = Instant::now();
    std::fs::write(home.path("pass"), "a new passphrase for the embassy\n").unwrap();
    std::os::unix::fs::chown(home.path("pass"), Some(home.ids.0), Some(home.ids.1)).unwrap();
    home.run(&[
        "keys",
        "recover",
        "--share",
        &shares[4],
        "--share",
        &shares[1],
        "--share",
        &shares[3],
        "--out",
        arg(&home.path("vault.key")),
    ]);
    let verified = home.run(&["verify", "--deep"]);
    assert!(verified.contains("vault OK"), "{verified}");

    // The drill proves the registry opens and measures the recovery time.
    let scratch = home.postgres_folder("scratch");
    let out = home.output(&[
        "--json",
        "drill",
        "registry",
        "--scratch",
        arg(&scratch),
        "--check",
        "select count(*) > 0 from acked",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let drill = &json["drills"][0];
    assert!(
        out.status.success() && drill["passed"] == true,
        "{json:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rto_ms = drill["rto_ms"].as_u64().expect("the drill's RTO");
    assert!(rto_ms < 120_000, "RTO {rto_ms} ms");

    // The registry restored for good: every acknowledged commit is there.
    let data = home.postgres_folder("restores").join("registry");
    home.run(&["restore", "registry", "--latest", "--to", arg(&data)]);
    let server = Restored::start(data);
    server.wait_open(Duration::from_secs(120));
    let present: std::collections::HashSet<u64> = server
        .try_psql("SELECT n FROM acked")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| !present.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged commits lost (RPO for acknowledged data must be 0): {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    println!(
        "recovered in {:.1} s from the shares to an open registry; drill RTO {:.1} s, RPO {} ms; \
         {} acknowledged commits all present ({} rows restored)",
        started.elapsed().as_secs_f64(),
        rto_ms as f64 / 1000.0,
        drill["rpo_ms"],
        acked.len(),
        present.len()
    );
}
