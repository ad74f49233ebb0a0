//! PostgreSQL relation files are chunked on 8 KiB page boundaries: scattered page updates store
//! about the changed pages, where content-defined chunks would store whole 2 MiB chunks again.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use embassy_core::engine::reader::VersionReader;
use embassy_core::engine::vault::{Keyring, Vault, Version};
use embassy_core::keys::RootSecret;
use embassy_core::progress::Silent;
use embassy_core::site::Site;
use embassy_sites::LocalSite;
use embassy_sources::files::{self, is_relation_dir, is_relation_file_name, RestoreOptions};

const PAGE: usize = 8192;

/// Pages like a heap's: a header with an LSN, then semi-random tuples (compressible ~2x).
fn page(seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut p = vec![0u8; PAGE];
    for (i, b) in p.iter_mut().enumerate() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        *b = if i % 2 == 0 {
            (s & 0xff) as u8
        } else {
            b'a' + (i % 7) as u8
        };
    }
    p
}

fn make_data_dir(root: &Path, pages: usize, pg: bool) -> PathBuf {
    let db = root.join("db");
    fs::create_dir_all(db.join("base/16384")).unwrap();
    fs::create_dir_all(db.join("global")).unwrap();
    if pg {
        fs::write(db.join("PG_VERSION"), "15\n").unwrap();
    }
    fs::write(db.join("global/1262"), page(7)).unwrap();
    let mut heap = Vec::with_capacity(pages * PAGE);
    for i in 0..pages {
        heap.extend_from_slice(&page(1000 + i as u64));
    }
    fs::write(db.join("base/16384/16385"), &heap).unwrap();
    fs::write(db.join("base/16384/16385_fsm"), page(3)).unwrap();
    db
}

/// Changes `count` scattered pages in place (a new "LSN" in each page header).
fn touch_pages(file: &Path, pages: usize, count: usize, round: u64) {
    let f = fs::OpenOptions::new().write(true).open(file).unwrap();
    for k in 0..count {
        let i = (k * 7919 + 13) % pages;
        f.write_all_at(
            &(round * 1_000_003 + k as u64).to_le_bytes(),
            (i * PAGE) as u64,
        )
        .unwrap();
    }
}

fn vault(dir: &Path) -> (Vault, Keyring) {
    let site: Arc<dyn Site> = Arc::new(LocalSite::new(dir).unwrap());
    let root = RootSecret::generate();
    let vault = Vault::create(site, &root).unwrap();
    let keyring =
        Keyring::from_root(RootSecret::from_bytes(root.expose()), vault.config()).unwrap();
    (vault, keyring)
}

fn increment(pg: bool) -> (Version, PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let pages = 4096; // 32 MiB
    let db = make_data_dir(tmp.path(), pages, pg);
    let (vault, keyring) = vault(&tmp.path().join("vault"));
    files::backup(&vault, &keyring, "pg", std::slice::from_ref(&db), &Silent).unwrap();
    touch_pages(&db.join("base/16384/16385"), pages, 100, 1);
    let second = files::backup(&vault, &keyring, "pg", std::slice::from_ref(&db), &Silent)
        .unwrap()
        .version;
    let target = tmp.path().join("restored");
    let reader = VersionReader::open(
        vault.site().clone(),
        keyring.dataset(&second.dataset).unwrap(),
        &second,
    )
    .unwrap();
    files::restore(&reader, &target, &RestoreOptions::default(), &Silent).unwrap();
    assert_eq!(
        fs::read(target.join("base/16384/16385")).unwrap(),
        fs::read(db.join("base/16384/16385")).unwrap(),
        "restored relation file differs"
    );
    (second, db, tmp)
}

#[test]
fn scattered_page_updates_store_about_the_changed_pages() {
    let (pg, _, _t1) = increment(true);
    // 100 changed pages, plus the trees on the changed path (root, base, base/16384).
    assert!(
        pg.stats.new_chunks <= 100 + 4,
        "{} new chunks",
        pg.stats.new_chunks
    );
    assert!(
        pg.stats.new_bytes_stored < 100 * PAGE as u64 + 200_000,
        "{} bytes stored for 100 changed pages",
        pg.stats.new_bytes_stored
    );
    // The same files outside a PostgreSQL data directory use content-defined chunks.
    let (plain, _, _t2) = increment(false);
    assert!(
        plain.stats.new_bytes_stored > 5 * pg.stats.new_bytes_stored,
        "plain {} vs pages {}",
        plain.stats.new_bytes_stored,
        pg.stats.new_bytes_stored
    );
}

#[test]
fn relation_files_are_recognised_by_name_and_place() {
    for good in [
        "16384",
        "16384.1",
        "16384_fsm",
        "16384_vm",
        "16384_init",
        "1262.12",
    ] {
        assert!(is_relation_file_name(good.as_bytes()), "{good}");
    }
    for bad in [
        "PG_VERSION",
        "16384_x",
        "16384.",
        "_fsm",
        "pg_filenode.map",
        "16384.1a",
        "",
        "a1",
    ] {
        assert!(!is_relation_file_name(bad.as_bytes()), "{bad}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = make_data_dir(tmp.path(), 1, true);
    assert!(is_relation_dir(&db.join("base/16384")));
    assert!(is_relation_dir(&db.join("global")));
    assert!(!is_relation_dir(&db.join("base")));
    assert!(!is_relation_dir(&db));
    let ts = tmp.path().join("ts/PG_15_202209061/16384");
    fs::create_dir_all(&ts).unwrap();
    assert!(is_relation_dir(&ts));
    let plain = make_data_dir(&tmp.path().join("plain"), 1, false);
    assert!(!is_relation_dir(&plain.join("base/16384")));
}

#[test]
fn page_chunks_of_one_directory_stay_within_the_tree_blob_budget() {
    use embassy_core::format::chunker::{Chunking, PG_PAGE};
    use embassy_sources::files::{RelationChunker, LARGE_RELATION_CHUNK};
    let mut r = RelationChunker::with_budget(100);
    assert_eq!(r.chunking(60 * 8192), Chunking::Aligned(PG_PAGE));
    assert_eq!(r.chunking(40 * 8192), Chunking::Aligned(PG_PAGE));
    assert_eq!(r.chunking(8192), Chunking::Aligned(LARGE_RELATION_CHUNK));
    // 400 GiB of relation files in one database directory: ids of its chunks stay below
    // the 64 MiB tree blob limit (~34 bytes each).
    let mut r = RelationChunker::default();
    let mut ids = 0u64;
    for _ in 0..400 {
        ids += match r.chunking(1 << 30) {
            Chunking::Aligned(size) => (1u64 << 30) / size as u64,
            Chunking::ContentDefined => unreachable!(),
        };
    }
    assert!(ids * 34 < 64 << 20, "{ids} chunk ids");
}
