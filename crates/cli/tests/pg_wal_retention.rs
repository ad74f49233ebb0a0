//! WAL retention end to end on a real PostgreSQL 15 with the real `embassy` program: WAL
//! streamed by `embassy pg stream`, a base backup every few seconds, `prune --keep-last 2` and
//! `gc` after each; the streamed WAL the vault holds stays bounded across the cycles (WAL below
//! the oldest kept base backup's segment is collected), `verify` stays clean, `wal-fetch` of a
//! collected segment says retention collected it, and restores to the latest point and to a
//! time between the two kept base backups still work. Figures are printed
//! (`cargo test -p embassy --test pg_wal_retention -- --nocapture`).

use embassy_testkit::pg::restored::*;
use embassy_testkit::wait_until;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use embassy_testkit::pg::cli::PgCli;
use embassy_testkit::pg::{PgOptions, PgServer};

const EXE: &str = env!("CARGO_BIN_EXE_embassy");
const SEGMENT: u64 = 16 * 1024 * 1024;

/// The testkit's PostgreSQL CLI environment (`PgCli`), with this file's own steps.
struct Env(PgCli);

impl std::ops::Deref for Env {
    type Target = PgCli;
    fn deref(&self) -> &PgCli {
        &self.0
    }
}

impl Env {
    fn new() -> Self {
        // Versions seconds old are pruned here: no legal minimum age (the default is 30 days).
        Env(PgCli::with_init(
            EXE,
            "embassy-walret-",
            &["--min-age", "0"],
        ))
    }

    /// Stored WAL objects of the dataset: (bytes, lowest start of any piece or segment), and
    /// each object's path and size added to `ever`.
    fn wal(&self, ever: &mut std::collections::HashMap<PathBuf, u64>) -> (u64, u64) {
        let mut bytes = 0;
        let mut lowest = u64::MAX;
        walk(&self.path("site").join("wal/registry"), &mut |p, size| {
            bytes += size;
            ever.insert(p.to_path_buf(), size);
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let kind = p.parent().and_then(|k| k.file_name()).unwrap();
            if kind != "h" {
                if let Some(start) = name.split('-').next() {
                    lowest = lowest.min(u64::from_str_radix(start, 16).unwrap());
                }
            }
        });
        (bytes, lowest)
    }

    /// Waits until the WAL up to the server's current position is durable in the vault.
    fn catch_up(&self, pg: &PgServer) {
        let end = pg.current_lsn();
        wait_until("WAL to become durable", Duration::from_secs(60), || {
            self.durable() >= end
        });
    }
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path, u64)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = e.metadata().unwrap();
        if meta.is_dir() {
            walk(&e.path(), f);
        } else {
            f(&e.path(), meta.len());
        }
    }
}

/// About two segments of WAL: a table of md5 text and some pgbench transactions, then a
/// segment switch so that compaction has whole segments.
fn make_wal(pg: &PgServer, round: usize) {
    pg.psql(&format!(
        "CREATE TABLE load_{round} AS SELECT g, md5(g || 'a{round}') || md5(g || 'b{round}') \
         || md5(g || 'c{round}') AS filler FROM generate_series(1, 60000) g"
    ));
    pg.pgbench(&["-c", "2", "-j", "2", "-t", "200"]);
    pg.psql("SELECT pg_switch_wal()");
}

#[test]
fn streamed_wal_stays_bounded_under_keep_last_and_restores_still_work() {
    let started = Instant::now();
    let pg = PgServer::start(PgOptions::default());
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let env = Env::new();
    let _streamer = env.stream(&pg, "registry");
    wait_until(
        "the streamer's first durable WAL",
        Duration::from_secs(30),
        || env.durable() > 0,
    );
    let first_position = env.durable();
    let cycles = 5;
    let mut held = Vec::new();
    // Every WAL object ever stored: what the vault would hold without collection.
    let mut ever = std::collections::HashMap::new();
    let mut streamed_total = 0u64;
    let mut mid: Option<(String, String)> = None;
    let mut backup_starts = Vec::new();
    for round in 0..cycles {
        let before = pg.current_lsn();
        make_wal(&pg, round);
        streamed_total += pg.current_lsn() - before;
        env.catch_up(&pg);
        backup_starts.push(pg.current_lsn());
        env.run(&[
            "pg",
            "base-backup",
            "registry",
            "--conninfo",
            &pg.conninfo(),
            "--wal-streamed",
        ]);
        if round == cycles - 2 {
            // A moment between the last two base backups, after the older one stopped.
            pg.pgbench(&["-c", "2", "-j", "2", "-t", "100"]);
            mid = Some(checksums_at_a_moment(&pg));
            pg.pgbench(&["-c", "2", "-j", "2", "-t", "100"]);
        }
        env.run(&["prune", "registry", "--keep-last", "2"]);
        env.run(&["gc", "--grace", "1s"]);
        std::thread::sleep(Duration::from_millis(1100));
        env.run(&["gc", "--grace", "1s"]);
        let (bytes, lowest) = env.wal(&mut ever);
        let total: u64 = ever.values().sum();
        println!(
            "cycle {round}: {:.1} MiB of WAL stored of {:.1} MiB ever stored, lowest stored \
             position {:X}/{:X}",
            bytes as f64 / 1048576.0,
            total as f64 / 1048576.0,
            lowest >> 32,
            lowest & 0xffff_ffff
        );
        held.push((bytes, lowest, total));
    }
    let (_, final_sums) = checksums_at_a_moment(&pg);
    env.catch_up(&pg);

    // Bounded: once two base backups are kept, the WAL below the older one's segment goes, so
    // the lowest stored position moves up with the cycles and the bytes do not grow with them.
    let oldest_kept_start = backup_starts[cycles - 2];
    let (bytes, lowest, total) = held[cycles - 1];
    assert!(
        lowest >= oldest_kept_start - oldest_kept_start % SEGMENT - SEGMENT,
        "WAL below the oldest kept base backup is still stored: lowest {lowest:X}, \
         kept backup starts at {oldest_kept_start:X}"
    );
    assert!(lowest > first_position, "nothing was collected: {held:?}");
    // Each cycle streams about the same WAL. Kept: what the two newest cycles streamed (and
    // the tail of the segment before); without collection, cycle c holds c + 1 cycles' worth.
    for (c, (bytes, _, total)) in held.iter().enumerate().skip(2) {
        let per_cycle = total / (c as u64 + 1);
        assert!(
            *bytes <= 3 * per_cycle + SEGMENT / 16,
            "cycle {c}: WAL bytes grow with the cycles: {held:?}"
        );
    }
    let steady: Vec<u64> = held[2..].iter().map(|h| h.0).collect();
    let max_steady = *steady.iter().max().unwrap();
    let min_steady = *steady.iter().min().unwrap();
    println!(
        "{cycles} cycles: {:.1} MiB of WAL streamed, {:.1} MiB stored at the end of {:.1} MiB \
         ever stored (steady range {:.1}..{:.1} MiB)",
        streamed_total as f64 / 1048576.0,
        bytes as f64 / 1048576.0,
        total as f64 / 1048576.0,
        min_steady as f64 / 1048576.0,
        max_steady as f64 / 1048576.0
    );

    // verify: the collected WAL is not reported missing; the cut-off is named.
    let verified = env.run(&["verify"]);
    assert!(verified.contains("vault OK"), "{verified}");
    assert!(
        verified.contains("collected by retention"),
        "verify does not name the cut-off: {verified}"
    );

    // wal-fetch of the first streamed segment: collected by retention, not damage.
    let segno = first_position / SEGMENT;
    let first_segment = format!("00000001{:08X}{:08X}", segno >> 8, segno & 0xff);
    let dest = env.path("fetched");
    let out = env
        .cmd(&[
            "wal-fetch",
            "registry",
            &first_segment,
            dest.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "collected WAL was fetched");
    assert!(
        said.contains("collected by WAL retention") && !said.contains("lost"),
        "{said}"
    );

    // Restores: the latest point, and a time between the two kept base backups (replayed
    // from the older one, whose WAL must all be there).
    let root = env.path("restores");
    std::fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(env.ids.0), Some(env.ids.1)).unwrap();
    let latest_dir = root.join("latest");
    env.run(&[
        "restore",
        "registry",
        "--latest",
        "--to",
        latest_dir.to_str().unwrap(),
    ]);
    let latest = Restored::start(latest_dir);
    latest.wait_open(Duration::from_secs(120));
    assert_eq!(latest.try_psql(CHECKSUMS).unwrap(), final_sums);
    drop(latest);
    let (mid_time, mid_sums) = mid.unwrap();
    let mid_dir = root.join("mid");
    env.run(&[
        "restore",
        "registry",
        "--time",
        &mid_time,
        "--to",
        mid_dir.to_str().unwrap(),
    ]);
    let restored = Restored::start(mid_dir);
    restored.wait_open(Duration::from_secs(120));
    assert_eq!(
        restored.try_psql(CHECKSUMS).unwrap(),
        mid_sums,
        "restore to {mid_time} differs; log: {}",
        restored.log()
    );
    drop(restored);
    println!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}
