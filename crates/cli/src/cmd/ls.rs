//! `embassy ls DATASET[@VERSION] [PATH]`: the entries of a version (a folder's, or all below
//! it with `--recursive`), with `-l` their kind, mode, owner, size and time.

use std::process::ExitCode;

use clap::Args;
use embassy_core::format::tree::NodeKind;
use embassy_core::{Error, Result};
use embassy_ops::browse::{self, Content, Entry};

use crate::{open_vault, output, print_json, unlock, Cli};

/// Arguments of `embassy ls`.
#[derive(Args)]
pub struct LsArgs {
    /// The version: DATASET@N (N as `embassy versions` numbers them), DATASET@latest, or
    /// DATASET for the newest.
    pub target: String,
    /// A path inside the version (default: its top folder).
    pub path: Option<String>,
    /// Long listing: kind and mode, owner, size, modification time.
    #[arg(short = 'l', long)]
    pub long: bool,
    /// Everything below the path, not only what it holds.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Also versions no witnessed checkpoint covers yet (when the vault requires witnesses).
    #[arg(long)]
    pub unwitnessed: bool,
}

/// Runs `embassy ls`.
pub fn run(cli: &Cli, args: &LsArgs) -> Result<ExitCode> {
    let (dataset, selector) = browse::split_target(&args.target);
    let vault = open_vault(cli)?;
    // The version is found (and its history proved) before the passphrase is asked for.
    vault.find_trusted_version(dataset, selector, args.unwitnessed)?;
    let keyring = unlock(cli, &vault)?;
    let opened = browse::open(&vault, &keyring, dataset, selector, args.unwitnessed)?;
    let listing = browse::list(&opened, args.path.as_deref().unwrap_or(""), args.recursive)?;
    if cli.json {
        return print_json(to_json(&listing)?).map(|()| ExitCode::SUCCESS);
    }
    if let Some(note) = content_note(listing.content) {
        eprintln!("note: {note}");
    }
    let mut out = String::new();
    for entry in &listing.entries {
        if args.long {
            out.push_str(&long_line(entry));
        } else {
            out.push_str(&output::escape(&entry.path));
            if entry.kind == NodeKind::Dir {
                out.push('/');
            }
        }
        out.push('\n');
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// A report as JSON, with `"ok": true`.
pub fn to_json(report: &impl serde::Serialize) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(report)
        .map_err(|e| Error::invalid(format!("rendering the report as JSON: {e}")))?;
    if let Some(map) = value.as_object_mut() {
        map.insert("ok".into(), true.into());
    }
    Ok(value)
}

/// What a stream's or a PostgreSQL dataset's version shows, said once on stderr.
pub fn content_note(content: Content) -> Option<&'static str> {
    match content {
        Content::Tree => None,
        Content::Stream => Some(
            "a stream dataset: each version holds one object, `stream`, the whole stream \
             (restore it with `embassy restore DATASET@N --to FILE`)",
        ),
        Content::PostgresBaseBackup => Some(
            "a PostgreSQL dataset: each version is a base backup, the data directory's files; \
             the WAL streamed after it is not shown (`embassy restore` recovers with it)",
        ),
    }
}

/// `drwxr-xr-x`-style kind and mode.
pub fn mode_string(kind: NodeKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::File => '-',
    });
    let bits = [
        (0o400, 'r'),
        (0o200, 'w'),
        (0o100, 'x'),
        (0o040, 'r'),
        (0o020, 'w'),
        (0o010, 'x'),
        (0o004, 'r'),
        (0o002, 'w'),
        (0o001, 'x'),
    ];
    for (bit, c) in bits {
        s.push(if mode & bit != 0 { c } else { '-' });
    }
    s
}

fn long_line(entry: &Entry) -> String {
    let mut line = format!(
        "{} {:>6} {:>6} {:>12}  {}  {}",
        mode_string(entry.kind, entry.mode),
        entry.uid,
        entry.gid,
        entry.size,
        output::time(entry.mtime_ns),
        output::escape(&entry.path)
    );
    if let Some(target) = &entry.target {
        line.push_str(" -> ");
        line.push_str(&output::escape(target));
    }
    line
}
