//! Periodic base backups of a running PostgreSQL server, stored as versions of the dataset.
//!
//! We take them ourselves over the replication protocol (`BASE_BACKUP`, see
//! [`crate::replication::basebackup`]): the server streams one tar archive per tablespace and
//! one for the main data directory, which we read entry by entry (the `tar` crate) and store as
//! they arrive, so no spool of the database's size is needed. The version's tree is the data
//! directory; each tablespace outside it is stored under `pg_tblspc/<oid>/` (its
//! `PG_15_<catversion>/...` folder) in place of the link, its original location recorded in the
//! manifest's properties (`postgres.tablespace_map`, PostgreSQL's tablespace_map format).
//! Relation files (`base/<db>/<relfilenode>[_fork][.segment]`, `global/...`, and a
//! tablespace's `pg_tblspc/<oid>/PG_15_<catversion>/<db>/...`: the one rule of
//! [`embassy_sources::relation`], shared with file-tree backups) are cut on 8 KiB page
//! boundaries: unchanged pages dedup against earlier base backups, so a base backup after a day
//! of scattered updates stores about the changed pages (see docs/design.md). Everything else
//! uses content-defined chunks.
//!
//! The version is a normal file tree (`embassy restore` of it without PostgreSQL options gives
//! the raw data directory, backup_label included, tablespaces in place under `pg_tblspc/`); its
//! manifest's properties record what a point-in-time restore needs: start and stop LSN,
//! timeline, system identifier, PostgreSQL version, backup_label, tablespace map, and whether
//! the WAL to reach consistency is inside.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::writer::BackupSession;
use embassy_core::format::config::now_unix_nanos;
use embassy_core::format::manifest::VersionKind;
use embassy_core::progress::Progress;

use crate::error::PgError;
use crate::lsn::Lsn;
use crate::replication::basebackup::{BackupEvent, BaseBackupRequest, TablespaceInfo};
use crate::replication::{ConnConfig, ReplicationConnection};

mod archive;

use archive::{dir_node, Collector, Placement, Previous};

/// Manifest property naming a PostgreSQL base backup (value `1`).
pub const PROP_BASE_BACKUP: &str = "postgres.base_backup";

/// Where the WAL needed to make a base backup consistent comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSource {
    /// Inside the version (`BASE_BACKUP .. WAL`, like `pg_basebackup -X fetch`): the base
    /// backup alone restores.
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
    /// Label shown in `pg_stat_progress_basebackup` and backup_label.
    pub label: String,
}

impl BaseBackupOptions {
    /// Options for `conninfo` with WAL inside the version.
    pub fn new(conninfo: impl Into<String>) -> Self {
        BaseBackupOptions {
            conninfo: conninfo.into(),
            wal: WalSource::Included,
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
    /// The tablespaces outside the data directory, in PostgreSQL's tablespace_map format
    /// (`<oid> <location>` a line, see [`crate::tablespace`]); `None` when there are none.
    pub tablespace_map: Option<String>,
    /// Whether the WAL from start to stop is inside the version.
    pub wal_included: bool,
    /// When the backup started, ns since the Unix epoch.
    pub started_at_ns: i64,
    /// When the server finished sending (at or after the stop LSN was written), ns since the
    /// epoch.
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

/// Takes a base backup of the server at `options.conninfo` and stores it as a new version of
/// `dataset`, with what a point-in-time restore needs in the manifest's properties.
pub fn base_backup(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    options: &BaseBackupOptions,
    progress: &dyn Progress,
) -> Result<BaseBackup, PgError> {
    let cfg = ConnConfig::parse(&options.conninfo)?;
    // Plaintext off this machine is refused before a byte is sent (the connection checks the
    // peer again once connected).
    cfg.check_transport(cfg.is_local())?;
    let mut session = BackupSession::begin(vault, keyring, dataset).map_err(PgError::Vault)?;
    let started_at_ns = now_unix_nanos();
    let mut conn = ReplicationConnection::connect(&cfg)?;
    let request = BaseBackupRequest {
        label: options.label.clone(),
        wal: options.wal == WalSource::Included,
    };
    let (collector, stop_lsn, tablespaces) = {
        let mut stream = conn.base_backup(&request)?;
        let tablespaces = stream.tablespaces.clone();
        let oids: Vec<u32> = tablespaces.iter().map(|t| t.oid).collect();
        let mut collector = Collector::new(&session, progress);
        collector.previous = previous_version(vault, keyring, dataset).map(Previous::new);
        let stop = loop {
            match stream.next_event()? {
                BackupEvent::Archive { name, .. } => {
                    let place = Placement {
                        prefix: archive_prefix(&name, &tablespaces)?,
                        tablespaces: &oids,
                    };
                    let mut reader = stream.data();
                    let stored = collector.store_archive(&mut reader, &place);
                    if let Some(e) = reader.error.take() {
                        return Err(e);
                    }
                    stored?;
                    // The archive's end marker may be followed by padding.
                    std::io::copy(&mut reader, &mut std::io::sink())
                        .map_err(|e| reader.error.take().unwrap_or(PgError::Io(e)))?;
                }
                BackupEvent::Manifest => {
                    let mut manifest = Vec::new();
                    let mut reader = stream.data();
                    let read = reader.read_to_end(&mut manifest);
                    if let Some(e) = reader.error.take() {
                        return Err(e);
                    }
                    read?;
                    collector.add_root_file(b"backup_manifest", &manifest)?;
                }
                BackupEvent::Progress(_) => {}
                BackupEvent::Data(_) => {
                    return Err(PgError::Protocol(
                        "BASE_BACKUP: data before any archive began".into(),
                    ))
                }
                BackupEvent::End { lsn, .. } => break lsn,
            }
        };
        (collector, stop, tablespaces)
    };
    conn.close();
    let Collector {
        assembly,
        mut stats,
        extracted,
        ..
    } = collector;
    let root = assembly.store(&session, &mut stats)?;
    let stopped_at_ns = now_unix_nanos();
    let label = extracted
        .backup_label
        .ok_or_else(|| PgError::BaseBackup("the base backup has no backup_label".into()))?;
    let (start_lsn, timeline) = parse_backup_label(&label)?;
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
        tablespace_map: crate::tablespace::map_text(&tablespaces),
        wal_included: options.wal == WalSource::Included,
        started_at_ns,
        stopped_at_ns,
    };
    session.set_properties(info.to_properties());
    session.set_wal_start(embassy_core::history::ledger::WalStart {
        timeline,
        lsn: start_lsn.0,
    });
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

/// The dataset's newest tree version (the previous base backup), opened to store changed pages
/// as deltas against it; None when there is none, the key cannot read it, or it cannot be read
/// (then every page is stored alone, as before).
fn previous_version(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
) -> Option<embassy_core::engine::reader::VersionReader> {
    if !keyring.can_read(dataset) {
        return None;
    }
    let version = vault
        .versions(dataset)
        .ok()?
        .into_iter()
        .rev()
        .find(|v| v.kind == VersionKind::Tree)?;
    embassy_core::engine::reader::VersionReader::open_with(vault.site().clone(), keyring, &version)
        .ok()
}

/// Where an archive of the stream goes in the version: `base.tar` at the root, a tablespace's
/// `<oid>.tar` under `pg_tblspc/<oid>`.
fn archive_prefix(name: &str, tablespaces: &[TablespaceInfo]) -> Result<Vec<Vec<u8>>, PgError> {
    if name == "base.tar" {
        return Ok(Vec::new());
    }
    let oid = name
        .strip_suffix(".tar")
        .and_then(|o| o.parse::<u32>().ok())
        .filter(|o| tablespaces.iter().any(|t| t.oid == *o))
        .ok_or_else(|| {
            PgError::Protocol(format!(
                "BASE_BACKUP sent an archive {name:?} that is neither base.tar nor one of the \
                 tablespaces it listed"
            ))
        })?;
    Ok(vec![b"pg_tblspc".to_vec(), oid.to_string().into_bytes()])
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
    use super::archive::{chunking_for, components};
    use super::*;
    use embassy_core::format::chunker::{Chunking, PG_PAGE};
    use std::collections::HashMap;

    #[test]
    fn labels_and_manifests_give_lsns() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nBACKUP METHOD: streamed\n\
                     BACKUP FROM: primary\nSTART TIME: 2026-11-27 03:00:00 UTC\n\
                     LABEL: x\nSTART TIMELINE: 3\n";
        assert_eq!(parse_backup_label(label).unwrap(), (Lsn(0x2000028), 3));
        assert!(parse_backup_label("LABEL: x\n").is_err());
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
    fn each_archive_has_its_place() {
        let ts = [TablespaceInfo {
            oid: 16400,
            location: "/srv/ts1".into(),
        }];
        assert!(archive_prefix("base.tar", &ts).unwrap().is_empty());
        assert_eq!(
            archive_prefix("16400.tar", &ts).unwrap(),
            vec![b"pg_tblspc".to_vec(), b"16400".to_vec()]
        );
        assert!(archive_prefix("16401.tar", &ts).is_err());
        assert!(archive_prefix("../x.tar", &ts).is_err());
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
