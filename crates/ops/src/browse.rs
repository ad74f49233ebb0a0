//! Looking inside a dataset's versions without restoring them: list a version's entries
//! (`ls`), find paths across versions (`find`), compare two versions (`diff`), count what the
//! dataset stores (`stats`), and the read-only tree a FUSE mount serves (`mount`).
//!
//! Everything is read through the version's reader ([`VersionReader`]), so every tree and
//! every chunk is decrypted and checked against its id on the way: damage is an error, never
//! wrong bytes or a wrong listing.
//!
//! What a version holds depends on its dataset's kind: a file tree holds its files; a stream
//! holds one file, `stream`, the whole stream; a PostgreSQL dataset's versions are base backups,
//! whose files are the data directory as the server sent it (the WAL streamed since is not
//! part of a version and is not shown). [`Content`] says which.

pub mod content;
pub mod diff;
pub mod find;
pub mod mount;
pub mod stats;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::format::manifest::VersionKind;
use embassy_core::format::tree::{Node, NodeKind};
use embassy_core::{Error, Result};
use serde::Serialize;

/// What a version holds, by its dataset's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    /// A file tree: its files, folders and links.
    Tree,
    /// A stream: one file named `stream`, the whole stream.
    Stream,
    /// A PostgreSQL base backup: the data directory's files (the WAL streamed after it is not
    /// part of the version).
    PostgresBaseBackup,
}

/// A version opened to look inside.
pub struct Opened {
    /// The version.
    pub version: Version,
    /// Its reader (every read checked).
    pub reader: VersionReader,
    /// What it holds.
    pub content: Content,
}

/// Splits `DATASET@VERSION` into the dataset and the version selector (a number, `latest`, or
/// an id prefix); `DATASET` alone is the newest version.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('@') {
        Some((d, v)) => (d, Some(v)),
        None => (target, None),
    }
}

/// Opens a version of a dataset (selector as [`Vault::find_version`]: `None` or `latest` for
/// the newest, a version number, an id prefix) with the keyring's keys. When the vault requires
/// witnesses, only a version a witnessed checkpoint covers, unless `allow_unwitnessed` (the
/// rule restores follow: [`Vault::find_trusted_version`]).
pub fn open(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    selector: Option<&str>,
    allow_unwitnessed: bool,
) -> Result<Opened> {
    let version = vault.find_trusted_version(dataset, selector, allow_unwitnessed)?;
    open_version(vault, keyring, version)
}

/// The versions of a dataset one may look inside, oldest first: all of them, up to the newest a
/// witnessed checkpoint covers when the vault requires witnesses (unless `allow_unwitnessed`).
/// An unknown dataset, one without versions, or a newest version that cannot be proved (a gap,
/// a fork) is an error: never an older view shown as the newest in silence.
pub fn versions(vault: &Vault, dataset: &str, allow_unwitnessed: bool) -> Result<Vec<Version>> {
    let newest = vault.find_trusted_version(dataset, None, allow_unwitnessed)?;
    Ok(vault
        .versions(dataset)?
        .into_iter()
        .filter(|v| v.seq <= newest.seq)
        .collect())
}

/// Opens a version found before.
pub fn open_version(vault: &Vault, keyring: &Keyring, version: Version) -> Result<Opened> {
    let reader = VersionReader::open_with(vault.site().clone(), keyring, &version)?;
    let content = if crate::restore::is_base_backup(&reader) {
        Content::PostgresBaseBackup
    } else {
        match version.kind {
            VersionKind::Tree => Content::Tree,
            VersionKind::Stream => Content::Stream,
        }
    };
    Ok(Opened {
        version,
        reader,
        content,
    })
}

/// One entry of a version: a file, folder, link or named pipe, with its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its path in the version, `/`-separated, without a leading `/` (names that are not
    /// UTF-8 are shown with replacement characters).
    pub path: String,
    /// File, dir, symlink or fifo.
    pub kind: NodeKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (files; 0 otherwise).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// A link's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl Entry {
    /// The entry for `node` at `path`.
    pub fn of(path: String, node: &Node) -> Self {
        Self {
            path,
            kind: node.kind,
            mode: node.mode,
            uid: node.uid,
            gid: node.gid,
            size: node.size,
            mtime_ns: node.mtime_ns,
            target: node
                .target
                .as_deref()
                .map(|t| String::from_utf8_lossy(t).into_owned()),
        }
    }
}

/// A version's listing: what `embassy ls` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The dataset.
    pub dataset: String,
    /// The version's number.
    pub version: u64,
    /// What the version holds.
    pub content: Content,
    /// The path listed (empty: the version's top).
    pub path: String,
    /// The entries, in path order: the path itself when it is not a folder, else what it holds
    /// (and, recursively, what its folders hold).
    pub entries: Vec<Entry>,
}

/// The node for the version's top folder (its metadata when the manifest recorded it).
fn root_node(reader: &VersionReader) -> Node {
    let mut node = reader.manifest.root_node.clone().unwrap_or(Node {
        name: Vec::new(),
        kind: NodeKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_ns: reader.manifest.captured_at_ns,
        ctime_ns: 0,
        inode: 0,
        size: 0,
        content: Vec::new(),
        subtree: None,
        target: None,
    });
    node.kind = NodeKind::Dir;
    node.content.clear();
    node.target = None;
    node.subtree = Some(reader.manifest.root);
    node
}

/// The components of a path inside a version (`/`, `.` and empty parts dropped).
fn components(path: &str) -> Vec<&str> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect()
}

/// The node at `path` in the version (the top folder for an empty path).
pub fn resolve(reader: &VersionReader, path: &str) -> Result<Node> {
    let mut node = root_node(reader);
    for (i, name) in components(path).iter().enumerate() {
        let Some(subtree) = node.subtree.filter(|_| node.kind == NodeKind::Dir) else {
            return Err(not_found(reader, path, &components(path)[..i].join("/")));
        };
        let tree = reader.read_tree(&subtree)?;
        node = tree
            .find(name.as_bytes())
            .cloned()
            .ok_or_else(|| not_found(reader, path, ""))?;
    }
    Ok(node)
}

fn not_found(reader: &VersionReader, path: &str, not_a_folder: &str) -> Error {
    let v = &reader.version;
    if not_a_folder.is_empty() {
        Error::NotFound(format!(
            "version {} of {} holds no {path}",
            v.number, v.dataset
        ))
    } else {
        Error::NotFound(format!(
            "version {} of {} holds no {path}: {not_a_folder} is not a folder",
            v.number, v.dataset
        ))
    }
}

/// Joins a folder's path and a name.
pub fn join(prefix: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if prefix.is_empty() {
        name.into_owned()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Calls `visit` with every entry under the folder `subtree` (at `prefix`), depth first in
/// name order; `visit` returns false to skip a folder's contents.
pub fn walk(
    reader: &VersionReader,
    prefix: &str,
    subtree: &embassy_core::id::ChunkId,
    visit: &mut dyn FnMut(&str, &Node) -> Result<bool>,
) -> Result<()> {
    let tree = reader.read_tree(subtree)?;
    for node in &tree.nodes {
        let path = join(prefix, &node.name);
        let descend = visit(&path, node)?;
        if let (true, NodeKind::Dir, Some(sub)) = (descend, node.kind, node.subtree) {
            walk(reader, &path, &sub, visit)?;
        }
    }
    Ok(())
}

/// Lists `path` in a version: a folder's entries (all below it when `recursive`), or the
/// entry itself when it is not a folder.
pub fn list(opened: &Opened, path: &str, recursive: bool) -> Result<Listing> {
    let reader = &opened.reader;
    let path = components(path).join("/");
    let node = resolve(reader, &path)?;
    let mut entries = Vec::new();
    match (node.kind, node.subtree) {
        (NodeKind::Dir, Some(subtree)) => walk(reader, &path, &subtree, &mut |p, n| {
            entries.push(Entry::of(p.to_string(), n));
            Ok(recursive)
        })?,
        _ => entries.push(Entry::of(path.clone(), &node)),
    }
    Ok(Listing {
        dataset: opened.version.dataset.clone(),
        version: opened.version.number,
        content: opened.content,
        path,
        entries,
    })
}
