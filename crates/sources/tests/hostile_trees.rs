//! Trees shaped by a malicious writer (one that holds a sealing key and stores whatever trees
//! it likes): a restore's planning is iterative and reads each tree once, so a very deep tree
//! cannot overflow the stack and a diamond (every level naming the same subtree twice) cannot
//! make it expand exponentially. Both are refused before anything is created, quickly and with
//! a clear error. Equal folders that share a subtree in an honest backup restore as copies.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::writer::BackupSession;
use embassy_core::format::manifest::{VersionKind, VersionStats};
use embassy_core::format::pack::BlobKind;
use embassy_core::format::tree::{Node, NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_sites::LocalSite;
use embassy_sources::files::{self, RestoreOptions, MAX_RESTORE_DEPTH};

struct TestVault {
    vault: Vault,
    keyring: Keyring,
}

fn new_vault(dir: &Path) -> TestVault {
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    TestVault { vault, keyring }
}

fn dir_node(name: &str, subtree: ChunkId) -> Node {
    Node {
        name: name.as_bytes().to_vec(),
        kind: NodeKind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        inode: 0,
        size: 0,
        content: vec![],
        subtree: Some(subtree),
        target: None,
    }
}

fn file_node(name: &str) -> Node {
    Node {
        kind: NodeKind::File,
        mode: 0o644,
        subtree: None,
        ..dir_node(name, ChunkId([0; 32]))
    }
}

impl TestVault {
    /// Stores a version whose trees `build` makes (it gets a store function, returns the root).
    fn version(
        &self,
        dataset: &str,
        stats: VersionStats,
        build: impl FnOnce(&dyn Fn(Tree) -> ChunkId) -> ChunkId,
    ) -> Version {
        let session = BackupSession::begin(&self.vault, &self.keyring, dataset).unwrap();
        let store = |t: Tree| session.store_blob(BlobKind::Tree, t.encode()).unwrap();
        let root = build(&store);
        session
            .finish(VersionKind::Tree, root, vec!["hostile".into()], stats)
            .unwrap()
    }

    fn restore(&self, version: &Version, to: &Path) -> embassy_core::Result<files::RestoreStats> {
        let reader = VersionReader::open(
            self.vault.site().clone(),
            self.keyring.dataset(&version.dataset).unwrap(),
            version,
        )
        .unwrap();
        files::restore(&reader, to, &RestoreOptions::default(), &Silent)
    }
}

/// 100,000 nested folders: refused (deeper than any path the system can hold) without
/// overflowing the stack, after reading only as many trees as the limit allows.
#[test]
fn a_tree_100000_folders_deep_is_refused_without_overflowing_the_stack() {
    let tmp = tempfile::tempdir().unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    let v = tv.version("deep", VersionStats::default(), |store| {
        let mut id = store(Tree::default());
        for _ in 0..100_000 {
            id = store(Tree {
                nodes: vec![dir_node("a", id)],
            });
        }
        id
    });
    let out = tmp.path().join("out");
    let started = Instant::now();
    // On a thread with a small stack: a recursive walk would overflow it long before the end.
    let err = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn_scoped(s, || tv.restore(&v, &out))
            .unwrap()
            .join()
            .unwrap()
    })
    .unwrap_err();
    let took = started.elapsed();
    assert!(
        err.to_string()
            .contains(&format!("nested more than {MAX_RESTORE_DEPTH} deep")),
        "{err}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    eprintln!("100,000 deep: refused in {took:?}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing created"
    );
}

/// A shallower chain (within the limit) restores.
#[test]
fn a_tree_within_the_depth_limit_restores() {
    let tmp = tempfile::tempdir().unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    let v = tv.version("chain", VersionStats::default(), |store| {
        let mut id = store(Tree::default());
        for _ in 0..200 {
            id = store(Tree {
                nodes: vec![dir_node("a", id)],
            });
        }
        id
    });
    let out = tmp.path().join("out");
    let stats = tv.restore(&v, &out).unwrap();
    assert_eq!(stats.dirs, 200);
    assert!(out.join("a/".repeat(200)).is_dir());
}

/// A diamond of 64 levels (each level names the level below twice): 2^64 folders if expanded.
/// Refused at once, each distinct tree read once.
#[test]
fn a_diamond_of_64_levels_is_refused_quickly() {
    let tmp = tempfile::tempdir().unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    let stats = VersionStats {
        dirs: 128,
        files: 1,
        ..Default::default()
    };
    let v = tv.version("diamond", stats, |store| {
        let mut id = store(Tree {
            nodes: vec![file_node("f")],
        });
        for _ in 0..64 {
            id = store(Tree {
                nodes: vec![dir_node("a", id), dir_node("b", id)],
            });
        }
        id
    });
    let out = tmp.path().join("out");
    let started = Instant::now();
    let err = tv.restore(&v, &out).unwrap_err();
    let took = started.elapsed();
    assert!(
        err.to_string().contains("expands to 2^64 or more entries"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    eprintln!("64-level diamond: refused in {took:?}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "nothing created"
    );
}

/// Two names for one subtree, as equal folders dedup in an honest backup: restored as two
/// copies, within what the version records.
#[test]
fn equal_folders_sharing_a_subtree_restore_as_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    // Three levels of sharing: 2 + 4 + 8 folders, 8 files.
    let stats = VersionStats {
        dirs: 14,
        files: 8,
        ..Default::default()
    };
    let v = tv.version("shared", stats, |store| {
        let mut id = store(Tree {
            nodes: vec![file_node("f")],
        });
        for _ in 0..3 {
            id = store(Tree {
                nodes: vec![dir_node("a", id), dir_node("b", id)],
            });
        }
        id
    });
    let out = tmp.path().join("out");
    let restored = tv.restore(&v, &out).unwrap();
    assert_eq!((restored.dirs, restored.files), (14, 8));
    assert!(out.join("a/b/a/f").is_file() && out.join("b/b/b/f").is_file());

    // The same shape recording fewer entries than it expands to (beyond the distinct ones
    // stored) is refused.
    let tight = tv.version("tight", VersionStats::default(), |store| {
        let mut id = store(Tree {
            nodes: vec![file_node("f")],
        });
        for _ in 0..8 {
            id = store(Tree {
                nodes: vec![dir_node("a", id), dir_node("b", id)],
            });
        }
        id
    });
    let err = tv.restore(&tight, &tmp.path().join("tight")).unwrap_err();
    assert!(err.to_string().contains("expands to 766 entries"), "{err}");
}
