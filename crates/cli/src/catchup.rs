//! `embassy sync --pending` (embassy-ops's catch-up, the same as the agent's) and the queue part
//! of `embassy status`: the per-site catch-up queues
//! (`embassy_sites::queue`) kept under the state folder when writing to several sites.

use std::path::Path;
use std::process::ExitCode;

use embassy_core::{Error, Result};
use serde_json::json;

use crate::output;

/// Drains the catch-up queue of every site given (each from the others); exit 3 if something
/// is still pending.
pub fn sync_pending(
    state_dir: &Path,
    sites: &[String],
    json_out: bool,
    quiet: bool,
) -> Result<ExitCode> {
    if sites.len() < 2 {
        return Err(Error::invalid(
            "sync --pending needs every site of the vault: pass --site A --site B ... (the queued \
             objects are copied from the others)",
        ));
    }
    let bar = output::Bar::new(!quiet && !json_out);
    let reports = embassy_ops::catchup::catch_up_pending(state_dir, sites, &bar)?;
    bar.finish();
    let left: usize = reports.iter().map(|r| r.remaining).sum();
    if json_out {
        let value = json!({"ok": left == 0, "sites": reports});
        crate::print_json(value)?;
    } else if reports.is_empty() {
        println!("nothing queued: every site is caught up");
    } else {
        for r in &reports {
            println!(
                "{}: {} queued{}; copied {} objects ({}), {} already there, {} written nowhere; {} \
                 still queued",
                r.site,
                r.pending_before,
                if r.full_sync {
                    " (compared in full)"
                } else {
                    ""
                },
                r.copied,
                output::size(r.bytes),
                r.present,
                r.nowhere,
                r.remaining
            );
            for p in &r.problems {
                println!("PROBLEM: {p}");
            }
        }
    }
    Ok(if left == 0 {
        ExitCode::SUCCESS
    } else if reports.iter().any(|r| r.remaining > 0 && r.no_vault) {
        // A site without a vault (moved away, unmounted): exit.rs's code for that, not damage.
        crate::exit::code(crate::exit::NO_VAULT)
    } else {
        crate::exit::code(crate::exit::INTEGRITY)
    })
}

/// Queue depth per site, for `status`: (JSON rows, lines to print).
pub fn queue_rows(
    state_dir: &Path,
    sites: &[String],
) -> Result<(Vec<serde_json::Value>, Vec<String>)> {
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (site, pending) in embassy_sites::queue::depths(state_dir, sites)? {
        rows.push(json!({
            "site": site,
            "queued_objects": pending.paths.len(),
            "full_sync_needed": !pending.full_sync.is_empty(),
        }));
        if !pending.is_empty() {
            lines.push(format!(
                "site {site}: {} missed objects queued{}; catch up with `embassy sync --pending`",
                pending.paths.len(),
                if pending.full_sync.is_empty() {
                    String::new()
                } else {
                    format!(", full comparison needed ({})", pending.full_sync[0])
                }
            ));
        }
    }
    Ok((rows, lines))
}
