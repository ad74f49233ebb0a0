//! Writes: single and multipart uploads, create-only settling, retention.
//!
//! What is sent is never copied whole: bytes the caller holds in memory go out as they are
//! ([`ObjectSource::as_slice`]), other sources are read through one small buffer as they are sent
//! (after one pass for their digests).

use md5::Digest as _;
use sha2::Sha256;

use super::*;

/// A region of a source to send in one request, with its digests.
pub(super) struct Part<'a> {
    source: &'a dyn ObjectSource,
    offset: u64,
    len: u64,
    /// Content-MD5 (base64).
    md5: String,
    /// Hex SHA-256 of a region not in memory (the signer hashes bytes in memory itself).
    sha256: String,
}

impl<'a> Part<'a> {
    /// `len` bytes of `source` at `offset`; a source not in memory is read once for its digests.
    pub(super) fn new(
        source: &'a dyn ObjectSource,
        offset: u64,
        len: u64,
    ) -> std::io::Result<Part<'a>> {
        if let Some(bytes) = in_memory(source, offset, len) {
            return Ok(Part {
                source,
                offset,
                len,
                md5: content_md5(bytes),
                sha256: String::new(),
            });
        }
        let mut md5 = Md5::new();
        let mut sha256 = Sha256::new();
        let mut buf = vec![0u8; COPY_BUFFER.min(len as usize)];
        let mut at = offset;
        let end = offset.saturating_add(len);
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            source.read_exact_at(&mut buf[..n], at)?;
            md5.update(&buf[..n]);
            sha256.update(&buf[..n]);
            at += n as u64;
        }
        Ok(Part {
            source,
            offset,
            len,
            md5: base64::engine::general_purpose::STANDARD.encode(md5.finalize()),
            sha256: sha256
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }

    /// What a request carries for this part.
    pub(super) fn payload(&self) -> Payload<'_> {
        match in_memory(self.source, self.offset, self.len) {
            Some(bytes) => Payload::Bytes(bytes),
            None => Payload::Region {
                source: self.source,
                offset: self.offset,
                len: self.len,
                md5: &self.md5,
                sha256: &self.sha256,
            },
        }
    }
}

/// The region's bytes, when the source holds them in memory.
fn in_memory(source: &dyn ObjectSource, offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = usize::try_from(offset.checked_add(len)?).ok()?;
    source.as_slice()?.get(start..end)
}

impl S3Site {
    // ---------------------------------------------------------------------------------------
    // Writes.

    /// PutObject of the whole of `source` with retries. A 412 after an attempt whose answer was
    /// lost is settled by comparing the stored bytes with ours. `locked` adds the configured
    /// retention.
    pub(super) fn put_single(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        source: &dyn ObjectSource,
        locked: bool,
    ) -> Result<Put, SiteError> {
        let part = Part::new(source, 0, source.len())
            .map_err(|e| source_error(&self.location, path, e))?;
        let mut maybe_applied = false;
        self.retry(|_| {
            let mut headers: Vec<(&str, String)> = vec![
                ("content-type", "application/octet-stream".into()),
                ("content-md5", part.md5.clone()),
            ];
            if self.send_if_none_match.load(Ordering::Relaxed) {
                headers.push(("if-none-match", "*".into()));
            }
            if locked {
                headers.extend(lock_headers(self.cfg.object_lock, SystemTime::now()));
            }
            let reply = match self.exchange_limited(
                Method::PUT,
                Some(key),
                &[],
                &headers,
                part.payload(),
                operation,
                path,
                BodyLimit::ANSWER,
            ) {
                Ok(r) => r,
                Err(f) => {
                    maybe_applied |= f.maybe_applied;
                    return Err(f.error);
                }
            };
            match reply.status {
                200 => Ok(Put::Created),
                412 if maybe_applied && self.holds_exactly(path, key, source)? => Ok(Put::Created),
                412 => Ok(Put::AlreadyExisted),
                s => {
                    maybe_applied |= s >= 500;
                    Err(self.status_error(operation, path, &reply))
                }
            }
        })
    }

    pub(super) fn create_multipart(
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

    #[allow(clippy::too_many_arguments)]
    pub(super) fn upload_part(
        &self,
        operation: &'static str,
        path: &str,
        key: &str,
        upload_id: &str,
        number: usize,
        source: &dyn ObjectSource,
        (offset, len): (u64, u64),
    ) -> Result<String, SiteError> {
        let part =
            Part::new(source, offset, len).map_err(|e| source_error(&self.location, path, e))?;
        let query = [
            ("partNumber", Some(number.to_string())),
            ("uploadId", Some(upload_id.to_string())),
        ];
        self.retry(|_| {
            let headers = [("content-md5", part.md5.clone())];
            let reply = self
                .exchange_limited(
                    Method::PUT,
                    Some(key),
                    &query,
                    &headers,
                    part.payload(),
                    operation,
                    path,
                    BodyLimit::ANSWER,
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

    pub(super) fn complete_multipart(
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

    pub(super) fn abort_multipart(&self, path: &str, key: &str, upload_id: &str) {
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

    pub(super) fn put_multipart(
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

    /// A create-only write of `source`: one PutObject up to the multipart threshold, else a
    /// multipart upload, one part per worker; neither copies the source whole.
    pub(super) fn put_source(
        &self,
        path: &str,
        source: &dyn ObjectSource,
    ) -> Result<Put, SiteError> {
        let key = self.key(path, "put")?;
        self.check_vault_still_here(path)?;
        let probe = self.create_only()?;
        let result = if source.len() > self.cfg.multipart_threshold as u64 {
            self.put_multipart(path, &key, source, probe)
        } else if !probe.put && self.head("put", path, &key)?.is_some() {
            Ok(Put::AlreadyExisted)
        } else {
            self.put_single("put", path, &key, source, true)
        };
        let settled = self.settle(path, &key, source, result)?;
        self.vault.saw(path, true);
        Ok(settled)
    }

    /// Settles a put across calls: a call that failed with [`SiteError::Retryable`] may have
    /// stored the object all the same (its answer lost), so its path and digest are remembered;
    /// when the caller's retry then finds the name taken, the stored bytes are compared with its
    /// own and the write reported as [`Put::Created`] if they are the same.
    pub(super) fn settle(
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
    pub(super) fn ensure_retention(
        &self,
        path: &str,
        key: &str,
        head: &Reply,
    ) -> Result<(), SiteError> {
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
    pub(super) fn upload_parts(
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
                    // A part goes out from the caller's bytes, or through one small buffer:
                    // memory stays flat, whatever the part size and the object's size.
                    let sent =
                        self.upload_part("put", path, key, upload_id, i + 1, source, parts[i]);
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
}
