//! The one retry layer of every site: [`RetryingSite`] wraps a [`Site`] and tries a call again
//! while it fails with a transient error ([`SiteError::Retryable`]: a timeout, a reset, a busy
//! server), a bounded number of times with exponential backoff and jitter. Every other error
//! (`NotFound`, `Permanent`: refused, denied, damaged, invalid) returns at once, and integrity is
//! judged above the sites, never retried here. Each retry is reported once, naming the site,
//! the operation and the path. [`crate::open`] wraps every site it opens, once, so the layers
//! above never retry on their own.
//!
//! The shape is restic's `RetryBackend` (internal/backend/retry): a decorator over the storage
//! trait, a backoff policy, a report hook, rewinding the source of a write and resetting the
//! sink of a read before trying again.
//!
//! - A streamed write ([`Site::put_from`]) is tried again from the start: its source is read by
//!   position ([`ObjectSource`]), so it can always be read again from the beginning.
//! - A streamed read ([`Site::get_to`]) is tried again only once its sink forgot what it got
//!   ([`ObjectSink::restart`]); a sink that cannot restart ends the retries with the error seen.
//! - A write tried again after a failure that may have been applied (its answer lost) and then
//!   told "already existed" is settled by comparing the stored bytes with its own: identical
//!   bytes are this write's, so it reports [`Put::Created`].
//! - "Already existed" for a pack or an index object (named by their content: what is there
//!   must be these bytes) is believed only once the site lists an object of this size at that
//!   path; otherwise the write failed ([`SiteError::Retryable`]: a replicated write queues it
//!   for catch-up). A site answering "already exists" to every write and storing nothing
//!   would otherwise count as holding every pack. (A site can still answer "stored" and drop
//!   the bytes: `verify` finds that.)
//! - Once the cancellation switch is set (the agent abandoning a run, Ctrl-C), no further attempt
//!   is made and a waiting retry wakes up: the last error returns.
//! - An S3 endpoint whose breaker is open refuses an attempt at once, without a request; the
//!   retries' waits (about 3 s in all) leave room for the breaker's first probe (after 1 s), so a
//!   single timeout does not fail a call whose server is back.

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use embassy_core::site::{ObjectInfo, ObjectSink, ObjectSource, Put, Site, SiteError};

/// Attempts per call by default: the first and four retries (about 3 s of waiting in all).
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// The wait before the first retry; it doubles before each next one.
pub const DEFAULT_FIRST_DELAY: Duration = Duration::from_millis(200);
/// The longest wait between two attempts.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);

/// What a retry report says: one line per retry.
#[derive(Debug)]
pub struct RetryNotice<'a> {
    /// The site's location.
    pub site: &'a str,
    /// The operation (`put`, `get`, `list`, ...).
    pub operation: &'static str,
    /// The object path (or listing prefix).
    pub path: &'a str,
    /// The attempt about to be made (2 for the first retry).
    pub attempt: u32,
    /// Attempts allowed in all.
    pub attempts: u32,
    /// The wait before it.
    pub wait: Duration,
    /// Why the previous attempt failed.
    pub error: &'a SiteError,
}

impl fmt::Display for RetryNotice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "site {}: {} {} failed, attempt {} of {} in {} ms: {}",
            self.site,
            self.operation,
            self.path,
            self.attempt,
            self.attempts,
            self.wait.as_millis(),
            self.error
        )
    }
}

/// Where retry reports go (the front end's log; by default one line on standard error).
pub type Reporter = Arc<dyn Fn(&RetryNotice<'_>) + Send + Sync>;

/// How a [`RetryingSite`] retries.
#[derive(Clone)]
pub struct RetryPolicy {
    /// Attempts per call in all (at least 1; 1 means no retry).
    pub attempts: u32,
    /// The wait before the first retry, doubled before each next one.
    pub first_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// Once set, no further attempt is made (None: never).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Where each retry is reported.
    pub report: Reporter,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts", &self.attempts)
            .field("first_delay", &self.first_delay)
            .field("max_delay", &self.max_delay)
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: DEFAULT_ATTEMPTS,
            first_delay: DEFAULT_FIRST_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            cancel: None,
            report: Arc::new(|notice| {
                let _ = writeln!(io::stderr(), "embassy: retrying: {notice}");
            }),
        }
    }
}

impl RetryPolicy {
    /// This policy, giving up once `cancel` is set.
    pub fn with_cancel(mut self, cancel: Option<Arc<AtomicBool>>) -> Self {
        self.cancel = cancel;
        self
    }

    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// The wait before attempt `attempt` (2 for the first retry): the doubled delay, capped,
    /// with jitter between half and all of it.
    fn wait(&self, attempt: u32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << (attempt.saturating_sub(2)).min(20));
        let full = doubled.min(self.max_delay).as_millis() as u64;
        Duration::from_millis(full / 2 + rand::random::<u64>() % (full / 2 + 1))
    }

    /// Sleeps `wait`, waking early once cancelled; whether it was cancelled.
    fn sleep(&self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            if self.cancelled() {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// A site whose calls are tried again on transient failures (see the module documentation).
#[derive(Debug)]
pub struct RetryingSite {
    inner: Arc<dyn Site>,
    policy: RetryPolicy,
}

impl RetryingSite {
    /// Wraps `inner`, retrying as `policy` says.
    pub fn new(inner: Arc<dyn Site>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }

    /// The wrapped site.
    pub fn inner(&self) -> &Arc<dyn Site> {
        &self.inner
    }

    /// Runs `call` until it succeeds, fails with anything but [`SiteError::Retryable`], the
    /// attempts run out, or the run is cancelled. `before_retry`
    /// prepares a retry (a sink's restart) and may refuse it, which ends with the last error.
    fn retry<T>(
        &self,
        operation: &'static str,
        path: &str,
        mut call: impl FnMut() -> Result<T, SiteError>,
        mut before_retry: impl FnMut() -> bool,
    ) -> Result<T, SiteError> {
        let attempts = self.policy.attempts.max(1);
        let mut attempt = 1;
        loop {
            let error = match call() {
                Err(e @ SiteError::Retryable { .. }) => e,
                other => return other,
            };
            if attempt >= attempts || self.policy.cancelled() {
                return Err(error);
            }
            attempt += 1;
            let wait = self.policy.wait(attempt);
            (self.policy.report)(&RetryNotice {
                site: self.inner.location(),
                operation,
                path,
                attempt,
                attempts,
                wait,
                error: &error,
            });
            if self.policy.sleep(wait) || !before_retry() {
                return Err(error);
            }
        }
    }

    /// A write's outcome, settled when an earlier attempt failed in a way that may have stored
    /// the object: "already existed" then means "holds these bytes already" only if the stored
    /// bytes are ours. "Already existed" for an object named by its content is checked against
    /// what the site lists (see the module documentation).
    fn settle(
        &self,
        path: &str,
        outcome: Result<Put, SiteError>,
        retried: bool,
        ours: &dyn ObjectSource,
    ) -> Result<Put, SiteError> {
        match outcome {
            Ok(Put::AlreadyExisted) if named_by_content(path) && !retried => {
                self.check_stored(path, ours.len())?;
                Ok(Put::AlreadyExisted)
            }
            Ok(Put::AlreadyExisted) if retried => {
                if named_by_content(path) {
                    self.check_stored(path, ours.len())?;
                }
                let mut compare = Compare::new(ours);
                let read = self.get_to(path, &mut compare);
                Ok(match read {
                    Ok(n) if n == ours.len() && compare.same => Put::Created,
                    // Another copy, or one that cannot be read now: someone else's object.
                    _ => Put::AlreadyExisted,
                })
            }
            other => other,
        }
    }
}

impl RetryingSite {
    /// Whether the site lists an object of `len` bytes at `path` (after it answered "already
    /// existed" to a write of those bytes); a failed write if not.
    fn check_stored(&self, path: &str, len: u64) -> Result<(), SiteError> {
        let listed = self.list(path)?;
        let failed = |message: String| SiteError::Retryable {
            site: self.location().to_string(),
            operation: "put",
            path: path.to_string(),
            message,
        };
        match listed.iter().find(|o| o.path == path) {
            Some(o) if o.size == len => Ok(()),
            Some(o) => Err(failed(format!(
                "the site answered that it already held this object, but it holds {} bytes \
                 there, not {len}: counted as not stored",
                o.size
            ))),
            None => Err(failed(
                "the site answered that it already held this object, but lists nothing there: \
                 counted as not stored"
                    .into(),
            )),
        }
    }
}

/// Whether objects at `path` are named by their content (packs and index objects), so that
/// one already there must hold the same bytes as a write to it.
fn named_by_content(path: &str) -> bool {
    path.starts_with("packs/") || path.starts_with("index/")
}

impl Site for RetryingSite {
    fn location(&self) -> &str {
        self.inner.location()
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let mut tries = 0;
        let outcome = self.retry(
            "put",
            path,
            || {
                tries += 1;
                self.inner.put(path, bytes)
            },
            || true,
        );
        self.settle(path, outcome, tries > 1, &bytes)
    }

    fn put_from(&self, path: &str, source: Arc<dyn ObjectSource>) -> Result<Put, SiteError> {
        // The source is read by position: every attempt reads it again from its start.
        let mut tries = 0;
        let outcome = self.retry(
            "put",
            path,
            || {
                tries += 1;
                self.inner.put_from(path, source.clone())
            },
            || true,
        );
        self.settle(path, outcome, tries > 1, source.as_ref())
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.retry("get", path, || self.inner.get(path), || true)
    }

    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        // Two borrows of the sink, one per closure, never at the same time: take turns
        // through a cell.
        let sink = std::cell::RefCell::new(sink);
        self.retry(
            "get",
            path,
            || self.inner.get_to(path, &mut **sink.borrow_mut()),
            || sink.borrow_mut().restart().is_ok(),
        )
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.retry(
            "get range",
            path,
            || self.inner.get_range(path, offset, len),
            || true,
        )
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.retry("list", prefix, || self.inner.list(prefix), || true)
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.retry("delete", path, || self.inner.delete(path), || true)
    }

    fn lagging(&self) -> Vec<(String, String)> {
        self.inner.lagging()
    }

    fn members(&self) -> Vec<Arc<dyn Site>> {
        self.inner
            .members()
            .into_iter()
            .map(|m| Arc::new(RetryingSite::new(m, self.policy.clone())) as Arc<dyn Site>)
            .collect()
    }
}

/// A sink that compares what it is given with a source, holding nothing.
struct Compare<'a> {
    source: &'a dyn ObjectSource,
    at: u64,
    same: bool,
    buf: Vec<u8>,
}

impl<'a> Compare<'a> {
    fn new(source: &'a dyn ObjectSource) -> Self {
        Self {
            source,
            at: 0,
            same: true,
            buf: Vec::new(),
        }
    }
}

impl Write for Compare<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let end = self.at.saturating_add(bytes.len() as u64);
        if self.same && end <= self.source.len() {
            self.buf.resize(bytes.len(), 0);
            self.source.read_exact_at(&mut self.buf, self.at)?;
            self.same = self.buf == bytes;
        } else {
            self.same = false;
        }
        self.at = end;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectSink for Compare<'_> {
    fn restart(&mut self) -> io::Result<()> {
        self.at = 0;
        self.same = true;
        Ok(())
    }
}
