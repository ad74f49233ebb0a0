//! Restoring into a folder that already holds the tree: what to leave out (include and
//! exclude patterns), what is already there (files identical to the version's are not written
//! again) and what to remove (`delete`: what the version does not hold).
//!
//! **Identical files.** A file at the target is kept as it is only if its content is the
//! version's: the same size, and each of its pieces, cut where the version's chunks are cut,
//! hashes (the dataset's keyed BLAKE3 chunk id) to the chunk the version names. Size and
//! modification time are not trusted alone: a file changed in place within the same second, or
//! given its old mtime back, has them unchanged. Reading the local file is what a re-sync costs;
//! what it saves is fetching, decrypting and writing the chunks. The metadata (mode, owner,
//! times) of a kept file is still set from the version.
//!
//! **Shared files.** A file with more than one hard link is never identical: a link to a file
//! outside the target would otherwise stay shared, and setting the version's metadata on it
//! would change the outside file too. It is replaced by a new file (temporary name, then
//! rename), which breaks the link and leaves the other names as they were.

use std::collections::HashSet;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use embassy_core::engine::reader::VersionReader;
use embassy_core::format::tree::Node;
use embassy_core::{Error, Result};

use crate::selection::RestoreSelection;

/// Where the restored paths sit in the version: a path at the target `target/x/y` is the
/// version's `prefix/x/y`.
pub(crate) struct Placement<'a> {
    /// The restore target.
    pub target: &'a Path,
    /// The version's folder the target stands for (empty: the root).
    pub prefix: Vec<u8>,
}

impl Placement<'_> {
    /// The version's path (relative, `/`-separated) of a path at the target.
    pub fn version_path(&self, at: &Path) -> Vec<u8> {
        let rest = at.strip_prefix(self.target).unwrap_or(at);
        let mut out = self.prefix.clone();
        for c in rest.components() {
            if !out.is_empty() {
                out.push(b'/');
            }
            out.extend_from_slice(c.as_os_str().as_bytes());
        }
        out
    }
}

/// Keeps only the selected entries of a plan: files and links the selection selects, and the
/// folders it selects or that lead to something kept.
pub(crate) fn filter(
    selection: &RestoreSelection,
    place: &Placement<'_>,
    dirs: &mut Vec<(PathBuf, Node, usize)>,
    files: &mut Vec<(PathBuf, Node)>,
    leaves: &mut Vec<(PathBuf, Node)>,
) {
    if selection.include.is_empty() && selection.exclude.is_empty() {
        return;
    }
    let keep = |p: &PathBuf| selection.selects(&place.version_path(p), false);
    files.retain(|(p, _)| keep(p));
    leaves.retain(|(p, _)| keep(p));
    let mut needed: HashSet<&Path> = HashSet::new();
    for (p, _) in files.iter().chain(leaves.iter()) {
        let mut at = p.parent();
        while let Some(dir) = at.filter(|d| d.starts_with(place.target) && *d != place.target) {
            if !needed.insert(dir) {
                break;
            }
            at = dir.parent();
        }
    }
    let needed: HashSet<PathBuf> = needed.into_iter().map(Path::to_path_buf).collect();
    dirs.retain(|(p, _, _)| needed.contains(p) || selection.selects(&place.version_path(p), true));
}

/// Whether the file at `path` (a regular file, never followed through a link) holds exactly
/// the content `node` names in `reader`'s version, and is its only name (one hard link; see
/// the module's documentation).
pub(crate) fn identical(reader: &VersionReader, path: &Path, node: &Node) -> Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    if !meta.is_file() || meta.nlink() != 1 || meta.len() != node.size {
        return Ok(false);
    }
    let mut file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    // The file opened must be the one checked (not one renamed in since), still with one name.
    let opened = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if opened.ino() != meta.ino() || opened.dev() != meta.dev() || opened.nlink() != 1 {
        return Ok(false);
    }
    let keys = reader.keys();
    let mut buf = Vec::new();
    for id in &node.content {
        let len = reader.blob_size(id)? as usize;
        buf.resize(len, 0);
        match file.read_exact(&mut buf) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
        if keys.chunk_id(&buf) != *id {
            return Ok(false);
        }
    }
    // Nothing more (a file grown since its size was read is not the version's).
    let mut extra = [0u8; 1];
    match file.read(&mut extra) {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// What [`delete_extra`] has to know of the plan: the folders, and the files and links.
pub(crate) struct Planned {
    /// Folders the restore creates or keeps.
    pub dirs: HashSet<PathBuf>,
    /// Files and links it writes.
    pub others: HashSet<PathBuf>,
}

/// Removes what `top` (a folder the restore fills) holds that the plan does not, among the
/// paths the selection selects; returns how many entries were removed (a folder counts once).
/// Links are removed, never followed. A folder where the version has a file (or the other way
/// round) is removed too, so the restore can put the version's entry there; with `all` false,
/// only those are.
pub(crate) fn delete_extra(
    top: &Path,
    planned: &Planned,
    selection: &RestoreSelection,
    place: &Placement<'_>,
    all: bool,
) -> Result<u64> {
    let mut removed = 0u64;
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let path = entry.path();
            let meta = fs::symlink_metadata(&path)
                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
            let is_dir = meta.is_dir();
            if is_dir && planned.dirs.contains(&path) {
                stack.push(path);
                continue;
            }
            if !selection.selects(&place.version_path(&path), is_dir)
                || (!is_dir && planned.others.contains(&path))
            {
                continue;
            }
            let in_the_way = planned.others.contains(&path) || planned.dirs.contains(&path);
            if !all && !in_the_way {
                continue;
            }
            let gone = if is_dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            gone.map_err(|e| Error::io(format!("deleting {}", path.display()), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}
