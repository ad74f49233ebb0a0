//! Restore drills: the newest version of a dataset restored into a scratch place (never over
//! live data), checked, measured (RTO, RPO) and recorded as a signed `drill_recorded` ledger
//! entry (format §9), which anyone can read back without keys ([`last_drills`]).
//!
//! Who may record a drill: a key holding the `drill` right (the root key file's signing key,
//! and the keys in `config.signers`). A sealing credential never holds it: it cannot read, so
//! it cannot have run a drill, and a stolen one must not be able to vouch that a broken vault
//! restores. A reader credential has no signing key: its drills run and are reported, but not
//! recorded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::format::manifest::VersionKind;
use embassy_core::history::ledger::{self, DrillCheck, DrillResult, Event, Record, Right};
use embassy_core::progress::Silent;
use embassy_core::{Error, Result};
use embassy_sources::{check, files, stream};

/// The program that runs drills, as recorded.
pub const TOOL: &str = concat!("embassy ", env!("CARGO_PKG_VERSION"));

/// The vault format that first holds drill entries.
pub const DRILL_FORMAT_VERSION: u32 = 3;

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillRequest<'a> {
    /// The dataset.
    pub dataset: &'a str,
    /// The folder under which the scratch place is made (a new private sub-folder, removed
    /// when the drill ends, whatever the outcome).
    pub scratch: &'a Path,
    /// Drill the newest version even when no witnessed checkpoint covers it yet.
    pub allow_unwitnessed: bool,
    /// Append the result to the ledger.
    pub record: bool,
    /// How PostgreSQL datasets are drilled on this host (None: a PostgreSQL dataset is
    /// refused).
    pub postgres: Option<&'a crate::pgdrill::PgDrillOptions>,
}

/// What a drill restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DrillKind {
    /// A file tree.
    Tree,
    /// A byte stream.
    Stream,
    /// A PostgreSQL dataset: a base backup replayed to the newest durable WAL and started.
    Postgres,
}

/// What a drill did and found.
#[derive(Debug, Clone)]
pub struct DrillReport {
    /// The dataset.
    pub dataset: String,
    /// Tree or stream.
    pub kind: DrillKind,
    /// The version restored, by its number.
    pub version: u64,
    /// The result as recorded (or as it would have been).
    pub result: DrillResult,
    /// Files checked byte for byte.
    pub files: u64,
    /// Bytes checked.
    pub bytes: u64,
    /// PostgreSQL: the rows of every table of the restored server.
    pub tables: Vec<crate::pgdrill::TableCount>,
    /// The ledger entry's sequence number, once recorded.
    pub recorded: Option<u64>,
    /// Why the result is not recorded, when asked to record it.
    pub not_recorded: Option<String>,
}

/// Runs one drill of `request.dataset`: the newest (trusted) version restored into a scratch
/// folder, every byte checked against the version, RTO and RPO measured, the scratch folder
/// removed, and (when asked) the result signed into the ledger. Damage found while restoring
/// is a failed drill (recorded as such); an outage or a missing key is an error.
pub fn run(vault: &Vault, request: &DrillRequest, keyring: &Keyring) -> Result<DrillReport> {
    let dataset = request.dataset;
    let started = Instant::now();
    let started_ns = embassy_core::format::config::now_unix_nanos();
    let newest_acknowledged = vault
        .versions(dataset)?
        .iter()
        .map(|v| v.captured_at_ns)
        .max();
    let version = vault.find_trusted_version(dataset, None, request.allow_unwitnessed)?;
    let reader = VersionReader::open_with(vault.site().clone(), keyring, &version)?;
    if crate::restore::is_base_backup(&reader) {
        let Some(options) = request.postgres else {
            return Err(Error::invalid(format!(
                "dataset {dataset} is a PostgreSQL dataset, and this drill was given no way to \
                 run PostgreSQL (its programs, the user it runs as, the sites for its WAL)"
            )));
        };
        let scratch = Scratch::new(request.scratch, options.owner)?;
        let drilled = crate::pgdrill::run(
            vault,
            keyring,
            dataset,
            options,
            &scratch.path,
            &version,
            request.allow_unwitnessed,
            started,
        )?;
        drop(scratch);
        let passed = drilled.checks.iter().all(|c| c.passed);
        let result = DrillResult {
            version_seq: drilled.version.seq,
            manifest: drilled.version.manifest,
            lsn: drilled.lsn,
            started_ns,
            rto_ms: drilled.rto_ms,
            rpo_ms: drilled.rpo_ms,
            checks: drilled.checks,
            passed,
            host: host_name(),
            tool: TOOL.into(),
        };
        let report = DrillReport {
            dataset: dataset.to_string(),
            kind: DrillKind::Postgres,
            version: drilled.version.number,
            result,
            files: drilled.version.stats.files,
            bytes: drilled.version.stats.bytes,
            tables: drilled.tables,
            recorded: None,
            not_recorded: None,
        };
        return Ok(finish(vault, keyring, request, report));
    }
    let kind = match version.kind {
        VersionKind::Tree => DrillKind::Tree,
        VersionKind::Stream => DrillKind::Stream,
    };
    let scratch = Scratch::new(request.scratch, None)?;
    let mut checks = Vec::new();
    let mut rto_ms = 0;
    let (files, bytes) = match restore_and_check(&reader, &version, kind, &scratch.path, || {
        rto_ms = millis(started.elapsed());
    }) {
        Ok((restored, checked)) => {
            checks.push(restored);
            checks.push(checked.0);
            (checked.1, checked.2)
        }
        Err(e) if e.is_integrity() => {
            checks.push(DrillCheck {
                name: "restore".into(),
                passed: false,
                detail: e.to_string(),
            });
            rto_ms = millis(started.elapsed());
            (0, 0)
        }
        Err(e) => return Err(e),
    };
    drop(scratch);
    let rpo_ms = newest_acknowledged.map_or(0, |n| {
        u64::try_from(n.saturating_sub(version.captured_at_ns) / 1_000_000).unwrap_or(0)
    });
    let passed = !checks.is_empty() && checks.iter().all(|c| c.passed);
    let result = DrillResult {
        version_seq: version.seq,
        manifest: version.manifest,
        lsn: None,
        started_ns,
        rto_ms,
        rpo_ms,
        checks,
        passed,
        host: host_name(),
        tool: TOOL.into(),
    };
    let report = DrillReport {
        dataset: dataset.to_string(),
        kind,
        version: version.number,
        result,
        files,
        bytes,
        tables: Vec::new(),
        recorded: None,
        not_recorded: None,
    };
    Ok(finish(vault, keyring, request, report))
}

/// Records the drill's result when asked to.
fn finish(
    vault: &Vault,
    keyring: &Keyring,
    request: &DrillRequest,
    mut report: DrillReport,
) -> DrillReport {
    if request.record {
        match record(vault, keyring, request.dataset, &report.result) {
            Ok(seq) => report.recorded = Some(seq),
            Err(why) => report.not_recorded = Some(why),
        }
    }
    report
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Restores the version into `dir`, calls `complete` once the copy is complete (the RTO's
/// end), then checks it: the restore check and the byte check with its counts.
fn restore_and_check(
    reader: &VersionReader,
    version: &Version,
    kind: DrillKind,
    dir: &Path,
    complete: impl FnOnce(),
) -> Result<(DrillCheck, (DrillCheck, u64, u64))> {
    let checked = match kind {
        DrillKind::Postgres => {
            return Err(Error::invalid(
                "a PostgreSQL base backup is drilled by starting PostgreSQL on it",
            ))
        }
        DrillKind::Tree => {
            let target = dir.join("tree");
            let stats =
                files::restore(reader, &target, &files::RestoreOptions::default(), &Silent)?;
            complete();
            let restored = DrillCheck {
                name: "restore".into(),
                passed: true,
                detail: format!("{} files, {} bytes written", stats.files, stats.bytes),
            };
            (restored, check::tree(reader, &target)?)
        }
        DrillKind::Stream => {
            let target = dir.join("stream");
            let mut out = std::fs::File::create_new(&target)
                .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
            let n = stream::restore_to(reader, &mut out, &Silent)?;
            out.sync_all()
                .map_err(|e| Error::io(format!("writing {}", target.display()), e))?;
            drop(out);
            complete();
            let restored = DrillCheck {
                name: "restore".into(),
                passed: true,
                detail: format!("{n} bytes written"),
            };
            (restored, check::stream(reader, &target)?)
        }
    };
    let (restored, found) = checked;
    let stats = &version.stats;
    let counts_match = found.files == stats.files && found.bytes == stats.bytes;
    let detail = if found.passed() && counts_match {
        format!(
            "{}, {} bytes read back and match the manifest",
            embassy_core::text::count(found.files, "file", "files"),
            found.bytes
        )
    } else if !found.passed() {
        format!(
            "{} paths differ from the version: {}",
            found.differing_count,
            found.differing.join(", ")
        )
    } else {
        format!(
            "{} files, {} bytes read back, the manifest counts {} files, {} bytes",
            found.files, found.bytes, stats.files, stats.bytes
        )
    };
    let bytes = DrillCheck {
        name: "bytes".into(),
        passed: found.passed() && counts_match,
        detail,
    };
    Ok((restored, (bytes, found.files, found.bytes)))
}

/// Appends the drill's result to the dataset's ledger, or says why it cannot be.
fn record(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    result: &DrillResult,
) -> std::result::Result<u64, String> {
    let format = vault.config().format_version;
    if format < DRILL_FORMAT_VERSION {
        return Err(format!(
            "the vault is at format version {format}, which holds no drill entries (programs of \
             that version could not read them): drills of it are reported, not recorded"
        ));
    }
    let signer = keyring.signer().map_err(|e| e.to_string())?;
    let mut attempt = 0;
    loop {
        let history = vault.history_full(dataset).map_err(|e| e.to_string())?;
        history
            .check_appendable(dataset)
            .map_err(|e| e.to_string())?;
        let authority = vault.authority(dataset, &history.records);
        if !authority.may(&signer.verifying_key().to_bytes(), Right::Drill) {
            return Err(format!(
                "this key may not sign drills of dataset {dataset} (the right `drill` is the \
                 root key's and config.signers'; sealing credentials never hold it): run the \
                 drill with the root key file"
            ));
        }
        match ledger::append_ignoring(
            vault.site().as_ref(),
            &signer,
            dataset,
            history.records.last(),
            &history.rejected_ids(),
            Event::DrillRecorded(Box::new(result.clone())),
        ) {
            Ok(record) => {
                // A checkpoint naming the new head, as a backup writes one: witnesses cosign
                // it, and a site cannot withhold the drill entry from a client that saw it.
                // The entry is durable already, so a failure here only leaves the next
                // operation's checkpoint to cover it.
                if vault.may_checkpoint(&signer) {
                    let _ = vault.write_checkpoint(&signer);
                }
                return Ok(record.entry.seq);
            }
            Err(Error::History { .. }) if attempt < 5 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(50 * attempt));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The host name, as recorded.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The newest drill recorded for one dataset, read from its accepted history (no keys).
#[derive(Debug, Clone)]
pub struct LastDrill {
    /// The dataset.
    pub dataset: String,
    /// The entry's sequence number.
    pub seq: u64,
    /// When it was recorded (ns since the epoch).
    pub time_ns: i64,
    /// The number of the version drilled, while that version is live.
    pub version: Option<u64>,
    /// The signer's public key, hex.
    pub signer: String,
    /// What it found.
    pub result: DrillResult,
}

/// The newest accepted drill entry in `history`, if any.
pub fn last_drill(history: &[Record], versions: &[Version]) -> Option<LastDrill> {
    history.iter().rev().find_map(|r| match &r.entry.event {
        Event::DrillRecorded(result) if r.refused.is_none() => Some(LastDrill {
            dataset: r.entry.dataset.clone(),
            seq: r.entry.seq,
            time_ns: r.entry.time_ns,
            version: versions
                .iter()
                .find(|v| v.seq == result.version_seq)
                .map(|v| v.number),
            signer: hex::encode(r.entry.signer),
            result: (**result).clone(),
        }),
        _ => None,
    })
}

/// The newest drill of each dataset of the vault (datasets never drilled are left out), read
/// without keys: what `verify` and `drill --report` show.
pub fn last_drills(vault: &Vault) -> Result<Vec<LastDrill>> {
    let mut out = Vec::new();
    for dataset in vault.datasets()? {
        let history = vault.history(&dataset)?;
        let versions = embassy_core::history::numbering::versions_in(&dataset, &history);
        if let Some(last) = last_drill(&history, &versions) {
            out.push(last);
        }
    }
    Ok(out)
}

/// The datasets of the vault with no drill recorded yet.
pub fn never_drilled(vault: &Vault) -> Result<Vec<String>> {
    let drilled: Vec<String> = last_drills(vault)?.into_iter().map(|d| d.dataset).collect();
    Ok(vault
        .datasets()?
        .into_iter()
        .filter(|d| !drilled.contains(d))
        .collect())
}

/// A private scratch folder for one drill, removed when dropped (on every path out of
/// [`run`], errors and panics included). Folders of earlier drills whose process is gone
/// (killed before it could clean up) are removed when the next drill starts, after stopping
/// a PostgreSQL server such a drill left running in one.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// A new scratch folder below `parent`, owned by `owner` (uid, gid) when given: the user a
    /// restored PostgreSQL server runs as, who must then be able to pass through `parent`.
    fn new(parent: &Path, owner: Option<(u32, u32)>) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        if let Some((uid, _)) = owner.filter(|(uid, _)| *uid != crate::pgrestore::current_uid()) {
            // Passable (not listable) by the server's user; each drill's folder is its own.
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| Error::io(format!("setting mode 0711 on {}", parent.display()), e))?;
            if !crate::pgrestore::reachable_by(parent, owner) {
                return Err(Error::invalid(format!(
                    "the restored server's user (uid {uid}) cannot reach the drill's scratch \
                     folder {}: give a scratch folder below folders that user may pass through",
                    parent.display()
                )));
            }
        }
        sweep(parent);
        let name = format!(
            "drill-{}-{}",
            std::process::id(),
            hex::encode(&embassy_core::keys::crypto::random_32()[..8])
        );
        let path = parent.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let scratch = Self { path };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&scratch.path, Some(uid), Some(gid)).map_err(|e| {
                Error::io(format!("giving {} to uid {uid}", scratch.path.display()), e)
            })?;
        }
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Removes scratch folders left by drills whose process no longer runs.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("drill-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            embassy_postgres::scratch::stop_leftover(&entry.path().join("data"));
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
