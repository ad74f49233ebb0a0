//! The site conformance suite (embassy-testkit's `conformance::run`: one set of checks, written
//! once against `&dyn Site`) run on the sites of this crate — a local folder, an S3 bucket on a
//! real S3 server process (moto's standalone server, started by the tests on loopback), several
//! sites replicated — and on the test kit's in-memory site. If moto is missing the S3 tests fail,
//! saying to run scripts/install-test-deps. With `EMBASSY_TEST_S3_ENDPOINT` (and its credentials,
//! see `moto::s3_target`) the S3 tests run against that server instead, e.g. the three-node Garage
//! cluster of `scripts/garage-cluster`. The capability checks below are S3's own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use embassy_core::site::{Put, Site, SiteError};
use embassy_sites::s3::{BucketLock, LockMode, ObjectLock};
use embassy_sites::{
    CreateOnly, LocalSite, ReplicatedSite, Retention, RetryPolicy, RetryingSite, S3Site,
};
use embassy_testkit::conformance::{self, Expect};
use embassy_testkit::memory::MemorySite;
use embassy_testkit::moto::{s3_target, unique_bucket, ServerKind};
use embassy_testkit::s3::{s3_config, s3_site, target_config};
use embassy_testkit::{free_port, random_bytes};

const MIB: usize = 1024 * 1024;

fn is_permanent(r: &Result<impl std::fmt::Debug, SiteError>) -> bool {
    matches!(r, Err(SiteError::Permanent { .. }))
}

fn is_not_found(r: &Result<impl std::fmt::Debug, SiteError>) -> bool {
    matches!(r, Err(SiteError::NotFound { .. }))
}

/// A fresh folder under `dir` for each site the suite asks for.
fn local_sites(dir: &std::path::Path) -> impl Fn() -> Box<dyn Site> + '_ {
    let n = AtomicUsize::new(0);
    move || {
        let path = dir.join(format!("vault-{}", n.fetch_add(1, Ordering::Relaxed)));
        Box::new(LocalSite::new(path).unwrap())
    }
}

#[test]
fn local_folder_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run(
        Expect {
            exclusive_create: true,
        },
        local_sites(dir.path()),
    );
    // The local site keeps its temporary files under tmp/ and never lists them.
    let site = LocalSite::new(dir.path().join("vault")).unwrap();
    std::fs::create_dir_all(dir.path().join("vault/tmp")).unwrap();
    std::fs::write(dir.path().join("vault/tmp/leftover.part"), b"x").unwrap();
    assert!(site
        .list("")
        .unwrap()
        .iter()
        .all(|i| !i.path.starts_with("tmp")));
}

#[test]
fn memory_site_passes_conformance() {
    conformance::run(
        Expect {
            exclusive_create: true,
        },
        || Box::new(MemorySite::default()),
    );
}

#[test]
fn retrying_sites_pass_conformance() {
    // The retry layer over the in-memory site, a local folder and S3, as `embassy_sites::open`
    // wraps every site.
    conformance::run(
        Expect {
            exclusive_create: true,
        },
        || {
            Box::new(RetryingSite::new(
                Arc::new(MemorySite::default()),
                RetryPolicy::default(),
            ))
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let local = local_sites(dir.path());
    conformance::run(
        Expect {
            exclusive_create: true,
        },
        || {
            Box::new(RetryingSite::new(
                Arc::from(local()),
                RetryPolicy::default(),
            ))
        },
    );
    conformance::run(
        Expect {
            exclusive_create: false,
        },
        || {
            Box::new(RetryingSite::new(
                Arc::new(s3_site("retrying", "v", false)),
                RetryPolicy::default(),
            ))
        },
    );
}

#[test]
fn replicated_sites_pass_conformance() {
    // Two local folders and an S3 bucket, every write required at all three.
    let dir = tempfile::tempdir().unwrap();
    let local = local_sites(dir.path());
    conformance::run(
        Expect {
            // Each member decides alone: racing writers may each win at a different member.
            exclusive_create: false,
        },
        || {
            let members: Vec<Arc<dyn Site>> = vec![
                Arc::from(local()),
                Arc::from(local()),
                Arc::new(s3_site("repl", "v", false)),
            ];
            Box::new(ReplicatedSite::new(members, 3).unwrap())
        },
    );
}

#[test]
fn s3_passes_conformance() {
    conformance::run(
        Expect {
            // moto's existence check and write are not one atomic step; AWS S3's are. Garage
            // ignores If-None-Match: the site looks before writing, which races.
            exclusive_create: false,
        },
        || Box::new(s3_site("conf", "vault/one", false)),
    );
}

#[test]
fn s3_prefixes_keep_vaults_apart() {
    // Only the vault's prefix is touched: a sibling prefix in the same bucket stays apart.
    let site = s3_site("prefix", "vault/one", false);
    site.put("rt/one", b"x").unwrap();
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
    conformance::round_trips(&site);
    conformance::create_only(&site);
    conformance::lists(&site);
    conformance::deletes(&site);
    conformance::invalid_paths(&site);
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
    // A bucket that does not exist: permanent, and it says what to do (behind the retry layer,
    // which must not retry it).
    let site = RetryingSite::new(
        Arc::new(S3Site::new(target_config(&unique_bucket("gone"), "v")).unwrap()),
        RetryPolicy::default(),
    );
    let t = Instant::now();
    let r = site.put("x", b"y");
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
