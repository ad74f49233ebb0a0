//! `embassy stats [DATASET]`: per dataset, versions, logical bytes, stored bytes, packs,
//! blobs, and how much deduplication and compression save.

use std::process::ExitCode;

use clap::Args;
use embassy_core::Result;
use embassy_ops::browse::stats::DatasetStats;
use serde_json::json;

use crate::{open_vault, output, print_json, unlock, Cli};

/// Arguments of `embassy stats`.
#[derive(Args)]
pub struct StatsArgs {
    /// The dataset (default: every dataset).
    pub dataset: Option<String>,
}

/// Runs `embassy stats`.
pub fn run(cli: &Cli, args: &StatsArgs) -> Result<ExitCode> {
    let vault = open_vault(cli)?;
    if let Some(d) = &args.dataset {
        vault.find_version(d, None)?;
    }
    let keyring = unlock(cli, &vault)?;
    let all = embassy_ops::browse::stats::stats(&vault, &keyring, args.dataset.as_deref())?;
    if cli.json {
        let datasets = serde_json::to_value(&all)
            .map_err(|e| embassy_core::Error::invalid(format!("rendering JSON: {e}")))?;
        return print_json(json!({"ok": true, "datasets": datasets})).map(|()| ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for s in &all {
        out.push_str(&block(s));
    }
    if all.is_empty() {
        out.push_str("no datasets yet\n");
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}x"))
}

fn block(s: &DatasetStats) -> String {
    let mut out = format!("{}\n", s.dataset);
    out.push_str(&format!(
        "  versions        {}\n  files           {} (all versions added up)\n  logical size    {} (all versions added up)\n",
        s.versions,
        s.files,
        output::size(s.logical_bytes)
    ));
    out.push_str(&format!(
        "  stored          {} ({} packs: {}, {} indexes: {}, {} manifests: {}",
        output::size(s.stored_bytes),
        s.packs.objects,
        output::size(s.packs.bytes),
        s.indexes.objects,
        output::size(s.indexes.bytes),
        s.manifests.objects,
        output::size(s.manifests.bytes),
    ));
    if s.wal.objects > 0 {
        out.push_str(&format!(
            ", {} WAL objects: {}",
            s.wal.objects,
            output::size(s.wal.bytes)
        ));
    }
    out.push_str(")\n");
    match &s.blobs {
        Some(b) => out.push_str(&format!(
            "  blobs           {} data, {} trees\n  unique content  {} (after dedup), stored as {}\n  dedup ratio     {}\n  compression     {}\n",
            b.data,
            b.trees,
            output::size(b.unique_bytes),
            output::size(b.stored_bytes),
            ratio(s.dedup_ratio),
            ratio(s.compression_ratio)
        )),
        None => out.push_str("  blobs           not counted: the keys given cannot read this dataset\n"),
    }
    out
}
