//! Restoring a tree version into a folder: the plan (every folder, file and link, checked
//! against the version's own counts), the selection and re-sync rules of [`crate::resync`],
//! then each pack read once, and metadata last.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use embassy_core::engine::reader::VersionReader;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::progress::Progress;
use embassy_core::{Error, Result};
use rayon::prelude::*;

mod fill;

use crate::selection::RestoreSelection;
use crate::{metadata, resync};

/// How to restore.
#[derive(Debug, Default, Clone)]
pub struct RestoreOptions {
    /// Restore only this path inside the version (it lands in the target under its own name).
    pub subpath: Option<PathBuf>,
    /// Allow a target folder that is not empty (existing files of the same names are replaced,
    /// but those already identical to the version's are left as they are).
    pub overwrite: bool,
    /// Which paths to restore, and whether to delete what the version does not hold (which
    /// allows a target that is not empty, as `overwrite` does).
    pub selection: RestoreSelection,
}

/// What a restore wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Files already identical to the version's at the target, left as they were (counted in
    /// `files`, not in `bytes`).
    pub skipped_files: u64,
    /// Their bytes.
    pub skipped_bytes: u64,
    /// Entries removed from the target by `delete` (a folder counts once).
    pub deleted: u64,
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
    let overwrite = options.overwrite || options.selection.delete;
    if !overwrite && !is_empty_dir(target)? {
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
    // The version's folder the target stands for, and the folder the restore fills.
    let mut prefix: Vec<u8> = Vec::new();
    let mut top = target.to_path_buf();
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
                if i + 1 < components.len() {
                    if !prefix.is_empty() {
                        prefix.push(b'/');
                    }
                    prefix.extend_from_slice(name.as_bytes());
                }
                found = Some(node);
            }
            match found {
                Some(node) => {
                    let path = target.join(std::ffi::OsStr::from_bytes(&node.name));
                    top = path.clone();
                    plan_restore(reader, vec![(path, node)])?
                }
                None => plan_restore(reader, seeds(&tree, target))?,
            }
        }
    };

    let place = resync::Placement { target, prefix };
    let selection = &options.selection;
    resync::filter(
        selection,
        &place,
        &mut plan.dirs,
        &mut plan.files,
        &mut plan.leaves,
    );
    // With `delete`: what stands in the way of the version's entries (a folder where it has a
    // file, a file where it has a folder) goes first; the rest only once every file is in
    // place, so a restore that fails half-way removes nothing else.
    let mut deleted = 0;
    let planned = selection.delete.then(|| resync::Planned {
        dirs: plan.dirs.iter().map(|(p, _, _)| p.clone()).collect(),
        others: plan
            .files
            .iter()
            .chain(&plan.leaves)
            .map(|(p, _)| p.clone())
            .collect(),
    });
    let delete = |all: bool| -> Result<u64> {
        match &planned {
            Some(planned) if fs::symlink_metadata(&top).is_ok_and(|m| m.is_dir()) => {
                resync::delete_extra(&top, planned, selection, &place, all)
            }
            _ => Ok(0),
        }
    };
    deleted += delete(false)?;

    // Structure first.
    for (path, _, _) in &plan.dirs {
        match fs::create_dir(path) {
            Ok(()) => {}
            Err(e)
                if e.kind() == ErrorKind::AlreadyExists
                    && overwrite
                    && fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) => {}
            Err(e) => return Err(Error::io(format!("creating {}", path.display()), e)),
        }
    }
    for (path, node) in &plan.leaves {
        if overwrite {
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
    // Where each chunk goes (file, offset), one flat list sorted by chunk id: a hash map of
    // small vectors held 26 MB for the full benchmark corpus's 168,000 places.
    let mut targets: Vec<(ChunkId, usize, u64)> = Vec::new();
    let mut total = 0u64;
    // Each file is created under a fresh name (O_EXCL|O_NOFOLLOW), filled there, and renamed
    // into place only once every file's content is written: a link already at the final name
    // is replaced, never written through, and a restore that fails half-way (a damaged pack,
    // a full disk) leaves no half-filled file under a final name (its temporary files go).
    // Files already identical at the target stay (see `resync`). Files are created as their
    // first blob arrives, on the threads reading packs (see `fill`).
    let same: Vec<bool> = if overwrite {
        plan.files
            .par_iter()
            .map(|(path, node)| resync::identical(reader, path, node))
            .collect::<Result<_>>()?
    } else {
        vec![false; plan.files.len()]
    };
    let (mut skipped_files, mut skipped_bytes) = (0u64, 0u64);
    let mut fill_plan = Vec::with_capacity(plan.files.len());
    for (i, (path, node)) in plan.files.iter().enumerate() {
        if same[i] {
            skipped_files += 1;
            skipped_bytes += node.size;
            fill_plan.push(None);
            continue;
        }
        fill_plan.push(Some((path.as_path(), node.size)));
        let mut offset = 0u64;
        for id in &node.content {
            targets.push((*id, i, offset));
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
    // Page-cache writes: O_DIRECT (`Direct::Try`) cut the CPU time but was slower in wall
    // time at moderate load, and leaves restored files out of the page cache for whatever
    // reads them next (PostgreSQL starting); off unless the benchmark's switch asks for it,
    // until an idle A/B decides (bench/README.md).
    let direct = if std::env::var_os("EMBASSY_BENCH_RESTORE_O_DIRECT").is_some() {
        fill::Direct::Try
    } else {
        fill::Direct::Off
    };
    let fills = fill::Fills::new(fill_plan, direct);
    targets.sort_unstable_by_key(|t| t.0);
    targets.shrink_to_fit();
    let chunks = targets.chunk_by(|a, b| a.0 == b.0).map(|same| same[0].0);
    let places = |id: &ChunkId| {
        let start = targets.partition_point(|t| t.0 < *id);
        let len = targets[start..].partition_point(|t| t.0 == *id);
        &targets[start..start + len]
    };
    reader.for_each_blob(chunks, &|id, data| {
        for &(_, i, offset) in places(id) {
            fills.put(i, offset, data)?;
            progress.add(data.len() as u64);
        }
        Ok(())
    })?;
    let pending = fills.finish()?;
    pending
        .into_par_iter()
        .zip(plan.files.par_iter())
        .try_for_each(|(file, (path, _))| match file {
            Some(file) => file
                .persist()
                .map_err(|e| Error::io(format!("putting {} in place", path.display()), e)),
            None => Ok(()),
        })?;
    deleted += delete(true)?;

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
        skipped_files,
        skipped_bytes,
        deleted,
    })
}
