//! A hostile S3 endpoint (a tiny HTTP server in the test, see `embassy_testkit::hostile::HostileS3`) that
//! announces a terabyte, labels its bytes as part of a terabyte-long object, sends a chunked
//! body that does not end, or sends less than it announced: every read is refused with an error
//! naming the site and the object, no allocation follows the server's numbers (the test process
//! would abort), and a second, good site keeps serving reads, writes and listings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_core::format::layout;
use embassy_core::id::ObjectId;
use embassy_core::site::{Put, Site, SiteError};
use embassy_sites::{LocalSite, ReplicatedSite, S3Site};
use embassy_testkit::hostile::*;
use embassy_testkit::random_bytes;
use embassy_testkit::s3::*;

const ALL: [Hostility; 4] = [
    Hostility::LyingContentRangeTotal,
    Hostility::EndlessChunked,
    Hostility::HugeContentLength,
    Hostility::ShortBody,
];

fn hostile_site(server: &HostileS3) -> S3Site {
    let mut cfg = s3_config(&server.endpoint, "hostile", "vault");
    cfg.retries = 1;
    cfg.io_timeout = Duration::from_secs(5);
    S3Site::new(cfg).unwrap()
}

/// The peak resident memory of this process so far, in MiB.
fn peak_rss_mib() -> u64 {
    // SAFETY: getrusage(2) fills the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(r, 0);
    usage.ru_maxrss as u64 / 1024
}

#[test]
fn lying_lengths_and_endless_bodies_are_refused_naming_site_and_object() {
    let pack = layout::pack("population", &ObjectId::of(b"a pack"));
    let manifest = layout::manifest("population", &ObjectId::of(b"a manifest"));
    for hostility in ALL {
        let server = HostileS3::start(hostility);
        let site = hostile_site(&server);
        for path in [layout::CONFIG, manifest.as_str(), pack.as_str()] {
            let t = Instant::now();
            let result = site.get(path);
            let message = match &result {
                Err(e @ (SiteError::Permanent { .. } | SiteError::Retryable { .. })) => {
                    e.to_string()
                }
                other => panic!("{hostility:?} {path}: {:?}", other.as_ref().map(Vec::len)),
            };
            assert!(
                message.contains(site.location()) && message.contains(path),
                "{hostility:?}: the error names neither the site nor the object: {message}"
            );
            eprintln!("{hostility:?} get {path}: {message} ({:.1?})", t.elapsed());
        }
        // A range read of a blob in a pack.
        let range = site.get_range(&pack, 1 << 20, 4096);
        assert!(range.is_err(), "{hostility:?}: range read accepted");
        // A lying total or announced length is refused outright, not retried.
        if matches!(
            hostility,
            Hostility::HugeContentLength | Hostility::LyingContentRangeTotal
        ) {
            match site.get(layout::CONFIG) {
                Err(SiteError::Permanent { message, .. }) => {
                    assert!(message.contains("hostile"), "{hostility:?}: {message}")
                }
                other => panic!("{hostility:?}: {:?}", other.map(|b| b.len())),
            }
        }
    }
    let peak = peak_rss_mib();
    eprintln!("peak resident memory: {peak} MiB");
    // The largest cap is a pack's; the endless body of a pack read stops at the server's own
    // 1.5 GiB limit only when nothing else stops it first.
    assert!(
        peak < 1024,
        "reading from hostile sites took {peak} MiB of memory"
    );
}

#[test]
fn the_good_site_keeps_working_beside_a_hostile_one() {
    for hostility in ALL {
        let server = HostileS3::start(hostility);
        let dir = tempfile::tempdir().unwrap();
        let good: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path()).unwrap());
        let hostile: Arc<dyn Site> = Arc::new(hostile_site(&server));
        let both = ReplicatedSite::new(vec![hostile.clone(), good.clone()], 1).unwrap();
        let bytes = random_bytes(3 * 1024 * 1024, 7);
        let path = layout::pack("population", &ObjectId::of(&bytes));
        // The hostile site refuses writes (503): the write is stored at the good site.
        assert_eq!(both.put(&path, &bytes).unwrap(), Put::Created);
        assert!(good.get(&path).unwrap() == bytes);
        // Reads and listings are served by the good site.
        assert!(both.get(&path).unwrap() == bytes, "{hostility:?}");
        assert_eq!(
            both.get_range(&path, 1000, 10).unwrap(),
            bytes[1000..1010],
            "{hostility:?}"
        );
        let listed = both.list("packs/").unwrap();
        assert_eq!(listed.len(), 1, "{hostility:?}: {listed:?}");
        assert!(
            both.lagging()
                .iter()
                .any(|(site, _)| site == hostile.location()),
            "{hostility:?}: the hostile site is not reported behind"
        );
        // A second write does not ask the hostile site again this run.
        let gets = server.gets.load(std::sync::atomic::Ordering::Relaxed);
        let t = Instant::now();
        both.put("ledger/population/x", b"entry").unwrap();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert_eq!(server.gets.load(std::sync::atomic::Ordering::Relaxed), gets);
    }
}

fn frozen_config(server: &HostileS3) -> embassy_sites::s3::S3Config {
    let mut cfg = s3_config(&server.endpoint, "frozen", "vault");
    cfg.io_timeout = Duration::from_secs(2);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.retries = 3;
    cfg
}

/// A frozen endpoint (it accepts connections and never answers) costs one timeout: the site's
/// own retries stop, a new site on the same endpoint and location (as the agent opens it on its
/// next run) fails at once without a request, and once the server answers again a probe brings
/// the site back.
#[test]
fn a_frozen_endpoint_costs_one_timeout_then_fails_fast_until_a_probe_answers() {
    let server = HostileS3::start(Hostility::Silent);
    let first = S3Site::new(frozen_config(&server)).unwrap();
    let t = Instant::now();
    let r = first.get(layout::CONFIG);
    let cost = t.elapsed();
    assert!(matches!(r, Err(SiteError::Retryable { .. })), "{r:?}");
    // One 2 s timeout; with the three retries it would be four.
    assert!(
        cost >= Duration::from_secs(2) && cost < Duration::from_secs(4),
        "{cost:?}"
    );

    let asked = server.requests.load(std::sync::atomic::Ordering::Relaxed);
    let next_run = S3Site::new(frozen_config(&server)).unwrap();
    let t = Instant::now();
    match next_run.get(layout::CONFIG) {
        Err(SiteError::Retryable { message, .. }) => {
            assert!(message.contains("without a request"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::Relaxed),
        asked,
        "a down site was asked"
    );

    // The server answers again: after the probe delay, one request goes out and brings it back.
    server.set(Hostility::NotFound);
    std::thread::sleep(embassy_sites::s3::FIRST_PROBE_AFTER);
    assert!(
        matches!(
            next_run.get(layout::CONFIG),
            Err(SiteError::NotFound { .. })
        ),
        "the probe's answer did not bring the site back"
    );
    assert!(matches!(
        first.get(layout::CONFIG),
        Err(SiteError::NotFound { .. })
    ));
}

/// Beside a good site, a frozen one costs the first write one timeout; later writes leave it
/// out at once and it is reported behind.
#[test]
fn a_frozen_site_is_left_out_of_the_run_after_its_first_timeout() {
    let server = HostileS3::start(Hostility::Silent);
    let dir = tempfile::tempdir().unwrap();
    let good: Arc<dyn Site> = Arc::new(LocalSite::new(dir.path()).unwrap());
    let frozen: Arc<dyn Site> = Arc::new(S3Site::new(frozen_config(&server)).unwrap());
    let both = ReplicatedSite::new(vec![frozen.clone(), good.clone()], 1).unwrap();
    let t = Instant::now();
    both.put("index/ds/first", b"one").unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    for i in 0..20 {
        both.put(&format!("index/ds/{i}"), b"more").unwrap();
    }
    let rest = t.elapsed();
    eprintln!("first write {first:?}, 20 more {rest:?}");
    assert!(first < Duration::from_secs(4), "{first:?}");
    assert!(rest < Duration::from_secs(1), "{rest:?}");
    assert_eq!(good.list("index/").unwrap().len(), 21);
    assert!(both
        .lagging()
        .iter()
        .any(|(site, _)| site == frozen.location()));
}

/// A server that sends a byte now and then (each read progresses, so the per-read timeout never
/// fires) cannot hold a call for ever: each call has a budget of twice the I/O timeout plus its
/// bytes at 64 KiB/s.
#[test]
fn a_trickling_server_cannot_hold_a_read_for_ever() {
    let server = HostileS3::start(Hostility::Trickle);
    let mut cfg = frozen_config(&server);
    cfg.retries = 0;
    let site = S3Site::new(cfg).unwrap();
    let t = Instant::now();
    // A range from 0 that the whole (trickling) answer fits: held to the time budget.
    let r = site.get_range(layout::CONFIG, 0, 1000);
    let took = t.elapsed();
    assert!(matches!(r, Err(SiteError::Retryable { .. })), "{r:?}");
    // 2 × 2 s, plus 1000 bytes at 64 KiB/s; the trickle goes on for 30 s.
    assert!(
        took < Duration::from_secs(10),
        "the trickle held the read {took:?}"
    );
    eprintln!("trickle cut after {took:?}: {r:?}");
}

/// The error's text, for a read or listing that must be refused.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, SiteError>) -> String {
    match r {
        Err(e @ (SiteError::Permanent { .. } | SiteError::Retryable { .. })) => e.to_string(),
        other => {
            let shown = format!("{other:?}");
            panic!("{what}: accepted: {}", &shown[..shown.len().min(200)])
        }
    }
}

/// A listing is bounded as a whole, not per page: pages of 1000-byte keys are refused once the
/// listing holds the site's `listing_limit`, with an error naming the site and the prefix.
#[test]
fn a_listing_of_endless_long_keys_is_refused_at_the_listing_limit() {
    let server = HostileS3::start(Hostility::ListPages {
        keys: 1000,
        key_len: 1000,
        pages: 200,
    });
    let mut cfg = s3_config(&server.endpoint, "hostile", "vault");
    cfg.retries = 0;
    cfg.listing_limit = 16 * 1024 * 1024;
    let site = S3Site::new(cfg).unwrap();
    let t = Instant::now();
    let message = refused("200 pages of 1000-byte keys", site.list("packs/"));
    let gets = server.gets.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{message} ({gets} pages, {:.1?})", t.elapsed());
    assert!(
        message.contains(site.location())
            && message.contains("packs/")
            && message.contains("listing-limit-mib"),
        "{message}"
    );
    // 16 MiB of ~1000-byte entries: the 17th page passes the limit.
    assert!(gets <= 17, "{gets} pages were read");
}

/// Keys longer than S3 allows are noise, skipped without being kept; pages that add nothing
/// (only such keys, or no keys at all) while saying more follows end the listing with an error
/// after a few, naming the site.
#[test]
fn pages_that_add_nothing_end_the_listing() {
    for (what, keys, key_len, pages) in [
        ("16000-byte keys", 100, 16_000, 40),
        ("no keys", 0, 0, 1000),
    ] {
        let server = HostileS3::start(Hostility::ListPages {
            keys,
            key_len,
            pages,
        });
        let mut cfg = s3_config(&server.endpoint, "hostile", "vault");
        cfg.retries = 0;
        let site = S3Site::new(cfg).unwrap();
        let t = Instant::now();
        let message = refused(what, site.list("packs/"));
        let gets = server.gets.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("{what}: {message} ({gets} pages, {:.1?})", t.elapsed());
        assert!(
            message.contains(site.location()) && message.contains("in a row"),
            "{what}: {message}"
        );
        assert!(gets <= 16, "{what}: {gets} pages were read");
    }
}

fn ranged_site(server: &HostileS3) -> S3Site {
    let mut cfg = s3_config(&server.endpoint, "hostile", "vault");
    cfg.retries = 0;
    cfg.part_size = 5 * 1024 * 1024;
    cfg.multipart_threshold = cfg.part_size;
    cfg.parallelism = 4;
    S3Site::new(cfg).unwrap()
}

/// A ranged read is held to the range asked: a 48-byte read of a pack's header answered with a
/// `200` and a whole 1 GiB object is refused before its body is read; the later pieces of a
/// parallel read answered with the whole object are refused ("ignored the Range"), not read
/// four at a time up to the pack cap; pieces that disagree on the object's size are refused.
#[test]
fn ranged_reads_are_held_to_the_range_asked() {
    let pack = layout::pack("population", &ObjectId::of(b"a pack"));

    let server = HostileS3::start(Hostility::WholeForRange { length: 1 << 30 });
    let site = ranged_site(&server);
    let t = Instant::now();
    let message = refused("a 200 to a 48-byte range", site.get_range(&pack, 0, 48));
    eprintln!("{message} ({:.1?})", t.elapsed());
    assert!(
        message.contains("ignored the Range") && message.contains(&pack),
        "{message}"
    );
    let message = refused("a 200 to a range inside", site.get_range(&pack, 4096, 48));
    assert!(message.contains("ignored the Range"), "{message}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    let server = HostileS3::start(Hostility::WholeAfterFirst {
        total: 40 * 1024 * 1024,
    });
    let site = ranged_site(&server);
    let t = Instant::now();
    let message = refused("whole answers to later pieces", site.get(&pack));
    eprintln!("{message} ({:.1?})", t.elapsed());
    assert!(message.contains("ignored the Range"), "{message}");

    let server = HostileS3::start(Hostility::ShiftingTotal {
        total: 12 * 1024 * 1024,
    });
    let site = ranged_site(&server);
    let message = refused("pieces of another size", site.get(&pack));
    eprintln!("{message}");
    assert!(message.contains("disagree"), "{message}");
}

/// A site answering "already exists" (S3 412) to every write and storing nothing does not count
/// as holding a pack: with two sites required the write fails, with one the site is reported
/// behind and the pack queued for its catch-up. An honest "already exists" (the same pack put
/// twice) is still fine (red team 4, break 5).
#[test]
fn a_site_answering_already_exists_without_storing_does_not_hold_the_pack() {
    use embassy_sites::RetryPolicy;
    let server = HostileS3::start(Hostility::AlreadyExistsToPuts);
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let policy = RetryPolicy {
        attempts: 1,
        ..RetryPolicy::default()
    };
    let retried = |s: Arc<dyn Site>| -> Arc<dyn Site> {
        Arc::new(embassy_sites::RetryingSite::new(s, policy.clone()))
    };
    let good = retried(Arc::new(LocalSite::new(dir.path()).unwrap()));
    // Checked, then put with `If-None-Match: *` (no probe: this server holds nothing).
    let mut cfg = s3_config(&server.endpoint, "hostile", "vault");
    cfg.retries = 1;
    cfg.conditional_writes = embassy_sites::s3::ConditionalWrites::CheckThenPut;
    let liar = retried(Arc::new(S3Site::new(cfg).unwrap()));
    let bytes = random_bytes(200 * 1024, 11);
    let path = layout::pack("population", &ObjectId::of(&bytes));

    // Alone, the lie is a failed write, not "already held".
    let alone = liar.put(&path, &bytes);
    assert!(
        matches!(alone, Err(SiteError::Retryable { .. })),
        "{alone:?}"
    );

    let both = ReplicatedSite::new(vec![good.clone(), liar.clone()], 2).unwrap();
    let refused = both.put(&path, &bytes);
    assert!(
        refused.is_err(),
        "counted as stored at both sites: {refused:?}"
    );

    let one = ReplicatedSite::new(vec![good.clone(), liar.clone()], 1)
        .unwrap()
        .with_queue(state.path())
        .unwrap();
    let other = random_bytes(200 * 1024, 12);
    let other_path = layout::pack("population", &ObjectId::of(&other));
    assert_eq!(one.put(&other_path, &other).unwrap(), Put::Created);
    assert!(
        one.lagging()
            .iter()
            .any(|(site, _)| site == liar.location()),
        "the lying site is not reported behind: {:?}",
        one.lagging()
    );
    let depths =
        embassy_sites::queue::depths(state.path(), &[liar.location().to_string()]).unwrap();
    assert!(
        depths.iter().any(|(_, p)| p.depth() > 0),
        "nothing queued for the lying site's catch-up"
    );

    // An honest "already exists": the good site holds the pack, a second put is fine.
    assert_eq!(good.put(&other_path, &other).unwrap(), Put::AlreadyExisted);
    assert_eq!(
        good.put_from(&path, Arc::new(bytes.clone())).unwrap(),
        Put::AlreadyExisted
    );
}
