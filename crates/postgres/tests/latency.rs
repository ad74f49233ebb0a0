//! Benchmark (ignored by default): the data-loss window under load. For every commit, the time
//! from its acknowledgement until its WAL is durable on the required sites, at pgbench's default
//! (TPC-B-like) mix with 4 clients over loopback.
//!
//! Method: a sampler thread asks the server every 10 ms for `pg_current_wal_flush_lsn()`; every
//! commit acknowledged by then has its commit record at or before that position. The streamer
//! logs `(end lsn, time)` for every durable log object. A sample's window is the time of the
//! first durable object reaching its position minus the sample's time: an upper bound for the
//! commits it covers. Run:
//!
//! ```text
//! cargo test --release -p embassy-postgres --test latency -- --ignored --nocapture
//! EMBASSY_BENCH_SECONDS=60 (default 30), EMBASSY_BENCH_SITES=2 (two local sites, both required)
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::keys::RootSecret;
use embassy_core::site::Site;
use embassy_postgres::replication::{ConnConfig, ReplicationConnection};
use embassy_postgres::stream::{StreamConfig, StreamProgress, WalStreamer};
use embassy_sites::local::LocalSite;
use embassy_sites::replicated::ReplicatedSite;
use embassy_testkit::pg::{PgOptions, PgServer};

fn now_ns() -> i64 {
    embassy_core::format::config::now_unix_nanos()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture (about a minute)"]
fn commit_to_durable_latency_under_pgbench() {
    let seconds: u64 = std::env::var("EMBASSY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let n_sites: usize = std::env::var("EMBASSY_BENCH_SITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let pg = PgServer::start(PgOptions::default());
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    let dir = tempfile::tempdir().unwrap();
    let sites: Vec<Arc<dyn Site>> = (0..n_sites)
        .map(|i| {
            Arc::new(LocalSite::new(dir.path().join(format!("site{i}"))).unwrap()) as Arc<dyn Site>
        })
        .collect();
    let site: Arc<dyn Site> = if n_sites == 1 {
        sites[0].clone()
    } else {
        Arc::new(ReplicatedSite::new(sites, n_sites).unwrap())
    };
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let root = *root.expose();
    let log = dir.path().join("durable.log");
    let mut cfg = StreamConfig::new(
        "registry",
        ConnConfig::parse(&pg.conninfo()).unwrap(),
        "bench",
    );
    cfg.create_slot = true;
    cfg.durable_log = Some(log.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Mutex::new(StreamProgress::default()));
    let streamer = {
        let (vault, cfg, stop, progress) =
            (vault.clone(), cfg.clone(), stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let keyring =
                Keyring::from_root(RootSecret::from_bytes(&root), vault.config()).unwrap();
            WalStreamer::run_with_progress(&cfg, &vault, &keyring, &stop, progress)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.lock().unwrap().durable.0 == 0 {
        assert!(Instant::now() < deadline, "streamer did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Sampler: (time, flush lsn) every 10 ms while pgbench runs.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let conn = ConnConfig::parse(&pg.conninfo_tcp("postgres", "unused")).unwrap();
        let conn = ConnConfig {
            host: pg.socket_dir().display().to_string(),
            ..conn
        };
        std::thread::spawn(move || {
            let mut c = ReplicationConnection::connect_plain(&conn).unwrap();
            let mut samples = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                let rows = c.simple_query("SELECT pg_current_wal_flush_lsn()").unwrap();
                let t = now_ns();
                let lsn: embassy_postgres::Lsn = rows[0][0].as_deref().unwrap().parse().unwrap();
                samples.push((t, lsn.0));
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        })
    };
    let out = pg.pgbench(&["-c", "4", "-j", "2", "-T", &seconds.to_string()]);
    sampling.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    let end = pg.current_lsn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.lock().unwrap().durable.0 < end {
        assert!(Instant::now() < deadline, "streamer did not catch up");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let summary = streamer.join().unwrap().unwrap();
    let durable: Vec<(u64, i64)> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect();
    let mut windows = Vec::new();
    let mut last = 0;
    for (t, lsn) in samples {
        if lsn <= last {
            continue; // no new commits since the previous sample
        }
        last = lsn;
        let i = durable.partition_point(|(end, _)| *end < lsn);
        let (_, when) = durable[i];
        windows.push((when - t).max(0) as f64 / 1e9);
    }
    windows.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99, max) = (
        percentile(&windows, 0.5),
        percentile(&windows, 0.99),
        windows[windows.len() - 1],
    );
    let tps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("")
        .to_string();
    println!(
        "sites={n_sites} seconds={seconds} samples={} objects={} wal_bytes={} | commit->durable p50={:.3}s p99={:.3}s max={:.3}s | {tps}",
        windows.len(),
        summary.objects,
        summary.bytes,
        p50,
        p99,
        max
    );
    assert!(windows.len() > seconds as usize * 20, "enough samples");
    assert!(p99 <= 1.0, "p99 {p99:.3}s exceeds the 1 s target");
}
