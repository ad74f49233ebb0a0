//! The read-only tree `embassy mount` serves: one folder per version, named by its number,
//! and `latest`, a link to the newest. The command line adapts it to FUSE; this module knows
//! nothing of FUSE, only inode numbers, attributes, listings and byte ranges.
//!
//! Versions are opened when first entered, folders read when first listed, and file bytes read
//! chunk by chunk through the version's reader: a chunk that does not decrypt or does not match
//! its id is an error (the mount answers EIO), never wrong bytes.

use std::collections::HashMap;
use std::sync::Arc;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Version};
use embassy_core::format::tree::{Node, NodeKind};
use embassy_core::id::ChunkId;
use embassy_core::site::Site;
use embassy_core::{Error, Result};

use super::content::FileContent;

/// The inode of the mount's top folder.
pub const ROOT: u64 = 1;
/// The inode of `latest`.
const LATEST: u64 = 2;
/// The first version folder's inode.
const FIRST_VERSION: u64 = 3;
/// Decrypted chunks kept for the next read (the kernel reads files in pieces of 128 KiB).
const CACHED_CHUNKS: usize = 8;

/// What the mount says of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Its inode number.
    pub ino: u64,
    /// File, folder, link or pipe.
    pub kind: NodeKind,
    /// Size in bytes (a link: its target's length).
    pub size: u64,
    /// Permission bits, write bits removed (the mount is read-only).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
}

struct Inode {
    version: usize,
    node: Node,
    /// Names and inodes of a folder's entries, once listed.
    children: Option<Vec<(Vec<u8>, u64)>>,
    /// Where each chunk of a file starts, once read.
    content: Option<FileContent>,
}

/// The versions of one dataset as a read-only tree.
pub struct MountTree {
    site: Arc<dyn Site>,
    keyring: Keyring,
    versions: Vec<Version>,
    readers: Vec<Option<VersionReader>>,
    /// Inodes from [`FIRST_VERSION`] + number of versions on.
    inodes: Vec<Inode>,
    /// The entries of each version's top folder, once read.
    version_children: HashMap<usize, Vec<(Vec<u8>, u64)>>,
    /// Recently read chunks, newest last.
    cache: Vec<(ChunkId, Arc<Vec<u8>>)>,
}

impl MountTree {
    /// The tree of `versions` (oldest first), read from `site` with `keyring`.
    pub fn new(site: Arc<dyn Site>, keyring: Keyring, versions: Vec<Version>) -> Self {
        let readers = versions.iter().map(|_| None).collect();
        Self {
            site,
            keyring,
            versions,
            readers,
            inodes: Vec::new(),
            version_children: HashMap::new(),
            cache: Vec::new(),
        }
    }

    fn first_node(&self) -> u64 {
        FIRST_VERSION + self.versions.len() as u64
    }

    fn reader(&mut self, version: usize) -> Result<&VersionReader> {
        if self.readers[version].is_none() {
            let reader = VersionReader::open_with(
                self.site.clone(),
                &self.keyring,
                &self.versions[version],
            )?;
            self.readers[version] = Some(reader);
        }
        self.readers[version]
            .as_ref()
            .ok_or_else(|| Error::invalid("version reader not open"))
    }

    fn version_dir(&self, i: usize) -> Attr {
        Attr {
            ino: FIRST_VERSION + i as u64,
            kind: NodeKind::Dir,
            size: 0,
            mode: 0o555,
            uid: 0,
            gid: 0,
            mtime_ns: self.versions[i].captured_at_ns,
        }
    }

    fn newest_name(&self) -> Option<Vec<u8>> {
        self.versions
            .last()
            .map(|v| v.number.to_string().into_bytes())
    }

    /// The attributes of an inode (None: no such inode).
    pub fn attr(&self, ino: u64) -> Option<Attr> {
        let newest = self.versions.last().map_or(0, |v| v.captured_at_ns);
        match ino {
            ROOT => Some(Attr {
                ino,
                kind: NodeKind::Dir,
                size: 0,
                mode: 0o555,
                uid: 0,
                gid: 0,
                mtime_ns: newest,
            }),
            LATEST => self.newest_name().map(|name| Attr {
                ino,
                kind: NodeKind::Symlink,
                size: name.len() as u64,
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime_ns: newest,
            }),
            _ if ino < self.first_node() => Some(self.version_dir((ino - FIRST_VERSION) as usize)),
            _ => {
                let inode = self.inodes.get((ino - self.first_node()) as usize)?;
                let node = &inode.node;
                let size = match node.kind {
                    NodeKind::Symlink => node.target.as_ref().map_or(0, |t| t.len() as u64),
                    NodeKind::File => node.size,
                    _ => 0,
                };
                Some(Attr {
                    ino,
                    kind: node.kind,
                    size,
                    mode: node.mode & !0o222,
                    uid: node.uid,
                    gid: node.gid,
                    mtime_ns: node.mtime_ns,
                })
            }
        }
    }

    /// The entries of a folder: name, inode, kind (`.` and `..` not included).
    pub fn list(&mut self, ino: u64) -> Result<Vec<(Vec<u8>, u64, NodeKind)>> {
        if ino == ROOT {
            let mut out: Vec<(Vec<u8>, u64, NodeKind)> = (0..self.versions.len())
                .map(|i| {
                    let name = self.versions[i].number.to_string().into_bytes();
                    (name, FIRST_VERSION + i as u64, NodeKind::Dir)
                })
                .collect();
            if !self.versions.is_empty() {
                out.push((b"latest".to_vec(), LATEST, NodeKind::Symlink));
            }
            return Ok(out);
        }
        self.load(ino)?;
        Ok(self
            .children_of(ino)
            .unwrap_or_default()
            .iter()
            .map(|(name, child)| {
                let kind = self.attr(*child).map_or(NodeKind::File, |a| a.kind);
                (name.clone(), *child, kind)
            })
            .collect())
    }

    /// The entry `name` of folder `parent`.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Option<Attr>> {
        if parent == ROOT {
            let found = self
                .list(ROOT)?
                .into_iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, ino, _)| ino);
            return Ok(found.and_then(|ino| self.attr(ino)));
        }
        self.load(parent)?;
        let children = self.children_of(parent).unwrap_or_default();
        // A tree's entries are sorted by name.
        let found = children
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| children[i].1);
        Ok(found.and_then(|ino| self.attr(ino)))
    }

    /// A link's target.
    pub fn link_target(&self, ino: u64) -> Option<Vec<u8>> {
        if ino == LATEST {
            return self.newest_name();
        }
        let inode = self
            .inodes
            .get(ino.checked_sub(self.first_node())? as usize)?;
        inode.node.target.clone()
    }

    fn node_at(&self, ino: u64) -> Option<&Inode> {
        self.inodes
            .get(ino.checked_sub(self.first_node())? as usize)
    }

    /// A folder's entries, when read.
    fn children_of(&self, ino: u64) -> Option<&[(Vec<u8>, u64)]> {
        if ino >= FIRST_VERSION && ino < self.first_node() {
            return self
                .version_children
                .get(&((ino - FIRST_VERSION) as usize))
                .map(Vec::as_slice);
        }
        self.node_at(ino)?.children.as_deref()
    }

    /// Reads a folder's tree on first use, giving each entry an inode.
    fn load(&mut self, ino: u64) -> Result<()> {
        if self.children_of(ino).is_some() {
            return Ok(());
        }
        let not_a_folder = || Error::NotFound(format!("inode {ino} is not a folder"));
        let (version, subtree) = if ino >= FIRST_VERSION && ino < self.first_node() {
            let version = (ino - FIRST_VERSION) as usize;
            (version, self.reader(version)?.manifest.root)
        } else {
            let inode = self.node_at(ino).ok_or_else(not_a_folder)?;
            match (inode.node.kind, inode.node.subtree) {
                (NodeKind::Dir, Some(sub)) => (inode.version, sub),
                _ => return Err(not_a_folder()),
            }
        };
        let tree = self.reader(version)?.read_tree(&subtree)?;
        let mut children = Vec::with_capacity(tree.nodes.len());
        for node in tree.nodes {
            let child = self.first_node() + self.inodes.len() as u64;
            children.push((node.name.clone(), child));
            self.inodes.push(Inode {
                version,
                node,
                children: None,
                content: None,
            });
        }
        if ino >= self.first_node() {
            let at = (ino - self.first_node()) as usize;
            self.inodes[at].children = Some(children);
        } else {
            self.version_children.insert(version, children);
        }
        Ok(())
    }

    /// Up to `size` bytes of a file from `offset` (fewer at its end), each chunk checked.
    pub fn read(&mut self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let not_a_file = || Error::NotFound(format!("inode {ino} is not a file"));
        let at = ino.checked_sub(self.first_node()).ok_or_else(not_a_file)? as usize;
        let inode = self.inodes.get(at).ok_or_else(not_a_file)?;
        if inode.node.kind != NodeKind::File {
            return Err(not_a_file());
        }
        let version = inode.version;
        let content = match &self.inodes[at].content {
            Some(c) => c.clone(),
            None => {
                let node = self.inodes[at].node.clone();
                let c = FileContent::of(self.reader(version)?, &node)?;
                self.inodes[at].content = Some(c.clone());
                c
            }
        };
        let end = content.size.min(offset.saturating_add(size as u64));
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        content.read_range_with(
            offset,
            end,
            &mut |id| self.chunk(version, id),
            &mut |bytes| {
                out.extend_from_slice(bytes);
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// A chunk's plaintext, checked, from the cache or the version's reader.
    fn chunk(&mut self, version: usize, id: &ChunkId) -> Result<Arc<Vec<u8>>> {
        if let Some(at) = self.cache.iter().position(|(c, _)| c == id) {
            let hit = self.cache.remove(at);
            let plain = hit.1.clone();
            self.cache.push(hit);
            return Ok(plain);
        }
        let plain = Arc::new(self.reader(version)?.read_blob(id)?);
        if self.cache.len() >= CACHED_CHUNKS {
            self.cache.remove(0);
        }
        self.cache.push((*id, plain.clone()));
        Ok(plain)
    }
}
