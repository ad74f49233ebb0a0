//! `embassy diff DATASET@A DATASET@B`: the paths added, removed and changed from version A to
//! version B, with sizes, and a summary line.

use std::process::ExitCode;

use clap::Args;
use embassy_core::format::tree::NodeKind;
use embassy_core::Result;
use embassy_ops::browse::{self, diff::Change};

use super::ls::{content_note, to_json};
use crate::{open_vault, output, print_json, unlock, Cli};

/// Arguments of `embassy diff`.
#[derive(Args)]
pub struct DiffArgs {
    /// The older version: DATASET@N (or @latest).
    pub from: String,
    /// The newer version: DATASET@N (or @latest).
    pub to: String,
    /// Also versions no witnessed checkpoint covers yet (when the vault requires witnesses).
    #[arg(long)]
    pub unwitnessed: bool,
}

/// Runs `embassy diff`.
pub fn run(cli: &Cli, args: &DiffArgs) -> Result<ExitCode> {
    let (da, sa) = browse::split_target(&args.from);
    let (db, sb) = browse::split_target(&args.to);
    let vault = open_vault(cli)?;
    let unwitnessed = args.unwitnessed;
    vault.find_trusted_version(da, sa, unwitnessed)?;
    vault.find_trusted_version(db, sb, unwitnessed)?;
    let keyring = unlock(cli, &vault)?;
    let from = browse::open(&vault, &keyring, da, sa, unwitnessed)?;
    let to = browse::open(&vault, &keyring, db, sb, unwitnessed)?;
    let diff = browse::diff::diff(&from, &to)?;
    if cli.json {
        return print_json(to_json(&diff)?).map(|()| ExitCode::SUCCESS);
    }
    if let Some(note) = content_note(diff.to.content) {
        eprintln!("note: {note}");
    }
    let mut out = String::new();
    for d in &diff.differences {
        let path = format!(
            "{}{}",
            output::escape(&d.path),
            if d.kind == NodeKind::Dir { "/" } else { "" }
        );
        let line = match d.change {
            Change::Added => format!("+ {path}  {}", output::size(d.new_size.unwrap_or(0))),
            Change::Removed => format!("- {path}  {}", output::size(d.old_size.unwrap_or(0))),
            Change::Changed if d.metadata_only => format!("U {path}  (metadata only)"),
            Change::Changed => format!(
                "M {path}  {} -> {} ({})",
                output::size(d.old_size.unwrap_or(0)),
                output::size(d.new_size.unwrap_or(0)),
                signed_size(d.size_delta)
            ),
        };
        out.push_str(&line);
        out.push('\n');
    }
    print!("{out}");
    let s = &diff.summary;
    println!(
        "{}@{} -> {}@{}: {} added ({}), {} removed ({}), {} changed; size {}",
        diff.from.dataset,
        diff.from.version,
        diff.to.dataset,
        diff.to.version,
        s.added,
        output::size(s.added_bytes),
        s.removed,
        output::size(s.removed_bytes),
        s.changed,
        signed_size(s.size_delta)
    );
    Ok(ExitCode::SUCCESS)
}

/// `+1.2 MB`, `-300 B`, `+0 B`.
fn signed_size(delta: i64) -> String {
    let sign = if delta < 0 { '-' } else { '+' };
    format!("{sign}{}", output::size(delta.unsigned_abs()))
}
