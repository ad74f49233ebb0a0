//! `wal-fetch`: PostgreSQL's `restore_command` (`embassy wal-fetch DATASET %f %p`). Assembles a
//! WAL segment or timeline history file from the vault, from a compacted segment object or the
//! chain of small pieces. The newest, still-partial segment can be served zero-padded to 16 MiB
//! (PostgreSQL stops at the first invalid record and, in standby mode, asks again later). The
//! restore's fetch helper (`replay`) fetches the next segments ahead into a private spool.

use std::path::Path;

use embassy_core::engine::vault::{Keyring, Vault};

use crate::error::{PgError, Result};
use crate::lsn::{parse_wal_file_name, WalFile, SEGMENT_SIZE};
use crate::wal;

/// How to fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Serve the newest, incomplete segment zero-padded (standby and `--latest` restores).
    pub partial: bool,
}

/// What `fetch` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// The whole file was written.
    Complete,
    /// A partial segment was written: this many bytes of WAL, then zeros to 16 MiB.
    Partial {
        /// Bytes of WAL in it.
        wal_bytes: u64,
    },
    /// The vault proves it holds no such file: the site listed nothing under its name (or only
    /// the start of the newest segment, when not served partial) and no accepted ledger anchor
    /// says WAL there was ever stored. `restore_command` exits 1 quietly. A site that cannot be
    /// read, an unreadable or damaged object, or an anchored file the site does not list is an
    /// error instead: never a reason for PostgreSQL to end recovery.
    NotFound,
}

/// The accepted ledger anchor whose range on `timeline` covers the WAL position `lsn`: the vault
/// stored WAL there, so a site that does not serve it lost it.
fn anchored_at(signers: &wal::WalSigners, timeline: u32, lsn: u64) -> Option<u64> {
    signers
        .authority()
        .anchors()
        .iter()
        .find(|a| a.timeline == timeline && a.start <= lsn && lsn < a.end)
        .map(|a| a.seq)
}

/// Absence of `name` that the ledger contradicts: WAL at `lsn` of `timeline` was anchored.
/// Below the WAL retention cut-off, retention collected it: said so, not called damage.
fn missing(
    vault: &Vault,
    signers: &wal::WalSigners,
    name: &str,
    timeline: u32,
    lsn: u64,
) -> Result<()> {
    match anchored_at(signers, timeline, lsn) {
        None => Ok(()),
        Some(_) if signers.cutoff().lsn > lsn => Err(PgError::WalCollected {
            file: name.to_string(),
            lsn: crate::Lsn(lsn).to_string(),
            cutoff: signers.cutoff().describe(),
        }),
        Some(seq) => Err(PgError::WalLost {
            file: name.to_string(),
            site: vault.site().location().to_string(),
            lsn: crate::Lsn(lsn).to_string(),
            seq,
        }),
    }
}

/// Fetches the WAL file `name` (as PostgreSQL passes `%f`) of `dataset` into `dest`.
pub fn fetch(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    name: &str,
    dest: &Path,
    opts: &FetchOptions,
) -> Result<Fetched> {
    let what = parse_wal_file_name(name)?;
    let site = vault.site().as_ref();
    let signers = wal::dataset_signers(vault, dataset)?;
    match what {
        WalFile::Other => Ok(Fetched::NotFound),
        WalFile::History { timeline } => {
            let listing = wal::list_histories(site, dataset, timeline)?;
            match wal::history_file(site, keyring, &listing, timeline, &signers)? {
                Some(bytes) => {
                    write_atomic(dest, &bytes)?;
                    Ok(Fetched::Complete)
                }
                None => {
                    // WAL anchored on a timeline after the first means its history file was
                    // stored (timeline 1 has none).
                    if let Some(a) = signers
                        .authority()
                        .anchors()
                        .iter()
                        .find(|a| a.timeline == timeline && timeline > 1)
                    {
                        missing(vault, &signers, name, timeline, a.start)?;
                    }
                    Ok(Fetched::NotFound)
                }
            }
        }
        WalFile::Segment { timeline, segno } => {
            let listing = wal::list_segment(site, dataset, timeline, segno)?;
            let seg_start = segno * SEGMENT_SIZE;
            match wal::assemble_segment(site, keyring, &listing, timeline, segno, &signers)? {
                Some(a) if a.complete => {
                    write_atomic(dest, &a.bytes)?;
                    Ok(Fetched::Complete)
                }
                Some(a) if opts.partial => {
                    let n = a.bytes.len() as u64;
                    missing(vault, &signers, name, timeline, seg_start + n)?;
                    let mut bytes = a.bytes;
                    bytes.resize(SEGMENT_SIZE as usize, 0);
                    write_atomic(dest, &bytes)?;
                    Ok(Fetched::Partial { wal_bytes: n })
                }
                Some(a) => {
                    missing(
                        vault,
                        &signers,
                        name,
                        timeline,
                        seg_start + a.bytes.len() as u64,
                    )?;
                    Ok(Fetched::NotFound)
                }
                None => {
                    missing(vault, &signers, name, timeline, seg_start)?;
                    Ok(Fetched::NotFound)
                }
            }
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> PgError {
    PgError::Vault(embassy_core::Error::io(
        format!("writing {}", path.display()),
        e,
    ))
}

/// Writes a fetched WAL file through a fresh, randomly named temporary file (never through a
/// planted link), then renames it into place.
fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    embassy_core::fsutil::write_atomic(dest, bytes).map_err(|e| io_err(dest, e))
}
