//! The archives of a base backup, read entry by entry (the `tar` crate) into one version tree:
//! the main data directory at the root, each tablespace under `pg_tblspc/<oid>/` in place of
//! the link the main archive holds there. Relation files are chunked by the one rule of
//! [`embassy_sources::relation`] (pages, within each directory's budget), tablespaces' as the
//! main data directory's; everything else uses content-defined chunks.

use std::collections::HashMap;
use std::io::Read;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::writer::{BackupSession, StoreError};
use embassy_core::format::chunker::{Chunking, PG_PAGE};
use embassy_core::format::manifest::VersionStats;
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::progress::Progress;
use embassy_sources::relation::{is_relation_path, page_ids, PreviousPages, RelationChunker};

use crate::error::PgError;

/// Chunking of the file at `path` of `size` bytes: pages for relation files (within each
/// directory's budget, see [`RelationChunker`]), content-defined for the rest.
pub(super) fn chunking_for(
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
pub(super) fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, PgError> {
    let mut out = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                return Err(PgError::BaseBackup(format!(
                    "the server sent a path with '..': {}",
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

/// Directories being assembled from the archives: path -> its parts.
#[derive(Default)]
pub(super) struct Assembly {
    dirs: HashMap<Vec<Vec<u8>>, DirParts>,
}

impl Assembly {
    /// Adds `node` at `path` (its last name is the node's), creating the folders above it.
    pub(super) fn add(&mut self, path: Vec<Vec<u8>>, node: Node) {
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
    pub(super) fn store(
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
        root.ok_or_else(|| PgError::BaseBackup("the server sent an empty base backup".into()))
    }
}

/// A folder's node with PostgreSQL's mode (0700), for folders no archive entry describes.
pub(super) fn dir_node(name: &[u8]) -> Node {
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

/// What was read out of the main archive besides the files.
#[derive(Default)]
pub(super) struct Extracted {
    pub backup_label: Option<String>,
    pub pg_control: Option<Vec<u8>>,
    pub pg_version: Option<String>,
}

/// Where an archive goes in the version: the main data directory at the root, a tablespace
/// under `pg_tblspc/<oid>/`.
pub(super) struct Placement<'a> {
    /// Names put before every path of the archive (empty for the main data directory).
    pub prefix: Vec<Vec<u8>>,
    /// OIDs of the tablespaces stored apart: their `pg_tblspc/<oid>` links in the main archive
    /// are left out (the folder with their files takes the name).
    pub tablespaces: &'a [u32],
}

impl Placement<'_> {
    fn is_main(&self) -> bool {
        self.prefix.is_empty()
    }

    /// A `pg_tblspc/<oid>` link of a tablespace stored apart.
    fn is_stored_link(&self, path: &[Vec<u8>]) -> bool {
        self.is_main()
            && path.len() == 2
            && path[0] == b"pg_tblspc"
            && std::str::from_utf8(&path[1])
                .ok()
                .and_then(|s| s.parse::<u32>().ok())
                .is_some_and(|oid| self.tablespaces.contains(&oid))
    }
}

/// The dataset's previous version (the base backup this one builds on), opened to store changed
/// relation pages as deltas against the same pages there; its folders' trees read once each.
pub(super) struct Previous {
    reader: VersionReader,
    trees: HashMap<Vec<Vec<u8>>, Option<Tree>>,
}

impl Previous {
    /// Compares with the version `reader` opened.
    pub(super) fn new(reader: VersionReader) -> Self {
        Previous {
            reader,
            trees: HashMap::new(),
        }
    }

    /// The node at `path` in the previous version, if it has one.
    fn node(&mut self, path: &[Vec<u8>]) -> Option<Node> {
        let (name, dir) = path.split_last()?;
        for depth in 0..=dir.len() {
            if self.trees.contains_key(&dir[..depth]) {
                continue;
            }
            let tree = match depth.checked_sub(1) {
                None => self.reader.root().ok(),
                Some(up) => self.trees[&dir[..depth - 1]]
                    .as_ref()
                    .and_then(|t| t.find(&dir[up]))
                    .and_then(|n| n.subtree)
                    .and_then(|id| self.reader.read_tree(&id).ok()),
            };
            self.trees.insert(dir[..depth].to_vec(), tree);
        }
        self.trees.get(dir)?.as_ref()?.find(name).cloned()
    }
}

/// Everything the archives of one base backup are stored into.
pub(super) struct Collector<'a> {
    /// The version being written.
    pub session: &'a BackupSession,
    /// Where stored bytes are reported.
    pub progress: &'a dyn Progress,
    /// The version's folders so far.
    pub assembly: Assembly,
    /// Each relation directory's page-chunk budget (the one rule, see [`chunking_for`]).
    pub budgets: HashMap<Vec<Vec<u8>>, RelationChunker>,
    /// Counts for the manifest.
    pub stats: VersionStats,
    /// What restore needs from the main archive.
    pub extracted: Extracted,
    /// The previous base backup, for deltas (None: every page is stored alone).
    pub previous: Option<Previous>,
}

impl<'a> Collector<'a> {
    /// An empty collection for `session`.
    pub(super) fn new(session: &'a BackupSession, progress: &'a dyn Progress) -> Self {
        Collector {
            session,
            progress,
            assembly: Assembly::default(),
            budgets: HashMap::new(),
            stats: VersionStats::default(),
            extracted: Extracted::default(),
            previous: None,
        }
    }

    /// Stores `bytes` as the file `name` at the root (the backup manifest, sent apart).
    pub(super) fn add_root_file(&mut self, name: &[u8], bytes: &[u8]) -> Result<(), PgError> {
        let (content, length) = self
            .session
            .store_reader_with(
                bytes,
                Chunking::ContentDefined,
                &embassy_core::progress::Silent,
            )
            .map_err(store_error)?;
        let mut node = dir_node(name);
        node.kind = NodeKind::File;
        node.mode = 0o600;
        node.mtime_ns = embassy_core::format::config::now_unix_nanos();
        node.content = content;
        node.size = length;
        self.stats.files += 1;
        self.stats.bytes += length;
        self.stats.bytes_read += length;
        self.assembly.add(vec![name.to_vec()], node);
        Ok(())
    }

    /// Reads one tar archive, storing every file into `session` and its place into `assembly`.
    pub(super) fn store_archive(
        &mut self,
        archive: impl Read,
        place: &Placement<'_>,
    ) -> Result<(), PgError> {
        let Collector {
            session,
            progress,
            assembly,
            budgets,
            stats,
            extracted,
            previous,
        } = self;
        let mut archive = tar::Archive::new(archive);
        let entries = archive.entries().map_err(read_error)?;
        for entry in entries {
            let mut entry = entry.map_err(read_error)?;
            let raw_path = entry.path_bytes().into_owned();
            let mut path = place.prefix.clone();
            path.extend(components(&raw_path)?);
            let Some(name) = path.last().cloned() else {
                continue;
            };
            let header = entry.header().clone();
            let kind = header.entry_type();
            if kind.is_dir() {
                assembly.add(path, node_from_header(&name, NodeKind::Dir, &header));
            } else if kind.is_symlink() {
                if place.is_stored_link(&path) {
                    continue;
                }
                let mut node = node_from_header(&name, NodeKind::Symlink, &header);
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                node.target = Some(target);
                assembly.add(path, node);
            } else if kind.is_file() {
                let mut node = node_from_header(&name, NodeKind::File, &header);
                let keep = place.is_main()
                    && (path.len() == 1
                        && matches!(name.as_slice(), b"backup_label" | b"PG_VERSION")
                        || path == [b"global".to_vec(), b"pg_control".to_vec()]);
                let (content, length) = if keep {
                    let mut bytes = Vec::new();
                    entry.read_to_end(&mut bytes).map_err(read_error)?;
                    let text = || String::from_utf8_lossy(&bytes).into_owned();
                    match name.as_slice() {
                        b"backup_label" => extracted.backup_label = Some(text()),
                        b"PG_VERSION" => extracted.pg_version = Some(text().trim().to_string()),
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
                    let chunking = chunking_for(&path, header.size().unwrap_or(0), budgets);
                    let pages = previous
                        .as_mut()
                        .and_then(|p| p.node(&path))
                        .and_then(|n| page_ids(&n, chunking));
                    match (previous.as_ref(), pages) {
                        (Some(p), Some(pages)) => session.store_pages(
                            &mut entry,
                            PG_PAGE,
                            &PreviousPages {
                                reader: &p.reader,
                                pages: &pages,
                            },
                            *progress,
                        ),
                        _ => session.store_reader_with(&mut entry, chunking, *progress),
                    }
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
        Ok(())
    }
}

fn read_error(e: std::io::Error) -> PgError {
    PgError::BaseBackup(format!("reading the server's base backup archive: {e}"))
}

fn store_error(e: StoreError) -> PgError {
    match e {
        StoreError::Read(e) => read_error(e),
        StoreError::Vault(e) => PgError::Vault(e),
    }
}
