//! `find`: the paths matching a pattern in every version of a dataset, each with the versions
//! that hold it. The pattern grammar is the selection's (`embassy_sources::selection`, the one
//! rule backups and restores use): without `/` a name at any depth, with `/` a path anchored at
//! the version's root, a trailing `/` folders only, a leading `!` what does not match.

use std::collections::{BTreeMap, HashMap};

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault};
use embassy_core::format::tree::NodeKind;
use embassy_core::id::ChunkId;
use embassy_core::{Error, Result};
use embassy_sources::selection::Pattern;
use serde::Serialize;

use super::{join, open_version, Content, Entry};

/// One path that matched, across versions.
#[derive(Debug, Clone, Serialize)]
pub struct Match {
    /// Its path in the versions.
    pub path: String,
    /// What it is in the newest version that holds it.
    pub kind: NodeKind,
    /// Its size in the newest version that holds it.
    pub size: u64,
    /// Its modification time there.
    pub mtime_ns: i64,
    /// The versions (numbers) that hold it, oldest first.
    pub versions: Vec<u64>,
}

/// What `embassy find` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Found {
    /// The dataset.
    pub dataset: String,
    /// The pattern.
    pub pattern: String,
    /// What the dataset's versions hold.
    pub content: Option<Content>,
    /// The versions searched (numbers), oldest first: every version the dataset holds (under a
    /// witness quorum, up to the newest witnessed one unless unwitnessed ones were allowed).
    pub versions_searched: Vec<u64>,
    /// The matching paths, in path order.
    pub matches: Vec<Match>,
}

/// Searches every version of `dataset` (those [`super::versions`] gives) for entries matching
/// `pattern` (refused as invalid input when it is not a pattern, e.g. an unclosed `[`).
pub fn find(
    vault: &Vault,
    keyring: &Keyring,
    dataset: &str,
    pattern: &str,
    allow_unwitnessed: bool,
) -> Result<Found> {
    let glob = Pattern::parse(pattern).map_err(|e| Error::invalid(e.to_string()))?;
    let versions = super::versions(vault, dataset, allow_unwitnessed)?;
    let mut found: BTreeMap<String, Match> = BTreeMap::new();
    let mut searched = Vec::new();
    let mut content = None;
    // Folders unchanged between versions have the same tree id at the same path: searched once.
    let mut cache: HashMap<(String, ChunkId), Vec<Entry>> = HashMap::new();
    for version in versions {
        let number = version.number;
        let opened = open_version(vault, keyring, version)?;
        content = Some(opened.content);
        let hits = under(
            &opened.reader,
            "",
            &opened.reader.manifest.root,
            &glob,
            &mut cache,
        )?;
        for entry in hits {
            let m = found.entry(entry.path.clone()).or_insert_with(|| Match {
                path: entry.path.clone(),
                kind: entry.kind,
                size: 0,
                mtime_ns: 0,
                versions: Vec::new(),
            });
            m.kind = entry.kind;
            m.size = entry.size;
            m.mtime_ns = entry.mtime_ns;
            m.versions.push(number);
        }
        searched.push(number);
    }
    Ok(Found {
        dataset: dataset.to_string(),
        pattern: pattern.to_string(),
        content,
        versions_searched: searched,
        matches: found.into_values().collect(),
    })
}

/// The matching entries under the folder `subtree` at `prefix`.
fn under(
    reader: &VersionReader,
    prefix: &str,
    subtree: &ChunkId,
    glob: &Pattern,
    cache: &mut HashMap<(String, ChunkId), Vec<Entry>>,
) -> Result<Vec<Entry>> {
    let key = (prefix.to_string(), *subtree);
    if let Some(hits) = cache.get(&key) {
        return Ok(hits.clone());
    }
    let mut hits = Vec::new();
    for node in reader.read_tree(subtree)?.nodes {
        let path = join(prefix, &node.name);
        if glob.finds(path.as_bytes(), node.kind == NodeKind::Dir) {
            hits.push(Entry::of(path.clone(), &node));
        }
        if let (NodeKind::Dir, Some(sub)) = (node.kind, node.subtree) {
            hits.extend(under(reader, &path, &sub, glob, cache)?);
        }
    }
    cache.insert(key, hits.clone());
    Ok(hits)
}
