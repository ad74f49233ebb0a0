//! The site conformance suite: one set of checks, written once against `&dyn Site`, run
//! unchanged on every site (local folder, S3 on moto, several sites replicated, the agent's
//! cancellable site, the in-memory site): [`run`] with a factory of empty sites. Each check is
//! also public, for a site that can pass only some.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use embassy_core::format::spool::Spool;
use embassy_core::id::ObjectId;
use embassy_core::site::{ObjectSource, Put, Site, SiteError};

use crate::random_bytes;

/// What a site is expected to guarantee beyond the trait's contract.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Racing creators of one name: exactly one sees `Created` (else at least one).
    pub exclusive_create: bool,
}

/// One check of the suite: its name and what it runs on an empty site.
pub type Check = (&'static str, fn(&dyn Site, &Expect));

/// Every check, in the order [`run`] runs them.
pub const CHECKS: [Check; 11] = [
    ("round trips", |s, _| round_trips(s)),
    ("streamed round trips", |s, _| streams(s)),
    ("create-only", |s, _| create_only(s)),
    ("ranges", |s, _| ranges(s)),
    ("missing objects", |s, _| missing(s)),
    ("listing", |s, _| lists(s)),
    ("pagination", |s, _| pagination(s)),
    ("delete", |s, _| deletes(s)),
    ("concurrent puts", concurrent),
    ("large object", |s, _| large_object(s)),
    ("invalid paths", |s, _| invalid_paths(s)),
];

/// Runs the whole suite: each check on a fresh site from `new_site`, which must be empty. After
/// each check no temporary object may be listed. Panics (failing the test) on the first
/// departure from the contract, naming the check and the site.
pub fn run(expect: Expect, new_site: impl Fn() -> Box<dyn Site>) {
    for (name, check) in CHECKS {
        let site = new_site();
        let site = site.as_ref();
        let started = Instant::now();
        assert!(
            site.list("").unwrap().is_empty(),
            "{name}: the site {} is not empty",
            site.location()
        );
        check(site, &expect);
        for path in site.list("").unwrap().into_iter().map(|i| i.path) {
            assert!(
                !path.starts_with("tmp/"),
                "{name}: temporary object listed: {path}"
            );
        }
        eprintln!(
            "  [{}] {name}: ok in {:.2?}",
            site.location(),
            started.elapsed()
        );
    }
}

const MIB: usize = 1024 * 1024;

fn is_permanent(r: &Result<impl std::fmt::Debug, SiteError>) -> bool {
    matches!(r, Err(SiteError::Permanent { .. }))
}

fn is_not_found(r: &Result<impl std::fmt::Debug, SiteError>) -> bool {
    matches!(r, Err(SiteError::NotFound { .. }))
}

fn listing(site: &dyn Site, prefix: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for info in site.list(prefix).unwrap() {
        assert!(
            out.insert(info.path.clone(), info.size).is_none(),
            "{} listed twice",
            info.path
        );
    }
    out
}

/// Objects of every size (empty to multi-MiB) and odd names come back as written and list
/// with their sizes.
pub fn round_trips(site: &dyn Site) {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("rt/empty", Vec::new()),
        ("rt/one", b"x".to_vec()),
        ("rt/small", random_bytes(4096 + 17, 1)),
        ("rt/deep/a/b/c/d/e/f", random_bytes(100, 2)),
        ("rt/odd name+with spaces,é", random_bytes(10, 3)),
        // Above the S3 test configuration's multipart threshold (8 MiB, 5 MiB parts).
        ("rt/multi-mib", random_bytes(12 * MIB + 3, 4)),
    ];
    for (path, bytes) in &cases {
        assert_eq!(site.put(path, bytes).unwrap(), Put::Created, "{path}");
    }
    for (path, bytes) in &cases {
        let got = site.get(path).unwrap();
        assert!(
            got == *bytes,
            "{path}: {} bytes back of {}",
            got.len(),
            bytes.len()
        );
    }
    let listed = listing(site, "rt/");
    assert_eq!(listed.len(), cases.len());
    for (path, bytes) in &cases {
        assert_eq!(listed.get(*path), Some(&(bytes.len() as u64)), "{path}");
    }
}

/// Streamed writes (`put_from`) and reads (`get_to`, into memory and into a hashing spool on
/// disk) give the same bytes as the whole-object calls, create-only included.
pub fn streams(site: &dyn Site) {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("st/empty", Vec::new()),
        ("st/small", random_bytes(4096 + 17, 31)),
        // Above the S3 test configuration's multipart threshold: parts read from the source.
        ("st/multi-mib", random_bytes(12 * MIB + 3, 32)),
    ];
    for (path, bytes) in &cases {
        let source: Arc<dyn ObjectSource> = Arc::new(bytes.clone());
        assert_eq!(site.put_from(path, source).unwrap(), Put::Created, "{path}");
        let again: Arc<dyn ObjectSource> = Arc::new(b"other".to_vec());
        assert_eq!(
            site.put_from(path, again).unwrap(),
            Put::AlreadyExisted,
            "{path}"
        );
    }
    for (path, bytes) in &cases {
        let mut got = Vec::new();
        let n = site.get_to(path, &mut got).unwrap();
        assert_eq!(n, bytes.len() as u64, "{path}");
        assert!(
            got == *bytes,
            "{path}: {} bytes back of {}",
            got.len(),
            bytes.len()
        );
        assert_eq!(site.get(path).unwrap(), *bytes, "{path}");
        // Into a spool on disk, hashed on the way.
        let mut spool = Spool::new(u64::MAX).unwrap();
        site.get_to(path, &mut spool).unwrap();
        assert_eq!(spool.id(), ObjectId::of(bytes), "{path}");
    }
    assert!(is_not_found(&site.get_to("st/absent", &mut Vec::new())));
}

/// A second write of a name, small or large, leaves the first bytes untouched.
pub fn create_only(site: &dyn Site) {
    let first = random_bytes(1000, 10);
    assert_eq!(site.put("co/x", &first).unwrap(), Put::Created);
    assert_eq!(site.put("co/x", b"different").unwrap(), Put::AlreadyExisted);
    assert_eq!(site.put("co/x", &first).unwrap(), Put::AlreadyExisted);
    assert_eq!(site.put("co/x", b"").unwrap(), Put::AlreadyExisted);
    assert_eq!(
        site.get("co/x").unwrap(),
        first,
        "an existing object changed"
    );
    // Large (multipart on S3) over an existing name, and the other way round.
    let big = random_bytes(9 * MIB, 11);
    assert_eq!(site.put("co/x", &big).unwrap(), Put::AlreadyExisted);
    assert_eq!(
        site.get("co/x").unwrap(),
        first,
        "an existing object changed"
    );
    assert_eq!(site.put("co/big", &big).unwrap(), Put::Created);
    assert_eq!(
        site.put("co/big", &random_bytes(9 * MIB, 12)).unwrap(),
        Put::AlreadyExisted
    );
    assert_eq!(site.put("co/big", b"small").unwrap(), Put::AlreadyExisted);
    assert!(
        site.get("co/big").unwrap() == big,
        "an existing object changed"
    );
}

/// Ranges come back exactly; a range past the end is a permanent error, never a short read.
pub fn ranges(site: &dyn Site) {
    let bytes = random_bytes(100_000, 20);
    site.put("rg/obj", &bytes).unwrap();
    let n = bytes.len() as u64;
    for (offset, len) in [
        (0, 1),
        (0, 10),
        (12_345, 1000),
        (n - 10, 10),
        (n - 1, 1),
        (0, n),
        (n, 0),
        (5, 0),
    ] {
        let got = site.get_range("rg/obj", offset, len).unwrap();
        assert_eq!(
            got,
            &bytes[offset as usize..(offset + len) as usize],
            "range {offset}+{len}"
        );
    }
    // Past the end: an error, never a silent short read.
    for (offset, len) in [
        (n - 10, 11),
        (n, 1),
        (n + 1, 0),
        (n + 100, 5),
        (0, n + 1),
        (u64::MAX, 2),
    ] {
        let r = site.get_range("rg/obj", offset, len);
        assert!(is_permanent(&r), "range {offset}+{len}: {r:?}");
    }
    // Ranges over a multi-MiB object, spanning several parallel pieces on S3.
    let big = random_bytes(11 * MIB + 5, 21);
    site.put("rg/big", &big).unwrap();
    for (offset, len) in [
        (0u64, 11 * MIB as u64 + 5),
        (3, 10 * MIB as u64 + 1),
        (5 * MIB as u64 - 1, 2),
        (11 * MIB as u64, 5),
    ] {
        let got = site.get_range("rg/big", offset, len).unwrap();
        assert!(
            got == big[offset as usize..(offset + len) as usize],
            "big range {offset}+{len}"
        );
    }
    let r = site.get_range("rg/big", 10 * MIB as u64, 2 * MIB as u64);
    assert!(
        is_permanent(&r),
        "short big range: {:?}",
        r.map(|v| v.len())
    );
    let r = site.get_range("rg/empty", 0, 0);
    assert!(is_not_found(&r), "{r:?}");
    site.put("rg/empty", b"").unwrap();
    assert_eq!(site.get_range("rg/empty", 0, 0).unwrap(), b"");
    assert!(is_permanent(&site.get_range("rg/empty", 0, 1)));
}

/// Missing objects are `NotFound`, for whole reads and ranges.
pub fn missing(site: &dyn Site) {
    assert!(is_not_found(&site.get("nope/x")));
    assert!(is_not_found(&site.get("rt/nope")));
    assert!(is_not_found(&site.get_range("nope/x", 0, 1)));
    assert!(is_not_found(&site.get_range("nope/x", 10, 100)));
    assert!(site.list("nope/").unwrap().is_empty());
}

/// Listing by prefix is by string prefix, not by folder.
pub fn lists(site: &dyn Site) {
    let paths = [
        "ls/a/1",
        "ls/a/2",
        "ls/a/sub/3",
        "ls/ab/4",
        "ls/abc",
        "ls/b/5",
        "ls/b/deeper/still/6",
    ];
    for (i, p) in paths.iter().enumerate() {
        site.put(p, &vec![b'x'; i]).unwrap();
    }
    let keys = |prefix: &str| listing(site, prefix).into_keys().collect::<Vec<_>>();
    assert_eq!(keys("ls/"), paths.to_vec());
    assert_eq!(keys("ls/a/"), ["ls/a/1", "ls/a/2", "ls/a/sub/3"]);
    assert_eq!(
        keys("ls/a"),
        ["ls/a/1", "ls/a/2", "ls/a/sub/3", "ls/ab/4", "ls/abc"]
    );
    assert_eq!(keys("ls/ab"), ["ls/ab/4", "ls/abc"]);
    assert_eq!(keys("ls/b/deeper/"), ["ls/b/deeper/still/6"]);
    assert_eq!(keys("ls/b/deeper/still/6"), ["ls/b/deeper/still/6"]);
    assert!(keys("ls/c").is_empty());
    assert!(keys("ls/a/sub/3/").is_empty());
    let all = listing(site, "");
    assert!(paths.iter().all(|p| all.contains_key(*p)));
    assert_eq!(listing(site, "ls/a/")["ls/a/sub/3"], 2);
}

/// Listings longer than one page (S3 lists 1000 keys a request) are whole.
pub fn pagination(site: &dyn Site) {
    // More than one page (S3 lists at most 1000 keys per request).
    const N: usize = 1100;
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= N {
                    return;
                }
                let path = format!("pg/{:02}/{i:05}", i % 7);
                assert_eq!(
                    site.put(&path, i.to_string().as_bytes()).unwrap(),
                    Put::Created
                );
            });
        }
    });
    let listed = listing(site, "pg/");
    assert_eq!(listed.len(), N);
    for i in 0..N {
        let path = format!("pg/{:02}/{i:05}", i % 7);
        assert_eq!(listed.get(&path), Some(&(i.to_string().len() as u64)));
    }
    assert_eq!(
        listing(site, "pg/03/").len(),
        (0..N).filter(|i| i % 7 == 3).count()
    );
}

/// Delete removes one object; deleting what is not there is not an error.
pub fn deletes(site: &dyn Site) {
    site.put("del/x", b"bytes").unwrap();
    site.put("del/keep", b"kept").unwrap();
    site.delete("del/x").unwrap();
    assert!(is_not_found(&site.get("del/x")));
    assert_eq!(
        listing(site, "del/").into_keys().collect::<Vec<_>>(),
        ["del/keep"]
    );
    site.delete("del/x").unwrap();
    site.delete("del/never-was").unwrap();
    site.delete("del/no/such/dir/x").unwrap();
    assert_eq!(site.get("del/keep").unwrap(), b"kept");
}

/// Many writers at once; racing creators of one name leave one writer's bytes.
pub fn concurrent(site: &dyn Site, expect: &Expect) {
    const THREADS: usize = 16;
    const EACH: usize = 12;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            s.spawn(move || {
                for j in 0..EACH {
                    let bytes =
                        random_bytes(1 + (t * 131 + j * 977) % 20_000, (t * 1000 + j) as u64);
                    let path = format!("cc/{t}/{j}");
                    assert_eq!(site.put(&path, &bytes).unwrap(), Put::Created);
                    assert_eq!(site.get(&path).unwrap(), bytes);
                }
            });
        }
    });
    assert_eq!(listing(site, "cc/").len(), THREADS * EACH);

    // Racing creators of one name.
    for round in 0..4 {
        let path = format!("race/{round}");
        let candidates: Vec<Vec<u8>> = (0..8)
            .map(|i| random_bytes(1000 + i, 500 + round * 10 + i as u64))
            .collect();
        let barrier = Barrier::new(candidates.len());
        let created = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for bytes in &candidates {
                let (path, barrier, created) = (&path, &barrier, &created);
                s.spawn(move || {
                    barrier.wait();
                    if site.put(path, bytes).unwrap() == Put::Created {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let created = created.into_inner();
        let stored = site.get(&path).unwrap();
        assert!(
            candidates.contains(&stored),
            "{path}: the stored bytes are none of the writers'"
        );
        if expect.exclusive_create {
            assert_eq!(created, 1, "{path}: {created} writers were told Created");
        } else {
            assert!(created >= 1, "{path}: nobody was told Created");
        }
    }
}

/// A 40 MiB object round-trips whole and in uneven ranges.
pub fn large_object(site: &dyn Site) {
    let bytes = random_bytes(40 * MIB + 12_345, 99);
    let digest = blake3::hash(&bytes);
    assert_eq!(site.put("large/obj", &bytes).unwrap(), Put::Created);
    let got = site.get("large/obj").unwrap();
    assert_eq!(got.len(), bytes.len());
    assert_eq!(blake3::hash(&got), digest, "large object corrupted");
    // Read back in uneven ranges too.
    let mut pieced = Vec::with_capacity(bytes.len());
    let mut offset = 0u64;
    let step = 7 * MIB as u64 + 3;
    while offset < bytes.len() as u64 {
        let len = step.min(bytes.len() as u64 - offset);
        pieced.extend(site.get_range("large/obj", offset, len).unwrap());
        offset += len;
    }
    assert_eq!(
        blake3::hash(&pieced),
        digest,
        "large object corrupted in ranges"
    );
    assert_eq!(listing(site, "large/")["large/obj"], bytes.len() as u64);
}

/// Paths that are empty, absolute, with `.`/`..`/empty components or NUL are refused by every
/// operation, and write nothing.
pub fn invalid_paths(site: &dyn Site) {
    let before = listing(site, "");
    for bad in [
        "",
        "/abs",
        "a//b",
        "./a",
        "a/./b",
        "a/../b",
        "..",
        "../escape",
        "a/",
        "nul\0byte",
    ] {
        assert!(is_permanent(&site.put(bad, b"x")), "put {bad:?} accepted");
        assert!(is_permanent(&site.get(bad)), "get {bad:?} accepted");
        assert!(
            is_permanent(&site.get_range(bad, 0, 1)),
            "get_range {bad:?} accepted"
        );
        assert!(is_permanent(&site.delete(bad)), "delete {bad:?} accepted");
    }
    assert!(is_permanent(&site.list("../")), "list ../ accepted");
    assert_eq!(listing(site, ""), before, "an invalid path wrote something");
}
