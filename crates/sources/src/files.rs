//! File trees: back up directories, files, symlinks and fifos with their metadata, and restore
//! them byte-identically.
//!
//! A backup scans the tree first, comparing each file with the same path in the previous version
//! (size, mtime, ctime, inode): unchanged files reuse their chunk lists without being read. The
//! changed files are then read in parallel, largest first, and the directory trees are stored
//! bottom-up. A restore creates the tree, then reads each pack once and writes every blob to all
//! the places that need it, then applies metadata (directories last).

use std::cmp::Reverse;

use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::writer::{BackupSession, StoreError};
use embassy_core::format::chunker::{Chunking, PG_PAGE};
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::progress::Progress;
use embassy_core::{Error, Result};
use rayon::prelude::*;

use crate::metadata;
use crate::selection::{is_cache_dir, CACHEDIR_TAG};
/// The selection rules, where file-tree users look for them.
pub use crate::selection::{BackupSelection, Patterns, RestoreSelection};

mod restore;
/// The relation-file rule, kept where file-tree users have always found it.
pub use crate::relation::{
    is_relation_dir, is_relation_file_name, RelationChunker, LARGE_RELATION_CHUNK,
    PAGE_CHUNK_BUDGET,
};
use crate::relation::{page_ids, PreviousPages};
pub use restore::{restore, RestoreOptions, RestoreStats, MAX_RESTORE_DEPTH};

/// A completed backup.
#[derive(Debug)]
pub struct Backup {
    /// The version recorded.
    pub version: Version,
    /// Things that did not stop the backup (files that vanished, special files skipped).
    pub warnings: Vec<String>,
    /// The files read because they are new or changed since the previous version.
    pub changed: Vec<Changed>,
}

/// A file a backup reads (or, in a dry run, would read): new, or changed since the previous
/// version (size, times or inode differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// Where it is.
    pub path: PathBuf,
    /// Its size when scanned.
    pub size: u64,
    /// True if the previous version has no file at this path.
    pub new: bool,
}

/// What a backup would store, from a dry run: nothing is written to any site.
#[derive(Debug, Clone, Default)]
pub struct DryRun {
    /// Files and folders the version would hold.
    pub files: u64,
    /// Folders.
    pub dirs: u64,
    /// Bytes of all its files.
    pub bytes: u64,
    /// The files that would be read (new or changed), in path order.
    pub changed: Vec<Changed>,
    /// Things a backup would warn of.
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
    new: bool,
    /// A relation file cut in pages whose previous version was cut in pages too: that
    /// version's page ids, to store changed pages as deltas against.
    previous_pages: Option<Vec<ChunkId>>,
}

struct Scan<'a> {
    /// None in a dry run: unchanged files count as reused without asking.
    session: Option<&'a BackupSession>,
    previous: Option<&'a VersionReader>,
    selection: &'a BackupSelection,
    /// The device of the path being scanned (for `one_file_system`).
    device: u64,
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
        rel: &[u8],
        prev: Option<&Node>,
        relation: Option<&mut RelationChunker>,
    ) -> Result<Option<Scanned>> {
        let name = rel.rsplit(|b| *b == b'/').next().unwrap_or(rel);
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
        if self.selection.exclude.covers(rel, file_type.is_dir()) {
            return Ok(None);
        }
        if file_type.is_dir() {
            let prev_tree = self.previous_tree(prev);
            // A mount point is stored as an empty folder: restoring it gives a place to mount.
            let children = if self.selection.one_file_system && meta.dev() != self.device {
                Vec::new()
            } else {
                self.dir(path, rel, prev_tree.as_ref())?
            };
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
                if self.session.is_none_or(|s| s.reuse(&p.content)) {
                    node.content = p.content.clone();
                    self.stats.bytes += node.size;
                    return Ok(Some(Scanned::File { node, job: None }));
                }
            }
            self.jobs.push(FileJob {
                path: path.to_path_buf(),
                size: node.size,
                chunking,
                new: prev.is_none_or(|p| p.kind != NodeKind::File),
                previous_pages: prev
                    .filter(|_| self.previous.is_some())
                    .and_then(|p| page_ids(p, chunking)),
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

    fn dir(&mut self, path: &Path, rel: &[u8], prev: Option<&Tree>) -> Result<Vec<Scanned>> {
        let mut names = Vec::new();
        // A cache folder keeps only its tag (so a restore still marks it as one).
        let cache = self.selection.exclude_caches && is_cache_dir(path);
        let entries =
            fs::read_dir(path).map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
            let name = entry.file_name();
            if !cache || name == CACHEDIR_TAG {
                names.push(name);
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let mut children = Vec::with_capacity(names.len());
        let mut relation = is_relation_dir(path).then(RelationChunker::default);
        for name in names {
            let prev_node = prev.and_then(|t| t.find(name.as_bytes()));
            let chunker = relation
                .as_mut()
                .filter(|_| is_relation_file_name(name.as_bytes()));
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            if let Some(child) = self.entry(&path.join(&name), &child_rel, prev_node, chunker)? {
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
    previous: Option<&VersionReader>,
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
    let stored = match (previous, &job.previous_pages) {
        (Some(reader), Some(pages)) => {
            session.store_pages(file, PG_PAGE, &PreviousPages { reader, pages }, progress)
        }
        _ => session.store_reader_with(file, job.chunking, progress),
    };
    match stored {
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
    backup_with(
        vault,
        keyring,
        dataset,
        paths,
        &BackupSelection::default(),
        progress,
    )
}

/// The paths to back up made absolute, each with whether it is a folder, and whether they
/// are one folder (stored as the version's root).
fn resolve(paths: &[PathBuf]) -> Result<(Vec<(PathBuf, bool)>, bool)> {
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
    Ok((absolute, single_dir))
}

/// The dataset's newest tree version, opened to compare with (None if there is none or it
/// cannot be read: then every file is read).
fn open_previous(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<VersionReader>> {
    let previous_version = vault
        .versions(dataset)?
        .into_iter()
        .rev()
        .find(|v| v.kind == VersionKind::Tree);
    Ok(
        match previous_version.filter(|_| keyring.can_read(dataset)) {
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
        },
    )
}

fn device_of(path: &Path) -> Result<u64> {
    fs::symlink_metadata(path)
        .map(|m| m.dev())
        .map_err(|e| Error::io(format!("reading metadata of {}", path.display()), e))
}

/// Scans every path given: the root's entries.
fn scan_paths(
    scan: &mut Scan<'_>,
    absolute: &[(PathBuf, bool)],
    single_dir: bool,
    prev_root: Option<&Tree>,
) -> Result<Vec<Scanned>> {
    if single_dir {
        scan.device = device_of(&absolute[0].0)?;
        return scan.dir(&absolute[0].0, b"", prev_root);
    }
    let mut children = Vec::new();
    let mut sorted: Vec<_> = absolute.iter().map(|(p, _)| p.clone()).collect();
    sorted.sort_by(|a, b| {
        a.file_name()
            .map(|n| n.as_bytes())
            .cmp(&b.file_name().map(|n| n.as_bytes()))
    });
    for p in sorted {
        let name = entry_name(&p)?;
        let prev_node = prev_root.and_then(|t| t.find(&name));
        let mut relation = (p.parent().is_some_and(is_relation_dir)
            && is_relation_file_name(&name))
        .then(RelationChunker::default);
        scan.device = device_of(&p)?;
        if let Some(child) = scan.entry(&p, &name, prev_node, relation.as_mut())? {
            children.push(child);
        }
    }
    Ok(children)
}

fn changed_list(jobs: &[FileJob]) -> Vec<Changed> {
    let mut changed: Vec<Changed> = jobs
        .iter()
        .map(|j| Changed {
            path: j.path.clone(),
            size: j.size,
            new: j.new,
        })
        .collect();
    changed.sort_by(|a, b| a.path.cmp(&b.path));
    changed
}

/// What [`backup_with`] would store, without writing anything to any site: the files it
/// would read (new or changed since the previous version, by size, times and inode) and the
/// version's size. Stored bytes may be fewer (chunks already stored are not stored again).
pub fn dry_run(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    paths: &[PathBuf],
    selection: &BackupSelection,
) -> Result<DryRun> {
    let (absolute, single_dir) = resolve(paths)?;
    let mut warnings = Vec::new();
    let previous = open_previous(vault, keyring, dataset, &mut warnings)?;
    let prev_root = previous.as_ref().and_then(|r| r.root().ok());
    let mut scan = Scan {
        session: None,
        previous: previous.as_ref(),
        selection,
        device: 0,
        jobs: Vec::new(),
        warnings,
        stats: VersionStats::default(),
    };
    scan_paths(&mut scan, &absolute, single_dir, prev_root.as_ref())?;
    let changed_bytes: u64 = scan.jobs.iter().map(|j| j.size).sum();
    Ok(DryRun {
        files: scan.stats.files,
        dirs: scan.stats.dirs,
        bytes: scan.stats.bytes + changed_bytes,
        changed: changed_list(&scan.jobs),
        warnings: scan.warnings,
    })
}

/// [`backup`], leaving out what `selection` excludes. A `selection.dry_run` is refused here:
/// call [`dry_run`].
pub fn backup_with(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    paths: &[PathBuf],
    selection: &BackupSelection,
    progress: &dyn Progress,
) -> Result<Backup> {
    if selection.dry_run {
        return Err(Error::invalid(
            "a dry run writes nothing: it is files::dry_run's, not a backup's",
        ));
    }
    let (absolute, single_dir) = resolve(paths)?;
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
    let previous = open_previous(vault, keyring, dataset, &mut warnings)?;
    let prev_root = previous.as_ref().and_then(|r| r.root().ok());

    let mut scan = Scan {
        session: Some(&session),
        previous: previous.as_ref(),
        selection,
        device: 0,
        jobs: Vec::new(),
        warnings,
        stats: VersionStats::default(),
    };
    let root_children = scan_paths(&mut scan, &absolute, single_dir, prev_root.as_ref())?;
    let Scan {
        jobs,
        mut warnings,
        mut stats,
        ..
    } = scan;
    let changed = changed_list(&jobs);

    progress.set_total(jobs.iter().map(|j| j.size).sum());
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| Reverse(jobs[i].size));
    let results: Vec<(usize, ReadResult)> = order
        .par_iter()
        .map(|&i| read_file(&session, previous.as_ref(), &jobs[i], progress).map(|r| (i, r)))
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
        changed,
    })
}
