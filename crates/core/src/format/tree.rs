//! Trees: one serialized directory per blob, entries sorted by name. A version's root tree
//! names every file, directory and link with its metadata; file content is a list of chunk ids.
//! Equal directories serialize to equal bytes and so dedup like any chunk.

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::error::{Error, Result};
use crate::id::ChunkId;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// File name (raw bytes: names need not be UTF-8).
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits and set-id/sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status-change time, for change detection only.
    pub ctime_ns: i64,
    /// Inode number, for change detection only.
    pub inode: u64,
    /// Size in bytes (files).
    pub size: u64,
    /// Content chunks in order (files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ChunkId>,
    /// The directory's tree blob (dirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<ChunkId>,
    /// Link target (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub target: Option<Vec<u8>>,
}

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    /// Entries sorted by name, names unique.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// Serializes the tree.
    pub fn encode(&self) -> Vec<u8> {
        cbor::to_vec(self)
    }

    /// Parses and checks a tree blob: names must be sorted, unique and safe to create.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let tree: Tree = cbor::from_slice(bytes).map_err(|e| Error::corrupt(what, e))?;
        for pair in tree.nodes.windows(2) {
            if pair[0].name >= pair[1].name {
                return Err(Error::corrupt(
                    what,
                    "tree entries are not sorted and unique",
                ));
            }
        }
        for node in &tree.nodes {
            if !is_safe_name(&node.name) {
                return Err(Error::corrupt(
                    what,
                    format!(
                        "unsafe file name {:?} in tree",
                        String::from_utf8_lossy(&node.name)
                    ),
                ));
            }
            let consistent = match node.kind {
                NodeKind::Dir => node.subtree.is_some() && node.content.is_empty(),
                NodeKind::File => node.subtree.is_none(),
                NodeKind::Symlink => node.target.is_some() && node.content.is_empty(),
                NodeKind::Fifo => node.content.is_empty() && node.subtree.is_none(),
            };
            if !consistent {
                return Err(Error::corrupt(
                    what,
                    "tree entry fields do not match its kind",
                ));
            }
        }
        Ok(tree)
    }

    /// The entry with this name.
    pub fn find(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| &self.nodes[i])
    }
}

/// A name a restore may create: not empty, not `.` or `..`, no `/` or NUL.
pub fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &[u8]) -> Node {
        Node {
            name: name.to_vec(),
            kind: NodeKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            size: 0,
            content: vec![],
            subtree: None,
            target: None,
        }
    }

    #[test]
    fn malicious_trees_are_rejected() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"x\0"] {
            let tree = Tree {
                nodes: vec![node(bad)],
            };
            assert!(Tree::decode(&tree.encode(), "t").is_err(), "{bad:?}");
        }
        let unsorted = Tree {
            nodes: vec![node(b"b"), node(b"a")],
        };
        assert!(Tree::decode(&unsorted.encode(), "t").is_err());
        let good = Tree {
            nodes: vec![node(b"a"), node(b"b")],
        };
        assert_eq!(Tree::decode(&good.encode(), "t").unwrap(), good);
    }
}
