//! Periodic base backups of a running PostgreSQL server, stored as versions of the dataset.
//!
//! `pg_basebackup -D - -Ft` streams the base tar to us; we read it entry by entry (the `tar`
//! crate) and store each file as it arrives, so no spool of the database's size is needed.
//! Relation files (`base/<db>/<relfilenode>[_fork][.segment]`, `global/...`, and a
//! tablespace's `pg_tblspc/<oid>/PG_15_<catversion>/<db>/...`: the one rule of
//! [`embassy_sources::relation`], shared with file-tree backups) are cut on 8 KiB page
//! boundaries: unchanged pages dedup against earlier base backups, so a base backup after a day
//! of scattered updates stores about the changed pages (see docs/design.md). Everything else
//! uses content-defined chunks.
//!
//! The version is a normal file tree (`embassy restore` of it without PostgreSQL options gives
//! the raw data directory, backup_label included); its manifest's properties record what a
//! point-in-time restore needs: start and stop LSN, timeline, system identifier, PostgreSQL
//! version, backup_label, tablespace map, and whether the WAL to reach consistency is inside.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::writer::{BackupSession, StoreError};
use embassy_core::format::chunker::Chunking;
use embassy_core::format::config::now_unix_nanos;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::progress::Progress;
use embassy_sources::relation::{is_relation_path, RelationChunker};

use crate::error::PgError;
use crate::lsn::Lsn;
use crate::replication::ConnConfig;

/// Manifest property naming a PostgreSQL base backup (value `1`).
pub const PROP_BASE_BACKUP: &str = "postgres.base_backup";

/// Where the WAL needed to make a base backup consistent comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSource {
    /// Inside the version (`pg_basebackup -X fetch`): the base backup alone restores.
    Included,
    /// From the dataset's streamed WAL (the replication slot keeps it until it is safe).
    Streamed,
}

/// How to take a base backup.
#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    /// libpq connection string of the server (a role with REPLICATION).
    pub conninfo: String,
    /// Where the WAL between start and stop comes from.
    pub wal: WalSource,
    /// The `pg_basebackup` program; default: PostgreSQL's bindir (`pg_config --bindir`),
    /// `/usr/lib/postgresql/15/bin`, then `PATH`.
    pub pg_basebackup: Option<PathBuf>,
    /// Label shown in `pg_stat_progress_basebackup` and backup_label.
    pub label: String,
}

impl BaseBackupOptions {
    /// Options for `conninfo` with WAL inside the version.
    pub fn new(conninfo: impl Into<String>) -> Self {
        BaseBackupOptions {
            conninfo: conninfo.into(),
            wal: WalSource::Included,
            pg_basebackup: None,
            label: "data-embassy base backup".into(),
        }
    }
}

/// What a restore needs to know about a base backup (stored in its manifest's properties).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseBackupInfo {
    /// WAL position where replay must start (backup_label's START WAL LOCATION).
    pub start_lsn: Lsn,
    /// WAL position where the backup becomes consistent.
    pub stop_lsn: Lsn,
    /// Timeline of the backup.
    pub timeline: u32,
    /// The cluster's system identifier (from global/pg_control).
    pub system_identifier: u64,
    /// PostgreSQL major version (PG_VERSION).
    pub pg_version: String,
    /// The backup_label file as the server wrote it.
    pub backup_label: String,
    /// The tablespace_map file, when the server has tablespaces.
    pub tablespace_map: Option<String>,
    /// Whether the WAL from start to stop is inside the version.
    pub wal_included: bool,
    /// When the backup started, ns since the Unix epoch.
    pub started_at_ns: i64,
    /// When pg_basebackup finished (at or after the stop LSN was written), ns since the epoch.
    pub stopped_at_ns: i64,
}

impl BaseBackupInfo {
    /// The manifest properties that record this backup.
    pub fn to_properties(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        p.insert(PROP_BASE_BACKUP.into(), "1".into());
        p.insert("postgres.start_lsn".into(), self.start_lsn.to_string());
        p.insert("postgres.stop_lsn".into(), self.stop_lsn.to_string());
        p.insert("postgres.timeline".into(), self.timeline.to_string());
        p.insert(
            "postgres.system_identifier".into(),
            self.system_identifier.to_string(),
        );
        p.insert("postgres.version".into(), self.pg_version.clone());
        p.insert("postgres.backup_label".into(), self.backup_label.clone());
        if let Some(map) = &self.tablespace_map {
            p.insert("postgres.tablespace_map".into(), map.clone());
        }
        p.insert(
            "postgres.wal_included".into(),
            self.wal_included.to_string(),
        );
        p.insert(
            "postgres.started_at_ns".into(),
            self.started_at_ns.to_string(),
        );
        p.insert(
            "postgres.stopped_at_ns".into(),
            self.stopped_at_ns.to_string(),
        );
        p
    }

    /// Reads the properties of a version's manifest; `None` if it is not a base backup.
    pub fn from_properties(p: &BTreeMap<String, String>) -> Result<Option<Self>, PgError> {
        if p.get(PROP_BASE_BACKUP).map(String::as_str) != Some("1") {
            return Ok(None);
        }
        let get = |k: &str| {
            p.get(k).ok_or_else(|| {
                PgError::BaseBackup(format!("base backup manifest lacks property {k}"))
            })
        };
        let num = |k: &str| -> Result<i64, PgError> {
            get(k)?.parse().map_err(|_| {
                PgError::BaseBackup(format!("base backup property {k} is not a number"))
            })
        };
        Ok(Some(BaseBackupInfo {
            start_lsn: get("postgres.start_lsn")?.parse()?,
            stop_lsn: get("postgres.stop_lsn")?.parse()?,
            timeline: num("postgres.timeline")? as u32,
            system_identifier: get("postgres.system_identifier")?.parse().map_err(|_| {
                PgError::BaseBackup("base backup property postgres.system_identifier is bad".into())
            })?,
            pg_version: get("postgres.version")?.clone(),
            backup_label: get("postgres.backup_label")?.clone(),
            tablespace_map: p.get("postgres.tablespace_map").cloned(),
            wal_included: get("postgres.wal_included")? == "true",
            started_at_ns: num("postgres.started_at_ns")?,
            stopped_at_ns: num("postgres.stopped_at_ns")?,
        }))
    }
}

/// A stored base backup.
#[derive(Debug)]
pub struct BaseBackup {
    /// The version recorded.
    pub version: Version,
    /// What restore needs.
    pub info: BaseBackupInfo,
}

/// Finds a PostgreSQL client program: PostgreSQL's bindir first, then `PATH`.
pub fn pg_program(name: &str) -> PathBuf {
    let from_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    for dir in [
        from_config,
        Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
    ]
    .into_iter()
    .flatten()
    {
        if dir.join(name).is_file() {
            return dir.join(name);
        }
    }
    PathBuf::from(name)
}

/// Chunking of the file at `path` of `size` bytes: pages for relation files (within each
/// directory's budget, see [`RelationChunker`]), content-defined for the rest.
fn chunking_for(
    path: &[Vec<u8>],
    size: u64,
    budgets: &mut HashMap<Vec<Vec<u8>>, RelationChunker>,
) -> Chunking {
    if !is_relation_path(path) {
        return Chunking::ContentDefined;
    }
    let dir = path[..path.len() - 1].to_vec();
    budgets.entry(dir).or_default().chunking(size)
}

/// Splits a tar path into safe components (no `.`/`..`, no empty names).
fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, PgError> {
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(PgError::BaseBackup(format!(
                    "pg_basebackup sent a path with '..': {}",
                    String::from_utf8_lossy(path)
                )))
            }
            p => out.push(p.to_vec()),
        }
    }
    Ok(out)
}

/// A directory's own node (when the archive had an entry for it) and its children so far.
type DirParts = (Option<Node>, Vec<Node>);

/// Directories being assembled from the tar: path -> its parts.
#[derive(Default)]
struct Assembly {
    dirs: HashMap<Vec<Vec<u8>>, DirParts>,
}

impl Assembly {
    fn add(&mut self, path: Vec<Vec<u8>>, node: Node) {
        // Make sure every ancestor exists, so implicit directories are kept.
        for depth in 0..path.len() {
            self.dirs.entry(path[..depth].to_vec()).or_default();
        }
        let Some((_, parent)) = path.split_last() else {
            return;
        };
        if node.kind == NodeKind::Dir {
            self.dirs.entry(path.clone()).or_default().0 = Some(node);
        } else {
            self.dirs.entry(parent.to_vec()).or_default().1.push(node);
        }
    }

    /// Stores every directory's tree bottom-up; returns the root tree's id.
    fn store(
        mut self,
        session: &BackupSession,
        stats: &mut VersionStats,
    ) -> Result<ChunkId, PgError> {
        let mut paths: Vec<Vec<Vec<u8>>> = self.dirs.keys().cloned().collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
        let mut root = None;
        for path in paths {
            let Some((node, mut children)) = self.dirs.remove(&path) else {
                continue;
            };
            children.sort_by(|a, b| a.name.cmp(&b.name));
            children.dedup_by(|a, b| a.name == b.name);
            let id = session
                .store_blob(BlobKind::Tree, Tree { nodes: children }.encode())
                .map_err(PgError::Vault)?;
            match path.split_last() {
                None => root = Some(id),
                Some((name, parent)) => {
                    stats.dirs += 1;
                    let mut node = node.unwrap_or_else(|| dir_node(name));
                    node.subtree = Some(id);
                    self.dirs.entry(parent.to_vec()).or_default().1.push(node);
                }
            }
        }
        root.ok_or_else(|| PgError::BaseBackup("pg_basebackup sent an empty archive".into()))
    }
}

fn dir_node(name: &[u8]) -> Node {
    Node {
        name: name.to_vec(),
        kind: NodeKind::Dir,
        mode: 0o700,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        size: 0,
        content: Vec::new(),
        subtree: None,
        target: None,
    }
}

fn node_from_header(name: &[u8], kind: NodeKind, h: &tar::Header) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: h.mode().unwrap_or(0o600) & 0o7777,
        uid: h.uid().unwrap_or(0) as u32,
        gid: h.gid().unwrap_or(0) as u32,
        mtime_ns: (h.mtime().unwrap_or(0) as i64).saturating_mul(1_000_000_000),
        ctime_ns: 0,
        inode: 0,
        size: 0,
        content: Vec::new(),
        subtree: None,
        target: None,
    }
}

/// What was read out of the archive besides the files.
#[derive(Default)]
struct Extracted {
    backup_label: Option<String>,
    tablespace_map: Option<String>,
    backup_manifest: Option<Vec<u8>>,
    pg_control: Option<Vec<u8>>,
    pg_version: Option<String>,
}

/// Reads a base tar, storing every file into `session`; returns the root tree.
fn store_archive(
    session: &BackupSession,
    archive: impl Read,
    stats: &mut VersionStats,
    extracted: &mut Extracted,
    progress: &dyn Progress,
) -> Result<ChunkId, PgError> {
    let mut archive = tar::Archive::new(archive);
    let mut assembly = Assembly::default();
    let mut budgets = HashMap::new();
    let entries = archive
        .entries()
        .map_err(|e| PgError::BaseBackup(format!("reading pg_basebackup's archive: {e}")))?;
    for entry in entries {
        let mut entry = entry
            .map_err(|e| PgError::BaseBackup(format!("reading pg_basebackup's archive: {e}")))?;
        let raw_path = entry.path_bytes().into_owned();
        let path = components(&raw_path)?;
        let Some(name) = path.last().cloned() else {
            continue;
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
        if kind.is_dir() {
            assembly.add(path, node_from_header(&name, NodeKind::Dir, &header));
        } else if kind.is_symlink() {
            let mut node = node_from_header(&name, NodeKind::Symlink, &header);
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            node.target = Some(target);
            assembly.add(path, node);
        } else if kind.is_file() {
            let mut node = node_from_header(&name, NodeKind::File, &header);
            let whole = path.len() == 1;
            let keep = whole
                && matches!(
                    name.as_slice(),
                    b"backup_label" | b"tablespace_map" | b"backup_manifest" | b"PG_VERSION"
                )
                || path == [b"global".to_vec(), b"pg_control".to_vec()];
            let (content, length) = if keep {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).map_err(|e| {
                    PgError::BaseBackup(format!("reading pg_basebackup's archive: {e}"))
                })?;
                let text = || String::from_utf8_lossy(&bytes).into_owned();
                match name.as_slice() {
                    b"backup_label" => extracted.backup_label = Some(text()),
                    b"tablespace_map" => extracted.tablespace_map = Some(text()),
                    b"PG_VERSION" => extracted.pg_version = Some(text().trim().to_string()),
                    b"backup_manifest" => extracted.backup_manifest = Some(bytes.clone()),
                    _ => extracted.pg_control = Some(bytes.clone()),
                }
                progress.add(bytes.len() as u64);
                session
                    .store_reader_with(
                        &bytes[..],
                        Chunking::ContentDefined,
                        &embassy_core::progress::Silent,
                    )
                    .map_err(store_error)?
            } else {
                let chunking = chunking_for(&path, header.size().unwrap_or(0), &mut budgets);
                session
                    .store_reader_with(&mut entry, chunking, progress)
                    .map_err(store_error)?
            };
            node.content = content;
            node.size = length;
            stats.files += 1;
            stats.bytes += length;
            stats.bytes_read += length;
            assembly.add(path, node);
        }
        // Other entry kinds (devices, hard links) do not occur in a base backup.
    }
    assembly.store(session, stats)
}

fn store_error(e: StoreError) -> PgError {
    match e {
        StoreError::Read(e) => PgError::BaseBackup(format!("reading pg_basebackup's archive: {e}")),
        StoreError::Vault(e) => PgError::Vault(e),
    }
}

/// backup_label's `START WAL LOCATION: 0/2000028 (file ...)` and `START TIMELINE: 1`.
fn parse_backup_label(label: &str) -> Result<(Lsn, u32), PgError> {
    let mut start = None;
    let mut timeline = None;
    for line in label.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION:") {
            start = rest.split_whitespace().next().map(str::parse).transpose()?;
        } else if let Some(rest) = line.strip_prefix("START TIMELINE:") {
            timeline = rest.trim().parse().ok();
        }
    }
    match (start, timeline) {
        (Some(s), Some(t)) => Ok((s, t)),
        _ => Err(PgError::BaseBackup(format!(
            "backup_label lacks START WAL LOCATION or START TIMELINE: {label:?}"
        ))),
    }
}

/// The end of the backup's WAL range from the backup manifest (`WAL-Ranges`).
fn manifest_stop_lsn(manifest: &[u8]) -> Result<Lsn, PgError> {
    let json: serde_json::Value = serde_json::from_slice(manifest)
        .map_err(|e| PgError::BaseBackup(format!("backup_manifest is not JSON: {e}")))?;
    let end = json["WAL-Ranges"]
        .as_array()
        .and_then(|r| r.last())
        .and_then(|r| r["End-LSN"].as_str())
        .ok_or_else(|| PgError::BaseBackup("backup_manifest has no WAL-Ranges End-LSN".into()))?;
    end.parse()
}

/// Why pg_basebackup failed, from its exit status and standard error, with what to change.
fn pg_basebackup_failed(status: &str, stderr: &str) -> PgError {
    let stderr = stderr.trim();
    if stderr.contains("can only write single tablespace to stdout") {
        // pg_basebackup streams one tar to stdout only when the cluster has no tablespace
        // outside the data directory.
        return PgError::BaseBackup(format!(
            "the cluster has tablespaces outside its data directory ({stderr}); base backups \
             stream pg_basebackup's single tar and cannot include them yet: move the tables \
             into pg_default (ALTER TABLE .. SET TABLESPACE pg_default), or back up a stopped \
             cluster and its tablespace folders as file-tree datasets"
        ));
    }
    PgError::BaseBackup(format!(
        "pg_basebackup failed ({status}): {stderr}; check the connection string, that the role \
         has REPLICATION and pg_hba.conf allows a replication connection, and max_wal_senders"
    ))
}

/// The `pg_basebackup` command for `options`: the connection string is rebuilt from the parsed
/// one with the TLS settings in force ([`ConnConfig::libpq_conninfo`]) and without the password,
/// which goes in this child's environment only (`PGPASSWORD`), never in its argv where every
/// local user can read it (`ps`, /proc/<pid>/cmdline). The same transport rule as the streamer
/// applies: no plaintext off loopback without `insecure_plaintext=1`.
pub fn pg_basebackup_command(
    program: &Path,
    options: &BaseBackupOptions,
) -> Result<Command, PgError> {
    let conn = ConnConfig::parse(&options.conninfo)?;
    conn.check_transport(conn.is_local())?;
    let wal = match options.wal {
        WalSource::Included => "fetch",
        WalSource::Streamed => "none",
    };
    let mut cmd = Command::new(program);
    cmd.args([
        "-d",
        &conn.libpq_conninfo(),
        "-D",
        "-",
        "-F",
        "t",
        "-X",
        wal,
    ])
    .args(["--checkpoint", "fast", "--no-sync", "-l", &options.label]);
    // pg_basebackup needs none of our secrets (EMBASSY_PASSPHRASE, cloud keys): only the
    // PostgreSQL password, set just below.
    embassy_sources::env::Scrub::default().apply(&mut cmd);
    conn.pass_password_to(&mut cmd);
    Ok(cmd)
}

/// Takes a base backup of the server at `options.conninfo` and stores it as a new version of
/// `dataset`, with what a point-in-time restore needs in the manifest's properties.
pub fn base_backup(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    options: &BaseBackupOptions,
    progress: &dyn Progress,
) -> Result<BaseBackup, PgError> {
    let program = options
        .pg_basebackup
        .clone()
        .unwrap_or_else(|| pg_program("pg_basebackup"));
    let mut session = BackupSession::begin(vault, keyring, dataset).map_err(PgError::Vault)?;
    let started_at_ns = now_unix_nanos();
    let mut child = pg_basebackup_command(&program, options)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            PgError::BaseBackup(format!(
                "cannot run {}: {e}; install PostgreSQL's client programs (postgresql-client-15) \
                 or give the program's path",
                program.display()
            ))
        })?;
    let stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(s) = stderr {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                lines.push(line);
            }
        }
        lines
    });
    let mut stats = VersionStats::default();
    let mut extracted = Extracted::default();
    let stored = match child.stdout.take() {
        Some(mut out) => {
            let stored = store_archive(&session, &mut out, &mut stats, &mut extracted, progress);
            if stored.is_ok() {
                // Read to the end: pg_basebackup may still write after the archive's end
                // marker (padding), and a pipe closed under it kills it with SIGPIPE, failing
                // a backup that was complete (seen intermittently under load).
                let _ = std::io::copy(&mut out, &mut std::io::sink());
            }
            stored
        }
        None => Err(PgError::BaseBackup(
            "pg_basebackup's output is not a pipe".into(),
        )),
    };
    let status = child.wait();
    let stderr = errors.join().unwrap_or_default().join("\n");
    let ok = matches!(&status, Ok(s) if s.success());
    // pg_basebackup killed by SIGPIPE stopped because we stopped reading: the reason is ours
    // (the archive's error), not its exit status.
    let broken_pipe = {
        use std::os::unix::process::ExitStatusExt;
        matches!(&status, Ok(s) if s.signal() == Some(libc::SIGPIPE))
    };
    let stored = match stored {
        Err(e) if broken_pipe => return Err(e),
        other => other,
    };
    if !ok {
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        return Err(pg_basebackup_failed(&status, &stderr));
    }
    let root = stored?;
    let stopped_at_ns = now_unix_nanos();
    let label = extracted
        .backup_label
        .ok_or_else(|| PgError::BaseBackup("the base backup has no backup_label".into()))?;
    let (start_lsn, timeline) = parse_backup_label(&label)?;
    let stop_lsn = match &extracted.backup_manifest {
        Some(m) => manifest_stop_lsn(m)?,
        None => {
            return Err(PgError::BaseBackup(
                "pg_basebackup sent no backup_manifest (needs PostgreSQL 13 or newer)".into(),
            ))
        }
    };
    let control = extracted
        .pg_control
        .filter(|c| c.len() >= 8)
        .ok_or_else(|| PgError::BaseBackup("the base backup has no global/pg_control".into()))?;
    let system_identifier = u64::from_le_bytes(control[..8].try_into().unwrap_or_default());
    let info = BaseBackupInfo {
        start_lsn,
        stop_lsn,
        timeline,
        system_identifier,
        pg_version: extracted.pg_version.unwrap_or_default(),
        backup_label: label,
        tablespace_map: extracted.tablespace_map,
        wal_included: options.wal == WalSource::Included,
        started_at_ns,
        stopped_at_ns,
    };
    session.set_properties(info.to_properties());
    session.set_root_node(dir_node(b"data"));
    let source = vec![format!(
        "postgresql base backup ({})",
        redact(&options.conninfo)
    )];
    let version = session
        .finish(VersionKind::Tree, root, source, stats)
        .map_err(PgError::Vault)?;
    Ok(BaseBackup { version, info })
}

/// A connection string with any password removed (it goes into the manifest's source).
fn redact(conninfo: &str) -> String {
    conninfo
        .split_whitespace()
        .filter(|kv| !kv.to_ascii_lowercase().starts_with("password"))
        .map(|kv| {
            // postgresql://user:secret@host/db URIs
            match (kv.find("://"), kv.find('@')) {
                (Some(s), Some(at)) if at > s => {
                    let creds = &kv[s + 3..at];
                    match creds.split_once(':') {
                        Some((user, _)) => format!("{}{user}{}", &kv[..s + 3], &kv[at..]),
                        None => kv.to_string(),
                    }
                }
                _ => kv.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The base backups of `dataset`, oldest first, with their info (reads every manifest).
pub fn list_base_backups(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
) -> Result<Vec<(Version, BaseBackupInfo)>, PgError> {
    let mut out = Vec::new();
    for version in vault.versions(dataset).map_err(PgError::Vault)? {
        if version.kind != VersionKind::Tree {
            continue;
        }
        let reader = embassy_core::engine::reader::VersionReader::open_with(
            vault.site().clone(),
            keyring,
            &version,
        )
        .map_err(PgError::Vault)?;
        if let Some(info) = BaseBackupInfo::from_properties(&reader.manifest.properties)? {
            out.push((version, info));
        }
    }
    Ok(out)
}

/// True if `dir` looks like a PostgreSQL data directory (has PG_VERSION).
pub fn is_data_dir(dir: &Path) -> bool {
    dir.join("PG_VERSION").is_file()
}

#[cfg(test)]
mod tests {
    use super::*;
    use embassy_core::format::chunker::PG_PAGE;

    #[test]
    fn labels_and_manifests_give_lsns() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-11-27 03:00:00 UTC\n\
                     LABEL: x\nSTART TIMELINE: 3\n";
        assert_eq!(parse_backup_label(label).unwrap(), (Lsn(0x2000028), 3));
        assert!(parse_backup_label("LABEL: x\n").is_err());
        let manifest = br#"{"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}"#;
        assert_eq!(manifest_stop_lsn(manifest).unwrap(), Lsn(0x2000100));
    }

    #[test]
    fn relation_files_in_a_base_backup_use_pages() {
        let p = |s: &str| components(s.as_bytes()).unwrap();
        let mut b = HashMap::new();
        let page = Chunking::Aligned(PG_PAGE);
        assert_eq!(chunking_for(&p("base/16384/16385"), 8192, &mut b), page);
        assert_eq!(chunking_for(&p("./global/1262_fsm"), 8192, &mut b), page);
        let control = p("global/pg_control");
        assert_eq!(
            chunking_for(&control, 8192, &mut b),
            Chunking::ContentDefined
        );
        let wal = p("pg_wal/000000010000000000000002");
        assert_eq!(
            chunking_for(&wal, 1 << 24, &mut b),
            Chunking::ContentDefined
        );
        assert!(components(b"base/../../etc").is_err());
        // A huge database directory: page chunks up to the budget, then larger ones.
        let big = 1u64 << 30;
        for i in 0..8 {
            let f = p(&format!("base/5/{}", 20000 + i));
            assert_eq!(chunking_for(&f, big, &mut b), page, "segment {i}");
        }
        let f = p("base/5/30000");
        assert_eq!(
            chunking_for(&f, big, &mut b),
            Chunking::Aligned(64 * PG_PAGE)
        );
        // Other directories have their own budget.
        assert_eq!(chunking_for(&p("base/6/1"), big, &mut b), page);
        // Tablespaces' relation files are pages too (pg_tblspc/<oid>/PG_15_<catversion>/<db>).
        let ts = p("pg_tblspc/16400/PG_15_202209061/16384/16401");
        assert_eq!(chunking_for(&ts, 8192, &mut b), page);
        let ts_other = p("pg_tblspc/16400/PG_15_202209061/16384/PG_VERSION");
        assert_eq!(
            chunking_for(&ts_other, 8192, &mut b),
            Chunking::ContentDefined
        );
    }

    #[test]
    fn a_cluster_with_tablespaces_is_told_what_to_do() {
        // pg_basebackup 15's own words with -D - and a tablespace outside the data directory.
        let e = pg_basebackup_failed(
            "exit status: 1",
            "pg_basebackup: error: can only write single tablespace to stdout, database has 2\n",
        )
        .to_string();
        assert!(e.contains("tablespaces outside its data directory"), "{e}");
        assert!(e.contains("SET TABLESPACE pg_default"), "{e}");
        assert!(!e.contains("pg_hba.conf"), "{e}");
        let e = pg_basebackup_failed("exit status: 1", "FATAL: no pg_hba.conf entry").to_string();
        assert!(
            e.contains("pg_hba.conf allows a replication connection"),
            "{e}"
        );
    }

    #[test]
    fn passwords_stay_out_of_pg_basebackups_argv() {
        let options = BaseBackupOptions::new(
            "host=127.0.0.1 port=5432 user=embassy password='pa ss\\'word' sslmode=verify-full \
             sslrootcert=/etc/ca.pem",
        );
        let cmd = pg_basebackup_command(Path::new("pg_basebackup"), &options).unwrap();
        let argv: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            argv.iter()
                .all(|a| !a.contains("pa ss") && !a.contains("password")),
            "{argv:?}"
        );
        let conninfo = &argv[1];
        assert!(conninfo.contains("sslmode=verify-full"), "{conninfo}");
        assert!(conninfo.contains("sslrootcert='/etc/ca.pem'"), "{conninfo}");
        let env: Vec<_> = cmd.get_envs().collect();
        assert!(env.iter().any(|(k, v)| *k == "PGPASSWORD"
            && v.map(|v| v.to_string_lossy() == "pa ss'word")
                .unwrap_or(false)));
        // Plaintext to another machine is refused before anything runs.
        let remote = BaseBackupOptions::new("host=192.0.2.77 user=embassy sslmode=disable");
        assert!(matches!(
            pg_basebackup_command(Path::new("pg_basebackup"), &remote),
            Err(PgError::Insecure { .. })
        ));
    }

    #[test]
    fn passwords_stay_out_of_the_manifest() {
        assert_eq!(
            redact("host=h user=u password=secret dbname=d"),
            "host=h user=u dbname=d"
        );
        assert_eq!(
            redact("postgresql://u:secret@h:5432/d"),
            "postgresql://u@h:5432/d"
        );
    }
}
