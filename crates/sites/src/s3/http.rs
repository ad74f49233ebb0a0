//! Requests: URL building, signing, sending with limits, transport and status errors, resends
//! after a connection reset, HEAD.

use std::cell::Cell;

use super::*;

thread_local! {
    /// Whether this thread's last exchange failed with a connection reset or closed before any
    /// answer (the one failure [`S3Site::retry`] resends).
    static LAST_WAS_RESET: Cell<bool> = const { Cell::new(false) };
}

/// Whether a transport error is a connection reset or closed before the answer began.
fn is_reset(e: &ureq::Error) -> bool {
    matches!(e, ureq::Error::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::UnexpectedEof
    ))
}

/// What a request sends: bytes in memory, or a region of a source read as it goes out.
#[derive(Clone, Copy)]
pub(super) enum Payload<'a> {
    /// Bytes already in memory, sent as they are.
    Bytes(&'a [u8]),
    /// `len` bytes of `source` at `offset`, read through one small buffer as they are sent;
    /// `md5` is their Content-MD5 (base64), checked again as they are read, and `sha256` their
    /// hex SHA-256 (signed over plain HTTP).
    Region {
        source: &'a dyn ObjectSource,
        offset: u64,
        len: u64,
        md5: &'a str,
        sha256: &'a str,
    },
}

impl Payload<'_> {
    /// The bytes sent.
    pub(super) fn len(&self) -> u64 {
        match self {
            Payload::Bytes(b) => <[u8]>::len(b) as u64,
            Payload::Region { len, .. } => *len,
        }
    }
}

/// Reads a region of a source for a request's body, a buffer at a time; a read error is kept
/// (the request then fails) so that it is reported as the source's, not the network's.
///
/// The bytes are hashed again as they are read, and the last buffer is held back unless they
/// still match the digest sent ahead of them: a source that changed after its first pass never
/// reaches the server complete, so nothing is stored even by a server that does not check
/// `Content-MD5` (moto does not).
struct RegionReader<'a> {
    source: &'a dyn ObjectSource,
    at: u64,
    end: u64,
    md5: &'a str,
    hasher: Md5,
    buf: Vec<u8>,
    filled: std::ops::Range<usize>,
    failed: Option<std::io::Error>,
}

impl RegionReader<'_> {
    fn fail(&mut self, e: std::io::Error) -> std::io::Error {
        let kind = e.kind();
        self.failed = Some(e);
        std::io::Error::new(kind, "cannot read the bytes to send")
    }
}

impl Read for RegionReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.filled.is_empty() {
            if self.at >= self.end {
                return Ok(0);
            }
            let n = (self.end - self.at).min(COPY_BUFFER as u64) as usize;
            self.buf.resize(n, 0);
            if let Err(e) = self.source.read_exact_at(&mut self.buf[..n], self.at) {
                return Err(self.fail(e));
            }
            self.hasher.update(&self.buf[..n]);
            self.at += n as u64;
            if self.at >= self.end {
                let md5 = std::mem::take(&mut self.hasher).finalize();
                if base64::engine::general_purpose::STANDARD.encode(md5) != self.md5 {
                    return Err(self.fail(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the bytes changed while they were sent (they no longer match the \
                         digest taken before); nothing was stored",
                    )));
                }
            }
            self.filled = 0..n;
        }
        let n = self.filled.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.filled.start..self.filled.start + n]);
        self.filled.start += n;
        Ok(n)
    }
}

impl S3Site {
    // ---------------------------------------------------------------------------------------
    // Requests.

    pub(super) fn permanent(
        &self,
        operation: &'static str,
        path: &str,
        message: String,
    ) -> SiteError {
        SiteError::Permanent {
            site: self.location.clone(),
            operation,
            path: path.to_string(),
            message,
        }
    }

    pub(super) fn retryable(
        &self,
        operation: &'static str,
        path: &str,
        message: String,
    ) -> SiteError {
        SiteError::Retryable {
            site: self.location.clone(),
            operation,
            path: path.to_string(),
            message,
        }
    }

    /// Validates a vault path and turns it into a key.
    pub(super) fn key(&self, path: &str, operation: &'static str) -> Result<String, SiteError> {
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

    pub(super) fn url(&self, key: Option<&str>, query: &[(&str, Option<String>)]) -> String {
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
    pub(super) fn signature_headers(
        &self,
        method: &Method,
        url: &str,
        headers: &[(&str, String)],
        body: &Payload<'_>,
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
        // A streamed payload is signed by the hash computed in a first pass over its source.
        let body = match body {
            _ if self.https => SignableBody::UnsignedPayload,
            Payload::Bytes(bytes) => SignableBody::Bytes(bytes),
            Payload::Region { sha256, .. } => SignableBody::Precomputed(sha256.to_string()),
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
    pub(super) fn exchange(
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
            Payload::Bytes(body),
            operation,
            path,
            BodyLimit::ANSWER,
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn exchange_limited(
        &self,
        method: Method,
        key: Option<&str>,
        query: &[(&str, Option<String>)],
        headers: &[(&str, String)],
        body: Payload<'_>,
        operation: &'static str,
        path: &str,
        body_limit: BodyLimit,
    ) -> Result<Reply, Failure> {
        LAST_WAS_RESET.with(|r| r.set(false));
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
            .signature_headers(&method, &url, headers, &body, SystemTime::now())
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
        let sends_body = body.len() > 0 || method == Method::PUT || method == Method::POST;
        let bytes = body.len().saturating_add(body_limit.partial);
        // A region of a source goes out as it is read, through one small buffer; a failure to
        // read it is kept apart from the transport's errors.
        let mut region = match body {
            Payload::Region {
                source,
                offset,
                len,
                md5,
                ..
            } => Some(RegionReader {
                source,
                at: offset,
                end: offset + len,
                md5,
                hasher: Md5::new(),
                buf: Vec::new(),
                filled: 0..0,
                failed: None,
            }),
            Payload::Bytes(_) => None,
        };
        let result = if let Some(reader) = region.as_mut() {
            builder
                .header("content-length", body.len().to_string())
                .body(ureq::SendBody::from_reader(reader))
                .map_err(ureq::Error::from)
                .and_then(|r| self.send(r, probe, bytes))
        } else if let (true, Payload::Bytes(body)) = (sends_body, body) {
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
        if let Some(e) = region.and_then(|r| r.failed) {
            // Says nothing about the server.
            if probe {
                self.breaker.probe_inconclusive();
            }
            return Err(Failure {
                error: source_error(&self.location, path, e),
                maybe_applied: false,
            });
        }
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
                LAST_WAS_RESET.with(|r| r.set(is_reset(&e)));
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
    pub(super) fn send<B: ureq::AsSendBody>(
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

    pub(super) fn transport_failure(
        &self,
        operation: &'static str,
        path: &str,
        e: ureq::Error,
    ) -> Failure {
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
    pub(super) fn status_error(
        &self,
        operation: &'static str,
        path: &str,
        reply: &Reply,
    ) -> SiteError {
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

    /// Runs one request attempt, and again (up to `retries` times, after a short jittered wait)
    /// only while its request's connection was reset or closed before any answer: a stale
    /// kept-alive connection says nothing about the server. Every other failure returns at
    /// once; the retry layer over every site (`RetryingSite`) decides about those, so the
    /// attempts of one call stay bounded there.
    pub(super) fn retry<T>(
        &self,
        mut attempt: impl FnMut(u32) -> Result<T, SiteError>,
    ) -> Result<T, SiteError> {
        let mut n = 0;
        loop {
            match attempt(n) {
                // A site that stopped answering is not asked again here: the breaker decides
                // when it is probed.
                Err(SiteError::Retryable { .. })
                    if n < self.cfg.retries.min(MAX_RESENDS)
                        && LAST_WAS_RESET.with(Cell::get)
                        && !self.breaker.is_down() =>
                {
                    std::thread::sleep(backoff(n));
                    n += 1;
                }
                other => return other,
            }
        }
    }

    pub(super) fn head(
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
    pub(super) fn holds_exactly(
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
}
