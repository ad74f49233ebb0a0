//! Capability checks for `init` (conditional writes, Object Lock, bucket creation) and the create-only mode they decide.

use super::*;

impl S3Site {
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
            let first = match self.put_single(op, &path, &key, &(b"first" as &[u8]), false) {
                // The header itself is refused (501 NotImplemented): stop sending it; the
                // server cannot enforce create-only writes.
                Err(SiteError::Permanent { message, .. })
                    if message.contains("NotImplemented") || message.starts_with("HTTP 501") =>
                {
                    self.send_if_none_match.store(false, Ordering::Relaxed);
                    self.put_single(op, &path, &key, &(b"first" as &[u8]), false)?;
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
            let put = self.put_single(op, &path, &key, &(b"second" as &[u8]), false)?
                == Put::AlreadyExisted;
            let upload_id = self.create_multipart(op, &path, &key, false)?;
            let etag =
                self.upload_part(op, &path, &key, &upload_id, 1, &(b"third" as &[u8]), (0, 5))?;
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
    pub(super) fn create_only(&self) -> Result<ConditionalWriteProbe, SiteError> {
        if let Some(p) = *self.conditional.lock().unwrap_or_else(|p| p.into_inner()) {
            return self.require(p);
        }
        let probe = self.probe_conditional_writes()?;
        self.require(probe)
    }

    pub(super) fn require(
        &self,
        probe: ConditionalWriteProbe,
    ) -> Result<ConditionalWriteProbe, SiteError> {
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
}
