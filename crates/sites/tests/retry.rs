//! The one retry layer (`RetryingSite`) over the test kit's in-memory site with an injected
//! failure wrapper: what it retries (transient failures only), how often (bounded), what it
//! never retries (not found, permanent, a damaged copy), that cancellation stops it, how a
//! streamed read restarts its sink and a write whose answer was lost is settled; then against
//! a real S3 server (moto) through the fault proxy: a dropped connection is retried, a
//! persistent 5xx gives up after the bound with an error naming the site.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use embassy_core::site::{ObjectInfo, ObjectSink, ObjectSource, Put, Site, SiteError};
use embassy_sites::{RetryPolicy, RetryingSite, S3Site};
use embassy_testkit::memory::MemorySite;
use embassy_testkit::moto::moto;
use embassy_testkit::proxy::{Fault, FaultProxy, FaultRates};
use embassy_testkit::s3::{moto_site, s3_config};

/// A site that counts its calls and fails the next ones as told, in front of a memory site.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemorySite,
    calls: AtomicU32,
    /// The failures still to come, in order; each call takes the first.
    failures: Mutex<Vec<SiteError>>,
    /// Store the object, then fail anyway (the answer lost on the way back).
    lose_answers: AtomicU32,
}

impl Flaky {
    fn failing(failures: Vec<SiteError>) -> Arc<Self> {
        Arc::new(Self {
            failures: Mutex::new(failures),
            ..Self::default()
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    fn next(&self, path: &str) -> Result<(), SiteError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.failures.lock().unwrap();
        if failures.is_empty() {
            return Ok(());
        }
        let mut e = failures.remove(0);
        if let SiteError::Retryable { path: p, .. } | SiteError::Permanent { path: p, .. } = &mut e
        {
            *p = path.to_string();
        }
        Err(e)
    }
}

impl Site for Flaky {
    fn location(&self) -> &str {
        "flaky:test"
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.next(path)?;
        let put = self.inner.put(path, bytes)?;
        if self.lose_answers.load(Ordering::SeqCst) > 0 {
            self.lose_answers.fetch_sub(1, Ordering::SeqCst);
            return Err(transient());
        }
        Ok(put)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.next(path)?;
        self.inner.get(path)
    }
    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        // Half the object reaches the sink before an injected failure, as a cut connection.
        self.calls.fetch_add(1, Ordering::SeqCst);
        let bytes = self.inner.get(path)?;
        let fail = {
            let mut failures = self.failures.lock().unwrap();
            (!failures.is_empty()).then(|| failures.remove(0))
        };
        if let Some(e) = fail {
            sink.write_all(&bytes[..bytes.len() / 2]).unwrap();
            return Err(e);
        }
        sink.write_all(&bytes).unwrap();
        Ok(bytes.len() as u64)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.next(path)?;
        self.inner.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.next(prefix)?;
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.next(path)?;
        self.inner.delete(path)
    }
}

fn transient() -> SiteError {
    SiteError::Retryable {
        site: "flaky:test".into(),
        operation: "get",
        path: String::new(),
        message: "connection reset (injected)".into(),
    }
}

fn permanent() -> SiteError {
    SiteError::Permanent {
        site: "flaky:test".into(),
        operation: "get",
        path: String::new(),
        message: "access denied (injected)".into(),
    }
}

/// A fast policy (millisecond waits) whose reports are kept.
fn policy(attempts: u32, reports: &Arc<Mutex<Vec<String>>>) -> RetryPolicy {
    let reports = reports.clone();
    RetryPolicy {
        attempts,
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
        cancel: None,
        report: Arc::new(move |n| reports.lock().unwrap().push(n.to_string())),
    }
}

#[test]
fn transient_failures_are_retried_and_each_retry_reported_once() {
    let flaky = Flaky::failing(vec![transient(), transient()]);
    flaky.inner.put("a/b", b"bytes").unwrap();
    let reports = Arc::default();
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    assert_eq!(site.get("a/b").unwrap(), b"bytes");
    assert_eq!(flaky.calls(), 3, "two failures, then success");
    let reports = reports.lock().unwrap();
    assert_eq!(reports.len(), 2, "{reports:?}");
    assert!(
        reports[0].contains("site flaky:test: get a/b failed, attempt 2 of 5")
            && reports[0].contains("connection reset (injected)"),
        "{reports:?}"
    );
    assert!(reports[1].contains("attempt 3 of 5"), "{reports:?}");
}

#[test]
fn attempts_are_bounded() {
    let flaky = Flaky::failing((0..10).map(|_| transient()).collect());
    let reports = Arc::default();
    let site = RetryingSite::new(flaky.clone(), policy(4, &reports));
    let r = site.list("");
    assert!(matches!(r, Err(SiteError::Retryable { .. })), "{r:?}");
    assert_eq!(flaky.calls(), 4);
    assert_eq!(reports.lock().unwrap().len(), 3);
}

#[test]
fn permanent_and_not_found_are_never_retried() {
    let flaky = Flaky::failing(vec![permanent(), transient()]);
    let reports = Arc::default();
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    let r = site.delete("x");
    assert!(matches!(r, Err(SiteError::Permanent { .. })), "{r:?}");
    assert_eq!(flaky.calls(), 1);

    let flaky = Flaky::failing(Vec::new());
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    let r = site.get("missing");
    assert!(matches!(r, Err(SiteError::NotFound { .. })), "{r:?}");
    assert_eq!(flaky.calls(), 1);
    assert!(reports.lock().unwrap().is_empty());
}

#[test]
fn a_damaged_copy_is_returned_once_never_read_again() {
    // Integrity is judged above the sites: bytes that do not hash to their name come back as
    // they are, once, and the caller reports damage (never retried into a "good" copy).
    let flaky = Flaky::failing(Vec::new());
    flaky.inner.put("packs/ab", b"tampered").unwrap();
    let reports = Arc::default();
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    assert_eq!(site.get("packs/ab").unwrap(), b"tampered");
    assert_eq!(flaky.calls(), 1);
}

#[test]
fn cancellation_stops_retrying() {
    let flaky = Flaky::failing((0..10).map(|_| transient()).collect());
    let cancel = Arc::new(AtomicBool::new(false));
    let reports: Arc<Mutex<Vec<String>>> = Arc::default();
    let site = RetryingSite::new(
        flaky.clone(),
        RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(30),
            ..policy(10, &reports)
        }
        .with_cancel(Some(cancel.clone())),
    );
    let canceller = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            cancel.store(true, Ordering::SeqCst);
        })
    };
    let t = Instant::now();
    let r = site.get("x");
    canceller.join().unwrap();
    assert!(matches!(r, Err(SiteError::Retryable { .. })), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(flaky.calls(), 1, "no attempt after the cancellation");
    // Already cancelled: one attempt, no wait.
    let r = site.get("x");
    assert!(r.is_err());
    assert_eq!(flaky.calls(), 2);
}

/// A sink that may refuse to restart.
struct Sink {
    bytes: Vec<u8>,
    restartable: bool,
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.bytes.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectSink for Sink {
    fn restart(&mut self) -> io::Result<()> {
        if !self.restartable {
            return Err(io::Error::other("cannot rewind"));
        }
        self.bytes.clear();
        Ok(())
    }
}

#[test]
fn a_streamed_read_is_retried_only_once_its_sink_restarts() {
    let object = b"0123456789abcdef".to_vec();
    let reports = Arc::default();

    let flaky = Flaky::failing(vec![transient()]);
    flaky.inner.put("obj", &object).unwrap();
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    let mut sink = Sink {
        bytes: Vec::new(),
        restartable: true,
    };
    assert_eq!(site.get_to("obj", &mut sink).unwrap(), 16);
    assert_eq!(
        sink.bytes, object,
        "the half of the failed attempt was forgotten"
    );
    assert_eq!(flaky.calls(), 2);

    let flaky = Flaky::failing(vec![transient()]);
    flaky.inner.put("obj", &object).unwrap();
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    let mut sink = Sink {
        bytes: Vec::new(),
        restartable: false,
    };
    let r = site.get_to("obj", &mut sink);
    assert!(matches!(r, Err(SiteError::Retryable { .. })), "{r:?}");
    assert_eq!(
        flaky.calls(),
        1,
        "a sink that cannot restart is not read into again"
    );
}

#[derive(Debug)]
struct Source(Vec<u8>, AtomicU32);

impl ObjectSource for Source {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset == 0 {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        self.0.as_slice().read_exact_at(buf, offset)
    }
}

#[test]
fn a_streamed_write_is_sent_again_from_its_start() {
    let flaky = Flaky::failing(vec![transient()]);
    let reports = Arc::default();
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    let source = Arc::new(Source(b"streamed".to_vec(), AtomicU32::new(0)));
    assert_eq!(site.put_from("s", source.clone()).unwrap(), Put::Created);
    assert_eq!(flaky.calls(), 2);
    assert_eq!(
        source.1.load(Ordering::SeqCst),
        2,
        "read from its start for each attempt"
    );
    assert_eq!(flaky.inner.get("s").unwrap(), b"streamed");
}

#[test]
fn a_write_whose_answer_was_lost_is_settled_by_its_bytes() {
    let reports = Arc::default();
    // Stored, answer lost, retried: "already existed" with our bytes is our own write.
    let flaky = Flaky::failing(Vec::new());
    flaky.lose_answers.store(1, Ordering::SeqCst);
    let site = RetryingSite::new(flaky.clone(), policy(5, &reports));
    assert_eq!(site.put("ledger/1", b"mine").unwrap(), Put::Created);
    // Someone else's bytes there: that name is taken.
    flaky.inner.put("ledger/2", b"theirs").unwrap();
    flaky.lose_answers.store(0, Ordering::SeqCst);
    flaky.failures.lock().unwrap().push(transient());
    assert_eq!(site.put("ledger/2", b"mine").unwrap(), Put::AlreadyExisted);
    assert_eq!(flaky.inner.get("ledger/2").unwrap(), b"theirs");
}

#[test]
fn opened_sites_are_wrapped_in_the_retry_layer() {
    let dir = tempfile::tempdir().unwrap();
    let site = embassy_sites::open(dir.path().to_str().unwrap()).unwrap();
    assert!(format!("{site:?}").starts_with("RetryingSite"), "{site:?}");
    let many = embassy_sites::open_many(
        &[
            dir.path().join("a").display().to_string(),
            dir.path().join("b").display().to_string(),
        ],
        2,
        true,
    )
    .unwrap();
    for member in many.members() {
        assert!(
            format!("{member:?}").starts_with("RetryingSite"),
            "{member:?}"
        );
    }
}

/// moto through the fault proxy, behind the retry layer with short waits.
fn s3_behind_proxy(tag: &str) -> (S3Site, Arc<S3Site>, FaultProxy) {
    let server = moto();
    let direct = moto_site(tag, "v", false);
    let proxy = FaultProxy::start(server.port, FaultRates::default());
    let mut cfg = s3_config(&proxy.endpoint, &direct.config().bucket, "v");
    cfg.io_timeout = Duration::from_secs(5);
    let faulty = Arc::new(S3Site::new(cfg).unwrap());
    faulty.probe_conditional_writes().unwrap();
    (direct, faulty, proxy)
}

#[test]
fn s3_a_dropped_connection_is_retried_a_persistent_5xx_gives_up_naming_the_site() {
    let (direct, faulty, proxy) = s3_behind_proxy("retrylayer");
    direct.put("seed", b"seed bytes").unwrap();
    let reports: Arc<Mutex<Vec<String>>> = Arc::default();
    let site = RetryingSite::new(faulty.clone(), policy(4, &reports));

    // A connection dropped before and after the server acted: each retried, nothing lost.
    proxy.script("GET /", Fault::ResetBeforeForward, 2);
    assert_eq!(site.get("seed").unwrap(), b"seed bytes");
    proxy.script("PUT /", Fault::ResetAfterForward, 1);
    assert_eq!(site.put("new", b"mine").unwrap(), Put::Created);
    assert_eq!(direct.get("new").unwrap(), b"mine");

    // A persistent 503: the S3 client does not retry it, the layer gives up after its bound.
    reports.lock().unwrap().clear();
    let before = proxy.stats.http_5xx.load(Ordering::Relaxed);
    proxy.script("GET /", Fault::Http503, 100);
    let t = Instant::now();
    let err = site.get("seed").unwrap_err();
    let asked = proxy.stats.http_5xx.load(Ordering::Relaxed) - before;
    assert_eq!(asked, 4, "one request per attempt, four attempts");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let message = err.to_string();
    assert!(matches!(err, SiteError::Retryable { .. }), "{err:?}");
    assert!(
        message.contains(faulty.location()) && message.contains("503"),
        "{message}"
    );
    assert_eq!(reports.lock().unwrap().len(), 3, "{reports:?}");
}
