//! Fault injection between the S3 site and a real S3 server (moto on loopback): a TCP proxy
//! adds latency, resets connections (before and after the server acted), answers 500/503,
//! cuts answers short and stalls. Behind the retry layer (`RetryingSite`), operations succeed
//! and nothing stored or read is corrupted; permanent failures surface as `Permanent` at once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_core::site::{Put, Site, SiteError};
use embassy_sites::s3::{ConditionalWrites, FIRST_PROBE_AFTER};
use embassy_sites::{CreateOnly, RetryPolicy, RetryingSite, S3Site};
use embassy_testkit::moto::*;
use embassy_testkit::proxy::*;
use embassy_testkit::random_bytes;
use embassy_testkit::s3::*;

const MIB: usize = 1024 * 1024;

/// A bucket on the shared moto server, a site on it straight, and a site on it through a
/// fault proxy.
fn setup(tag: &str, rates: FaultRates, retries: u32) -> (S3Site, Arc<S3Site>, FaultProxy) {
    let server = moto();
    let direct = moto_site(tag, "v", false);
    let proxy = FaultProxy::start(server.port, rates);
    let mut cfg = s3_config(&proxy.endpoint, &direct.config().bucket, "v");
    cfg.retries = retries;
    cfg.io_timeout = Duration::from_millis(1500);
    cfg.connect_timeout = Duration::from_secs(2);
    let faulty = Arc::new(S3Site::new(cfg).unwrap());
    // Settle the conditional-write probe before any fault is scripted.
    faulty.probe_conditional_writes().unwrap();
    (direct, faulty, proxy)
}

/// `site` behind the retry layer: up to `attempts` per call with the default waits (which leave
/// room for the breaker's first probe after a timeout), each retry counted in `retries`.
fn retrying(site: &Arc<S3Site>, attempts: u32, retries: Arc<AtomicUsize>) -> RetryingSite {
    RetryingSite::new(
        site.clone(),
        RetryPolicy {
            attempts,
            report: Arc::new(move |notice| {
                retries.fetch_add(1, Ordering::Relaxed);
                eprintln!("{notice}");
            }),
            ..RetryPolicy::default()
        },
    )
}

#[test]
fn random_faults_are_retried_and_nothing_is_corrupted() {
    let rates = FaultRates {
        latency: 0.10,
        http_500: 0.04,
        http_503: 0.03,
        reset_before: 0.04,
        reset_after: 0.04,
        truncate: 0.04,
        stall: 0.005,
        stall_for: Duration::from_secs(2),
    };
    let (direct, site, proxy) = setup("random", FaultRates::default(), 3);
    // At least one of each fault, whatever the dice say.
    for fault in [
        Fault::Http500,
        Fault::Http503,
        Fault::ResetBeforeForward,
        Fault::ResetAfterForward,
        Fault::TruncateResponse,
        Fault::Stall(Duration::from_secs(2)),
        Fault::Latency(Duration::from_millis(300)),
    ] {
        proxy.script("GET /", fault, 1);
        proxy.script("PUT /", fault, 1);
    }
    proxy.script("POST /", Fault::ResetAfterForward, 1);
    proxy.set_rates(rates);

    let t = Instant::now();
    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..60 {
        objects.insert(
            format!("small/{i:03}"),
            random_bytes(1 + (i * 7919) % (200 * 1024), i as u64),
        );
    }
    for i in 0..2 {
        objects.insert(
            format!("big/{i}"),
            random_bytes(11 * MIB + i, 1000 + i as u64),
        );
    }
    let tries = Arc::new(AtomicUsize::new(0));
    let retried = retrying(&site, 8, tries.clone());
    let outcomes: std::sync::Mutex<BTreeMap<String, Put>> = Default::default();
    let items: Vec<(&String, &Vec<u8>)> = objects.iter().collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((path, bytes)) = items.get(i) else {
                    return;
                };
                let put = retried
                    .put(path, bytes)
                    .unwrap_or_else(|e| panic!("put {path} failed despite retries: {e}"));
                outcomes.lock().unwrap().insert(path.to_string(), put);
            });
        }
    });
    // The site settles lost answers itself: every first write reports Created.
    for (path, put) in outcomes.into_inner().unwrap() {
        assert_eq!(put, Put::Created, "{path}");
    }
    // Reading back through the faults: whole objects and ranges, never short or corrupt.
    for (path, bytes) in &objects {
        let got = retried.get(path).unwrap();
        assert!(
            got == *bytes,
            "{path}: corrupted read ({} of {} bytes)",
            got.len(),
            bytes.len()
        );
        let (offset, len) = ((bytes.len() / 3) as u64, (bytes.len() / 2) as u64);
        let got = retried.get_range(path, offset, len).unwrap();
        assert!(
            got == bytes[offset as usize..(offset + len) as usize],
            "{path}: range"
        );
    }
    let listed = retried.list("").unwrap();
    let listed: BTreeMap<String, u64> = listed.into_iter().map(|i| (i.path, i.size)).collect();
    let expected: BTreeMap<String, u64> = objects
        .iter()
        .map(|(p, b)| (p.clone(), b.len() as u64))
        .collect();
    assert_eq!(listed, expected);
    // What the server holds, read without the proxy: exactly what was written.
    for (path, bytes) in &objects {
        assert!(
            direct.get(path).unwrap() == *bytes,
            "{path}: stored bytes differ"
        );
    }
    eprintln!(
        "fault run: {} in {:.1?}; {} retries for {} operations",
        proxy.stats.summary(),
        t.elapsed(),
        tries.load(Ordering::Relaxed),
        objects.len() * 3 + 1
    );
    let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let stats = &proxy.stats;
    assert!(g(&stats.http_5xx) >= 2 && g(&stats.reset_before) >= 2 && g(&stats.reset_after) >= 3);
    assert!(g(&stats.truncated) >= 2 && g(&stats.stalled) >= 2 && g(&stats.latency) >= 2);
}

#[test]
fn each_transient_fault_is_retryable_and_the_retry_layer_recovers() {
    // No resends inside the site: every fault reaches the caller, who must see Retryable.
    let (direct, site, proxy) = setup("classify", FaultRates::default(), 0);
    let retried = retrying(&site, 5, Arc::default());
    site.put("seed", b"seed bytes").unwrap();
    let cases = [
        ("GET /", Fault::Http500),
        ("GET /", Fault::Http503),
        ("GET /", Fault::ResetBeforeForward),
        ("GET /", Fault::ResetAfterForward),
        ("GET /", Fault::TruncateResponse),
        ("GET /", Fault::Stall(Duration::from_secs(3))),
        ("PUT /", Fault::Http500),
        ("PUT /", Fault::ResetBeforeForward),
        ("PUT /", Fault::TruncateResponse),
    ];
    for (n, (needle, fault)) in cases.into_iter().enumerate() {
        proxy.script(needle, fault, 1);
        let t = Instant::now();
        let first = if needle.starts_with("GET") {
            site.get("seed").map(|_| ())
        } else {
            site.put(&format!("p/{n}"), b"bytes").map(|_| ())
        };
        assert!(
            matches!(first, Err(SiteError::Retryable { .. })),
            "{fault:?} on {needle}: {first:?}"
        );
        if let Fault::Stall(_) = fault {
            // The io timeout (1.5 s) ends it, not the 3 s stall.
            assert!(
                t.elapsed() < Duration::from_millis(2900),
                "{:?}",
                t.elapsed()
            );
            // The timeout marked the site down; the retried call starts when the breaker lets
            // its first probe through, so that probe meets the stall again and the retries'
            // waits (at least 1.5 s before the fifth attempt) outlast the breaker's second wait
            // of 1 s. Started any earlier, the stall could fall on the last attempt.
            std::thread::sleep(FIRST_PROBE_AFTER + Duration::from_millis(100));
        }
        proxy.script(needle, fault, 1);
        if needle.starts_with("GET") {
            assert_eq!(retried.get("seed").unwrap(), b"seed bytes");
        } else {
            let path = format!("p/{n}-again");
            retried.put(&path, b"bytes").unwrap();
            assert_eq!(direct.get(&path).unwrap(), b"bytes");
        }
    }

    // A write whose answer is lost (the server stored it): without retries inside the site the
    // caller sees Retryable; the caller's retry finds the name taken by exactly its own bytes,
    // which the site recognises as its earlier write.
    proxy.script("PUT /", Fault::ResetAfterForward, 1);
    let r = site.put("lost-answer", b"mine");
    assert!(matches!(r, Err(SiteError::Retryable { .. })), "{r:?}");
    assert_eq!(retried.put("lost-answer", b"mine").unwrap(), Put::Created);
    assert_eq!(direct.get("lost-answer").unwrap(), b"mine");
    // Not so when the bytes differ: that name is someone else's.
    proxy.script("PUT /", Fault::ResetAfterForward, 1);
    assert!(site.put("lost-2", b"first").is_err());
    assert_eq!(site.put("lost-2", b"other").unwrap(), Put::AlreadyExisted);
    assert_eq!(direct.get("lost-2").unwrap(), b"first");

    // A permanent failure is not retried.
    proxy.script("GET /", Fault::Http403, 10);
    let t = Instant::now();
    match retried.get("seed") {
        Err(SiteError::Permanent { message, .. }) => {
            assert!(
                message.contains("AccessDenied") && message.contains("credentials"),
                "{message}"
            )
        }
        other => panic!("403 surfaced as {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a permanent failure was retried"
    );
    assert_eq!(
        proxy.stats.http_403.load(Ordering::Relaxed),
        1,
        "403 asked more than once"
    );
}

#[test]
fn lost_answers_are_settled_inside_the_site() {
    // With the site's own retries, a write whose answer was lost reports Created when the
    // stored bytes are ours, and AlreadyExisted when they are someone else's.
    let (direct, site, proxy) = setup("lost", FaultRates::default(), 3);
    proxy.script("PUT /", Fault::ResetAfterForward, 1);
    assert_eq!(site.put("one", b"mine").unwrap(), Put::Created);
    assert_eq!(direct.get("one").unwrap(), b"mine");

    let big = random_bytes(11 * MIB, 5);
    proxy.script("POST /", Fault::Pass, 1); // CreateMultipartUpload passes
    proxy.script("POST /", Fault::ResetAfterForward, 1); // CompleteMultipartUpload's answer lost
    assert_eq!(site.put("big", &big).unwrap(), Put::Created);
    assert!(direct.get("big").unwrap() == big);

    direct.put("theirs", b"someone else").unwrap();
    assert_eq!(site.put("theirs", b"mine").unwrap(), Put::AlreadyExisted);
    assert_eq!(direct.get("theirs").unwrap(), b"someone else");
}

#[test]
fn server_ignoring_if_none_match_is_detected_and_never_overwritten() {
    // The proxy drops If-None-Match, so moto behaves like Garage: a second PutObject would
    // silently overwrite.
    let server = moto();
    let direct = moto_site("garage", "v", false);
    let proxy = FaultProxy::start(server.port, FaultRates::default());
    proxy.strip_if_none_match(true);
    let cfg = s3_config(&proxy.endpoint, &direct.config().bucket, "v");
    let site = S3Site::new(cfg.clone()).unwrap();

    let probe = site.probe_conditional_writes().unwrap();
    assert!(!probe.put && !probe.multipart, "{probe:?}");
    let caps = site.capabilities().unwrap();
    assert!(
        matches!(caps.create_only, CreateOnly::BestEffort { .. }),
        "{caps:?}"
    );
    assert!(caps.problems.is_empty());
    assert!(
        caps.warnings
            .iter()
            .any(|w| w.contains("ignores If-None-Match") && w.contains("signed")),
        "{caps:?}"
    );

    // Falling back to look-then-write: existing objects are never replaced.
    let big = random_bytes(9 * MIB, 9);
    assert_eq!(site.put("a", b"first").unwrap(), Put::Created);
    assert_eq!(site.put("a", b"second").unwrap(), Put::AlreadyExisted);
    assert_eq!(site.put("big", &big).unwrap(), Put::Created);
    assert_eq!(
        site.put("big", &random_bytes(9 * MIB, 10)).unwrap(),
        Put::AlreadyExisted
    );
    assert_eq!(direct.get("a").unwrap(), b"first");
    assert!(direct.get("big").unwrap() == big);

    // A fresh site in auto mode probes on its first write and falls back the same way.
    let auto = S3Site::new(cfg.clone()).unwrap();
    assert_eq!(auto.put("a", b"third").unwrap(), Put::AlreadyExisted);
    assert_eq!(direct.get("a").unwrap(), b"first");

    // conditional-writes=required refuses to write there at all.
    let mut strict = cfg.clone();
    strict.conditional_writes = ConditionalWrites::Required;
    let strict = S3Site::new(strict).unwrap();
    match strict.put("b", b"x") {
        Err(SiteError::Permanent { message, .. }) => {
            assert!(message.contains("If-None-Match"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!strict.capabilities().unwrap().problems.is_empty());
    assert!(matches!(direct.get("b"), Err(SiteError::NotFound { .. })));

    // check-then-put by configuration: no probe, same protection.
    let mut plain = cfg;
    plain.conditional_writes = ConditionalWrites::CheckThenPut;
    let plain = S3Site::new(plain).unwrap();
    assert_eq!(plain.put("a", b"fourth").unwrap(), Put::AlreadyExisted);
    assert_eq!(plain.put("c", b"new").unwrap(), Put::Created);
    assert_eq!(direct.get("a").unwrap(), b"first");
}

#[test]
fn server_refusing_if_none_match_outright_still_works() {
    // A server that answers 501 NotImplemented to the header: the probe stops sending it and
    // the site looks before writing.
    let server = moto();
    let direct = moto_site("refuse", "v", false);
    let proxy = FaultProxy::start(server.port, FaultRates::default());
    proxy.reject_if_none_match(true);
    let site = S3Site::new(s3_config(&proxy.endpoint, &direct.config().bucket, "v")).unwrap();
    let caps = site.capabilities().unwrap();
    assert!(
        matches!(caps.create_only, CreateOnly::BestEffort { .. }),
        "{caps:?}"
    );
    assert!(caps.problems.is_empty(), "{caps:?}");
    assert_eq!(site.put("a", b"first").unwrap(), Put::Created);
    assert_eq!(site.put("a", b"second").unwrap(), Put::AlreadyExisted);
    let big = random_bytes(9 * MIB, 3);
    assert_eq!(site.put("big", &big).unwrap(), Put::Created);
    assert_eq!(site.put("big", b"small").unwrap(), Put::AlreadyExisted);
    assert_eq!(direct.get("a").unwrap(), b"first");
    assert!(direct.get("big").unwrap() == big);
}
