//! The site conformance suite: one set of checks, written once against `&dyn Site`, run
//! unchanged on every backend — a local folder and an S3 bucket on a real S3 server process
//! (moto's standalone server, started by the tests on loopback). If moto is missing the S3 tests
//! fail, saying to run scripts/install-test-deps. With `EMBASSY_TEST_S3_ENDPOINT` (and its
//! credentials, see `support::s3_target`) the S3 tests run against that server instead, e.g. the
//! three-node Garage cluster of `scripts/garage-cluster`.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::time::Instant;

use std::sync::Arc;

use embassy_core::id::ObjectId;
use embassy_core::site::{with_retry, ObjectSource, Put, Site, SiteError};
use embassy_core::spool::Spool;
use embassy_sites::s3::{BucketLock, LockMode, ObjectLock};
use embassy_sites::{CreateOnly, LocalSite, Retention, S3Site};
use support::*;

const MIB: usize = 1024 * 1024;

/// What a backend is expected to guarantee beyond the trait's contract.
struct Expect {
    /// Racing creators of one name: exactly one sees `Created` (else at least one).
    exclusive_create: bool,
}

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

fn step(name: &str, site: &dyn Site, f: impl FnOnce()) {
    let t = Instant::now();
    f();
    eprintln!("  [{}] {name}: ok in {:.2?}", site.location(), t.elapsed());
}

/// The whole suite. `site` must be empty.
fn conformance(site: &dyn Site, expect: &Expect) {
    step("empty site", site, || {
        assert!(site.list("").unwrap().is_empty(), "the site is not empty");
    });
    step("round trips", site, || round_trips(site));
    step("streamed round trips", site, || streams(site));
    step("create-only", site, || create_only(site));
    step("ranges", site, || ranges(site));
    step("missing objects", site, || missing(site));
    step("listing", site, || lists(site));
    step("pagination", site, || pagination(site));
    step("delete", site, || deletes(site));
    step("concurrent puts", site, || concurrent(site, expect));
    step("large object", site, || large_object(site));
    step("invalid paths", site, || invalid_paths(site));
    step("no stray objects", site, || {
        for path in site.list("").unwrap().into_iter().map(|i| i.path) {
            assert!(!path.starts_with("tmp/"), "temporary object listed: {path}");
        }
    });
}

fn round_trips(site: &dyn Site) {
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

/// `put_from` and `get_to` (sync, repair and deep verification stream through them): the same
/// objects as `put`/`get`, multipart-sized ones included, and create-only.
fn streams(site: &dyn Site) {
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

fn create_only(site: &dyn Site) {
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

fn ranges(site: &dyn Site) {
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

fn missing(site: &dyn Site) {
    assert!(is_not_found(&site.get("nope/x")));
    assert!(is_not_found(&site.get("rt/nope")));
    assert!(is_not_found(&site.get_range("nope/x", 0, 1)));
    assert!(is_not_found(&site.get_range("nope/x", 10, 100)));
    assert!(site.list("nope/").unwrap().is_empty());
}

fn lists(site: &dyn Site) {
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

fn pagination(site: &dyn Site) {
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
                    with_retry(|| site.put(&path, i.to_string().as_bytes())).unwrap(),
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

fn deletes(site: &dyn Site) {
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

fn concurrent(site: &dyn Site, expect: &Expect) {
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

fn large_object(site: &dyn Site) {
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

fn invalid_paths(site: &dyn Site) {
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

// -------------------------------------------------------------------------------------------

#[test]
fn local_folder_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let site = LocalSite::new(dir.path().join("vault")).unwrap();
    conformance(
        &site,
        &Expect {
            exclusive_create: true,
        },
    );
    // The local site keeps its temporary files under tmp/ and never lists them.
    std::fs::create_dir_all(dir.path().join("vault/tmp")).unwrap();
    std::fs::write(dir.path().join("vault/tmp/leftover.part"), b"x").unwrap();
    assert!(site
        .list("")
        .unwrap()
        .iter()
        .all(|i| !i.path.starts_with("tmp")));
}

#[test]
fn s3_passes_conformance() {
    let site = s3_site("conf", "vault/one", false);
    conformance(
        &site,
        &Expect {
            // moto's existence check and write are not one atomic step; AWS S3's are. Garage
            // ignores If-None-Match: the site looks before writing, which races.
            exclusive_create: false,
        },
    );
    // Only the vault's prefix is touched: a sibling prefix in the same bucket stays apart.
    let mut cfg = site.config().clone();
    cfg.prefix = "vault/two".into();
    let sibling = S3Site::new(cfg).unwrap();
    assert!(sibling.list("").unwrap().is_empty());
    sibling.put("rt/one", b"other").unwrap();
    assert_eq!(site.get("rt/one").unwrap(), b"x");
}

#[test]
fn s3_without_prefix_passes_core_checks() {
    let site = s3_site("noprefix", "", false);
    round_trips(&site);
    create_only(&site);
    lists(&site);
    deletes(&site);
    invalid_paths(&site);
}

#[test]
fn s3_opens_from_a_location_string() {
    let target = s3_target();
    let bucket = unique_bucket("open");
    let location = format!(
        "s3://{bucket}/v?endpoint={}&region={}&part-size-mib=5",
        target.endpoint, target.region
    );
    // Credentials come from the environment when not in the location.
    let cfg = embassy_sites::s3::S3Config::from_location_with(&location, &|k| match k {
        "AWS_ACCESS_KEY_ID" => Some(target.access_key_id.clone()),
        "AWS_SECRET_ACCESS_KEY" => Some(target.secret_access_key.clone()),
        _ => None,
    })
    .unwrap();
    assert!(cfg.path_style);
    let site = S3Site::new(cfg).unwrap();
    site.create_bucket(false).unwrap();
    assert_eq!(site.location(), format!("s3://{bucket}/v"));
    assert_eq!(site.put("a", b"1").unwrap(), Put::Created);
    assert_eq!(site.get("a").unwrap(), b"1");
}

/// What `init` learns from Garage (2.x): it ignores If-None-Match (a second PutObject silently
/// overwrites) and has no Object Lock. The site falls back to looking before writing, says so,
/// and refuses retention it cannot have.
fn garage_capabilities(site: &S3Site) {
    let probe = site.probe_conditional_writes().unwrap();
    eprintln!("garage: conditional-write probe {probe:?}");
    assert!(!probe.put, "Garage refused a second PutObject: {probe:?}");
    let lock = site.probe_object_lock().unwrap();
    eprintln!("garage: Object Lock probe {lock:?}");
    assert!(
        matches!(lock.bucket, BucketLock::Unsupported(_)),
        "{lock:?}"
    );
    let caps = site.capabilities().unwrap();
    eprintln!("garage: init would warn: {:#?}", caps.warnings);
    assert!(
        matches!(caps.create_only, CreateOnly::BestEffort { .. }),
        "{caps:?}"
    );
    assert!(
        caps.warnings
            .iter()
            .any(|w| w.contains("ignores If-None-Match")),
        "{caps:?}"
    );
    assert!(
        caps.warnings.iter().any(|w| w.contains("no Object Lock")),
        "{caps:?}"
    );
    caps.ensure_usable().unwrap();
    // The fallback keeps existing objects: a second write of a name is refused.
    assert_eq!(site.put("once", b"first").unwrap(), Put::Created);
    assert_eq!(site.put("once", b"second").unwrap(), Put::AlreadyExisted);
    assert_eq!(site.get("once").unwrap(), b"first");
    // With retention configured, init refuses, saying the server lacks Object Lock.
    let mut cfg = site.config().clone();
    cfg.object_lock = Some(ObjectLock {
        mode: LockMode::Compliance,
        days: 1,
    });
    let caps = S3Site::new(cfg).unwrap().capabilities().unwrap();
    let err = caps.ensure_usable().unwrap_err().to_string();
    eprintln!("garage: init with object-lock: {err}");
    assert!(err.contains("does not implement Object Lock"), "{err}");
    // With conditional-writes=required, too.
    let mut cfg = site.config().clone();
    cfg.conditional_writes = embassy_sites::s3::ConditionalWrites::Required;
    let caps = S3Site::new(cfg).unwrap().capabilities().unwrap();
    let err = caps.ensure_usable().unwrap_err().to_string();
    assert!(err.contains("conditional-writes=required"), "{err}");
}

#[test]
fn s3_capabilities() {
    let site = s3_site("caps", "v", false);
    match s3_target().kind {
        ServerKind::Moto => {}
        ServerKind::Garage => return garage_capabilities(&site),
        ServerKind::Other => {
            eprintln!(
                "capabilities of {}: {:#?}",
                site.location(),
                site.capabilities()
            );
            return;
        }
    }
    // moto 5.2 honours If-None-Match on PutObject and CompleteMultipartUpload, and Object Lock.
    let probe = site.probe_conditional_writes().unwrap();
    assert!(probe.put && probe.multipart, "{probe:?}");
    let lock = site.probe_object_lock().unwrap();
    assert_eq!(lock.bucket, BucketLock::NotEnabled);
    let caps = site.capabilities().unwrap();
    assert!(
        matches!(caps.create_only, CreateOnly::Enforced { .. }),
        "{caps:?}"
    );
    assert_eq!(caps.retention, Retention::None);
    assert!(caps.problems.is_empty(), "{caps:?}");
    assert!(
        caps.warnings.iter().any(|w| w.contains("no Object Lock")),
        "{caps:?}"
    );
    assert!(
        site.list("").unwrap().is_empty(),
        "probe objects left behind"
    );

    // Retention configured on a bucket without Object Lock: init must refuse, saying why.
    let mut cfg = site.config().clone();
    cfg.object_lock = Some(ObjectLock {
        mode: LockMode::Governance,
        days: 1,
    });
    let locked_cfg_site = S3Site::new(cfg).unwrap();
    let caps = locked_cfg_site.capabilities().unwrap();
    let err = caps.ensure_usable().unwrap_err().to_string();
    assert!(err.contains("without Object Lock"), "{err}");
    // And writes there fail permanently instead of storing unlocked objects.
    let r = locked_cfg_site.put("x", b"y");
    assert!(is_permanent(&r), "{r:?}");
}

#[test]
fn s3_object_lock_retention_on_every_object() {
    if s3_target().kind != ServerKind::Moto {
        // Garage has no Object Lock; s3_capabilities checks that init refuses it there.
        eprintln!(
            "NOT RUN against {}: Object Lock is checked on moto only",
            s3_target().endpoint
        );
        return;
    }
    for mode in [LockMode::Governance, LockMode::Compliance] {
        let base = s3_site("lock", "v", true);
        let mut cfg = base.config().clone();
        cfg.object_lock = Some(ObjectLock { mode, days: 2 });
        let site = S3Site::new(cfg).unwrap();
        let lock = site.probe_object_lock().unwrap();
        assert!(
            matches!(lock.bucket, BucketLock::Enabled { .. }),
            "{lock:?}"
        );
        assert_eq!(lock.verified_on_object, Some(true), "{lock:?}");
        let caps = site.capabilities().unwrap();
        assert_eq!(caps.retention, Retention::Enforced { mode, days: 2 });
        caps.ensure_usable().unwrap();

        let small = b"locked".to_vec();
        let big = random_bytes(9 * MIB, 7);
        assert_eq!(site.put("obj/small", &small).unwrap(), Put::Created);
        assert_eq!(site.put("obj/big", &big).unwrap(), Put::Created);
        assert_eq!(
            site.put("obj/small", b"again").unwrap(),
            Put::AlreadyExisted
        );
        for (path, bytes) in [("obj/small", &small), ("obj/big", &big)] {
            let retention = site.object_retention(path).unwrap();
            assert_eq!(retention.mode.as_deref(), Some(mode.as_header()), "{path}");
            let until = retention.retain_until.expect("retain-until date");
            assert!(until.as_str() > "2020", "{path}: {until}");
            assert!(site.get(path).unwrap() == *bytes);
        }
        // Deleting a locked object hides it behind a delete marker on a versioned bucket; the
        // locked version itself stays (the site only ever deletes without a version id).
        site.delete("obj/small").unwrap();
        assert!(is_not_found(&site.get("obj/small")));
        let versions = site.version_count("obj/small").unwrap();
        assert!(versions >= 1, "the locked version is gone");
    }
}

#[test]
fn s3_errors_are_classified() {
    // A bucket that does not exist: permanent, and it says what to do.
    let site = S3Site::new(target_config(&unique_bucket("gone"), "v")).unwrap();
    let t = Instant::now();
    let r = with_retry(|| site.put("x", b"y"));
    match &r {
        Err(SiteError::Permanent { message, .. }) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed().as_secs() < 5, "a permanent failure was retried");
    match site.get("x") {
        Err(SiteError::Permanent { message, .. }) => assert!(message.contains("NoSuchBucket")),
        other => panic!("missing bucket reported as {other:?}"),
    }
    assert!(is_permanent(&site.list("")));
    assert!(is_permanent(&site.delete("x")));

    // Nothing listening: retryable (the server may come back), and it names the endpoint.
    let mut cfg = s3_config(
        &format!("http://127.0.0.1:{}", free_port()),
        "some-bucket",
        "v",
    );
    cfg.retries = 1;
    let site = S3Site::new(cfg).unwrap();
    match site.get("x") {
        Err(SiteError::Retryable { message, .. }) => {
            assert!(message.contains("127.0.0.1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// Throughput of put/get of 64 MiB objects to moto on loopback (run by hand:
/// `cargo test -p embassy-sites --release --test conformance -- --ignored --nocapture`).
#[test]
#[ignore = "a measurement, not a check"]
fn s3_throughput_64mib() {
    let site = s3_site("speed", "v", false);
    let mut cfg = site.config().clone();
    cfg.part_size = 16 * MIB;
    cfg.multipart_threshold = 16 * MIB;
    let site = S3Site::new(cfg).unwrap();
    let bytes = random_bytes(64 * MIB, 64);
    for round in 0..3 {
        let path = format!("speed/{round}");
        let t = Instant::now();
        site.put(&path, &bytes).unwrap();
        let put = t.elapsed();
        let t = Instant::now();
        let got = site.get(&path).unwrap();
        let get = t.elapsed();
        assert!(got == bytes);
        let mibs = |d: std::time::Duration| 64.0 / d.as_secs_f64();
        eprintln!(
            "round {round}: put 64 MiB in {put:.2?} ({:.0} MiB/s), get in {get:.2?} ({:.0} MiB/s)",
            mibs(put),
            mibs(get)
        );
    }
    let local_dir = tempfile::tempdir().unwrap();
    let local = LocalSite::new(local_dir.path()).unwrap();
    let t = Instant::now();
    local.put("x", &bytes).unwrap();
    eprintln!("local folder put of 64 MiB: {:.2?}", t.elapsed());
}
