//! `embassy history DATASET`: a dataset's signed history (its ledger).

use std::process::ExitCode;

use clap::Args;
use embassy_core::Result;
use serde_json::json;

use crate::{open_vault, output, print_json, Cli};

/// Arguments of `embassy history`.
#[derive(Args)]
pub struct HistoryArgs {
    /// Dataset name.
    pub dataset: String,
}

/// `embassy history DATASET`
pub fn run(cli: &Cli, args: &HistoryArgs) -> Result<ExitCode> {
    let dataset = &args.dataset;
    let vault = open_vault(cli)?;
    vault.require_dataset(dataset)?;
    let history = vault.history(dataset)?;
    // Version numbers beside ledger sequence numbers: `version_added` rows carry theirs.
    let numbers = embassy_core::engine::vault::numbers_by_seq(dataset, &history);
    let number = |seq: u64| numbers.get(&seq).copied();
    if cli.json {
        let rows: Vec<serde_json::Value> = history
            .iter()
            .map(|r| {
                json!({
                    "seq": r.entry.seq,
                    "version": number(r.entry.seq),
                    "id": r.id.to_hex(),
                    "prev": r.entry.prev.map(|p| p.to_hex()),
                    "time": output::time(r.entry.time_ns),
                    "signer": hex_key(&r.entry.signer),
                    "event": hexify(serde_json::to_value(&r.entry.event).unwrap_or_default()),
                    "refused": r.refused,
                })
            })
            .collect();
        // An object, not a bare list, so it carries `"ok": true` like every JSON answer.
        print_json(json!({ "dataset": dataset, "entries": rows }))?;
    } else {
        println!(
            "{:>5}  {:<20}  {:<16}  {:<16}  EVENT",
            "SEQ", "TIME (UTC)", "ENTRY", "SIGNER"
        );
        for r in &history {
            let detail = match &r.entry.event {
                embassy_core::history::ledger::Event::VersionAdded {
                    manifest, stats, ..
                } => format!(
                    "version added: version {}, manifest {}, {}, {}",
                    number(r.entry.seq).unwrap_or_default(),
                    manifest.short(),
                    output::count(stats.files, "file", "files"),
                    output::size(stats.bytes)
                ),
                embassy_core::history::ledger::Event::LogRangeAdded {
                    timeline,
                    start,
                    end,
                    ..
                } => {
                    format!("log range added: timeline {timeline}, {start:X}..{end:X}")
                }
                embassy_core::history::ledger::Event::VersionsDeleted { seqs, reason, .. } => {
                    let numbers: Vec<u64> = seqs.iter().filter_map(|s| number(*s)).collect();
                    format!("versions deleted: {numbers:?} (entries {seqs:?}; {reason})")
                }
                embassy_core::history::ledger::Event::SignerAdded { key, role, rights } => {
                    format!(
                        "signer added: {} ({role}; may {})",
                        hex_key(key),
                        rights
                            .iter()
                            .map(|r| r.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
                embassy_core::history::ledger::Event::MinAgeChanged {
                    min_age_secs,
                    approvals,
                } => format!(
                    "min age changed to {} ({} approvals)",
                    embassy_core::duration::format_duration(*min_age_secs),
                    approvals.len()
                ),
                embassy_core::history::ledger::Event::SignerRevoked { key, reason } => {
                    format!("signer revoked: {} ({reason})", hex_key(key))
                }
                embassy_core::history::ledger::Event::ReaderKeyRotated { epoch, .. } => {
                    format!("reader key rotated to epoch {epoch}")
                }
                embassy_core::history::ledger::Event::Promoted {
                    timeline,
                    lsn,
                    host,
                    data_dir,
                    data_lost_to,
                    approvals,
                    replayed,
                } => format!(
                    "promoted: {host}:{data_dir} writes on timeline {timeline} from {}{}{}{}",
                    embassy_postgres::Lsn(*lsn),
                    if approvals.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} approvals)", approvals.len())
                    },
                    replayed.as_ref().map_or(String::new(), |w| format!(
                        ", anchors WAL {} of timeline {} ({}..{})",
                        &w.object.to_hex()[..16],
                        w.timeline,
                        embassy_postgres::Lsn(w.start),
                        embassy_postgres::Lsn(w.end)
                    )),
                    data_lost_to.map_or(String::new(), |to| format!(
                        ", ACCEPTING DATA LOSS: the vault's WAL from {} to {} was never replayed",
                        embassy_postgres::Lsn(*lsn),
                        embassy_postgres::Lsn(to)
                    ))
                ),
                embassy_core::history::ledger::Event::DrillRecorded(d) => format!(
                    "drill recorded: {} of version {} on {}, RTO {} ms, RPO {} ms, {}/{} checks \
                     passed",
                    if d.passed { "passed" } else { "FAILED" },
                    number(d.version_seq).unwrap_or_default(),
                    d.host,
                    d.rto_ms,
                    d.rpo_ms,
                    d.checks.iter().filter(|c| c.passed).count(),
                    d.checks.len()
                ),
                embassy_core::history::ledger::Event::GroupPoint(p) => format!(
                    "group point {} of {}: {} members",
                    p.number,
                    p.group,
                    p.members.len()
                ),
            };
            let detail = match &r.refused {
                Some(why) => format!("{detail}; REFUSED, no effect: {why}"),
                None => detail,
            };
            println!(
                "{:>5}  {:<20}  {:<16}  {:<16}  {}",
                r.entry.seq,
                output::time(r.entry.time_ns),
                &r.id.to_hex()[..16],
                &hex_key(&r.entry.signer)[..16],
                output::escape(&detail)
            );
        }
        println!(
            "{}, chain and signatures verified",
            output::count(history.len() as u64, "entry", "entries")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Byte arrays (ids, keys) as hex strings, for JSON readers.
fn hexify(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Array(items)
            if matches!(items.len(), 8 | 32)
                && items.iter().all(|v| v.as_u64().is_some_and(|n| n < 256)) =>
        {
            let bytes: Vec<u8> = items
                .iter()
                .map(|v| v.as_u64().and_then(|n| u8::try_from(n).ok()).unwrap_or(0))
                .collect();
            Value::String(hex::encode(bytes))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(hexify).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, hexify(v))).collect()),
        other => other,
    }
}

/// A public key as 64 hex digits.
pub fn hex_key(key: &[u8; 32]) -> String {
    hex::encode(key)
}
