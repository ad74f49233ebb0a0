//! The one rule for PostgreSQL relation files, shared by file-tree backups (a data directory or
//! tablespace on disk) and base backups (pg_basebackup's tar, paths relative to the data
//! directory): which files hold 8 KiB pages, and how each directory's files are chunked.
//!
//! Relation files live in `global/`, `base/<database oid>/`, and, for tablespaces,
//! `PG_<major>_<catversion>/<database oid>/` (reached from a data directory through
//! `pg_tblspc/<tablespace oid>/`). Their files are cut on page boundaries so that unchanged pages
//! dedup against earlier versions (see docs/design.md).

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::writer::DeltaBases;
use embassy_core::format::chunker::{Chunking, PG_PAGE};
use embassy_core::format::tree::{Node, NodeKind};
use embassy_core::id::ChunkId;

/// True if `name` is a PostgreSQL relation file name: `16384`, `16384.1`, `16384_fsm`,
/// `16384_vm`, `16384_init` (a relfilenode, an optional fork, an optional segment number).
pub fn is_relation_file_name(name: &[u8]) -> bool {
    let (base, segment) = match name.iter().position(|&b| b == b'.') {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    if segment.is_some_and(|s| !digits(s)) {
        return false;
    }
    let node = match base.iter().position(|&b| b == b'_') {
        Some(i) if [&b"fsm"[..], b"vm", b"init"].contains(&&base[i + 1..]) => &base[..i],
        Some(_) => return false,
        None => base,
    };
    digits(node)
}

fn digits(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(u8::is_ascii_digit)
}

/// Where a directory of relation files sits, judged from the last names of its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationDir {
    /// `global` or `base/<oid>`: a relation directory if the directory `up` levels above it is
    /// a data directory (the caller checks: `PG_VERSION` on disk, or the root of a base backup).
    InDataDir {
        /// How many levels above the relation directory the data directory is (1 or 2).
        up: usize,
    },
    /// `PG_<major>_<catversion>/<oid>`: a database's folder in a tablespace; the version folder
    /// is distinctive enough on its own.
    Tablespace,
}

/// Classifies a directory by its path's names, outermost first (only the last two count):
/// `None` if it cannot hold relation files.
pub fn relation_dir<N: AsRef<[u8]>>(names: &[N]) -> Option<RelationDir> {
    let last = |i: usize| {
        names
            .len()
            .checked_sub(i)
            .and_then(|at| names.get(at))
            .map(AsRef::as_ref)
    };
    let own = last(1)?;
    if own == b"global" {
        return Some(RelationDir::InDataDir { up: 1 });
    }
    if !digits(own) {
        return None;
    }
    let parent = last(2)?;
    if parent == b"base" {
        return Some(RelationDir::InDataDir { up: 2 });
    }
    let version = parent.strip_prefix(b"PG_")?;
    version
        .split(|&b| b == b'_')
        .all(digits)
        .then_some(RelationDir::Tablespace)
}

/// True if `dir` holds PostgreSQL relation files: `global` or `base/<oid>` of a data directory
/// (one with `PG_VERSION`), or `<oid>` in a tablespace's `PG_<major>_<catversion>` folder.
pub fn is_relation_dir(dir: &Path) -> bool {
    let names: Vec<&[u8]> = dir.components().map(|c| c.as_os_str().as_bytes()).collect();
    match relation_dir(&names) {
        Some(RelationDir::Tablespace) => true,
        Some(RelationDir::InDataDir { up }) => dir
            .ancestors()
            .nth(up)
            .is_some_and(|data| data.join("PG_VERSION").is_file()),
        None => false,
    }
}

/// True if the file at `path` (its names relative to a data directory, as in a base backup's
/// tar) is a relation file: in `global/`, `base/<oid>/` or a tablespace's database folder
/// (`pg_tblspc/<oid>/PG_15_<catversion>/<oid>/`).
pub fn is_relation_path<N: AsRef<[u8]>>(path: &[N]) -> bool {
    let Some((name, dir)) = path.split_last() else {
        return false;
    };
    let place = match relation_dir(dir) {
        Some(RelationDir::InDataDir { up }) => dir.len() == up,
        Some(RelationDir::Tablespace) => true,
        None => false,
    };
    place && is_relation_file_name(name.as_ref())
}

/// Page chunks one directory's relation files may take before later files get larger
/// chunks: a directory's files list their chunk ids in its one tree blob (~34 bytes per id,
/// at most 64 MiB), so 1 Mi page chunks (8 GiB of relation files, ~34 MiB of ids) leave room.
pub const PAGE_CHUNK_BUDGET: u64 = 1 << 20;
/// Chunk size of relation files beyond [`PAGE_CHUNK_BUDGET`]: 64 pages (512 KiB), aligned.
pub const LARGE_RELATION_CHUNK: u32 = 64 * PG_PAGE;

/// Chooses the chunking of the relation files of one directory, in order: pages while the
/// directory's page chunks stay within a budget, then 512 KiB aligned chunks (a database
/// directory of hundreds of GB still fits the tree blob limit; dedup is coarser there).
#[derive(Debug, Clone)]
pub struct RelationChunker {
    budget: u64,
    used: u64,
}

impl Default for RelationChunker {
    fn default() -> Self {
        Self::with_budget(PAGE_CHUNK_BUDGET)
    }
}

impl RelationChunker {
    /// A chooser with its own page-chunk budget (tests use small ones).
    pub fn with_budget(budget: u64) -> Self {
        RelationChunker { budget, used: 0 }
    }

    /// The chunking of the next relation file of `size` bytes.
    pub fn chunking(&mut self, size: u64) -> Chunking {
        let pages = size.div_ceil(PG_PAGE as u64);
        if self.used + pages <= self.budget {
            self.used += pages;
            Chunking::Aligned(PG_PAGE)
        } else {
            self.used += size.div_ceil(LARGE_RELATION_CHUNK as u64);
            Chunking::Aligned(LARGE_RELATION_CHUNK)
        }
    }
}

/// The pages of a relation file's previous version, read through that version: what a backup
/// stores the file's changed pages against, as deltas (docs/format.md §5, *Delta blobs*).
pub struct PreviousPages<'a> {
    /// The previous version.
    pub reader: &'a VersionReader,
    /// The file's page ids in that version.
    pub pages: &'a [ChunkId],
}

impl DeltaBases for PreviousPages<'_> {
    fn base_of(&self, page: usize) -> Option<ChunkId> {
        self.reader.delta_base_for(self.pages.get(page)?)
    }

    fn read_bases(
        &self,
        bases: &HashSet<ChunkId>,
    ) -> embassy_core::Result<HashMap<ChunkId, Vec<u8>>> {
        let read = Mutex::new(HashMap::with_capacity(bases.len()));
        self.reader
            .for_each_blob(bases.iter().copied(), &|id, plain| {
                read.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(*id, plain.to_vec());
                Ok(())
            })?;
        Ok(read.into_inner().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The page ids of `prev`, a relation file's node in the previous version, when both it and
/// the file now (`chunking`) are cut in 8 KiB pages (one chunk per page).
pub fn page_ids(prev: &Node, chunking: Chunking) -> Option<Vec<ChunkId>> {
    let page = u64::from(PG_PAGE);
    (chunking == Chunking::Aligned(PG_PAGE)
        && prev.kind == NodeKind::File
        && !prev.content.is_empty()
        && prev.content.len() as u64 == prev.size.div_ceil(page))
    .then(|| prev.content.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_paths_relative_to_a_data_directory() {
        fn p(s: &str) -> Vec<&[u8]> {
            s.split('/').map(str::as_bytes).collect()
        }
        assert!(is_relation_path(&p("base/16384/16385")));
        assert!(is_relation_path(&p("global/1262_fsm")));
        assert!(is_relation_path(&p(
            "pg_tblspc/16400/PG_15_202209061/16384/16401.1"
        )));
        assert!(!is_relation_path(&p("global/pg_control")));
        assert!(!is_relation_path(&p("base/16384")));
        assert!(!is_relation_path(&p("x/base/16384/16385")));
        assert!(!is_relation_path(&p("x/global/1262")));
        assert!(!is_relation_path(&p("pg_wal/000000010000000000000002")));
        assert!(!is_relation_path(&p("pg_tblspc/16400/PG_15_x/16384/16401")));
        assert!(!is_relation_path::<&[u8]>(&[]));
    }
}
