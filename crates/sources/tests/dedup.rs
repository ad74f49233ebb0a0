//! Deduplication: what a backup adds to the vault when little or nothing changed.
//!
//! Sizes are measured on disk (every byte the site folder holds), and cross-checked with the
//! version statistics the ledger records.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_sites::LocalSite;
use embassy_sources::files::{self, RestoreOptions};

const MIB: u64 = 1024 * 1024;

/// SplitMix64 stream: incompressible, seedable, several GB/s.
fn fill_random(seed: u64, buf: &mut [u8]) {
    let mut s = seed.wrapping_mul(0xA24B_AED4_963E_E407);
    for chunk in buf.chunks_mut(8) {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

fn random_bytes(seed: u64, len: u64) -> Vec<u8> {
    let mut v = vec![0u8; len as usize];
    fill_random(seed, &mut v);
    v
}

/// Total bytes of every file under `dir`.
fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

struct TestVault {
    dir: PathBuf,
    vault: Vault,
    keyring: Keyring,
}

fn new_vault(dir: &Path) -> TestVault {
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    TestVault {
        dir: dir.to_path_buf(),
        vault,
        keyring,
    }
}

impl TestVault {
    fn backup(&self, dataset: &str, paths: &[PathBuf]) -> Version {
        let b = files::backup(&self.vault, &self.keyring, dataset, paths, &Silent).unwrap();
        assert!(b.warnings.is_empty(), "warnings: {:?}", b.warnings);
        b.version
    }

    fn size(&self) -> u64 {
        disk_bytes(&self.dir)
    }

    fn restore(&self, version: &Version, to: &Path) {
        let reader = VersionReader::open(
            self.vault.site().clone(),
            self.keyring.dataset(&version.dataset).unwrap(),
            version,
        )
        .unwrap();
        files::restore(&reader, to, &RestoreOptions::default(), &Silent).unwrap();
    }
}

/// A second backup of an unchanged 1 GiB tree (64 files of 16 MiB) reads nothing and adds
/// under 1 % to the vault. Part of the default suite on purpose; about 10–30 s in a debug build.
#[test]
fn unchanged_gib_tree_adds_under_one_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let t = Instant::now();
    let files_per_dir = 16;
    let paths: Vec<PathBuf> = (0..64)
        .map(|i| {
            src.join(format!("d{}", i / files_per_dir))
                .join(format!("f{i:02}"))
        })
        .collect();
    for p in &paths {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
    }
    // Two writers: generation is as fast as the disk takes it. Every file has its own seed.
    let jobs: Vec<(u64, &PathBuf)> = (0u64..).zip(&paths).collect();
    std::thread::scope(|s| {
        for half in jobs.chunks(jobs.len() / 2) {
            s.spawn(move || {
                let mut buf = vec![0u8; (16 * MIB) as usize];
                for (seed, p) in half {
                    fill_random(0x5eed_0000 + seed, &mut buf);
                    fs::write(p, &buf).unwrap();
                }
            });
        }
    });
    let generated = Instant::now();
    let tv = new_vault(&tmp.path().join("vault"));

    let v1 = tv.backup("big", std::slice::from_ref(&src));
    let first = Instant::now();
    assert_eq!(v1.stats.files, 64);
    assert_eq!(v1.stats.bytes, 1024 * MIB);
    assert_eq!(v1.stats.bytes_read, 1024 * MIB);
    let after_first = tv.size();
    // Random data does not compress: the vault holds about 1 GiB (not less: it was stored).
    assert!(
        after_first > 1024 * MIB && after_first < 1040 * MIB,
        "vault after the first backup: {after_first} bytes"
    );

    let v2 = tv.backup("big", std::slice::from_ref(&src));
    let second = Instant::now();
    let after_second = tv.size();
    let added = after_second - after_first;
    assert_eq!(v2.seq, 2);
    assert_eq!(v2.stats.bytes, 1024 * MIB);
    assert_eq!(v2.stats.bytes_read, 0, "unchanged files must not be read");
    assert!(
        v2.stats.new_chunks <= 1,
        "new chunks: {}",
        v2.stats.new_chunks
    );
    assert!(
        added * 100 < after_first,
        "second backup added {added} bytes to a {after_first}-byte vault"
    );
    // In practice a manifest, a ledger entry and at most one small pack and index.
    assert!(added < 64 * 1024, "second backup added {added} bytes");
    eprintln!(
        "generate {:?}, first backup {:?}, second backup {:?}, added {added} bytes",
        generated - t,
        first - generated,
        second - first
    );
}

/// A one-byte edit in the middle of a 100 MiB file stores a few chunks, not the file.
#[test]
fn one_byte_edit_in_100_mib_file_stores_a_few_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let file = src.join("big.db");
    fs::write(&file, random_bytes(100, 100 * MIB)).unwrap();
    fs::write(src.join("small"), b"unchanged").unwrap();
    let tv = new_vault(&tmp.path().join("vault"));

    let v1 = tv.backup("db", std::slice::from_ref(&src));
    assert!(
        v1.stats.new_chunks >= 25,
        "100 MiB at ~2 MiB average chunks: {} chunks",
        v1.stats.new_chunks
    );
    let after_first = tv.size();

    let mut f = fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.seek(SeekFrom::Start(50 * MIB + 12345)).unwrap();
    f.write_all(&[0xEE]).unwrap();
    drop(f);

    let v2 = tv.backup("db", std::slice::from_ref(&src));
    let added = tv.size() - after_first;
    assert_eq!(
        v2.stats.bytes_read,
        100 * MIB,
        "only the edited file is read"
    );
    assert!(
        (1..=4).contains(&v2.stats.new_chunks),
        "new chunks (data and tree): {}",
        v2.stats.new_chunks
    );
    assert!(
        v2.stats.new_bytes_stored <= 3 * 8 * MIB,
        "new bytes stored: {}",
        v2.stats.new_bytes_stored
    );
    assert!(added <= 3 * 8 * MIB, "vault grew by {added} bytes");

    // And the new version holds the edit.
    let out = tmp.path().join("out");
    tv.restore(&v2, &out);
    assert!(fs::read(out.join("big.db")).unwrap() == fs::read(&file).unwrap());
}

/// The same bytes under two names in one backup are stored once; the same content backed up
/// again later under a third name adds nothing, and the same content shifted by a short header
/// adds only the chunks around the shift (content-defined chunking re-synchronizes).
#[test]
fn identical_content_is_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let data = random_bytes(7, 20 * MIB);
    fs::write(src.join("a"), &data).unwrap();
    fs::write(src.join("sub/b"), &data).unwrap();
    let tv = new_vault(&tmp.path().join("vault"));
    let empty = tv.size();

    let v1 = tv.backup("docs", std::slice::from_ref(&src));
    let added = tv.size() - empty;
    assert_eq!(v1.stats.bytes_read, 40 * MIB);
    assert!(
        v1.stats.new_bytes_stored >= 20 * MIB && v1.stats.new_bytes_stored < 21 * MIB,
        "two copies of 20 MiB stored as {} bytes",
        v1.stats.new_bytes_stored
    );
    assert!(
        added < 21 * MIB,
        "vault grew by {added} bytes for 20 MiB stored twice"
    );

    // A third copy under a new name, plus the same bytes shifted by a small header: the copy
    // stores nothing new, the shifted one only the chunks around the shift.
    fs::write(src.join("c"), &data).unwrap();
    let mut shifted = b"a short header before the same data".to_vec();
    shifted.extend_from_slice(&data);
    fs::write(src.join("shifted"), &shifted).unwrap();
    let before = tv.size();
    let v2 = tv.backup("docs", std::slice::from_ref(&src));
    let added = tv.size() - before;
    assert_eq!(v2.stats.bytes_read, 20 * MIB + shifted.len() as u64);
    assert!(
        v2.stats.new_bytes_stored <= 2 * 8 * MIB,
        "copy and shifted copy stored {} new bytes",
        v2.stats.new_bytes_stored
    );
    assert!(added <= 2 * 8 * MIB + 64 * 1024, "vault grew by {added}");

    let out = tmp.path().join("out");
    tv.restore(&v2, &out);
    for name in ["a", "sub/b", "c"] {
        assert!(fs::read(out.join(name)).unwrap() == data, "{name}");
    }
    assert!(fs::read(out.join("shifted")).unwrap() == shifted);
}
