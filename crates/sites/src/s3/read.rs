//! Reads: ranged GETs, truncation and range checks, streaming reads.

use super::*;

impl S3Site {
    // ---------------------------------------------------------------------------------------
    // Reads.

    /// One ranged GET of `len` bytes at `start`, optionally pinned to an ETag.
    pub(super) fn range_once(
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
                Payload::Bytes(&[]),
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
    pub(super) fn ignored_range(
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

    pub(super) fn truncated(
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
    /// ([`embassy_core::format::layout::max_object_size`]), before anything is allocated for it.
    pub(super) fn within_cap(
        &self,
        operation: &'static str,
        path: &str,
        size: u64,
    ) -> Result<(), SiteError> {
        let cap = embassy_core::format::layout::max_object_size(path);
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
    pub(super) fn read(
        &self,
        path: &str,
        key: &str,
        offset: u64,
        len: Option<u64>,
        operation: &'static str,
    ) -> Result<Vec<u8>, SiteError> {
        // The first piece's buffer becomes the answer: an object read in one piece is never
        // copied, a larger one grows from it as its pieces arrive.
        let mut bytes = Vec::new();
        self.read_pieces(path, key, offset, len, operation, &mut |piece: Vec<u8>| {
            let n = piece.len() as u64;
            if bytes.is_empty() {
                bytes = piece;
            } else {
                bytes.extend_from_slice(&piece);
            }
            Ok(n)
        })?;
        Ok(bytes)
    }

    /// Like [`S3Site::read`], writing the bytes to `sink` in order as each batch of pieces
    /// arrives: memory stays at one batch (`parallelism` pieces of the part size), whatever the
    /// object's size. Returns the bytes written.
    pub(super) fn read_to(
        &self,
        path: &str,
        key: &str,
        offset: u64,
        len: Option<u64>,
        operation: &'static str,
        sink: &mut dyn ObjectSink,
    ) -> Result<u64, SiteError> {
        self.read_pieces(path, key, offset, len, operation, &mut |bytes: Vec<u8>| {
            sink.write_all(&bytes)
                .map_err(|e| sink_error(&self.location, path, e))
                .map(|()| bytes.len() as u64)
        })
    }

    /// The reads of [`S3Site::read`] and [`S3Site::read_to`]: hands each piece to `put` in
    /// order, as its batch arrives. Returns the bytes handed over.
    fn read_pieces(
        &self,
        path: &str,
        key: &str,
        offset: u64,
        len: Option<u64>,
        operation: &'static str,
        put: &mut dyn FnMut(Vec<u8>) -> Result<u64, SiteError>,
    ) -> Result<u64, SiteError> {
        if let Some(l) = len {
            self.within_cap(operation, path, offset.saturating_add(l))?;
        }
        let cap = embassy_core::format::layout::max_object_size(path);
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
                let mut bytes = bytes;
                bytes.truncate(end as usize);
                bytes.drain(..offset as usize);
                return put(bytes);
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
                                Payload::Bytes(&[]),
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
                    return put(body);
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
            return put(first_bytes);
        }
        let mut written = put(first_bytes)?;
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
                written += put(bytes?)?;
            }
            next = batch.last().map_or(end, |(start, len)| start + len);
        }
        Ok(written)
    }

    /// One piece of a read, exactly `len` bytes at `start` of an object of `total` bytes (as the
    /// first answer said), pinned to `etag`. Holds no more than `len` bytes, whatever the server
    /// sends.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_piece(
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
