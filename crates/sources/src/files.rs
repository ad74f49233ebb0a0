//! File trees: back up directories, files, symlinks and fifos with their metadata, and restore
//! them byte-identically.
//!
//! A backup scans the tree first, comparing each file with the same path in the previous version
//! (size, mtime, ctime, inode): unchanged files reuse their chunk lists without being read. The
//! changed files are then read in parallel, largest first, and the directory trees are stored
//! bottom-up. A restore creates the tree, then reads each pack once and writes every blob to all
//! the places that need it, then applies metadata (directories last).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::writer::{BackupSession, StoreError};
use embassy_core::format::chunker::Chunking;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::progress::Progress;
use embassy_core::{Error, Result};
use rayon::prelude::*;

use crate::metadata;
/// The relation-file rule, kept where file-tree users have always found it.
pub use crate::relation::{
    is_relation_dir, is_relation_file_name, RelationChunker, LARGE_RELATION_CHUNK,
    PAGE_CHUNK_BUDGET,
};

/// A completed backup.
#[derive(Debug)]
pub struct Backup {
    /// The version recorded.
    pub version: Version,
    /// Things that did not stop the backup (files that vanished, special files skipped).
    pub warnings: Vec<String>,
}

enum Scanned {
    Dir { node: Node, children: Vec<Scanned> },
    File { node: Node, job: Option<usize> },
    Leaf(Node),
}

struct FileJob {
    path: PathBuf,
    size: u64,
    chunking: Chunking,
}

struct Scan<'a> {
    session: &'a BackupSession,
    previous: Option<&'a VersionReader>,
    jobs: Vec<FileJob>,
    warnings: Vec<String>,
    stats: VersionStats,
}

fn unchanged(prev: &Node, now: &Node) -> bool {
    prev.kind == NodeKind::File
        && prev.size == now.size
        && prev.mtime_ns == now.mtime_ns
        && prev.ctime_ns == now.ctime_ns
        && prev.inode == now.inode
}

impl Scan<'_> {
    fn previous_tree(&mut self, prev: Option<&Node>) -> Option<Tree> {
        let id = prev.filter(|p| p.kind == NodeKind::Dir)?.subtree?;
        match self.previous?.read_tree(&id) {
            Ok(tree) => Some(tree),
            Err(e) => {
                self.warnings.push(format!(
                    "previous version unreadable here, files are read again: {e}"
                ));
                None
            }
        }
    }

    fn entry(
        &mut self,
        path: &Path,
        name: &[u8],
        prev: Option<&Node>,
        relation: Option<&mut RelationChunker>,
    ) -> Result<Option<Scanned>> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                self.warnings
                    .push(format!("{} vanished during the backup", path.display()));
                return Ok(None);
            }
            Err(e) => {
                return Err(Error::io(
                    format!("reading metadata of {}", path.display()),
                    e,
                ))
            }
        };
        let file_type = meta.file_type();
        if file_type.is_dir() {
            let prev_tree = self.previous_tree(prev);
            let children = self.dir(path, prev_tree.as_ref())?;
            self.stats.dirs += 1;
            Ok(Some(Scanned::Dir {
                node: metadata::node_from(name, NodeKind::Dir, &meta),
                children,
            }))
        } else if file_type.is_file() {
            let mut node = metadata::node_from(name, NodeKind::File, &meta);
            self.stats.files += 1;
            // Counted for unchanged files too: their ids are in the same tree blob.
            let chunking = relation.map_or(Chunking::ContentDefined, |r| r.chunking(node.size));
            if let Some(p) = prev.filter(|p| unchanged(p, &node)) {
                if self.session.reuse(&p.content) {
                    node.content = p.content.clone();
                    self.stats.bytes += node.size;
                    return Ok(Some(Scanned::File { node, job: None }));
                }
            }
            self.jobs.push(FileJob {
                path: path.to_path_buf(),
                size: node.size,
                chunking,
            });
            Ok(Some(Scanned::File {
                node,
                job: Some(self.jobs.len() - 1),
            }))
        } else if file_type.is_symlink() {
            let target = fs::read_link(path)
                .map_err(|e| Error::io(format!("reading link {}", path.display()), e))?;
            let mut node = metadata::node_from(name, NodeKind::Symlink, &meta);
            node.target = Some(target.as_os_str().as_bytes().to_vec());
            Ok(Some(Scanned::Leaf(node)))
        } else if file_type.is_fifo() {
            Ok(Some(Scanned::Leaf(metadata::node_from(
                name,
                NodeKind::Fifo,
                &meta,
            ))))
        } else {
            self.warnings.push(format!(
                "{} skipped: sockets and device files are not stored",
                path.display()
            ));
            Ok(None)
        }
    }

    fn dir(&mut self, path: &Path, prev: Option<&Tree>) -> Result<Vec<Scanned>> {
        let mut names = Vec::new();
        let entries =
            fs::read_dir(path).map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
            names.push(entry.file_name());
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut children = Vec::with_capacity(names.len());
        let mut relation = is_relation_dir(path).then(RelationChunker::default);
        for name in names {
            let prev_node = prev.and_then(|t| t.find(name.as_bytes()));
            let chunker = relation
                .as_mut()
                .filter(|_| is_relation_file_name(name.as_bytes()));
            if let Some(child) =
                self.entry(&path.join(&name), name.as_bytes(), prev_node, chunker)?
            {
                children.push(child);
            }
        }
        Ok(children)
    }
}

/// Content read for one file: its chunks and length, or `None` if it vanished.
type ReadResult = Option<(Vec<ChunkId>, u64)>;

fn read_file(
    session: &BackupSession,
    job: &FileJob,
    progress: &dyn Progress,
) -> Result<ReadResult> {
    let file = match fs::File::open(&job.path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Source {
                what: job.path.display().to_string(),
                problem: format!("cannot be opened: {e}"),
            })
        }
    };
    match session.store_reader_with(file, job.chunking, progress) {
        Ok(result) => Ok(Some(result)),
        Err(StoreError::Read(e)) => Err(Error::Source {
            what: job.path.display().to_string(),
            problem: format!("read failed: {e}"),
        }),
        Err(StoreError::Vault(e)) => Err(e),
    }
}

fn build(
    session: &BackupSession,
    children: Vec<Scanned>,
    read: &mut [Option<ReadResult>],
    stats: &mut VersionStats,
    warnings: &mut Vec<String>,
) -> Result<ChunkId> {
    let mut nodes = Vec::with_capacity(children.len());
    for child in children {
        match child {
            Scanned::Dir { mut node, children } => {
                node.subtree = Some(build(session, children, read, stats, warnings)?);
                nodes.push(node);
            }
            Scanned::File {
                mut node,
                job: Some(j),
            } => match read[j].take().flatten() {
                Some((content, length)) => {
                    node.content = content;
                    node.size = length;
                    stats.bytes += length;
                    stats.bytes_read += length;
                    nodes.push(node);
                }
                None => {
                    stats.files -= 1;
                    warnings.push(format!(
                        "{} vanished during the backup",
                        String::from_utf8_lossy(&node.name)
                    ));
                }
            },
            Scanned::File { node, job: None } | Scanned::Leaf(node) => nodes.push(node),
        }
    }
    session.store_blob(BlobKind::Tree, Tree { nodes }.encode())
}

fn entry_name(path: &Path) -> Result<Vec<u8>> {
    path.file_name()
        .map(|n| n.as_bytes().to_vec())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{} has no file name to store it under",
                path.display()
            ))
        })
}

/// Backs up `paths` as a new version of `dataset`. One directory is stored as the version's
/// root; several paths (or a file) are stored as root entries named by their last component.
pub fn backup(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    paths: &[PathBuf],
    progress: &dyn Progress,
) -> Result<Backup> {
    if paths.is_empty() {
        return Err(Error::invalid("no paths to back up"));
    }
    let mut absolute = Vec::with_capacity(paths.len());
    for p in paths {
        let meta = fs::symlink_metadata(p).map_err(|e| Error::Source {
            what: p.display().to_string(),
            problem: format!("cannot be read: {e}"),
        })?;
        let abs = if p.is_absolute() {
            p.clone()
        } else {
            std::env::current_dir()
                .map_err(|e| Error::io("resolving the current directory", e))?
                .join(p)
        };
        absolute.push((abs, meta.is_dir()));
    }
    let single_dir = absolute.len() == 1 && absolute[0].1;
    if !single_dir {
        let mut names = std::collections::HashSet::new();
        for (p, _) in &absolute {
            if !names.insert(entry_name(p)?) {
                return Err(Error::invalid(format!(
                    "two paths end in the same name ({}): back them up as separate datasets or from their common parent",
                    p.display()
                )));
            }
        }
    }

    let mut session = BackupSession::begin(vault, keyring, dataset)?;
    if single_dir {
        let meta = fs::symlink_metadata(&absolute[0].0).map_err(|e| {
            Error::io(
                format!("reading metadata of {}", absolute[0].0.display()),
                e,
            )
        })?;
        session.set_root_node(metadata::node_from(
            &entry_name(&absolute[0].0).unwrap_or_default(),
            NodeKind::Dir,
            &meta,
        ));
    }
    let session_warnings = session.warnings.clone();
    let mut warnings = Vec::new();
    let previous_version = vault
        .versions(dataset)?
        .into_iter()
        .rev()
        .find(|v| v.kind == VersionKind::Tree);
    let previous = match previous_version.filter(|_| keyring.can_read(dataset)) {
        Some(v) => match VersionReader::open_with(vault.site().clone(), keyring, &v) {
            Ok(r) => Some(r),
            Err(e) => {
                warnings.push(format!(
                    "previous version {} unreadable, every file is read: {e}",
                    v.number
                ));
                None
            }
        },
        None => None,
    };
    let prev_root = previous.as_ref().and_then(|r| r.root().ok());

    let mut scan = Scan {
        session: &session,
        previous: previous.as_ref(),
        jobs: Vec::new(),
        warnings,
        stats: VersionStats::default(),
    };
    let root_children = if single_dir {
        scan.dir(&absolute[0].0, prev_root.as_ref())?
    } else {
        let mut children = Vec::new();
        let mut sorted: Vec<_> = absolute.iter().map(|(p, _)| p.clone()).collect();
        sorted.sort_by(|a, b| {
            a.file_name()
                .map(|n| n.as_bytes())
                .cmp(&b.file_name().map(|n| n.as_bytes()))
        });
        for p in sorted {
            let name = entry_name(&p)?;
            let prev_node = prev_root.as_ref().and_then(|t| t.find(&name));
            let mut relation = (p.parent().is_some_and(is_relation_dir)
                && is_relation_file_name(&name))
            .then(RelationChunker::default);
            if let Some(child) = scan.entry(&p, &name, prev_node, relation.as_mut())? {
                children.push(child);
            }
        }
        children
    };
    let Scan {
        jobs,
        mut warnings,
        mut stats,
        ..
    } = scan;

    progress.set_total(jobs.iter().map(|j| j.size).sum());
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| Reverse(jobs[i].size));
    let results: Vec<(usize, ReadResult)> = order
        .par_iter()
        .map(|&i| read_file(&session, &jobs[i], progress).map(|r| (i, r)))
        .collect::<Result<_>>()?;
    let mut read: Vec<Option<ReadResult>> = vec![None; jobs.len()];
    for (i, r) in results {
        read[i] = Some(r);
    }
    let root = build(
        &session,
        root_children,
        &mut read,
        &mut stats,
        &mut warnings,
    )?;
    let source = absolute
        .iter()
        .map(|(p, _)| p.display().to_string())
        .collect();
    let version = session.finish(VersionKind::Tree, root, source, stats)?;
    let mut all = std::mem::take(&mut *session_warnings.lock().unwrap_or_else(|p| p.into_inner()));
    all.extend(warnings);
    Ok(Backup {
        version,
        warnings: all,
    })
}

/// How to restore.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    /// Restore only this path inside the version (it lands in the target under its own name).
    pub subpath: Option<PathBuf>,
    /// Allow a target folder that is not empty (existing files of the same names are replaced).
    pub overwrite: bool,
}

/// What a restore wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

struct Plan {
    dirs: Vec<(PathBuf, Node, usize)>,
    files: Vec<(PathBuf, Node)>,
    leaves: Vec<(PathBuf, Node)>,
}

/// Folders nested deeper than this are refused before anything is created: every level adds at
/// least two bytes (a name and a `/`) to a path, and the system refuses paths of `PATH_MAX`
/// (4096) bytes.
pub const MAX_RESTORE_DEPTH: usize = libc::PATH_MAX as usize / 2;

/// Every distinct tree under `starts`, each read once, and the number of entries restoring
/// `starts` expands to (saturating). Iterative, so a deep tree cannot overflow the stack;
/// memoized, so a tree named by many folders (equal folders dedup, or a writer's diamond) is
/// read and counted once.
fn load_trees(
    reader: &VersionReader,
    starts: impl IntoIterator<Item = ChunkId>,
) -> Result<(HashMap<ChunkId, Tree>, u64)> {
    let mut trees: HashMap<ChunkId, Tree> = HashMap::new();
    // Entries under each fully visited tree, expanded.
    let mut expanded: HashMap<ChunkId, u64> = HashMap::new();
    let mut total = 0u64;
    for start in starts {
        if !expanded.contains_key(&start) {
            let mut stack: Vec<(ChunkId, usize)> = vec![(start, 0)];
            let mut on_stack = std::collections::HashSet::from([start]);
            trees.insert(start, reader.read_tree(&start)?);
            while let Some(&(id, next)) = stack.last() {
                let tree = &trees[&id];
                let child = tree.nodes[next..]
                    .iter()
                    .position(|n| n.kind == NodeKind::Dir)
                    .map(|at| (next + at, &tree.nodes[next + at]));
                match child {
                    Some((at, node)) => {
                        if let Some(top) = stack.last_mut() {
                            top.1 = at + 1;
                        }
                        let sub = node
                            .subtree
                            .ok_or_else(|| Error::corrupt("tree", "directory without subtree"))?;
                        if expanded.contains_key(&sub) {
                            continue;
                        }
                        if on_stack.contains(&sub) {
                            return Err(Error::corrupt(
                                format!("tree {}", sub.short()),
                                "the tree contains itself",
                            ));
                        }
                        if stack.len() >= MAX_RESTORE_DEPTH {
                            return Err(Error::invalid(format!(
                                "the version's folders are nested more than {MAX_RESTORE_DEPTH} \
                                 deep, beyond what this system's path limit can hold: refusing \
                                 to restore it (a hostile writer's tree?)"
                            )));
                        }
                        let subtree = reader.read_tree(&sub)?;
                        trees.insert(sub, subtree);
                        on_stack.insert(sub);
                        stack.push((sub, 0));
                    }
                    None => {
                        let count = tree.nodes.iter().fold(0u64, |acc, n| {
                            let below = n
                                .subtree
                                .filter(|_| n.kind == NodeKind::Dir)
                                .and_then(|s| expanded.get(&s).copied())
                                .unwrap_or(0);
                            acc.saturating_add(1).saturating_add(below)
                        });
                        expanded.insert(id, count);
                        on_stack.remove(&id);
                        stack.pop();
                    }
                }
            }
        }
        total = total.saturating_add(expanded.get(&start).copied().unwrap_or(0));
    }
    Ok((trees, total))
}

/// Plans the restore of `seeds` (entries and the paths they land at): every folder, file and
/// link to create, folders before what they hold.
///
/// A folder named twice (two names with the same subtree: equal folders dedup) is restored
/// under each name, as it was backed up. The expansion is counted first: more entries than
/// the version records (its file and folder counts) plus the distinct entries stored can only
/// come from a writer that shares trees to make the restore explode, and is refused.
fn plan_restore(reader: &VersionReader, seeds: Vec<(PathBuf, Node)>) -> Result<Plan> {
    let starts: Vec<ChunkId> = seeds
        .iter()
        .filter(|(_, n)| n.kind == NodeKind::Dir)
        .map(|(_, n)| {
            n.subtree
                .ok_or_else(|| Error::corrupt("tree", "directory without subtree"))
        })
        .collect::<Result<_>>()?;
    let (trees, below) = load_trees(reader, starts)?;
    let expanded = below.saturating_add(seeds.len() as u64);
    let distinct = trees
        .values()
        .map(|t| t.nodes.len() as u64)
        .sum::<u64>()
        .saturating_add(seeds.len() as u64);
    let recorded = reader
        .manifest
        .stats
        .files
        .saturating_add(reader.manifest.stats.dirs);
    if expanded > recorded.saturating_add(distinct) {
        return Err(Error::invalid(format!(
            "the version's tree expands to {} entries (folders named more than once), but it \
             records {recorded} files and folders and stores {distinct} distinct entries: a tree \
             shaped to exhaust this host, refusing to restore it",
            if expanded == u64::MAX {
                "2^64 or more".to_string()
            } else {
                expanded.to_string()
            }
        )));
    }
    let mut plan = Plan {
        dirs: Vec::new(),
        files: Vec::new(),
        leaves: Vec::new(),
    };
    let mut pending: Vec<(PathBuf, Node, usize)> =
        seeds.into_iter().rev().map(|(p, n)| (p, n, 0)).collect();
    while let Some((path, node, depth)) = pending.pop() {
        if path.as_os_str().len() >= libc::PATH_MAX as usize {
            return Err(Error::invalid(format!(
                "a path of the version is longer than this system's limit of {} bytes: \
                 restore into a shorter target folder, or restore a part of it with --path",
                libc::PATH_MAX
            )));
        }
        match node.kind {
            NodeKind::Dir => {
                let tree = node
                    .subtree
                    .and_then(|id| trees.get(&id))
                    .ok_or_else(|| Error::corrupt("tree", "directory without subtree"))?;
                for child in tree.nodes.iter().rev() {
                    let at = path.join(std::ffi::OsStr::from_bytes(&child.name));
                    pending.push((at, child.clone(), depth + 1));
                }
                plan.dirs.push((path, node, depth));
            }
            NodeKind::File => plan.files.push((path, node)),
            NodeKind::Symlink | NodeKind::Fifo => plan.leaves.push((path, node)),
        }
    }
    Ok(plan)
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(format!("reading target {}", path.display()), e)),
    }
}

/// Restores a tree version (or the part at `options.subpath`) into `target`.
pub fn restore(
    reader: &VersionReader,
    target: &Path,
    options: &RestoreOptions,
    progress: &dyn Progress,
) -> Result<RestoreStats> {
    if !options.overwrite && !is_empty_dir(target)? {
        return Err(Error::invalid(format!(
            "restore target {} is not empty: choose an empty or new folder, or pass --overwrite",
            target.display()
        )));
    }
    // A link at the target would send the whole restore elsewhere (one planted in a shared
    // folder, say): the target must be the folder itself.
    if let Ok(meta) = fs::symlink_metadata(target) {
        if meta.file_type().is_symlink() {
            let real = fs::canonicalize(target)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "nowhere".to_string());
            return Err(Error::invalid(format!(
                "restore target {} is a symbolic link (to {real}): give the real folder instead",
                target.display()
            )));
        }
    }
    fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let root = reader.root()?;
    let seeds = |tree: &Tree, dir: &Path| -> Vec<(PathBuf, Node)> {
        tree.nodes
            .iter()
            .map(|n| (dir.join(std::ffi::OsStr::from_bytes(&n.name)), n.clone()))
            .collect()
    };
    let mut plan = match &options.subpath {
        None => plan_restore(reader, seeds(&root, target))?,
        Some(sub) => {
            let mut tree = root;
            let mut found: Option<Node> = None;
            let components: Vec<_> = sub
                .components()
                .filter(|c| !matches!(c, Component::CurDir | Component::RootDir))
                .collect();
            for (i, c) in components.iter().enumerate() {
                let Component::Normal(name) = c else {
                    return Err(Error::invalid(format!(
                        "--path {} may not contain '..'",
                        sub.display()
                    )));
                };
                let node = tree.find(name.as_bytes()).cloned().ok_or_else(|| {
                    Error::NotFound(format!(
                        "{} is not in version {}",
                        sub.display(),
                        reader.version.number
                    ))
                })?;
                if i + 1 < components.len() {
                    let id = node.subtree.ok_or_else(|| {
                        Error::NotFound(format!(
                            "{} is not a directory in this version",
                            Path::new(name).display()
                        ))
                    })?;
                    tree = reader.read_tree(&id)?;
                }
                found = Some(node);
            }
            match found {
                Some(node) => {
                    let path = target.join(std::ffi::OsStr::from_bytes(&node.name));
                    plan_restore(reader, vec![(path, node)])?
                }
                None => plan_restore(reader, seeds(&tree, target))?,
            }
        }
    };

    // Structure first.
    for (path, _, _) in &plan.dirs {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e)
                if e.kind() == ErrorKind::AlreadyExists
                    && options.overwrite
                    && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) => {}
            Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }
    for (path, node) in &plan.leaves {
        if options.overwrite {
            let _ = fs::remove_file(path);
        }
        match node.kind {
            NodeKind::Symlink => {
                let target =
                    std::ffi::OsStr::from_bytes(node.target.as_deref().unwrap_or_default());
                std::os::unix::fs::symlink(target, path)
                    .map_err(|e| Error::io(format!("creating link {}", path.display()), e))?;
            }
            _ => metadata::make_fifo(path)?,
        }
    }
    let mut targets: HashMap<ChunkId, Vec<(usize, u64)>> = HashMap::new();
    let mut total = 0u64;
    // Each file is created under a fresh name (O_EXCL|O_NOFOLLOW), filled there, and renamed
    // into place only once every file's content is written: a link already at the final name
    // is replaced, never written through, and a restore that fails half-way (a damaged pack,
    // a full disk) leaves no half-filled file under a final name (its temporary files go).
    let mut pending = Vec::with_capacity(plan.files.len());
    for (i, (path, node)) in plan.files.iter().enumerate() {
        let file = embassy_core::fsutil::NewFile::beside(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        file.file()
            .set_len(node.size)
            .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
        pending.push(file.into_pending());
        let mut offset = 0u64;
        for id in &node.content {
            targets.entry(*id).or_default().push((i, offset));
            offset += reader.blob_size(id)? as u64;
        }
        if offset != node.size {
            return Err(Error::corrupt(
                path.display().to_string(),
                format!("tree says {} bytes but its chunks hold {offset}", node.size),
            ));
        }
        total += node.size;
    }
    progress.set_total(total);

    // Content: each pack once, each blob to every place that needs it.
    let files = &plan.files;
    let temps = &pending;
    reader.for_each_blob(targets.keys().copied().collect::<Vec<_>>(), &|id, data| {
        for &(i, offset) in targets.get(id).map(|v| v.as_slice()).unwrap_or_default() {
            let path = &files[i].0;
            let file = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(temps[i].temp_path())
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            file.write_all_at(data, offset)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            progress.add(data.len() as u64);
        }
        Ok(())
    })?;
    for (file, (path, _)) in pending.into_iter().zip(&plan.files) {
        file.persist()
            .map_err(|e| Error::io(format!("putting {} in place", path.display()), e))?;
    }

    // Metadata: files and links, then directories deepest first.
    let chown = metadata::can_chown();
    plan.files
        .par_iter()
        .chain(plan.leaves.par_iter())
        .try_for_each(|(path, node)| metadata::apply(path, node, chown))?;
    plan.dirs.sort_by_key(|(_, _, depth)| Reverse(*depth));
    for (path, node, _) in &plan.dirs {
        metadata::apply(path, node, chown)?;
    }
    // The backed-up folder's own metadata goes to the target, on a full restore.
    if let (None, Some(root)) = (&options.subpath, &reader.manifest.root_node) {
        metadata::apply(target, root, chown)?;
    }
    Ok(RestoreStats {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        bytes: total,
    })
}
