//! The restore drill of a PostgreSQL dataset: the newest base backup restored into the
//! drill's private scratch folder exactly as `embassy restore --latest` restores it
//! ([`crate::pgrestore`]), replayed to the newest WAL record durable in the vault, PostgreSQL
//! started on it on a free port with its socket in the scratch folder (no TCP listener), the
//! recovery time ended when it accepts a write, then checked: `pg_amcheck`, row counts per
//! table, and the operator's SQL checks. The server is stopped and the scratch folder removed
//! on every path out.
//!
//! The recovery point is measured on the ledger's clock: the newest acknowledged time is the
//! latest capture time among the dataset's accepted `log_range_added` entries (the WAL
//! anchors) and its versions; the newest data restored is the latest capture time among the
//! anchors whose range the restored server replayed into (range start below the WAL position
//! it reached), or the base backup's capture time when none is. RPO is the difference (never
//! below 0).

use std::path::Path;
use std::time::{Duration, Instant};

use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::history::ledger::{DrillCheck, Event, Record};
use embassy_core::progress::Silent;
use embassy_core::{Error, Result};
use embassy_postgres::restore::RecoveryTarget;
use embassy_postgres::scratch::ScratchServer;
use embassy_postgres::Lsn;

use crate::pgrestore::{FetchSetup, PgRestoreRequest};

/// How PostgreSQL datasets are drilled on this host.
#[derive(Debug, Clone)]
pub struct PgDrillOptions {
    /// How the restored server's `restore_command` reaches the vault.
    pub fetch: FetchSetup,
    /// The user the restored server runs as (uid, gid), when not this process's (as root:
    /// the `postgres` user, see [`crate::pgrestore::owner`]).
    pub owner: Option<(u32, u32)>,
    /// SQL checks: each must return exactly one true value.
    pub checks: Vec<String>,
    /// The database the SQL checks run in.
    pub check_database: String,
    /// How long the restored server may take to replay and accept a write.
    pub open_timeout: Duration,
}

impl PgDrillOptions {
    /// Options with no SQL checks, database `postgres`, and an hour to open.
    pub fn new(fetch: FetchSetup, owner: Option<(u32, u32)>) -> Self {
        Self {
            fetch,
            owner,
            checks: Vec::new(),
            check_database: "postgres".into(),
            open_timeout: Duration::from_secs(3600),
        }
    }
}

/// The rows of one table of the restored server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableCount {
    /// The database.
    pub database: String,
    /// `schema.table`, quoted where SQL needs it.
    pub table: String,
    /// Its rows.
    pub rows: u64,
}

/// What the PostgreSQL part of a drill found.
pub(crate) struct PgDrilled {
    pub version: Version,
    pub lsn: Option<u64>,
    pub checks: Vec<DrillCheck>,
    pub rto_ms: u64,
    pub rpo_ms: u64,
    pub tables: Vec<TableCount>,
}

/// Capture times on the ledger's clock: the newest acknowledged, and each anchor's range.
struct Anchors {
    newest_ack: Option<i64>,
    ranges: Vec<(u64, i64)>,
}

impl Anchors {
    fn of(history: &[Record], versions: &[Version]) -> Self {
        let mut ranges = Vec::new();
        for r in history.iter().filter(|r| r.refused.is_none()) {
            if let Event::LogRangeAdded {
                start,
                captured_at_ns,
                ..
            } = &r.entry.event
            {
                ranges.push((*start, *captured_at_ns));
            }
        }
        let newest_ack = ranges
            .iter()
            .map(|r| r.1)
            .chain(versions.iter().map(|v| v.captured_at_ns))
            .max();
        Self { newest_ack, ranges }
    }

    /// RPO in ms for a server that reached `lsn` from a base backup captured at `base_ns`.
    fn rpo_ms(&self, base_ns: i64, lsn: Option<u64>) -> u64 {
        let restored = self
            .ranges
            .iter()
            .filter(|(start, _)| lsn.is_some_and(|l| *start < l))
            .map(|r| r.1)
            .chain([base_ns])
            .max()
            .unwrap_or(base_ns);
        self.newest_ack.map_or(0, |n| {
            u64::try_from(n.saturating_sub(restored) / 1_000_000).unwrap_or(0)
        })
    }
}

fn check(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> DrillCheck {
    DrillCheck {
        name: name.into(),
        passed,
        detail: detail.into(),
    }
}

/// Runs the PostgreSQL drill of `dataset` in `scratch` (private, owned by the server's user).
/// Damage found while restoring and a server that does not open are failed checks; a vault or
/// site that cannot be read is an error.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    options: &PgDrillOptions,
    scratch: &Path,
    newest: &Version,
    allow_unwitnessed: bool,
    started: Instant,
) -> Result<PgDrilled> {
    let history = vault.history(dataset)?;
    let versions = embassy_core::history::numbering::versions_in(dataset, &history);
    let anchors = Anchors::of(&history, &versions);
    let data = scratch.join("data");
    let request = PgRestoreRequest {
        dataset,
        data_dir: &data,
        target: RecoveryTarget::Latest,
        owner: options.owner,
        allow_unwitnessed,
        relocations: &[],
        timeline: None,
        fetch: &options.fetch,
    };
    let (done, fetch) = match crate::pgrestore::restore(vault, keyring, &request, &Silent) {
        Ok(restored) => restored,
        // Damage found while restoring: a failed drill, recorded as such.
        Err(e) if e.is_integrity() => {
            return Ok(PgDrilled {
                version: newest.clone(),
                lsn: None,
                checks: vec![check("restore", false, e.to_string())],
                rto_ms: millis(started.elapsed()),
                rpo_ms: anchors.rpo_ms(newest.captured_at_ns, None),
                tables: Vec::new(),
            })
        }
        Err(e) => return Err(e),
    };
    let drilled = run_server(&done.version, &data, scratch, options, started, &anchors);
    // The state folder of the restore's wal-fetch may lie outside the scratch folder.
    fetch.remove();
    drilled
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Starts the server, waits for a write, checks it, stops it.
fn run_server(
    version: &Version,
    data: &Path,
    scratch: &Path,
    options: &PgDrillOptions,
    started: Instant,
    anchors: &Anchors,
) -> Result<PgDrilled> {
    let mut checks = vec![check(
        "restore",
        true,
        format!(
            "base backup version {}: {} files, {} bytes",
            version.number, version.stats.files, version.stats.bytes
        ),
    )];
    let mut server = ScratchServer::start(data, scratch, options.owner).map_err(Error::from)?;
    let opened = server.wait_writable(options.open_timeout);
    let rto_ms = millis(started.elapsed());
    let mut drilled = PgDrilled {
        version: version.clone(),
        lsn: None,
        checks: Vec::new(),
        rto_ms,
        rpo_ms: 0,
        tables: Vec::new(),
    };
    if let Err(e) = opened {
        checks.push(check("open", false, e.to_string()));
        drilled.checks = checks;
        drilled.rpo_ms = anchors.rpo_ms(version.captured_at_ns, None);
        return Ok(drilled);
    }
    let lsn = server
        .query("postgres", "SELECT pg_last_wal_replay_lsn()")
        .ok()
        .and_then(|s| s.parse::<Lsn>().ok())
        .map(|l| l.0);
    let commit = server
        .query(
            "postgres",
            "SELECT coalesce(to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'none')",
        )
        .unwrap_or_default();
    checks.push(check(
        "open",
        true,
        format!(
            "accepted a write after {rto_ms} ms; replayed to {}; last transaction replayed \
             committed at {commit}",
            lsn.map_or_else(
                || "the base backup's end".to_string(),
                |l| Lsn(l).to_string()
            )
        ),
    ));
    checks.push(amcheck(&server));
    let (rows, tables) = row_counts(&server);
    checks.push(rows);
    for sql in &options.checks {
        checks.push(match server.query(&options.check_database, sql) {
            Ok(out) if out == "t" => check(format!("sql:{sql}"), true, "returned true"),
            Ok(out) => check(
                format!("sql:{sql}"),
                false,
                format!("returned {:?}, not true", out.lines().next().unwrap_or("")),
            ),
            Err(e) => check(format!("sql:{sql}"), false, e.to_string()),
        });
    }
    server.stop();
    drilled.lsn = lsn;
    drilled.checks = checks;
    drilled.tables = tables;
    drilled.rpo_ms = anchors.rpo_ms(version.captured_at_ns, lsn);
    Ok(drilled)
}

/// `pg_amcheck --all --heapallindexed` (installing amcheck where missing: the scratch copy is
/// thrown away).
fn amcheck(server: &ScratchServer) -> DrillCheck {
    let out = server
        .client("pg_amcheck")
        .args(["--all", "--install-missing", "--heapallindexed"])
        .output();
    match out {
        Ok(o) if o.status.success() => check(
            "pg_amcheck",
            true,
            "every table and B-tree index of every database checked, heap against index too",
        ),
        Ok(o) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            let first: Vec<&str> = text.lines().take(4).collect();
            check(
                "pg_amcheck",
                false,
                format!("{}: {}", o.status, first.join(" | ")),
            )
        }
        Err(e) => check("pg_amcheck", false, format!("cannot run pg_amcheck: {e}")),
    }
}

/// Counts the rows of every ordinary table of every database that takes connections.
const COUNT_ROWS: &str = "SELECT format('%I.%I', n.nspname, c.relname) || '|' || \
    (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', \
    n.nspname, c.relname), false, true, '')))[1]::text \
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
    WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
    AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1";

fn row_counts(server: &ScratchServer) -> (DrillCheck, Vec<TableCount>) {
    let databases = match server.query(
        "postgres",
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
    ) {
        Ok(out) => out,
        Err(e) => return (check("rows", false, e.to_string()), Vec::new()),
    };
    let mut tables = Vec::new();
    let mut problems = Vec::new();
    let databases: Vec<&str> = databases.lines().filter(|l| !l.is_empty()).collect();
    for db in &databases {
        match server.query(db, COUNT_ROWS) {
            Ok(out) => {
                for line in out.lines() {
                    if let Some((table, rows)) = line.rsplit_once('|') {
                        tables.push(TableCount {
                            database: db.to_string(),
                            table: table.to_string(),
                            rows: rows.trim().parse().unwrap_or(0),
                        });
                    }
                }
            }
            Err(e) => problems.push(format!("{db}: {e}")),
        }
    }
    let rows: u64 = tables.iter().map(|t| t.rows).sum();
    let detail = format!(
        "{} tables, {rows} rows in {} databases{}",
        tables.len(),
        databases.len(),
        if problems.is_empty() {
            String::new()
        } else {
            format!("; not counted: {}", problems.join("; "))
        }
    );
    (check("rows", problems.is_empty(), detail), tables)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpo_is_zero_when_every_anchor_was_replayed_into() {
        let a = Anchors {
            newest_ack: Some(5_000_000_000),
            ranges: vec![(100, 2_000_000_000), (200, 5_000_000_000)],
        };
        assert_eq!(a.rpo_ms(1_000_000_000, Some(250)), 0);
        // Replay stopped in the first range: the second's data is missing.
        assert_eq!(a.rpo_ms(1_000_000_000, Some(150)), 3000);
        // Not opened: the base backup's time.
        assert_eq!(a.rpo_ms(1_000_000_000, None), 4000);
    }
}
