//! Checking a restored copy against its version, byte for byte: each file is read back from
//! disk, cut where the version's chunks are cut, and each piece hashed (the dataset's keyed
//! chunk id) and compared with the chunk the version names. A restore already checks every
//! chunk it reads from the vault; this checks what landed on disk, and counts it (a drill's
//! `bytes` check).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use embassy_core::engine::reader::VersionReader;
use embassy_core::format::tree::{NodeKind, Tree};
use embassy_core::{Error, Result};

use crate::resync::identical;
use crate::stream::STREAM_NAME;

/// At most this many differing paths are named in a [`Checked`].
const NAMED: usize = 20;

/// What a check of a restored copy found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Regular files that matched the version.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Folders and links that matched.
    pub others: u64,
    /// Paths that differ (missing, other content, other kind), the first [`NAMED`] of them.
    pub differing: Vec<String>,
    /// How many paths differ in all.
    pub differing_count: u64,
}

impl Checked {
    /// True when nothing differs.
    pub fn passed(&self) -> bool {
        self.differing_count == 0
    }

    fn differs(&mut self, path: &Path) {
        self.differing_count += 1;
        if self.differing.len() < NAMED {
            self.differing
                .push(embassy_core::text::escape(&path.display().to_string()).into_owned());
        }
    }
}

/// Checks the tree restored at `dir` against `reader`'s version: every file's bytes, every
/// folder and link. Entries on disk the version does not hold are not looked for.
pub fn tree(reader: &VersionReader, dir: &Path) -> Result<Checked> {
    let mut out = Checked::default();
    walk(reader, &reader.root()?, dir, &mut out, 0)?;
    Ok(out)
}

fn walk(
    reader: &VersionReader,
    tree: &Tree,
    dir: &Path,
    out: &mut Checked,
    depth: usize,
) -> Result<()> {
    if depth > crate::files::MAX_RESTORE_DEPTH {
        return Err(Error::invalid(format!(
            "{} is nested deeper than a restore writes",
            dir.display()
        )));
    }
    for node in &tree.nodes {
        let path = dir.join(std::ffi::OsStr::from_bytes(&node.name));
        let meta = std::fs::symlink_metadata(&path);
        match node.kind {
            NodeKind::File => {
                if identical(reader, &path, node)? {
                    out.files += 1;
                    out.bytes += node.size;
                } else {
                    out.differs(&path);
                }
            }
            NodeKind::Dir => {
                if !meta.as_ref().is_ok_and(|m| m.is_dir()) {
                    out.differs(&path);
                    continue;
                }
                out.others += 1;
                if let Some(sub) = &node.subtree {
                    walk(reader, &reader.read_tree(sub)?, &path, out, depth + 1)?;
                }
            }
            NodeKind::Symlink => {
                let same = std::fs::read_link(&path)
                    .is_ok_and(|t| Some(t.as_os_str().as_bytes()) == node.target.as_deref());
                if same {
                    out.others += 1;
                } else {
                    out.differs(&path);
                }
            }
            _ => {
                if meta.is_ok() {
                    out.others += 1;
                } else {
                    out.differs(&path);
                }
            }
        }
    }
    Ok(())
}

/// Checks a stream restored into the file `file` against `reader`'s stream version.
pub fn stream(reader: &VersionReader, file: &Path) -> Result<Checked> {
    let root = reader.root()?;
    let node = root
        .find(STREAM_NAME)
        .filter(|n| n.kind == NodeKind::File)
        .ok_or_else(|| Error::invalid("this version is not a stream"))?;
    let mut out = Checked::default();
    if identical(reader, file, node)? {
        out.files = 1;
        out.bytes = node.size;
    } else {
        out.differs(file);
    }
    Ok(out)
}
