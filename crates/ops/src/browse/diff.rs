//! `diff`: what changed from one version to another: paths added, removed and changed, with
//! their sizes, and a summary.
//!
//! Folders whose tree id is the same in both versions are equal and skipped unread (equal
//! folders serialize to equal trees); files are compared by their chunk ids and size (content)
//! and by mode, owner and modification time (metadata). Chunk ids are keyed per key epoch: two
//! versions stored under different keys (a `keys rotate` between them) have different ids for
//! the same bytes, so there files of equal size are compared by reading them.

use embassy_core::engine::reader::VersionReader;
use embassy_core::format::tree::{Node, NodeKind};
use embassy_core::id::ChunkId;
use embassy_core::Result;
use serde::Serialize;

use super::{join, walk, Content, Opened};

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the newer version.
    Added,
    /// Only in the older version.
    Removed,
    /// In both, different.
    Changed,
}

/// One path that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Its path.
    pub path: String,
    /// Added, removed or changed.
    pub change: Change,
    /// What it is (in the newer version when it is there).
    pub kind: NodeKind,
    /// Its size in the older version (None: not there).
    pub old_size: Option<u64>,
    /// Its size in the newer version (None: not there).
    pub new_size: Option<u64>,
    /// New size minus old size (a missing side counts 0).
    pub size_delta: i64,
    /// The content differs (or what it is: a file became a folder): always true for added and
    /// removed paths.
    pub content: bool,
    /// Only mode, owner or modification time differ (content false).
    pub metadata_only: bool,
}

/// One side of a comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    /// The dataset.
    pub dataset: String,
    /// The version's number.
    pub version: u64,
    /// What it holds.
    pub content: Content,
}

/// Counts and bytes of a comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Paths added.
    pub added: u64,
    /// Paths removed.
    pub removed: u64,
    /// Paths changed (content or metadata).
    pub changed: u64,
    /// Bytes of the files added.
    pub added_bytes: u64,
    /// Bytes of the files removed.
    pub removed_bytes: u64,
    /// Sum of every file's size delta: how much larger the newer version is.
    pub size_delta: i64,
}

/// What `embassy diff` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    /// The older side.
    pub from: Side,
    /// The newer side.
    pub to: Side,
    /// The paths that differ, in path order.
    pub differences: Vec<Difference>,
    /// The summary.
    pub summary: Summary,
}

/// Compares version `from` with version `to`.
pub fn diff(from: &Opened, to: &Opened) -> Result<Diff> {
    let mut out = Vec::new();
    let pair = Pair {
        a: &from.reader,
        b: &to.reader,
        same_keys: from.reader.keys().key_id() == to.reader.keys().key_id(),
    };
    pair.dirs(
        Some(&from.reader.manifest.root),
        Some(&to.reader.manifest.root),
        "",
        &mut out,
    )?;
    let mut summary = Summary::default();
    for d in &out {
        match d.change {
            Change::Added => {
                summary.added += 1;
                summary.added_bytes += d.new_size.unwrap_or(0);
            }
            Change::Removed => {
                summary.removed += 1;
                summary.removed_bytes += d.old_size.unwrap_or(0);
            }
            Change::Changed => summary.changed += 1,
        }
        summary.size_delta += d.size_delta;
    }
    let side = |o: &Opened| Side {
        dataset: o.version.dataset.clone(),
        version: o.version.number,
        content: o.content,
    };
    Ok(Diff {
        from: side(from),
        to: side(to),
        differences: out,
        summary,
    })
}

fn size_of(node: &Node) -> u64 {
    if node.kind == NodeKind::File {
        node.size
    } else {
        0
    }
}

/// One side of a path only: it and everything below it.
fn one_side(
    reader: &VersionReader,
    path: &str,
    node: &Node,
    change: Change,
    out: &mut Vec<Difference>,
) -> Result<()> {
    let mut push = |path: &str, node: &Node| {
        let size = size_of(node);
        let (old_size, new_size, size_delta) = match change {
            Change::Added => (None, Some(size), size as i64),
            _ => (Some(size), None, -(size as i64)),
        };
        out.push(Difference {
            path: path.to_string(),
            change,
            kind: node.kind,
            old_size,
            new_size,
            size_delta,
            content: true,
            metadata_only: false,
        });
    };
    push(path, node);
    if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
        walk(reader, path, &sub, &mut |p, n| {
            push(p, n);
            Ok(true)
        })?;
    }
    Ok(())
}

/// The two versions compared.
struct Pair<'r> {
    a: &'r VersionReader,
    b: &'r VersionReader,
    /// Both sealed under the same keys: equal chunk ids mean equal bytes, and only then.
    same_keys: bool,
}

impl Pair<'_> {
    /// Compares two folders (None: absent on that side).
    fn dirs(
        &self,
        a: Option<&ChunkId>,
        b: Option<&ChunkId>,
        prefix: &str,
        out: &mut Vec<Difference>,
    ) -> Result<()> {
        if self.same_keys && a.is_some() && a == b {
            return Ok(());
        }
        let ta = match a {
            Some(id) => self.a.read_tree(id)?.nodes,
            None => Vec::new(),
        };
        let tb = match b {
            Some(id) => self.b.read_tree(id)?.nodes,
            None => Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        while i < ta.len() || j < tb.len() {
            let order = match (ta.get(i), tb.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let n = &ta[i];
                    one_side(self.a, &join(prefix, &n.name), n, Change::Removed, out)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let n = &tb[j];
                    one_side(self.b, &join(prefix, &n.name), n, Change::Added, out)?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (x, y) = (&ta[i], &tb[j]);
                    self.both(x, y, &join(prefix, &x.name), out)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// A path on both sides.
    fn both(&self, x: &Node, y: &Node, path: &str, out: &mut Vec<Difference>) -> Result<()> {
        if x.kind != y.kind {
            one_side(self.a, path, x, Change::Removed, out)?;
            return one_side(self.b, path, y, Change::Added, out);
        }
        let content = match x.kind {
            NodeKind::File if x.size != y.size => true,
            NodeKind::File if self.same_keys => x.content != y.content,
            NodeKind::File => !self.same_bytes(&x.content, &y.content)?,
            NodeKind::Symlink => x.target != y.target,
            NodeKind::Dir | NodeKind::Fifo => false,
        };
        let owner_or_mode = x.mode != y.mode || x.uid != y.uid || x.gid != y.gid;
        // A folder's time changes whenever what it holds does: only its own mode or owner count.
        let metadata = owner_or_mode || (x.kind != NodeKind::Dir && x.mtime_ns != y.mtime_ns);
        if content || metadata {
            out.push(Difference {
                path: path.to_string(),
                change: Change::Changed,
                kind: y.kind,
                old_size: Some(size_of(x)),
                new_size: Some(size_of(y)),
                size_delta: size_of(y) as i64 - size_of(x) as i64,
                content,
                metadata_only: !content,
            });
        }
        if x.kind == NodeKind::Dir {
            self.dirs(x.subtree.as_ref(), y.subtree.as_ref(), path, out)?;
        }
        Ok(())
    }

    /// True if two files (chunks of `a`, chunks of `b`) hold the same bytes: read and compared
    /// a chunk at a time, never a whole file in memory.
    fn same_bytes(&self, a: &[ChunkId], b: &[ChunkId]) -> Result<bool> {
        let (mut ia, mut ib) = (0, 0);
        let (mut ba, mut bb): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
        let (mut pa, mut pb) = (0usize, 0usize);
        loop {
            if pa == ba.len() && ia < a.len() {
                ba = self.a.read_blob(&a[ia])?;
                (ia, pa) = (ia + 1, 0);
                continue;
            }
            if pb == bb.len() && ib < b.len() {
                bb = self.b.read_blob(&b[ib])?;
                (ib, pb) = (ib + 1, 0);
                continue;
            }
            let n = (ba.len() - pa).min(bb.len() - pb);
            if n == 0 {
                // One side is at its end: equal only if both are.
                return Ok(pa == ba.len() && pb == bb.len() && ia == a.len() && ib == b.len());
            }
            if ba[pa..pa + n] != bb[pb..pb + n] {
                return Ok(false);
            }
            pa += n;
            pb += n;
        }
    }
}
