//! A vault in an S3-compatible bucket (AWS S3, Ceph RGW, MinIO, Garage, moto, ...).
//!
//! Synchronous: HTTP/1.1 through `ureq`, requests signed with AWS Signature V4 by `aws-sigv4`
//! (the signer of the official AWS SDK). Every object is created with `If-None-Match: *`, so a
//! name once written is never overwritten on servers that honour it; on servers that ignore it
//! the site notices (a probe, once per process) and falls back to look-then-write, and `init`
//! says so (see [`S3Site::probe_conditional_writes`] and [`crate::check_capabilities`]).
//!
//! Every upload carries `Content-MD5` (the server rejects bytes damaged on the way) and, when
//! configured, Object Lock retention headers. Objects above a threshold go up as multipart
//! uploads with parts sent in parallel; large reads are split into parallel ranged GETs pinned to
//! one ETag. Each HTTP request is retried a few times with exponential backoff and full jitter;
//! what is still failing is reported as [`SiteError::Retryable`] (5xx, 429, timeouts, resets) or
//! [`SiteError::Permanent`] (credentials, permissions, missing bucket, ...) with what to check.

mod breaker;
mod config;
mod xml;

pub use breaker::{FIRST_PROBE_AFTER, MAX_PROBE_INTERVAL};
pub use config::{
    ConditionalWrites, LockMode, ObjectLock, S3Config, S3Credentials, DEFAULT_LISTING_LIMIT,
    LOCATION_OPTIONS, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE,
};

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use base64::Engine as _;
use embassy_core::site::{
    read_source, sink_error, source_error, ObjectInfo, ObjectSink, ObjectSource, Put, Site,
    SiteError, COPY_BUFFER,
};
use md5::{Digest as _, Md5};
use ureq::http::{HeaderMap, Method, Request};

/// Objects under this first path component belong to the site itself (capability probes) and
/// are not listed, as with the local site's `tmp/`.
const TMP: &str = "tmp/";
/// S3's longest key, in bytes.
const MAX_KEY_LEN: usize = 1024;
/// Error bodies are small; do not read more of them.
const ERROR_BODY_LIMIT: u64 = 64 * 1024;
/// Most failed puts remembered for settling (see `S3Site::settle`).
const MAX_PENDING: usize = 4096;
/// Most memory reserved up front for an answer on the strength of its Content-Length.
const MAX_PREALLOCATION: u64 = 64 * 1024 * 1024;
/// The slowest transfer a call is allowed, in bytes a second, on top of twice the I/O timeout.
const MIN_RATE: u64 = 64 * 1024;
use crate::{LISTED_ENTRY_COST, MAX_LISTED};
/// Most pages in a row, marked truncated, that add nothing to a listing (no keys, or only keys
/// that are skipped): a server that pages without end is refused.
const MAX_IDLE_PAGES: u32 = 16;
/// Largest answer that is not an object's bytes (a listing page, an upload id, ...): a page of
/// 1,000 keys is well under a megabyte.
const ANSWER_LIMIT: u64 = 16 * 1024 * 1024;

/// What the server does with `If-None-Match: *` (see [`S3Site::probe_conditional_writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConditionalWriteProbe {
    /// A second `PutObject` with `If-None-Match: *` on an existing key was refused (412).
    pub put: bool,
    /// A `CompleteMultipartUpload` with `If-None-Match: *` on an existing key was refused.
    pub multipart: bool,
}

impl ConditionalWriteProbe {
    /// Both kinds of write are create-only on the server.
    pub fn complete(&self) -> bool {
        self.put && self.multipart
    }
}

/// A bucket's Object Lock state as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketLock {
    /// Object Lock is enabled on the bucket; `default_retention` is e.g. `GOVERNANCE 30 days`.
    Enabled {
        /// The bucket's default retention, if it has one.
        default_retention: Option<String>,
    },
    /// The bucket was created without Object Lock (it can only be enabled at creation on most
    /// servers).
    NotEnabled,
    /// The server does not implement Object Lock (its answer is kept).
    Unsupported(String),
}

/// Result of [`S3Site::probe_object_lock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLockProbe {
    /// What the bucket says.
    pub bucket: BucketLock,
    /// The retention this site puts on every object it creates, if any.
    pub configured: Option<ObjectLock>,
    /// With retention configured on an Object Lock bucket: whether a probe object written with
    /// it came back carrying that mode (`None` when not tried).
    pub verified_on_object: Option<bool>,
}

/// An object's Object Lock retention, as the server reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRetention {
    /// `GOVERNANCE` or `COMPLIANCE`, if locked.
    pub mode: Option<String>,
    /// The retain-until date, as the server wrote it.
    pub retain_until: Option<String>,
}

/// A site in an S3-compatible bucket.
#[derive(Debug)]
pub struct S3Site {
    cfg: S3Config,
    location: String,
    agent: ureq::Agent,
    https: bool,
    credentials: Credentials,
    /// Key prefix with a trailing `/`, or empty.
    key_prefix: String,
    /// What the conditional-write probe found, once it has run.
    conditional: Mutex<Option<ConditionalWriteProbe>>,
    /// Puts that failed retryably, so may have been stored: path -> digest of the bytes.
    pending: Mutex<HashMap<String, String>>,
    /// Cleared when the server refuses the `If-None-Match` header outright (501).
    send_if_none_match: AtomicBool,
    /// Down after a timeout or a failed connection: requests fail at once until a probe answers.
    breaker: Arc<breaker::Breaker>,
}

/// The most bytes an answer may carry: `partial` for a 206, `whole` for other 2xx answers.
#[derive(Debug, Clone, Copy)]
struct BodyLimit {
    partial: u64,
    whole: u64,
    /// The request asked for a range: a whole answer past `whole` means the server ignored it.
    ranged: bool,
}

impl BodyLimit {
    /// Answers that are not object bytes.
    const ANSWER: BodyLimit = BodyLimit {
        partial: ANSWER_LIMIT,
        whole: ANSWER_LIMIT,
        ranged: false,
    };
}

/// A failed exchange, and whether the server may have acted on the request anyway.
struct Failure {
    error: SiteError,
    maybe_applied: bool,
}

/// A response with its whole body read.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The answer to a ranged GET.
enum RangeReply {
    /// 206: these bytes from `start`, of an object of `total` bytes.
    Partial {
        bytes: Vec<u8>,
        total: u64,
        etag: Option<String>,
    },
    /// 200: the server sent the whole object.
    Whole { bytes: Vec<u8> },
    /// 416: the range starts past the end (`total` if the server said).
    Unsatisfiable { total: Option<u64> },
}

impl S3Site {
    /// Opens an `s3://bucket/prefix[?options]` location with settings from the environment.
    pub fn open(location: &str) -> Result<Self, SiteError> {
        Self::new(S3Config::from_location(location)?)
    }

    /// A site from an explicit configuration. Makes no request.
    pub fn new(cfg: S3Config) -> Result<Self, SiteError> {
        let location = cfg.location();
        cfg.validate().map_err(|message| SiteError::Permanent {
            site: location.clone(),
            operation: "open",
            path: String::new(),
            message,
        })?;
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("data-embassy/", env!("CARGO_PKG_VERSION")))
            .accept_encoding("")
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_resolve(Some(cfg.connect_timeout))
            .timeout_per_read(Some(cfg.io_timeout))
            .timeout_per_write(Some(cfg.io_timeout))
            .timeout_recv_response(Some(cfg.io_timeout))
            .max_idle_connections(64)
            .max_idle_connections_per_host(cfg.parallelism.max(16))
            .build();
        let credentials = Credentials::new(
            cfg.credentials.access_key_id.clone(),
            cfg.credentials.secret_access_key.clone(),
            cfg.credentials.session_token.clone(),
            None,
            "data-embassy",
        );
        let key_prefix = if cfg.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", cfg.prefix)
        };
        Ok(S3Site {
            breaker: breaker::Breaker::for_site(&format!("{} {location}", cfg.endpoint)),
            https: cfg.endpoint.starts_with("https://"),
            location,
            agent: ureq::Agent::new_with_config(agent_config),
            credentials,
            key_prefix,
            pending: Mutex::new(HashMap::new()),
            send_if_none_match: AtomicBool::new(true),
            conditional: Mutex::new(match cfg.conditional_writes {
                ConditionalWrites::CheckThenPut => Some(ConditionalWriteProbe {
                    put: false,
                    multipart: false,
                }),
                _ => None,
            }),
            cfg,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &S3Config {
        &self.cfg
    }

    // ---------------------------------------------------------------------------------------
    // Capability checks for `init`.

    /// Finds out whether the server honours `If-None-Match: *`: writes a small probe object under
    /// `tmp/probe-<random>` twice (once as a plain put, once as a one-part multipart upload) and
    /// reports which second write was refused, then deletes the probe. The result also decides
    /// how this site enforces create-only writes from then on (unless configured
    /// `check-then-put`).
    pub fn probe_conditional_writes(&self) -> Result<ConditionalWriteProbe, SiteError> {
        let path = format!("{TMP}probe-{:016x}", rand::random::<u64>());
        let key = self.key(&path, "probe")?;
        let op = "probe conditional writes";
        let result = (|| {
            let first = match self.put_single(op, &path, &key, b"first", false) {
                // The header itself is refused (501 NotImplemented): stop sending it; the
                // server cannot enforce create-only writes.
                Err(SiteError::Permanent { message, .. })
                    if message.contains("NotImplemented") || message.starts_with("HTTP 501") =>
                {
                    self.send_if_none_match.store(false, Ordering::Relaxed);
                    self.put_single(op, &path, &key, b"first", false)?;
                    return Ok(ConditionalWriteProbe {
                        put: false,
                        multipart: false,
                    });
                }
                other => other?,
            };
            if first != Put::Created {
                return Err(self.permanent(
                    op,
                    &path,
                    "a fresh random probe name already existed: the bucket is behaving oddly"
                        .into(),
                ));
            }
            let put = self.put_single(op, &path, &key, b"second", false)? == Put::AlreadyExisted;
            let upload_id = self.create_multipart(op, &path, &key, false)?;
            let etag = self.upload_part(op, &path, &key, &upload_id, 1, b"third")?;
            let outcome = self.complete_multipart(op, &path, &key, &upload_id, &[etag], true);
            let multipart = match outcome {
                Ok(Put::AlreadyExisted) => true,
                Ok(Put::Created) => false,
                Err(e) => {
                    self.abort_multipart(&path, &key, &upload_id);
                    return Err(e);
                }
            };
            if multipart {
                self.abort_multipart(&path, &key, &upload_id);
            }
            Ok(ConditionalWriteProbe { put, multipart })
        })();
        let _ = self.delete(&path);
        let probe = result?;
        if self.cfg.conditional_writes != ConditionalWrites::CheckThenPut {
            *self.conditional.lock().unwrap_or_else(|p| p.into_inner()) = Some(probe);
        }
        Ok(probe)
    }

    /// Reads the bucket's Object Lock configuration (GetObjectLockConfiguration). With a
    /// retention configured for this site and Object Lock enabled on the bucket, also writes a
    /// probe object with the configured mode and a one-day retention and checks that it comes
    /// back locked (the probe stays, hidden and undeletable, for that day).
    pub fn probe_object_lock(&self) -> Result<ObjectLockProbe, SiteError> {
        let op = "probe object lock";
        let reply = self.retry(|_| {
            let reply = self
                .exchange(
                    Method::GET,
                    None,
                    &[("object-lock", None)],
                    &[],
                    &[],
                    op,
                    "",
                )
                .map_err(|f| f.error)?;
            match reply.status {
                200 | 404 | 400 | 501 => Ok(reply),
                _ => Err(self.status_error(op, "", &reply)),
            }
        })?;
        let err = xml::error(&reply.body).unwrap_or_default();
        let bucket = match reply.status {
            200 => match xml::lock_config(&reply.body) {
                Some(c) if c.enabled => BucketLock::Enabled {
                    default_retention: c
                        .default_retention
                        .map(|(mode, period)| format!("{mode} {period}").trim().to_string()),
                },
                Some(_) => BucketLock::NotEnabled,
                None => BucketLock::Unsupported(
                    "the server answered GetObjectLockConfiguration with something unreadable"
                        .into(),
                ),
            },
            404 if err.code == "ObjectLockConfigurationNotFoundError" => BucketLock::NotEnabled,
            404 => return Err(self.status_error(op, "", &reply)),
            _ => BucketLock::Unsupported(format!(
                "HTTP {} {}: {}",
                reply.status, err.code, err.message
            )),
        };
        let mut probe = ObjectLockProbe {
            bucket,
            configured: self.cfg.object_lock,
            verified_on_object: None,
        };
        if let (Some(lock), BucketLock::Enabled { .. }) = (self.cfg.object_lock, &probe.bucket) {
            let path = format!("{TMP}probe-lock-{:016x}", rand::random::<u64>());
            let key = self.key(&path, op)?;
            let one_day = ObjectLock {
                mode: lock.mode,
                days: 1,
            };
            let headers = lock_headers(Some(one_day), SystemTime::now());
            let body = b"object lock probe";
            let md5 = content_md5(body);
            self.retry(|_| {
                let mut h: Vec<(&str, String)> = vec![
                    ("content-type", "application/octet-stream".into()),
                    ("content-md5", md5.clone()),
                ];
                h.extend(headers.iter().cloned());
                let reply = self
                    .exchange(Method::PUT, Some(&key), &[], &h, body, op, &path)
                    .map_err(|f| f.error)?;
                if reply.status == 200 {
                    Ok(())
                } else {
                    Err(self.status_error(op, &path, &reply))
                }
            })?;
            let head = self.head(op, &path, &key)?;
            let mode = head
                .as_ref()
                .and_then(|h| h.header("x-amz-object-lock-mode"))
                .unwrap_or("")
                .to_ascii_uppercase();
            probe.verified_on_object = Some(mode == lock.mode.as_header());
            let _ = self.delete(&path);
        }
        Ok(probe)
    }

    /// Creates the bucket (with Object Lock enabled if asked). `Ok(false)` if it already exists
    /// and is ours.
    pub fn create_bucket(&self, object_lock: bool) -> Result<bool, SiteError> {
        let op = "create bucket";
        let body = if self.cfg.region == "us-east-1" {
            String::new()
        } else {
            format!(
                "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
                self.cfg.region
            )
        };
        let mut headers = Vec::new();
        if object_lock {
            headers.push(("x-amz-bucket-object-lock-enabled", "true".to_string()));
        }
        self.retry(|_| {
            let reply = self
                .exchange(Method::PUT, None, &[], &headers, body.as_bytes(), op, "")
                .map_err(|f| f.error)?;
            let code = xml::error(&reply.body).unwrap_or_default().code;
            match reply.status {
                200 => Ok(true),
                409 if code == "BucketAlreadyOwnedByYou" => Ok(false),
                _ => Err(self.status_error(op, "", &reply)),
            }
        })
    }

    /// The Object Lock retention an object carries (HEAD), for checks and diagnostics.
    pub fn object_retention(&self, path: &str) -> Result<ObjectRetention, SiteError> {
        let key = self.key(path, "head")?;
        let head = self
            .head("head", path, &key)?
            .ok_or_else(|| SiteError::NotFound {
                site: self.location.clone(),
                path: path.to_string(),
            })?;
        Ok(ObjectRetention {
            mode: head.header("x-amz-object-lock-mode").map(str::to_string),
            retain_until: head
                .header("x-amz-object-lock-retain-until-date")
                .map(str::to_string),
        })
    }

    /// How many stored versions (not delete markers) of `path` the bucket keeps
    /// (ListObjectVersions; 1 on unversioned buckets).
    pub fn version_count(&self, path: &str) -> Result<usize, SiteError> {
        let key = self.key(path, "list versions")?;
        let query = [("prefix", Some(key.clone())), ("versions", None)];
        self.retry(|_| {
            let reply = self
                .exchange(Method::GET, None, &query, &[], &[], "list versions", path)
                .map_err(|f| f.error)?;
            if reply.status != 200 {
                return Err(self.status_error("list versions", path, &reply));
            }
            xml::version_count(&reply.body, &key).ok_or_else(|| {
                self.retryable("list versions", path, "unreadable version listing".into())
            })
        })
    }

    /// The create-only mode in force, probing the server the first time it is needed.
    fn create_only(&self) -> Result<ConditionalWriteProbe, SiteError> {
        if let Some(p) = *self.conditional.lock().unwrap_or_else(|p| p.into_inner()) {
            return self.require(p);
        }
        let probe = self.probe_conditional_writes()?;
        self.require(probe)
    }

    fn require(&self, probe: ConditionalWriteProbe) -> Result<ConditionalWriteProbe, SiteError> {
        if self.cfg.conditional_writes == ConditionalWrites::Required && !probe.complete() {
            return Err(self.permanent(
                "put",
                "",
                "the server ignores If-None-Match: * (create-only writes), and this site is \
                 configured conditional-writes=required: use a server that honours it, or accept \
                 look-then-write with conditional-writes=auto"
                    .into(),
            ));
        }
        Ok(probe)
    }

    // ---------------------------------------------------------------------------------------
    // Requests.

    fn permanent(&self, operation: &'static str, path: &str, message: String) -> SiteError {
        SiteError::Permanent {
            site: self.location.clone(),
            operation,
            path: path.to_string(),
            message,
        }
    }

    fn retryable(&self, operation: &'static str, path: &str, message: String) -> SiteError {
        SiteError::Retryable {
            site: self.location.clone(),
            operation,
            path: path.to_string(),
            message,
        }
    }

    /// Validates a vault path and turns it into a key.
    fn key(&self, path: &str, operation: &'static str) -> Result<String, SiteError> {
        if !crate::valid_object_path(path) {
            return Err(self.permanent(operation, path, "invalid object path".into()));
        }
        let key = format!("{}{path}", self.key_prefix);
        if key.len() > MAX_KEY_LEN {
            return Err(self.permanent(
                operation,
                path,
                format!(
                    "the key is {} bytes long; S3 allows {MAX_KEY_LEN}",
                    key.len()
                ),
            ));
        }
        Ok(key)
    }

    fn url(&self, key: Option<&str>, query: &[(&str, Option<String>)]) -> String {
        let (scheme, authority) = self
            .cfg
            .endpoint
            .split_once("://")
            .unwrap_or(("https", &self.cfg.endpoint));
        let mut url = if self.cfg.path_style {
            format!("{scheme}://{authority}/{}", self.cfg.bucket)
        } else {
            format!("{scheme}://{}.{authority}", self.cfg.bucket)
        };
        match key {
            Some(k) => {
                url.push('/');
                url.push_str(&uri_encode(k, true));
            }
            None if !self.cfg.path_style => url.push('/'),
            None => {}
        }
        for (i, (name, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(name);
            if let Some(v) = value {
                url.push('=');
                url.push_str(&uri_encode(v, false));
            }
        }
        url
    }

    /// The headers that sign a request made at `time`.
    fn signature_headers(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, String)],
        body: &[u8],
        time: SystemTime,
    ) -> Result<Vec<(String, String)>, String> {
        let mut settings = SigningSettings::default();
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.cfg.region)
            .name("s3")
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into();
        // Over TLS the transport protects the payload and Content-MD5 lets the server check it;
        // over plain HTTP the payload hash is signed as well.
        let body = if self.https {
            SignableBody::UnsignedPayload
        } else {
            SignableBody::Bytes(body)
        };
        let signable = SignableRequest::new(
            method.as_str(),
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            body,
        )
        .map_err(|e| format!("cannot sign the request: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("cannot sign the request: {e}"))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// One signed HTTP exchange, reading the whole response body.
    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, Option<String>)],
        headers: &[(&str, String)],
        body: &[u8],
        operation: &'static str,
        path: &str,
    ) -> Result<Reply, Failure> {
        self.exchange_limited(
            method,
            key,
            query,
            headers,
            body,
            operation,
            path,
            BodyLimit::ANSWER,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange_limited(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, Option<String>)],
        headers: &[(&str, String)],
        body: &[u8],
        operation: &'static str,
        path: &str,
        body_limit: BodyLimit,
    ) -> Result<Reply, Failure> {
        let probe = match self.breaker.admit() {
            breaker::Admit::Go => false,
            breaker::Admit::Probe => true,
            breaker::Admit::Refuse(why) => {
                return Err(Failure {
                    error: self.retryable(operation, path, why),
                    maybe_applied: false,
                })
            }
        };
        let url = self.url(key, query);
        let signature = self
            .signature_headers(&method, &url, headers, body, SystemTime::now())
            .map_err(|m| Failure {
                error: self.permanent(operation, path, m),
                maybe_applied: false,
            })?;
        let mut builder = Request::builder().method(method.clone()).uri(&url);
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        for (k, v) in &signature {
            builder = builder.header(k, v);
        }
        let sends_body = !body.is_empty() || method == Method::PUT || method == Method::POST;
        let bytes = (body.len() as u64).saturating_add(body_limit.partial);
        let result = if sends_body {
            builder
                .body(body)
                .map_err(ureq::Error::from)
                .and_then(|r| self.send(r, probe, bytes))
        } else {
            builder
                .body(())
                .map_err(ureq::Error::from)
                .and_then(|r| self.send(r, probe, bytes))
        };
        let mut response = match result {
            Ok(r) => r,
            Err(e) => {
                let unreachable = matches!(
                    &e,
                    ureq::Error::Timeout(_)
                        | ureq::Error::ConnectionFailed
                        | ureq::Error::HostNotFound
                ) || matches!(&e, ureq::Error::Io(io) if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::TimedOut
                ));
                let failure = self.transport_failure(operation, path, e);
                if unreachable {
                    self.breaker.unreachable(&failure.error.to_string());
                } else if probe {
                    self.breaker.probe_inconclusive();
                }
                return Err(failure);
            }
        };
        self.breaker.answered();
        let status = response.status().as_u16();
        let expected = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A partial answer may not exceed what was asked; a whole one (a server that ignores
        // Range) what the format allows for the object, and only when it says its length up
        // front (else what was asked); error answers are cut at a small size. Never more than
        // that is read, whatever the server announces or sends.
        let limit = match status {
            206 => body_limit.partial,
            200..=299 if expected.is_some() => body_limit.whole,
            200..=299 => body_limit.partial,
            _ => ERROR_BODY_LIMIT,
        };
        let mut bytes = Vec::new();
        if method != Method::HEAD {
            if let Some(n) = expected {
                if n > limit && (200..300).contains(&status) {
                    let ignored = if body_limit.ranged && status != 206 {
                        "; it ignored the Range asked for and answered with the whole object"
                    } else {
                        ""
                    };
                    return Err(Failure {
                        error: self.permanent(
                            operation,
                            path,
                            format!(
                                "the server announced {n} bytes where at most {limit} were \
                                 expected{ignored}: a damaged or hostile site; nothing was read"
                            ),
                        ),
                        maybe_applied: true,
                    });
                }
                // Do not trust a huge announced size with memory before the bytes arrive.
                bytes.reserve_exact(n.min(limit).min(MAX_PREALLOCATION) as usize);
            }
            let reader = response
                .body_mut()
                .with_config()
                .limit(limit.saturating_add(1))
                .reader();
            let read = reader.take(limit.saturating_add(1)).read_to_end(&mut bytes);
            if bytes.len() as u64 > limit && (200..300).contains(&status) {
                return Err(Failure {
                    error: self.permanent(
                        operation,
                        path,
                        format!(
                            "the server sent more than the {limit} bytes expected (it announced \
                             {}): a damaged or hostile site; reading stopped there",
                            expected.map_or("no length".to_string(), |n| n.to_string())
                        ),
                    ),
                    maybe_applied: true,
                });
            }
            if let Err(e) = read {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    self.breaker
                        .unreachable(&format!("timed out reading an answer: {e}"));
                }
                return Err(Failure {
                    error: self.retryable(
                        operation,
                        path,
                        format!("the connection failed while reading the answer: {e}"),
                    ),
                    maybe_applied: true,
                });
            }
            if let Some(n) = expected {
                if bytes.len() as u64 != n && (200..300).contains(&status) {
                    return Err(Failure {
                        error: self.retryable(
                            operation,
                            path,
                            format!(
                                "the answer was cut short: {} of {n} bytes arrived",
                                bytes.len()
                            ),
                        ),
                        maybe_applied: true,
                    });
                }
            }
        }
        Ok(Reply {
            status,
            headers: std::mem::take(response.headers_mut()),
            body: bytes,
        })
    }

    /// Sends a request. A probe of a down endpoint waits for its answer no longer than for a
    /// connection: a server that answers at all answers a probe quickly.
    ///
    /// Every exchange, its answer's body included, must end within twice the I/O timeout plus
    /// the time its bytes (`bytes`: sent and at most expected back) take at [`MIN_RATE`]: a
    /// server that trickles a byte now and then, restarting the per-read timer, cannot hold a
    /// call for ever.
    fn send<B: ureq::AsSendBody>(
        &self,
        request: Request<B>,
        probe: bool,
        bytes: u64,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let budget = self
            .cfg
            .io_timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(bytes / MIN_RATE));
        let config = self
            .agent
            .configure_request(request)
            .timeout_global(Some(budget));
        let request = if probe {
            config
                .timeout_recv_response(Some(self.cfg.connect_timeout.min(self.cfg.io_timeout)))
                .build()
        } else {
            config.build()
        };
        self.agent.run(request)
    }

    fn transport_failure(&self, operation: &'static str, path: &str, e: ureq::Error) -> Failure {
        let endpoint = &self.cfg.endpoint;
        let (retry, maybe_applied, message) = match &e {
            ureq::Error::HostNotFound => (
                true,
                false,
                format!("cannot resolve the host of {endpoint}: check the endpoint and DNS"),
            ),
            ureq::Error::ConnectionFailed => (
                true,
                false,
                format!("cannot connect to {endpoint}: is the server up and the endpoint right?"),
            ),
            ureq::Error::Timeout(t) => (
                true,
                true,
                format!("timed out ({t}) talking to {endpoint}"),
            ),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => (
                true,
                false,
                format!("connection refused by {endpoint}: is the server up and the endpoint right?"),
            ),
            ureq::Error::Io(io) => (true, true, format!("network error: {io}")),
            ureq::Error::Protocol(p) => (
                true,
                true,
                format!("the server broke the HTTP protocol: {p}"),
            ),
            ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => (
                false,
                false,
                format!("TLS failed with {endpoint}: {e} (check the endpoint's certificate and that the scheme is right)"),
            ),
            _ => (false, false, format!("request failed: {e}")),
        };
        Failure {
            error: if retry {
                self.retryable(operation, path, message)
            } else {
                self.permanent(operation, path, message)
            },
            maybe_applied,
        }
    }

    /// Maps an unexpected status to an error saying what to check.
    fn status_error(&self, operation: &'static str, path: &str, reply: &Reply) -> SiteError {
        let err = xml::error(&reply.body).unwrap_or_default();
        let status = reply.status;
        let what = if err.code.is_empty() {
            format!("HTTP {status}")
        } else if err.message.is_empty() {
            format!("HTTP {status} {}", err.code)
        } else {
            format!("HTTP {status} {}: {}", err.code, err.message)
        };
        let retryable_codes = [
            "InternalError",
            "ServiceUnavailable",
            "SlowDown",
            "RequestTimeout",
            "BadDigest",
            "IncompleteBody",
            "XAmzContentSHA256Mismatch",
            "OperationAborted",
            "ConditionalRequestConflict",
            "RequestTimeoutException",
        ];
        if matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
            || retryable_codes.contains(&err.code.as_str())
        {
            return self.retryable(operation, path, what);
        }
        if status == 404 && err.code != "NoSuchBucket" && err.code != "NoSuchUpload" {
            return SiteError::NotFound {
                site: self.location.clone(),
                path: path.to_string(),
            };
        }
        let bucket = &self.cfg.bucket;
        let endpoint = &self.cfg.endpoint;
        let hint = match err.code.as_str() {
            "NoSuchBucket" => format!(
                "bucket '{bucket}' does not exist at {endpoint}: create it (with Object Lock if \
                 retention is wanted), or check the bucket name, endpoint and region"
            ),
            "NoSuchUpload" => "the multipart upload was aborted meanwhile: run again".into(),
            "AccessDenied" | "AllAccessDisabled" => format!(
                "check that the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE) may {operation} in \
                 bucket '{bucket}' (bucket policy, IAM policy, Object Lock retention)"
            ),
            "InvalidAccessKeyId" => {
                "the access key is unknown to the server: check AWS_ACCESS_KEY_ID and the endpoint"
                    .into()
            }
            "SignatureDoesNotMatch" => "check AWS_SECRET_ACCESS_KEY, the region and the endpoint"
                .into(),
            "ExpiredToken" | "TokenRefreshRequired" | "InvalidToken" => {
                "the session token expired or is wrong: refresh AWS_SESSION_TOKEN".into()
            }
            "RequestTimeTooSkewed" => "this machine's clock is off: fix it (NTP)".into(),
            "AuthorizationHeaderMalformed" | "PermanentRedirect" | "IllegalLocationConstraintException" => format!(
                "the bucket is in another region than '{}': set AWS_REGION or region= in the location",
                self.cfg.region
            ),
            "InvalidBucketName" => format!("'{bucket}' is not a valid bucket name on this server"),
            "KeyTooLongError" => "the key is too long for this server: use a shorter prefix".into(),
            "NotImplemented" => {
                "the server does not implement this S3 feature (see docs/sites.md)".into()
            }
            "InvalidRequest" if self.cfg.object_lock.is_some() => {
                "if the bucket lacks Object Lock, create one with it or drop object-lock from the \
                 site configuration"
                    .into()
            }
            _ if matches!(status, 301 | 307) => format!(
                "the server redirects: the bucket is probably in another region than '{}' (set \
                 AWS_REGION), or use path-style addressing",
                self.cfg.region
            ),
            _ if status == 403 => {
                "check the credentials, the bucket policy and the clock".into()
            }
            _ => String::new(),
        };
        let message = if hint.is_empty() {
            what
        } else {
            format!("{what}; {hint}")
        };
        self.permanent(operation, path, message)
    }

    /// Runs one request attempt up to `1 + retries` times while it fails with
    /// [`SiteError::Retryable`], sleeping with exponential backoff and full jitter in between.
    fn retry<T>(
        &self,
        mut attempt: impl FnMut(u32) -> Result<T, SiteError>,
    ) -> Result<T, SiteError> {
        let mut n = 0;
        loop {
            match attempt(n) {
                // A site that stopped answering is not asked again here: the breaker decides
                // when it is probed.
                Err(SiteError::Retryable { .. })
                    if n < self.cfg.retries && !self.breaker.is_down() =>
                {
                    std::thread::sleep(backoff(n));
                    n += 1;
                }
                other => return other,
            }
        }
    }

    fn head(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
    ) -> Result<Option<Reply>, SiteError> {
        self.retry(|_| {
            let reply = self
                .exchange(Method::HEAD, Some(key), &[], &[], &[], operation, path)
                .map_err(|f| f.error)?;
            match reply.status {
                200 => Ok(Some(reply)),
                404 => Ok(None),
                // HEAD answers carry no error body: say what the status means.
                403 => Err(self.permanent(
                    operation,
                    path,
                    format!(
                        "HTTP 403 on HEAD: check that the credentials may read bucket '{}'",
                        self.cfg.bucket
                    ),
                )),
                _ => Err(self.status_error(operation, path, &reply)),
            }
        })
    }

    /// Whether `key` holds exactly the bytes of `source` (used to settle a write whose answer
    /// was lost). The stored object is compared as it streams, never held whole.
    fn holds_exactly(
        &self,
        path: &str,
        key: &str,
        source: &dyn ObjectSource,
    ) -> Result<bool, SiteError> {
        let Some(head) = self.head("put", path, key)? else {
            return Ok(false);
        };
        let size = head
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok());
        if size != Some(source.len()) {
            return Ok(false);
        }
        let mut compare = Compare {
            source,
            at: 0,
            same: true,
        };
        match self.read_to(path, key, 0, Some(source.len()), "put", &mut compare) {
            Ok(n) => Ok(compare.same && n == source.len()),
            Err(SiteError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ---------------------------------------------------------------------------------------
    // Writes.

    /// PutObject with retries. A 412 after an attempt whose answer was lost is settled by
    /// comparing the stored bytes with ours. `locked` adds the configured retention.
    fn put_single(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        bytes: &[u8],
        locked: bool,
    ) -> Result<Put, SiteError> {
        let md5 = content_md5(bytes);
        let mut maybe_applied = false;
        self.retry(|_| {
            let mut headers: Vec<(&str, String)> = vec![
                ("content-type", "application/octet-stream".into()),
                ("content-md5", md5.clone()),
            ];
            if self.send_if_none_match.load(Ordering::Relaxed) {
                headers.push(("if-none-match", "*".into()));
            }
            if locked {
                headers.extend(lock_headers(self.cfg.object_lock, SystemTime::now()));
            }
            let reply = match self.exchange(
                Method::PUT,
                Some(key),
                &[],
                &headers,
                bytes,
                operation,
                path,
            ) {
                Ok(r) => r,
                Err(f) => {
                    maybe_applied |= f.maybe_applied;
                    return Err(f.error);
                }
            };
            match reply.status {
                200 => Ok(Put::Created),
                412 if maybe_applied && self.holds_exactly(path, key, &bytes)? => Ok(Put::Created),
                412 => Ok(Put::AlreadyExisted),
                s => {
                    maybe_applied |= s >= 500;
                    Err(self.status_error(operation, path, &reply))
                }
            }
        })
    }

    fn create_multipart(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        locked: bool,
    ) -> Result<String, SiteError> {
        self.retry(|_| {
            let mut headers: Vec<(&str, String)> =
                vec![("content-type", "application/octet-stream".into())];
            if locked {
                headers.extend(lock_headers(self.cfg.object_lock, SystemTime::now()));
            }
            let reply = self
                .exchange(
                    Method::POST,
                    Some(key),
                    &[("uploads", None)],
                    &headers,
                    &[],
                    operation,
                    path,
                )
                .map_err(|f| f.error)?;
            if reply.status != 200 {
                return Err(self.status_error(operation, path, &reply));
            }
            xml::upload_id(&reply.body).ok_or_else(|| {
                self.retryable(
                    operation,
                    path,
                    "the server's answer to CreateMultipartUpload has no upload id".into(),
                )
            })
        })
    }

    fn upload_part(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        upload_id: &str,
        number: usize,
        bytes: &[u8],
    ) -> Result<String, SiteError> {
        let md5 = content_md5(bytes);
        let query = [
            ("partNumber", Some(number.to_string())),
            ("uploadId", Some(upload_id.to_string())),
        ];
        self.retry(|_| {
            let headers = [("content-md5", md5.clone())];
            let reply = self
                .exchange(
                    Method::PUT,
                    Some(key),
                    &query,
                    &headers,
                    bytes,
                    operation,
                    path,
                )
                .map_err(|f| f.error)?;
            if reply.status != 200 {
                return Err(self.status_error(operation, path, &reply));
            }
            reply.header("etag").map(str::to_string).ok_or_else(|| {
                self.retryable(
                    operation,
                    path,
                    format!("the server's answer to part {number} has no ETag"),
                )
            })
        })
    }

    fn complete_multipart(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        upload_id: &str,
        etags: &[String],
        conditional: bool,
    ) -> Result<Put, SiteError> {
        let body = xml::complete_multipart(etags);
        let query = [("uploadId", Some(upload_id.to_string()))];
        let mut maybe_applied = false;
        self.retry(|_| {
            let mut headers: Vec<(&str, String)> = vec![("content-type", "application/xml".into())];
            if conditional && self.send_if_none_match.load(Ordering::Relaxed) {
                headers.push(("if-none-match", "*".into()));
            }
            let reply = match self.exchange(
                Method::POST,
                Some(key),
                &query,
                &headers,
                body.as_bytes(),
                operation,
                path,
            ) {
                Ok(r) => r,
                Err(f) => {
                    maybe_applied |= f.maybe_applied;
                    return Err(f.error);
                }
            };
            let err = xml::error(&reply.body);
            match (reply.status, err) {
                // CompleteMultipartUpload may fail after a 200 status line.
                (200, Some(_)) => {
                    maybe_applied = true;
                    Err(self.status_error(
                        operation,
                        path,
                        &Reply {
                            status: 500,
                            ..reply
                        },
                    ))
                }
                (200, None) => Ok(Put::Created),
                (412, _) => Ok(Put::AlreadyExisted),
                (404, Some(e)) if e.code == "NoSuchUpload" && maybe_applied => {
                    // Perhaps an earlier attempt whose answer was lost completed it: the caller
                    // compares what is stored.
                    Ok(Put::AlreadyExisted)
                }
                (s, _) => {
                    maybe_applied |= s >= 500;
                    Err(self.status_error(operation, path, &reply))
                }
            }
        })
    }

    fn abort_multipart(&self, path: &str, key: &str, upload_id: &str) {
        let query = [("uploadId", Some(upload_id.to_string()))];
        let _ = self.retry(|_| {
            let reply = self
                .exchange(
                    Method::DELETE,
                    Some(key),
                    &query,
                    &[],
                    &[],
                    "abort upload",
                    path,
                )
                .map_err(|f| f.error)?;
            match reply.status {
                200..=299 | 404 => Ok(()),
                _ => Err(self.status_error("abort upload", path, &reply)),
            }
        });
    }

    fn put_multipart(
        &self,
        path: &str,
        key: &str,
        source: &dyn ObjectSource,
        probe: ConditionalWriteProbe,
    ) -> Result<Put, SiteError> {
        // Looking first saves sending many megabytes for an object that is already there
        // (resumed uploads of content-addressed packs).
        if let Some(existing) = self.head("put", path, key)? {
            self.ensure_retention(path, key, &existing)?;
            return Ok(Put::AlreadyExisted);
        }
        let len = source.len();
        let part_size = (self.cfg.part_size as u64).max(len.div_ceil(MAX_PARTS as u64));
        let parts: Vec<(u64, u64)> = (0..len.div_ceil(part_size))
            .map(|i| (i * part_size, part_size.min(len - i * part_size)))
            .collect();
        let upload_id = self.create_multipart("put", path, key, true)?;
        let etags = match self.upload_parts(path, key, &upload_id, source, &parts) {
            Ok(e) => e,
            Err(e) => {
                self.abort_multipart(path, key, &upload_id);
                return Err(e);
            }
        };
        if !probe.multipart && self.head("put", path, key)?.is_some() {
            self.abort_multipart(path, key, &upload_id);
            return Ok(Put::AlreadyExisted);
        }
        match self.complete_multipart("put", path, key, &upload_id, &etags, true) {
            Ok(Put::Created) => {
                if self.cfg.object_lock.is_some() {
                    if let Some(head) = self.head("put", path, key)? {
                        self.ensure_retention(path, key, &head)?;
                    }
                }
                Ok(Put::Created)
            }
            Ok(Put::AlreadyExisted) => {
                self.abort_multipart(path, key, &upload_id);
                if self.head("put", path, key)?.is_none() {
                    return Err(self.retryable(
                        "put",
                        path,
                        "the multipart upload vanished before it completed: run again".into(),
                    ));
                }
                // The lost answer of an earlier attempt may have been ours.
                if self.holds_exactly(path, key, source)? {
                    Ok(Put::Created)
                } else {
                    Ok(Put::AlreadyExisted)
                }
            }
            Err(e) => {
                self.abort_multipart(path, key, &upload_id);
                Err(e)
            }
        }
    }

    /// A create-only write of `source`: one PutObject up to the multipart threshold (held in
    /// memory, at most that size), else a multipart upload reading one part per worker.
    fn put_source(&self, path: &str, source: &dyn ObjectSource) -> Result<Put, SiteError> {
        let key = self.key(path, "put")?;
        let probe = self.create_only()?;
        let result = if source.len() > self.cfg.multipart_threshold as u64 {
            self.put_multipart(path, &key, source, probe)
        } else if !probe.put && self.head("put", path, &key)?.is_some() {
            Ok(Put::AlreadyExisted)
        } else {
            let bytes = read_source(source, 0, source.len())
                .map_err(|e| source_error(&self.location, path, e))?;
            self.put_single("put", path, &key, &bytes, true)
        };
        self.settle(path, &key, source, result)
    }

    /// Settles a put across calls: a call that failed with [`SiteError::Retryable`] may have
    /// stored the object all the same (its answer lost), so its path and digest are remembered;
    /// when the caller's retry then finds the name taken, the stored bytes are compared with its
    /// own and the write reported as [`Put::Created`] if they are the same.
    fn settle(
        &self,
        path: &str,
        key: &str,
        source: &dyn ObjectSource,
        result: Result<Put, SiteError>,
    ) -> Result<Put, SiteError> {
        let digest = || source_md5(source).map_err(|e| source_error(&self.location, path, e));
        let pending = || self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(Put::AlreadyExisted) => {
                let remembered = pending().get(path).cloned();
                let ours = match remembered {
                    Some(d) => d == digest()?,
                    None => false,
                };
                if ours && self.holds_exactly(path, key, source)? {
                    pending().remove(path);
                    return Ok(Put::Created);
                }
                Ok(Put::AlreadyExisted)
            }
            Ok(Put::Created) => {
                if !pending().is_empty() {
                    pending().remove(path);
                }
                Ok(Put::Created)
            }
            Err(e @ SiteError::Retryable { .. }) => {
                let digest = digest()?;
                let mut pending = pending();
                if pending.len() >= MAX_PENDING {
                    pending.clear();
                }
                pending.insert(path.to_string(), digest);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// With retention configured, makes sure the object (as `head` shows it) carries it: some
    /// servers (moto) drop the Object Lock headers of CreateMultipartUpload, so a multipart
    /// object without a lock mode gets one through PutObjectRetention.
    fn ensure_retention(&self, path: &str, key: &str, head: &Reply) -> Result<(), SiteError> {
        let Some(lock) = self.cfg.object_lock else {
            return Ok(());
        };
        if head.header("x-amz-object-lock-mode").is_some() {
            return Ok(());
        }
        let until = SystemTime::now() + Duration::from_secs(u64::from(lock.days) * 86_400);
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            lock.mode.as_header(),
            rfc3339(until)
        );
        let md5 = content_md5(body.as_bytes());
        self.retry(|_| {
            let headers = [
                ("content-type", "application/xml".to_string()),
                ("content-md5", md5.clone()),
            ];
            let reply = self
                .exchange(
                    Method::PUT,
                    Some(key),
                    &[("retention", None)],
                    &headers,
                    body.as_bytes(),
                    "set retention",
                    path,
                )
                .map_err(|f| f.error)?;
            match reply.status {
                200..=299 => Ok(()),
                _ => Err(self.status_error("set retention", path, &reply)),
            }
        })
    }

    /// Sends the parts, `parallelism` at a time; stops at the first part that still fails after
    /// its retries.
    fn upload_parts(
        &self,
        path: &str,
        key: &str,
        upload_id: &str,
        source: &dyn ObjectSource,
        parts: &[(u64, u64)],
    ) -> Result<Vec<String>, SiteError> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let first_error: Mutex<Option<SiteError>> = Mutex::new(None);
        let etags: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; parts.len()]);
        let workers = self.cfg.parallelism.min(parts.len()).max(1);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= parts.len() {
                        return;
                    }
                    // Each worker holds one part: memory is `parallelism` parts, whatever
                    // the object's size.
                    let (offset, len) = parts[i];
                    let sent = read_source(source, offset, len)
                        .map_err(|e| source_error(&self.location, path, e))
                        .and_then(|bytes| {
                            self.upload_part("put", path, key, upload_id, i + 1, &bytes)
                        });
                    match sent {
                        Ok(etag) => etags.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(etag),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            return;
                        }
                    }
                });
            }
        });
        if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        etags
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.retryable("put", path, "a part was not sent".into()))
    }

    // ---------------------------------------------------------------------------------------
    // Reads.

    /// One ranged GET of `len` bytes at `start`, optionally pinned to an ETag.
    fn range_once(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        start: u64,
        len: u64,
        if_match: Option<&str>,
    ) -> Result<RangeReply, SiteError> {
        let mut headers = vec![("range", format!("bytes={start}-{}", start + len - 1))];
        if let Some(etag) = if_match {
            headers.push(("if-match", etag.to_string()));
        }
        let reply = self
            .exchange_limited(
                Method::GET,
                Some(key),
                &[],
                &headers,
                &[],
                operation,
                path,
                // A whole answer (200) is a server ignoring the range: it is taken only where it
                // can hold no more than was asked (a range from the start), never read further.
                BodyLimit {
                    partial: len,
                    whole: if start == 0 { len } else { 0 },
                    ranged: true,
                },
            )
            .map_err(|f| f.error)?;
        match reply.status {
            206 => {
                let (first, last, total) = reply
                    .header("content-range")
                    .and_then(parse_content_range)
                    .ok_or_else(|| {
                        self.retryable(
                            operation,
                            path,
                            "a partial answer without a valid Content-Range".into(),
                        )
                    })?;
                let (first, last) = (first.unwrap_or(0), last.unwrap_or(0));
                let total = total.ok_or_else(|| {
                    self.retryable(operation, path, "Content-Range without a size".into())
                })?;
                // A total above what the format allows is a lie, whatever the range.
                self.within_cap(operation, path, total)?;
                // Exactly the range asked, or its part up to the object's end.
                let asked_last = start + len - 1;
                let exact = first == start
                    && (last == asked_last
                        || (last < asked_last && last.checked_add(1) == Some(total)))
                    && reply.body.len() as u64 == last - first + 1;
                if !exact {
                    return Err(self.retryable(
                        operation,
                        path,
                        format!(
                            "asked for bytes {start}-{asked_last}, got {} bytes labelled \
                             {first}-{last}/{total}",
                            reply.body.len()
                        ),
                    ));
                }
                let etag = reply.header("etag").map(str::to_string);
                Ok(RangeReply::Partial {
                    bytes: reply.body,
                    total,
                    etag,
                })
            }
            200 if start == 0 => Ok(RangeReply::Whole { bytes: reply.body }),
            200 => Err(self.ignored_range(operation, path, start, len)),
            416 => Ok(RangeReply::Unsatisfiable {
                total: reply
                    .header("content-range")
                    .and_then(parse_content_range)
                    .and_then(|(_, _, t)| t),
            }),
            412 if if_match.is_some() => Err(self.retryable(
                operation,
                path,
                "the object changed while being read".into(),
            )),
            _ => Err(self.status_error(operation, path, &reply)),
        }
    }

    /// A whole answer (200) to a request for a range that does not start at 0.
    fn ignored_range(
        &self,
        operation: &'static str,
        path: &str,
        start: u64,
        len: u64,
    ) -> SiteError {
        self.permanent(
            operation,
            path,
            format!(
                "asked for bytes {start}-{}, the server ignored the Range and answered with the \
                 whole object: a damaged or hostile site (or a server without ranged reads, \
                 which this client needs for objects above the part size)",
                start.saturating_add(len).saturating_sub(1)
            ),
        )
    }

    fn truncated(
        &self,
        operation: &'static str,
        path: &str,
        offset: u64,
        len: u64,
        size: u64,
    ) -> SiteError {
        self.permanent(
            operation,
            path,
            format!(
                "asked for bytes {offset}..{} but the object has {size}: truncated",
                offset.saturating_add(len)
            ),
        )
    }

    /// Refuses an object larger than the format allows for its kind
    /// ([`embassy_core::layout::max_object_size`]), before anything is allocated for it.
    fn within_cap(&self, operation: &'static str, path: &str, size: u64) -> Result<(), SiteError> {
        let cap = embassy_core::layout::max_object_size(path);
        if size > cap {
            return Err(self.permanent(
                operation,
                path,
                format!(
                    "the server says the object holds {size} bytes, more than the {cap} the \
                     format allows for this kind of object: a damaged or hostile site; nothing \
                     was read"
                ),
            ));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset` (the rest of the object when `len` is `None`): a first
    /// ranged GET, then the remainder in batches of parallel ranged GETs pinned to the first
    /// one's ETag. Memory grows with the bytes that arrive, never with a size the server
    /// announces, and never past what the format allows for the object's kind.
    fn read(
        &self,
        path: &str,
        key: &str,
        offset: u64,
        len: Option<u64>,
        operation: &'static str,
    ) -> Result<Vec<u8>, SiteError> {
        let mut bytes = Vec::new();
        self.read_to(path, key, offset, len, operation, &mut bytes)?;
        Ok(bytes)
    }

    /// Like [`S3Site::read`], writing the bytes to `sink` in order as each batch of pieces
    /// arrives: memory stays at one batch (`parallelism` pieces of the part size), whatever the
    /// object's size. Returns the bytes written.
    fn read_to(
        &self,
        path: &str,
        key: &str,
        offset: u64,
        len: Option<u64>,
        operation: &'static str,
        sink: &mut dyn ObjectSink,
    ) -> Result<u64, SiteError> {
        let mut put = |bytes: &[u8]| {
            sink.write_all(bytes)
                .map_err(|e| sink_error(&self.location, path, e))
                .map(|()| bytes.len() as u64)
        };
        if let Some(l) = len {
            self.within_cap(operation, path, offset.saturating_add(l))?;
        }
        let cap = embassy_core::layout::max_object_size(path);
        let piece = self.cfg.part_size as u64;
        let first_len = len.map_or(piece.min(cap), |l| l.min(piece));
        if first_len == 0 {
            // A zero-length read: only check that the object is there and long enough.
            let head = self
                .head(operation, path, key)?
                .ok_or_else(|| SiteError::NotFound {
                    site: self.location.clone(),
                    path: path.to_string(),
                })?;
            let size = head
                .header("content-length")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            return if offset > size {
                Err(self.truncated(operation, path, offset, 0, size))
            } else {
                Ok(0)
            };
        }
        let first =
            self.retry(|_| self.range_once(operation, path, key, offset, first_len, None))?;
        let (mut first_bytes, total, etag) = match first {
            RangeReply::Whole { bytes } => {
                // The server ignored the range and sent everything (at most the cap).
                let size = bytes.len() as u64;
                let end = len.map_or(size, |l| offset.saturating_add(l));
                if end > size || offset > size {
                    return Err(self.truncated(operation, path, offset, len.unwrap_or(0), size));
                }
                return put(&bytes[offset as usize..end as usize]);
            }
            RangeReply::Unsatisfiable { total } => {
                if offset == 0 && len.is_none() {
                    // An empty object: some servers refuse any range on it.
                    let limit = BodyLimit {
                        partial: 0,
                        whole: cap,
                        ranged: false,
                    };
                    let body = self.retry(|_| {
                        let reply = self
                            .exchange_limited(
                                Method::GET,
                                Some(key),
                                &[],
                                &[],
                                &[],
                                operation,
                                path,
                                limit,
                            )
                            .map_err(|f| f.error)?;
                        match reply.status {
                            200 => Ok(reply.body),
                            _ => Err(self.status_error(operation, path, &reply)),
                        }
                    })?;
                    return put(&body);
                }
                return Err(self.truncated(
                    operation,
                    path,
                    offset,
                    len.unwrap_or(0),
                    total.unwrap_or(0),
                ));
            }
            RangeReply::Partial { bytes, total, etag } => (bytes, total, etag),
        };
        self.within_cap(operation, path, total)?;
        let end = match len {
            Some(l) => {
                let end = offset.saturating_add(l);
                if end > total {
                    return Err(self.truncated(operation, path, offset, l, total));
                }
                end
            }
            None => total,
        };
        let got = first_bytes.len() as u64;
        if offset + got >= end {
            first_bytes.truncate((end - offset) as usize);
            return put(&first_bytes);
        }
        let mut written = put(&first_bytes)?;
        drop(first_bytes);
        let workers = self.cfg.parallelism.max(1) as u64;
        let mut next = offset + got;
        while next < end {
            // One batch: up to `workers` pieces in parallel, appended in order once all came.
            let batch: Vec<(u64, u64)> = (0..workers)
                .map(|i| next + i * piece)
                .take_while(|start| *start < end)
                .map(|start| (start, piece.min(end - start)))
                .collect();
            let fetched: Vec<Result<Vec<u8>, SiteError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = batch
                    .iter()
                    .map(|&(start, len)| {
                        let etag = etag.as_deref();
                        scope.spawn(move || {
                            self.read_piece(operation, path, key, start, len, total, etag)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(self.permanent(operation, path, "a reader thread panicked".into()))
                        })
                    })
                    .collect()
            });
            for bytes in fetched {
                written += put(&bytes?)?;
            }
            next = batch.last().map_or(end, |(start, len)| start + len);
        }
        Ok(written)
    }

    /// One piece of a read, exactly `len` bytes at `start` of an object of `total` bytes (as the
    /// first answer said), pinned to `etag`. Holds no more than `len` bytes, whatever the server
    /// sends.
    #[allow(clippy::too_many_arguments)]
    fn read_piece(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        start: u64,
        len: u64,
        total: u64,
        etag: Option<&str>,
    ) -> Result<Vec<u8>, SiteError> {
        self.retry(
            |_| match self.range_once(operation, path, key, start, len, etag)? {
                RangeReply::Partial {
                    bytes, total: t, ..
                } if t != total => {
                    drop(bytes);
                    Err(self.permanent(
                        operation,
                        path,
                        format!(
                            "the server's answers disagree on the object's size ({total} bytes, \
                             then {t}): a damaged or hostile site"
                        ),
                    ))
                }
                RangeReply::Partial { bytes, .. } if bytes.len() as u64 == len => Ok(bytes),
                RangeReply::Whole { .. } => Err(self.ignored_range(operation, path, start, len)),
                _ => Err(self.retryable(
                    operation,
                    path,
                    "the object's size changed while being read".into(),
                )),
            },
        )
    }
}

impl Site for S3Site {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.put_source(path, &bytes)
    }

    fn put_from(&self, path: &str, source: Arc<dyn ObjectSource>) -> Result<Put, SiteError> {
        self.put_source(path, source.as_ref())
    }

    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        let key = self.key(path, "get")?;
        self.read_to(path, &key, 0, None, "get", sink)
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        let key = self.key(path, "get")?;
        self.read(path, &key, 0, None, "get")
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        let key = self.key(path, "get")?;
        if offset.checked_add(len).is_none() {
            return Err(self.truncated("get", path, offset, len, 0));
        }
        self.read(path, &key, offset, Some(len), "get")
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        if let Some((dir, _)) = prefix.rsplit_once('/') {
            if !crate::valid_object_path(dir) {
                return Err(self.permanent("list", prefix, "invalid object path".into()));
            }
        }
        let full_prefix = format!("{}{prefix}", self.key_prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0u64;
        // Memory held by `out` (paths plus bookkeeping), and pages in a row that added nothing.
        let mut held = 0u64;
        let mut idle = 0u32;
        loop {
            let mut query: Vec<(&str, Option<String>)> = vec![
                ("list-type", Some("2".into())),
                ("encoding-type", Some("url".into())),
            ];
            if !full_prefix.is_empty() {
                query.push(("prefix", Some(full_prefix.clone())));
            }
            if let Some(t) = &token {
                query.push(("continuation-token", Some(t.clone())));
            }
            query.sort();
            let page = self.retry(|_| {
                let reply = self
                    .exchange(Method::GET, None, &query, &[], &[], "list", prefix)
                    .map_err(|f| f.error)?;
                if reply.status != 200 {
                    return Err(self.status_error("list", prefix, &reply));
                }
                xml::list_page(&reply.body)
                    .map_err(|m| self.retryable("list", prefix, format!("unreadable listing: {m}")))
            })?;
            let mut added = false;
            for (key, size) in page.objects {
                // A key longer than S3 allows names nothing this site wrote (nor any path the
                // format names): noise, skipped without being kept.
                if key.len() > 3 * MAX_KEY_LEN {
                    continue;
                }
                let key = if page.url_encoded {
                    config::percent_decode(&key.replace('+', " "))
                } else {
                    key
                };
                if key.len() > MAX_KEY_LEN {
                    continue;
                }
                let Some(rel) = key.strip_prefix(&self.key_prefix) else {
                    continue;
                };
                if rel.starts_with(TMP) || !rel.starts_with(prefix) || rel.ends_with('/') {
                    continue;
                }
                held = held.saturating_add(rel.len() as u64 + LISTED_ENTRY_COST);
                if held > self.cfg.listing_limit || out.len() >= MAX_LISTED {
                    return Err(self.permanent(
                        "list",
                        prefix,
                        format!(
                            "the listing of '{prefix}' passed {} objects or {} MiB, the most one \
                             listing may hold: a damaged or hostile site, or a vault larger than \
                             this site allows (raise listing-limit-mib in the site's location)",
                            out.len(),
                            self.cfg.listing_limit / (1024 * 1024)
                        ),
                    ));
                }
                out.push(ObjectInfo {
                    path: rel.to_string(),
                    size,
                });
                added = true;
            }
            if !page.truncated {
                return Ok(out);
            }
            pages += 1;
            idle = if added { 0 } else { idle + 1 };
            if idle >= MAX_IDLE_PAGES {
                return Err(self.permanent(
                    "list",
                    prefix,
                    format!(
                        "the server sent {idle} listing pages in a row that say more follows but \
                         add no object of '{prefix}': a damaged or hostile site; the listing \
                         was abandoned"
                    ),
                ));
            }
            match page.next_token {
                Some(t) if Some(&t) != token.as_ref() && pages < 10_000_000 => token = Some(t),
                _ => {
                    return Err(self.permanent(
                        "list",
                        prefix,
                        "the server says the listing goes on but gives no new continuation token"
                            .into(),
                    ))
                }
            }
        }
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        let key = self.key(path, "delete")?;
        self.retry(|_| {
            let reply = self
                .exchange(Method::DELETE, Some(&key), &[], &[], &[], "delete", path)
                .map_err(|f| f.error)?;
            match reply.status {
                200..=299 => Ok(()),
                404 if xml::error(&reply.body).is_none_or(|e| e.code != "NoSuchBucket") => Ok(()),
                _ => Err(self.status_error("delete", path, &reply)),
            }
        })
    }
}

/// Exponential backoff with full jitter: a random delay in `[d/2, d]`, `d` = 100 ms doubling per
/// try, at most 5 s.
fn backoff(attempt: u32) -> Duration {
    let d = 100u64.saturating_mul(1 << attempt.min(6)).min(5_000);
    Duration::from_millis(d / 2 + rand::random::<u64>() % (d / 2 + 1))
}

/// Content-MD5 of a source, read through one fixed buffer.
fn source_md5(source: &dyn ObjectSource) -> std::io::Result<String> {
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; COPY_BUFFER.min(source.len() as usize)];
    let mut at = 0u64;
    while at < source.len() {
        let n = (source.len() - at).min(buf.len() as u64) as usize;
        source.read_exact_at(&mut buf[..n], at)?;
        md5.update(&buf[..n]);
        at += n as u64;
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(md5.finalize()))
}

/// A sink comparing what it is given with a source, in order (settling a lost write).
struct Compare<'a> {
    source: &'a dyn ObjectSource,
    at: u64,
    same: bool,
}

impl std::io::Write for Compare<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.same {
            self.same =
                read_source(self.source, self.at, buf.len() as u64).is_ok_and(|ours| ours == buf);
        }
        self.at += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ObjectSink for Compare<'_> {
    fn restart(&mut self) -> std::io::Result<()> {
        self.at = 0;
        self.same = true;
        Ok(())
    }
}

fn content_md5(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(bytes))
}

/// Object Lock headers for an object created at `now`.
fn lock_headers(lock: Option<ObjectLock>, now: SystemTime) -> Vec<(&'static str, String)> {
    let Some(lock) = lock else {
        return Vec::new();
    };
    let until = now + Duration::from_secs(u64::from(lock.days) * 86_400);
    vec![
        ("x-amz-object-lock-mode", lock.mode.as_header().to_string()),
        ("x-amz-object-lock-retain-until-date", rfc3339(until)),
    ]
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) for a time after 1970.
fn rfc3339(t: SystemTime) -> String {
    let nanos = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64);
    embassy_core::time::utc(nanos)
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`), as SigV4
/// wants.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `bytes FIRST-LAST/TOTAL` or `bytes */TOTAL`; `*` totals become `None`.
fn parse_content_range(v: &str) -> Option<(Option<u64>, Option<u64>, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if range.trim() == "*" {
        return Some((None, None, total));
    }
    let (a, b) = range.split_once('-')?;
    Some((
        Some(a.trim().parse().ok()?),
        Some(b.trim().parse().ok()?),
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(endpoint: &str, bucket: &str, path_style: bool) -> S3Site {
        let mut cfg = S3Config::new(
            bucket,
            "",
            endpoint,
            S3Credentials {
                access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
                session_token: None,
            },
        );
        cfg.path_style = path_style;
        S3Site::new(cfg).unwrap()
    }

    /// The "GET Object" example of the AWS Signature Version 4 documentation for S3
    /// ("Signature Calculations for the Authorization Header: Transferring Payload in a Single
    /// Chunk"): our use of the signer (single URI encoding, no path normalization, signed
    /// payload hash) must reproduce its signature.
    #[test]
    fn signs_like_the_aws_documentation_example() {
        let s = site("http://s3.amazonaws.com", "examplebucket", false);
        let url = s.url(Some("test.txt"), &[]);
        assert_eq!(url, "http://examplebucket.s3.amazonaws.com/test.txt");
        let time = UNIX_EPOCH + Duration::from_secs(1_369_353_600); // 2013-05-24T00:00:00Z
        let headers = s
            .signature_headers(
                &Method::GET,
                &url,
                &[("range", "bytes=0-9".into())],
                &[],
                time,
            )
            .unwrap();
        let auth = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.as_str())
            .unwrap();
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn urls_encode_keys_and_queries() {
        let s = site("http://127.0.0.1:9000", "bucket", true);
        assert_eq!(
            s.url(Some("a b/c+d/é"), &[("uploadId", Some("x/y=".into()))]),
            "http://127.0.0.1:9000/bucket/a%20b/c%2Bd/%C3%A9?uploadId=x%2Fy%3D"
        );
        assert_eq!(
            s.url(None, &[("object-lock", None)]),
            "http://127.0.0.1:9000/bucket?object-lock"
        );
    }

    #[test]
    fn helpers() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_210_096)),
            "2024-02-29T12:34:56Z"
        );
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some((Some(0), Some(9), Some(100)))
        );
        assert_eq!(
            parse_content_range("bytes */5"),
            Some((None, None, Some(5)))
        );
        assert_eq!(
            parse_content_range("bytes 1-2/*"),
            Some((Some(1), Some(2), None))
        );
        assert_eq!(parse_content_range("bytes x-2/3"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        for n in 0..10 {
            let d = backoff(n);
            assert!(d >= Duration::from_millis(50) && d <= Duration::from_secs(5));
        }
        let lock = lock_headers(
            Some(ObjectLock {
                mode: LockMode::Governance,
                days: 1,
            }),
            UNIX_EPOCH,
        );
        assert_eq!(
            lock,
            vec![
                ("x-amz-object-lock-mode", "GOVERNANCE".to_string()),
                (
                    "x-amz-object-lock-retain-until-date",
                    "1970-01-02T00:00:00Z".to_string()
                )
            ]
        );
    }

    #[test]
    fn rejects_bad_paths_without_a_request() {
        // Nothing listens on port 9: a request would fail differently.
        let s = site("http://127.0.0.1:9", "bucket", true);
        for bad in ["", "/abs", "a//b", "a/./b", "../x", "a/..", "nul\0byte"] {
            match s.get(bad) {
                Err(SiteError::Permanent { message, .. }) => {
                    assert!(message.contains("invalid object path"), "{bad}: {message}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = "x".repeat(MAX_KEY_LEN + 1);
        assert!(matches!(s.get(&long), Err(SiteError::Permanent { .. })));
    }
}
