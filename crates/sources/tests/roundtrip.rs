//! Property tests: random file trees and streams back up and restore byte-identically, with
//! their metadata (kind, mode incl. set-id/sticky bits, owner, mtime with nanoseconds, link
//! targets); a subpath restores alone; an incremental backup after random edits reads exactly
//! the changed files and both versions still restore.
//!
//! Owners and modes such as `0o000` directories are only fully exercised as root (the tests'
//! usual environment); as another user the generated owners collapse to the current user and
//! modes keep the owner's read/write bits so the test can still walk its own trees.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::engine::verify::verify;
use embassy_core::format::manifest::VersionKind;
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_sites::LocalSite;
use embassy_sources::files::{self, RestoreOptions};
use embassy_sources::stream;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Deterministic content
// ---------------------------------------------------------------------------------------------

/// SplitMix64: fast, seedable, good enough to defeat compression and dedup.
fn fill_random(seed: u64, buf: &mut [u8]) {
    let mut s = seed;
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

#[derive(Debug, Clone, Copy)]
enum Pattern {
    /// Incompressible bytes.
    Random,
    /// All zeros (compresses to nothing, chunks at max size).
    Zeros,
    /// A random block of this many bytes repeated (compressible, dedups inside the file).
    Repeat(usize),
}

#[derive(Debug, Clone, Copy)]
struct Content {
    len: usize,
    seed: u64,
    pattern: Pattern,
}

impl Content {
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len];
        match self.pattern {
            Pattern::Random => fill_random(self.seed, &mut out),
            Pattern::Zeros => {}
            Pattern::Repeat(period) => {
                let mut block = vec![0u8; period.max(1)];
                fill_random(self.seed, &mut block);
                for (i, b) in out.iter_mut().enumerate() {
                    *b = block[i % block.len()];
                }
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Tree specifications and how to materialize them
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
}

#[derive(Debug, Clone)]
enum Spec {
    File(Content, Meta),
    Dir(BTreeMap<Vec<u8>, Spec>, Meta),
    Symlink(Vec<u8>, Meta),
    Fifo(Meta),
}

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn c_path(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in test paths")
}

fn set_mtime(path: &Path, mtime_ns: i64) {
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = [ts, ts];
    let c = c_path(path);
    // SAFETY: valid path and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        rc,
        0,
        "utimensat {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Owner, then mode (chown clears set-id bits), then mtime — the order a restore uses too.
fn apply_meta(path: &Path, meta: &Meta, symlink: bool, dir: bool) {
    if is_root() {
        std::os::unix::fs::lchown(path, Some(meta.uid), Some(meta.gid))
            .unwrap_or_else(|e| panic!("lchown {}: {e}", path.display()));
    }
    if !symlink {
        let mut mode = meta.mode;
        if !is_root() {
            mode |= if dir { 0o700 } else { 0o600 };
        }
        let c = c_path(path);
        // SAFETY: valid path.
        let rc = unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) };
        assert_eq!(rc, 0, "chmod {}", path.display());
    }
    set_mtime(path, meta.mtime_ns);
}

fn materialize(path: &Path, spec: &Spec) {
    match spec {
        Spec::File(content, meta) => {
            fs::write(path, content.bytes()).unwrap();
            apply_meta(path, meta, false, false);
        }
        Spec::Dir(children, meta) => {
            fs::create_dir(path).unwrap();
            for (name, child) in children {
                materialize(&path.join(OsStr::from_bytes(name)), child);
            }
            apply_meta(path, meta, false, true);
        }
        Spec::Symlink(target, meta) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path).unwrap();
            apply_meta(path, meta, true, false);
        }
        Spec::Fifo(meta) => {
            let c = c_path(path);
            // SAFETY: valid path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
            apply_meta(path, meta, false, false);
        }
    }
}

/// Creates `root` holding `children` (the root's own metadata is not part of a version).
fn materialize_root(root: &Path, children: &BTreeMap<Vec<u8>, Spec>) {
    fs::create_dir_all(root).unwrap();
    for (name, child) in children {
        materialize(&root.join(OsStr::from_bytes(name)), child);
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing two trees on disk
// ---------------------------------------------------------------------------------------------

fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_fifo() {
        "fifo"
    } else {
        "other"
    }
}

fn sorted_names(dir: &Path) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    names
}

/// Compares one entry (its metadata, and its content or children); appends differences.
fn compare_entry(a: &Path, b: &Path, rel: &str, diffs: &mut Vec<String>) {
    let (ma, mb) = match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(ma), Ok(mb)) => (ma, mb),
        (ra, rb) => {
            diffs.push(format!("{rel}: present {} / {}", ra.is_ok(), rb.is_ok()));
            return;
        }
    };
    let kind = kind_of(&ma);
    if kind != kind_of(&mb) {
        diffs.push(format!("{rel}: kind {kind} vs {}", kind_of(&mb)));
        return;
    }
    if kind != "symlink" && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
        diffs.push(format!(
            "{rel}: mode {:o} vs {:o}",
            ma.mode() & 0o7777,
            mb.mode() & 0o7777
        ));
    }
    if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
        diffs.push(format!(
            "{rel}: owner {}:{} vs {}:{}",
            ma.uid(),
            ma.gid(),
            mb.uid(),
            mb.gid()
        ));
    }
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        diffs.push(format!(
            "{rel}: mtime {}.{:09} vs {}.{:09}",
            ma.mtime(),
            ma.mtime_nsec(),
            mb.mtime(),
            mb.mtime_nsec()
        ));
    }
    match kind {
        "file" => {
            if ma.len() != mb.len() {
                diffs.push(format!("{rel}: size {} vs {}", ma.len(), mb.len()));
            } else if fs::read(a).unwrap() != fs::read(b).unwrap() {
                diffs.push(format!("{rel}: content differs"));
            }
        }
        "symlink" => {
            let (ta, tb) = (fs::read_link(a).unwrap(), fs::read_link(b).unwrap());
            if ta != tb {
                diffs.push(format!("{rel}: link target {ta:?} vs {tb:?}"));
            }
        }
        "dir" => compare_children(a, b, rel, diffs),
        _ => {}
    }
}

fn compare_children(a: &Path, b: &Path, rel: &str, diffs: &mut Vec<String>) {
    let (na, nb) = (sorted_names(a), sorted_names(b));
    if na != nb {
        let show = |v: &Vec<Vec<u8>>| {
            v.iter()
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .collect::<Vec<_>>()
        };
        diffs.push(format!(
            "{rel}/: entries {:?} vs {:?}",
            show(&na),
            show(&nb)
        ));
    }
    for name in na.iter().filter(|n| nb.contains(n)) {
        let os = OsStr::from_bytes(name);
        let child_rel = format!("{rel}/{}", String::from_utf8_lossy(name));
        compare_entry(&a.join(os), &b.join(os), &child_rel, diffs);
    }
}

/// Walks both trees (not the roots' own metadata) and panics listing every difference.
fn assert_same_tree(a: &Path, b: &Path) {
    let mut diffs = Vec::new();
    compare_children(a, b, "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "{} and {} differ:\n{}",
        a.display(),
        b.display(),
        diffs.join("\n")
    );
}

/// Every entry under `root` (relative paths, parents before children).
fn all_entries(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        for name in sorted_names(&root.join(rel)) {
            let child = rel.join(OsStr::from_bytes(&name));
            out.push(child.clone());
            if fs::symlink_metadata(root.join(&child)).unwrap().is_dir() {
                walk(root, &child, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Vault helpers
// ---------------------------------------------------------------------------------------------

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

impl TestVault {
    fn reader(&self, version: &Version) -> VersionReader {
        VersionReader::open(
            self.vault.site().clone(),
            self.keyring.dataset(&version.dataset).unwrap(),
            version,
        )
        .unwrap()
    }

    fn restore(&self, version: &Version, to: &Path, subpath: Option<PathBuf>) {
        files::restore(
            &self.reader(version),
            to,
            &RestoreOptions {
                subpath,
                overwrite: false,
                ..Default::default()
            },
            &Silent,
        )
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn name() -> impl Strategy<Value = Vec<u8>> {
    // Any byte but NUL and '/'.
    let any_byte = (1u8..=254).prop_map(|b| if b >= b'/' { b + 1 } else { b });
    prop_oneof![
        3 => "[a-z0-9._-]{1,12}".prop_map(String::into_bytes),
        2 => prop::collection::vec(any_byte, 1..24),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn content() -> impl Strategy<Value = Content> {
    let len = prop_oneof![
        3 => Just(0usize),
        6 => 1usize..4096,
        4 => 4096usize..300_000,
        1 => 600_000usize..6_000_000,
    ];
    // A few shared seeds so that identical files (and chunks) appear across the tree.
    let seed = prop_oneof![0u64..4, any::<u64>()];
    let pattern = prop_oneof![
        6 => Just(Pattern::Random),
        1 => Just(Pattern::Zeros),
        2 => (1usize..70_000).prop_map(Pattern::Repeat),
    ];
    (len, seed, pattern).prop_map(|(len, seed, pattern)| Content { len, seed, pattern })
}

fn mtime() -> impl Strategy<Value = i64> {
    prop_oneof![
        // 1970 to ~2096, any nanosecond.
        4 => 0i64..4_000_000_000_000_000_000,
        // 1906 to 1970 (negative times).
        1 => -2_000_000_000_000_000_000i64..0,
        1 => prop_oneof![Just(0i64), Just(-1), Just(1), Just(999_999_999), Just(1_000_000_000)],
    ]
}

fn owner() -> impl Strategy<Value = u32> {
    prop_oneof![2 => Just(0u32), 1 => 1u32..100_000, 1 => Just(65534u32)]
}

fn meta(mode: impl Strategy<Value = u32>) -> impl Strategy<Value = Meta> {
    (mode, owner(), owner(), mtime()).prop_map(|(mode, uid, gid, mtime_ns)| Meta {
        mode,
        uid,
        gid,
        mtime_ns,
    })
}

fn file_mode() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0o644u32),
        Just(0o600),
        Just(0o4755),
        Just(0o2755),
        Just(0o444),
        0u32..0o10000,
    ]
}

fn dir_mode() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0o755u32),
        Just(0o555),
        Just(0o1777),
        Just(0o2775),
        Just(0o500),
        Just(0o000),
        0u32..0o10000,
    ]
}

fn link_target() -> impl Strategy<Value = Vec<u8>> {
    let non_nul = 1u8..=255;
    prop_oneof![
        "(\\.\\./)?[a-z]{1,8}(/[a-z]{1,8})?".prop_map(String::into_bytes),
        Just(b"/etc/passwd".to_vec()),
        prop::collection::vec(non_nul, 1..200),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    let leaf = prop_oneof![
        8 => (content(), meta(file_mode())).prop_map(|(c, m)| Spec::File(c, m)),
        1 => (link_target(), meta(Just(0o777))).prop_map(|(t, m)| Spec::Symlink(t, m)),
        1 => meta(0u32..0o10000).prop_map(Spec::Fifo),
    ];
    leaf.prop_recursive(4, 40, 8, |inner| {
        (
            prop::collection::btree_map(name(), inner, 0..8),
            meta(dir_mode()),
        )
            .prop_map(|(children, m)| Spec::Dir(children, m))
    })
}

fn root_children() -> impl Strategy<Value = BTreeMap<Vec<u8>, Spec>> {
    prop::collection::btree_map(name(), spec(), 0..10)
}

// ---------------------------------------------------------------------------------------------
// Edits for the incremental test
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Edit {
    /// New bytes of the same length, mtime put back: only ctime/inode betray the change.
    RewriteKeepMtime {
        pick: usize,
        seed: u64,
    },
    /// One byte flipped in place, mtime put back.
    FlipByte {
        pick: usize,
        at: usize,
    },
    Append {
        pick: usize,
        content: Content,
    },
    Truncate {
        pick: usize,
        keep_permille: u16,
    },
    Remove {
        pick: usize,
    },
    AddFile {
        dir_pick: usize,
        name: Vec<u8>,
        content: Content,
        meta: Meta,
    },
    AddDir {
        dir_pick: usize,
        name: Vec<u8>,
        meta: Meta,
    },
    Chmod {
        pick: usize,
        mode: u32,
    },
    Chown {
        pick: usize,
        uid: u32,
        gid: u32,
    },
    Touch {
        pick: usize,
        mtime_ns: i64,
    },
    FileBecomesDir {
        pick: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    let pick = any::<usize>();
    prop_oneof![
        (pick, any::<u64>()).prop_map(|(pick, seed)| Edit::RewriteKeepMtime { pick, seed }),
        (pick, any::<usize>()).prop_map(|(pick, at)| Edit::FlipByte { pick, at }),
        (pick, content()).prop_map(|(pick, content)| Edit::Append { pick, content }),
        (pick, 0u16..1000).prop_map(|(pick, keep_permille)| Edit::Truncate {
            pick,
            keep_permille
        }),
        pick.prop_map(|pick| Edit::Remove { pick }),
        (pick, name(), content(), meta(file_mode())).prop_map(|(dir_pick, name, content, meta)| {
            Edit::AddFile {
                dir_pick,
                name,
                content,
                meta,
            }
        }),
        (pick, name(), meta(dir_mode())).prop_map(|(dir_pick, name, meta)| {
            Edit::AddDir {
                dir_pick,
                name,
                meta,
            }
        }),
        (pick, 0u32..0o10000).prop_map(|(pick, mode)| Edit::Chmod { pick, mode }),
        (pick, owner(), owner()).prop_map(|(pick, uid, gid)| Edit::Chown { pick, uid, gid }),
        (pick, mtime()).prop_map(|(pick, mtime_ns)| Edit::Touch { pick, mtime_ns }),
        pick.prop_map(|pick| Edit::FileBecomesDir { pick }),
    ]
}

fn choose<T: Clone>(items: &[T], pick: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[pick % items.len()].clone())
}

fn apply_edit(root: &Path, edit: &Edit) {
    let entries = all_entries(root);
    let kind = |p: &PathBuf| kind_of(&fs::symlink_metadata(root.join(p)).unwrap());
    let files: Vec<PathBuf> = entries
        .iter()
        .filter(|p| kind(p) == "file")
        .cloned()
        .collect();
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    dirs.extend(entries.iter().filter(|p| kind(p) == "dir").cloned());
    match edit {
        Edit::RewriteKeepMtime { pick, seed } => {
            if let Some(f) = choose(&files, *pick) {
                let path = root.join(f);
                let meta = fs::metadata(&path).unwrap();
                let mut bytes = vec![0u8; meta.len() as usize];
                fill_random(*seed, &mut bytes);
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .write_all(&bytes)
                    .unwrap();
                set_mtime(&path, meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
            }
        }
        Edit::FlipByte { pick, at } => {
            if let Some(f) = choose(&files, *pick) {
                let path = root.join(f);
                let meta = fs::metadata(&path).unwrap();
                let mut bytes = fs::read(&path).unwrap();
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] ^= 0x5a;
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .unwrap()
                        .write_all(&bytes)
                        .unwrap();
                    set_mtime(&path, meta.mtime() * 1_000_000_000 + meta.mtime_nsec());
                }
            }
        }
        Edit::Append { pick, content } => {
            if let Some(f) = choose(&files, *pick) {
                fs::OpenOptions::new()
                    .append(true)
                    .open(root.join(f))
                    .unwrap()
                    .write_all(&content.bytes())
                    .unwrap();
            }
        }
        Edit::Truncate {
            pick,
            keep_permille,
        } => {
            if let Some(f) = choose(&files, *pick) {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(root.join(f))
                    .unwrap();
                let len = file.metadata().unwrap().len();
                file.set_len(len * u64::from(*keep_permille) / 1000)
                    .unwrap();
            }
        }
        Edit::Remove { pick } => {
            if let Some(p) = choose(&entries, *pick) {
                let path = root.join(p);
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    fs::remove_dir_all(&path).unwrap();
                } else {
                    fs::remove_file(&path).unwrap();
                }
            }
        }
        Edit::AddFile {
            dir_pick,
            name,
            content,
            meta,
        } => {
            let dir = root.join(choose(&dirs, *dir_pick).unwrap());
            let path = dir.join(OsStr::from_bytes(name));
            if fs::symlink_metadata(&path).is_err() {
                materialize(&path, &Spec::File(*content, *meta));
            }
        }
        Edit::AddDir {
            dir_pick,
            name,
            meta,
        } => {
            let dir = root.join(choose(&dirs, *dir_pick).unwrap());
            let path = dir.join(OsStr::from_bytes(name));
            if fs::symlink_metadata(&path).is_err() {
                materialize(&path, &Spec::Dir(BTreeMap::new(), *meta));
            }
        }
        Edit::Chmod { pick, mode } => {
            if let Some(p) = choose(&entries, *pick) {
                let path = root.join(&p);
                if kind(&p) != "symlink" {
                    let mut mode = *mode;
                    if !is_root() {
                        mode |= 0o700;
                    }
                    let c = c_path(&path);
                    // SAFETY: valid path.
                    assert_eq!(unsafe { libc::chmod(c.as_ptr(), mode as libc::mode_t) }, 0);
                }
            }
        }
        Edit::Chown { pick, uid, gid } => {
            if let (Some(p), true) = (choose(&entries, *pick), is_root()) {
                std::os::unix::fs::lchown(root.join(p), Some(*uid), Some(*gid)).unwrap();
            }
        }
        Edit::Touch { pick, mtime_ns } => {
            if let Some(p) = choose(&entries, *pick) {
                set_mtime(&root.join(p), *mtime_ns);
            }
        }
        Edit::FileBecomesDir { pick } => {
            if let Some(f) = choose(&files, *pick) {
                let path = root.join(f);
                fs::remove_file(&path).unwrap();
                fs::create_dir(&path).unwrap();
                fs::write(path.join("inside"), b"now a directory").unwrap();
            }
        }
    }
}

/// What change detection looks at, per regular file.
fn file_stats(root: &Path) -> HashMap<PathBuf, (u64, i64, i64, i64, i64, u64)> {
    all_entries(root)
        .into_iter()
        .filter_map(|p| {
            let m = fs::symlink_metadata(root.join(&p)).unwrap();
            m.is_file().then(|| {
                (
                    p,
                    (
                        m.len(),
                        m.mtime(),
                        m.mtime_nsec(),
                        m.ctime(),
                        m.ctime_nsec(),
                        m.ino(),
                    ),
                )
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// `cases` unless PROPTEST_CASES asks for more (or fewer), e.g. for a longer soak run.
fn config(cases: u32) -> ProptestConfig {
    let from_env = std::env::var_os("PROPTEST_CASES").is_some();
    let defaults = ProptestConfig::default();
    ProptestConfig {
        cases: if from_env { defaults.cases } else { cases },
        // Failing inputs are printed (shrunk); no regression files are written into the crate.
        failure_persistence: None,
        ..defaults
    }
}

proptest! {
    #![proptest_config(config(24))]

    /// A random tree restores identically; then a random subpath restores alone; then after
    /// random edits a second backup reads exactly the changed files and both versions restore.
    #[test]
    fn trees_round_trip(
        children in root_children(),
        sub_pick in any::<usize>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        materialize_root(&src, &children);
        let tv = new_vault(&tmp.path().join("vault"));

        // Full round trip.
        let b1 = files::backup(&tv.vault, &tv.keyring, "tree", std::slice::from_ref(&src), &Silent)
            .unwrap();
        prop_assert_eq!(b1.version.kind, VersionKind::Tree);
        prop_assert!(b1.warnings.is_empty(), "warnings: {:?}", b1.warnings);
        let before = file_stats(&src);
        let total: u64 = before.values().map(|s| s.0).sum();
        prop_assert_eq!(b1.version.stats.bytes, total);
        prop_assert_eq!(b1.version.stats.bytes_read, total);
        prop_assert_eq!(b1.version.stats.files, before.len() as u64);
        let r1 = tmp.path().join("r1");
        tv.restore(&b1.version, &r1, None);
        assert_same_tree(&src, &r1);

        // Subpath: the chosen entry lands in the target under its own name, metadata and all.
        let entries = all_entries(&src);
        if let Some(sub) = choose(&entries, sub_pick) {
            let rs = tmp.path().join("rsub");
            tv.restore(&b1.version, &rs, Some(sub.clone()));
            let name = sub.file_name().unwrap();
            prop_assert_eq!(sorted_names(&rs), vec![name.as_bytes().to_vec()]);
            let mut diffs = Vec::new();
            let rel = sub.display().to_string();
            compare_entry(&src.join(&sub), &rs.join(name), &rel, &mut diffs);
            prop_assert!(diffs.is_empty(), "subpath {:?} differs:\n{}", sub, diffs.join("\n"));
        }

        // Incremental.
        for e in &edits {
            apply_edit(&src, e);
        }
        let after = file_stats(&src);
        let expected_read: u64 = after
            .iter()
            .filter(|(p, s)| before.get(*p) != Some(s))
            .map(|(_, s)| s.0)
            .sum();
        let b2 = files::backup(&tv.vault, &tv.keyring, "tree", std::slice::from_ref(&src), &Silent)
            .unwrap();
        prop_assert!(b2.warnings.is_empty(), "warnings: {:?}", b2.warnings);
        prop_assert_eq!(b2.version.seq, 2);
        prop_assert_eq!(
            b2.version.stats.bytes_read, expected_read,
            "second backup must read exactly the changed files"
        );
        prop_assert_eq!(b2.version.stats.bytes, after.values().map(|s| s.0).sum::<u64>());
        let r2 = tmp.path().join("r2");
        tv.restore(&b2.version, &r2, None);
        assert_same_tree(&src, &r2);

        // The first version is untouched by the second.
        let versions = tv.vault.versions("tree").unwrap();
        prop_assert_eq!(versions.len(), 2);
        let r1b = tmp.path().join("r1b");
        tv.restore(&versions[0], &r1b, None);
        assert_same_tree(&r1, &r1b);
        let latest = tv.vault.find_version("tree", None).unwrap();
        prop_assert_eq!(&latest, &b2.version);

        // And the vault is sound, down to every chunk.
        let report = verify(&tv.vault, Some(&tv.keyring), &Silent).unwrap();
        prop_assert!(report.problems.is_empty(), "verify: {:?}", report.problems);
    }
}

/// A reader that hands out data in pieces of varying, often tiny, sizes.
struct Jagged<'a> {
    data: &'a [u8],
    at: usize,
    step: u64,
}

impl Read for Jagged<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = self
            .step
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let want = match self.step >> 61 {
            0 => 1,
            1 => 7,
            2 => 4096,
            _ => ((self.step >> 20) % 300_000) as usize + 1,
        };
        let n = want.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

proptest! {
    #![proptest_config(config(16))]

    /// Random streams (empty, tiny, many chunks; random, zero, repetitive) read in jagged pieces
    /// come back byte-identical, and several versions of one dataset each restore their own.
    #[test]
    fn streams_round_trip(
        contents in prop::collection::vec(
            (
                prop_oneof![Just(0usize), 1usize..5000, 5000usize..12_000_000],
                any::<u64>(),
                prop_oneof![
                    4 => Just(Pattern::Random),
                    1 => Just(Pattern::Zeros),
                    1 => (1usize..100_000).prop_map(Pattern::Repeat),
                ],
            ),
            1..4,
        ),
        step in any::<u64>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let tv = new_vault(tmp.path());
        let mut stored = Vec::new();
        for (len, seed, pattern) in contents {
            let data = Content { len, seed, pattern }.bytes();
            let v = stream::backup_reader(
                &tv.vault,
                &tv.keyring,
                "dump",
                Jagged { data: &data, at: 0, step },
                "test",
                &Silent,
            )
            .unwrap();
            prop_assert_eq!(v.kind, VersionKind::Stream);
            prop_assert_eq!(v.stats.bytes, data.len() as u64);
            stored.push((v, data));
        }
        for (v, data) in &stored {
            let mut out = Vec::new();
            let n = stream::restore_to(&tv.reader(v), &mut out, &Silent).unwrap();
            prop_assert_eq!(n, data.len() as u64);
            prop_assert!(out == *data, "stream version {} differs", v.seq);
        }
    }
}

fn small_tree(src: &Path) {
    fs::create_dir_all(src.join("a/b")).unwrap();
    fs::write(src.join("a/b/file"), b"deep").unwrap();
    fs::write(src.join("top"), b"top").unwrap();
    std::os::unix::fs::symlink("a/b", src.join("link")).unwrap();
}

/// Subpaths that cannot be restored are refused with a clear error and write nothing.
#[test]
fn bad_subpaths_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let tv = new_vault(&tmp.path().join("vault"));
    let b = files::backup(
        &tv.vault,
        &tv.keyring,
        "t",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap();
    let reader = tv.reader(&b.version);
    for (sub, words) in [
        ("missing", "not in version"),
        ("a/missing", "not in version"),
        ("top/x", "not a directory"),
        ("link/file", "not a directory"),
        ("../etc", "'..'"),
        ("a/../top", "'..'"),
    ] {
        let to = tmp.path().join(format!("out-{}", sub.replace('/', "_")));
        let err = files::restore(
            &reader,
            &to,
            &RestoreOptions {
                subpath: Some(PathBuf::from(sub)),
                overwrite: false,
                ..Default::default()
            },
            &Silent,
        )
        .expect_err(sub)
        .to_string();
        assert!(err.contains(words), "{sub}: {err}");
        assert!(
            !to.exists() || sorted_names(&to).is_empty(),
            "{sub}: something was written"
        );
    }
    // A nested subpath works, and `/a/b` means the same as `a/b`.
    for sub in ["a/b", "/a/b", "./a/b"] {
        let to = tmp
            .path()
            .join(format!("ok-{}", sub.replace(['/', '.'], "_")));
        tv.restore(&b.version, &to, Some(PathBuf::from(sub)));
        assert_eq!(fs::read(to.join("b/file")).unwrap(), b"deep", "{sub}");
    }
}

/// Several paths (files and folders) become root entries named by their last component.
#[test]
fn several_paths_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    let tv = new_vault(&tmp.path().join("vault"));
    let b = files::backup(
        &tv.vault,
        &tv.keyring,
        "multi",
        &[src.join("a"), src.join("top"), src.join("link")],
        &Silent,
    )
    .unwrap();
    let out = tmp.path().join("out");
    tv.restore(&b.version, &out, None);
    // The restore holds exactly the three entries, as the source has them.
    assert_same_tree(&src, &out);
}

/// The comparison helper itself notices every kind of difference it is meant to check, so a
/// passing round trip means something.
#[test]
fn comparison_helper_detects_differences() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    small_tree(&src);
    fs::write(src.join("a/big"), vec![1u8; 10_000]).unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    let b = files::backup(
        &tv.vault,
        &tv.keyring,
        "t",
        std::slice::from_ref(&src),
        &Silent,
    )
    .unwrap();
    type Mutation = fn(&Path);
    let mutations: [(&str, Mutation); 9] = [
        ("content", |p| {
            let mut bytes = fs::read(p.join("a/big")).unwrap();
            bytes[5000] ^= 1;
            let m = fs::metadata(p.join("a/big")).unwrap();
            fs::write(p.join("a/big"), bytes).unwrap();
            set_mtime(&p.join("a/big"), m.mtime() * 1_000_000_000 + m.mtime_nsec());
        }),
        ("size", |p| fs::write(p.join("top"), b"top!").unwrap()),
        ("mode", |p| {
            let c = c_path(&p.join("a/b"));
            // SAFETY: valid path.
            unsafe { libc::chmod(c.as_ptr(), 0o1755) };
        }),
        ("mtime", |p| {
            let m = fs::symlink_metadata(p.join("link")).unwrap();
            set_mtime(
                &p.join("link"),
                m.mtime() * 1_000_000_000 + m.mtime_nsec() + 1,
            );
        }),
        ("owner", |p| {
            std::os::unix::fs::lchown(p.join("top"), Some(4242), None).unwrap()
        }),
        ("link target", |p| {
            fs::remove_file(p.join("link")).unwrap();
            std::os::unix::fs::symlink("a/c", p.join("link")).unwrap();
        }),
        ("extra entry", |p| {
            fs::write(p.join("a/b/new"), b"").unwrap()
        }),
        ("missing entry", |p| {
            fs::remove_file(p.join("a/b/file")).unwrap()
        }),
        ("kind", |p| {
            fs::remove_file(p.join("top")).unwrap();
            fs::create_dir(p.join("top")).unwrap();
        }),
    ];
    for (i, (what, mutate)) in mutations.iter().enumerate() {
        if *what == "owner" && !is_root() {
            continue;
        }
        let out = tmp.path().join(format!("out{i}"));
        tv.restore(&b.version, &out, None);
        assert_same_tree(&src, &out);
        mutate(&out);
        let mut diffs = Vec::new();
        compare_children(&src, &out, "", &mut diffs);
        assert!(!diffs.is_empty(), "a changed {what} went unnoticed");
    }
}
