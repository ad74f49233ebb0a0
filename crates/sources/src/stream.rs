//! Byte streams: standard input or a command's output (for example `pg_dump`), stored as a
//! version holding one file named `stream`. A command that exits non-zero, or a stream that
//! breaks, records no version.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::writer::{BackupSession, StoreError};
use embassy_core::format::config::now_unix_nanos;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::progress::Progress;
use embassy_core::{Error, Result};

use crate::env::Scrub;
use rayon::prelude::*;

/// Name of the single file a stream version holds.
pub const STREAM_NAME: &[u8] = b"stream";

fn store(
    session: BackupSession,
    reader: impl Read,
    what: &str,
    source: Vec<String>,
    progress: &dyn Progress,
    before_commit: impl FnOnce() -> Result<()>,
) -> Result<Version> {
    let (content, length) = session
        .store_reader(reader, progress)
        .map_err(|e| match e {
            StoreError::Read(e) => Error::Source {
                what: what.to_string(),
                problem: format!("the stream broke: {e}"),
            },
            StoreError::Vault(e) => e,
        })?;
    before_commit()?;
    let node = Node {
        name: STREAM_NAME.to_vec(),
        kind: NodeKind::File,
        mode: 0o600,
        uid: 0,
        gid: 0,
        mtime_ns: now_unix_nanos(),
        ctime_ns: 0,
        inode: 0,
        size: length,
        content,
        subtree: None,
        target: None,
    };
    let root = session.store_blob(BlobKind::Tree, Tree { nodes: vec![node] }.encode())?;
    let stats = VersionStats {
        files: 1,
        bytes: length,
        bytes_read: length,
        ..VersionStats::default()
    };
    session.finish(VersionKind::Stream, root, source, stats)
}

/// Stores everything `reader` yields as a new version of `dataset`.
pub fn backup_reader(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    reader: impl Read,
    description: &str,
    progress: &dyn Progress,
) -> Result<Version> {
    let session = BackupSession::begin(vault, keyring, dataset)?;
    store(
        session,
        reader,
        description,
        vec![description.to_string()],
        progress,
        || Ok(()),
    )
}

/// Runs `command` with `sh -c` and stores its standard output; the version is recorded only if
/// the command exits with status 0. With `scrub`, the command does not inherit the variables it
/// withholds (see [`crate::env`]); without, it inherits the whole environment.
///
/// Errors say "source command", never its text: a command line may carry a password, and
/// errors end up in logs and on the agent's dashboard.
pub fn backup_command(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    command: &str,
    scrub: Option<&Scrub>,
    progress: &dyn Progress,
) -> Result<Version> {
    let what = "command".to_string();
    let session = BackupSession::begin(vault, keyring, dataset)?;
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(scrub) = scrub {
        scrub.apply(&mut shell);
    }
    let mut child = shell.spawn().map_err(|e| Error::Source {
        what: what.clone(),
        problem: format!("cannot be started: {e}"),
    })?;
    let Some(stdout) = child.stdout.take() else {
        return Err(Error::invalid("command has no standard output"));
    };
    let mut waited = None;
    let result = store(
        session,
        stdout,
        &what,
        vec![command.to_string()],
        progress,
        || {
            let status = child
                .wait()
                .map_err(|e| Error::io(format!("waiting for {what}"), e))?;
            waited = Some(status);
            if status.success() {
                Ok(())
            } else {
                Err(Error::Source {
                    what: what.clone(),
                    problem: match status.code() {
                        Some(code) => format!("exited with status {code}"),
                        None => format!("was killed ({status})"),
                    },
                })
            }
        },
    );
    if waited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

/// Writes a stream version's bytes to `out`, in order; returns how many.
pub fn restore_to(
    reader: &VersionReader,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<u64> {
    let root = reader.root()?;
    let node = root
        .find(STREAM_NAME)
        .filter(|n| n.kind == NodeKind::File)
        .ok_or_else(|| Error::invalid("this version is not a stream: restore it with --to DIR"))?;
    progress.set_total(node.size);
    let mut written = 0u64;
    for batch in node.content.chunks(16) {
        let blobs: Vec<Vec<u8>> = batch
            .par_iter()
            .map(|id| reader.read_blob(id))
            .collect::<Result<_>>()?;
        for blob in blobs {
            embassy_core::fsutil::write_sliced(out, &blob)
                .map_err(|e| Error::io("writing the restored stream", e))?;
            written += blob.len() as u64;
            progress.add(blob.len() as u64);
        }
    }
    out.flush()
        .map_err(|e| Error::io("writing the restored stream", e))?;
    if written != node.size {
        return Err(Error::corrupt(
            "stream",
            format!("expected {} bytes, chunks held {written}", node.size),
        ));
    }
    Ok(written)
}
