//! The one small storage trait every site implements (local folder, S3, ...).
//!
//! Sites are untrusted: they store opaque bytes under paths. Writes are create-only and durable
//! when they return, so a path, once written, never changes (invariant 3).

use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;

/// An object listed on a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Path relative to the vault root, with `/` separators.
    pub path: String,
    /// Stored size in bytes.
    pub size: u64,
}

/// Outcome of a create-only write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The object was created and is durable.
    Created,
    /// An object already existed at that path; it was left untouched.
    AlreadyExisted,
}

/// Why a site operation failed. Only [`SiteError::Retryable`] is ever retried, by the one retry
/// layer every opened site is wrapped in (embassy-sites' `RetryingSite`).
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// Nothing is stored at this path.
    #[error("site {site}: no object at {path}")]
    NotFound {
        /// The site.
        site: String,
        /// The path asked for.
        path: String,
    },
    /// A transient failure (timeout, connection reset, server busy): the same call may succeed.
    #[error("site {site}: {operation} {path} failed, may succeed if retried: {message}")]
    Retryable {
        /// The site.
        site: String,
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: String,
        /// The underlying error.
        message: String,
    },
    /// A failure that retrying will not fix (permissions, full disk, bad credentials).
    #[error("site {site}: {operation} {path} failed: {message}")]
    Permanent {
        /// The site.
        site: String,
        /// What was being done.
        operation: &'static str,
        /// The path.
        path: String,
        /// The underlying error and what to do about it.
        message: String,
    },
}

/// Why an object a listing names is judged like a damaged copy when reading it finds nothing
/// (a listing that names what the site does not hold, or an object lost between listing and
/// reading): noise when nothing accepted needs it, damage when something does (format.md §9).
pub const LISTED_NOT_HELD: &str =
    "listed, but no site produces it (a listing names an object that is not stored)";

/// A storage location holding one vault. Implementations must be safe to call from many threads.
pub trait Site: Send + Sync + fmt::Debug {
    /// Where this site is, for messages (`/srv/vault`, `s3://bucket/prefix`).
    fn location(&self) -> &str;

    /// Stores `bytes` at `path` unless something is already there. Durable when it returns.
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError>;

    /// Reads a whole object.
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError>;

    /// Streams a whole object into `sink`, in order, and returns how many bytes it wrote; memory
    /// stays bounded by the site's read buffers, whatever the object's size. On an error the
    /// sink may hold part of the object: [`ObjectSink::restart`] it before reading again. The
    /// default reads the whole object with [`Site::get`]; sites that can stream override it.
    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        let bytes = self.get(path)?;
        sink.write_all(&bytes)
            .map_err(|e| sink_error(self.location(), path, e))?;
        Ok(bytes.len() as u64)
    }

    /// Stores the bytes of `source` at `path` unless something is already there, like
    /// [`Site::put`], reading them by position (so parts can go in parallel and be sent again on
    /// a retry) rather than holding them whole. The default reads the source into memory and
    /// calls [`Site::put`]; sites that can stream override it.
    fn put_from(&self, path: &str, source: Arc<dyn ObjectSource>) -> Result<Put, SiteError> {
        let bytes = read_source(source.as_ref(), 0, source.len())
            .map_err(|e| source_error(self.location(), path, e))?;
        self.put(path, &bytes)
    }

    /// Reads `len` bytes at `offset` of an object; fewer bytes than asked is an error.
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError>;

    /// Lists every object whose path starts with `prefix`, in no particular order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError>;

    /// Removes an object; removing a missing object is not an error.
    fn delete(&self, path: &str) -> Result<(), SiteError>;

    /// Sites that missed writes or could not be reached, with why (for several sites at once):
    /// they need `embassy sync` to catch up. None for a single site.
    fn lagging(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The member sites of a site that stands for several (each on its own), so that garbage
    /// collection can judge and delete at each site by what that site itself holds. Empty for
    /// a single site.
    fn members(&self) -> Vec<std::sync::Arc<dyn Site>> {
        Vec::new()
    }
}

/// Where a streamed read ([`Site::get_to`]) writes an object's bytes, in order.
pub trait ObjectSink: Write + Send {
    /// Forgets everything written so far, so the object can be read again from its start (after
    /// a failed attempt, or from another site's copy).
    fn restart(&mut self) -> io::Result<()>;
}

impl ObjectSink for Vec<u8> {
    fn restart(&mut self) -> io::Result<()> {
        self.clear();
        Ok(())
    }
}

/// The bytes of an object to write ([`Site::put_from`]), read by position so that a site can
/// send parts in parallel and send them again on a retry.
pub trait ObjectSource: Send + Sync + fmt::Debug {
    /// The object's size in bytes.
    fn len(&self) -> u64;

    /// Whether the object is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` with the bytes at `offset`; fewer bytes than `buf` holds is an error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The whole object, when it is already in memory: a site can then send it (or parts of
    /// it) as it is, without copying. `None` (the default) for sources read from elsewhere.
    fn as_slice(&self) -> Option<&[u8]> {
        None
    }
}

impl ObjectSource for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..at.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }

    fn as_slice(&self) -> Option<&[u8]> {
        Some(*self)
    }
}

impl ObjectSource for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn as_slice(&self) -> Option<&[u8]> {
        Some(Vec::as_slice(self))
    }
}

/// `len` bytes of `source` at `offset`, in memory (for sites that send an object, or a part of
/// it, in one request).
pub fn read_source(source: &dyn ObjectSource, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
    let mut bytes = vec![0u8; len];
    source.read_exact_at(&mut bytes, offset)?;
    Ok(bytes)
}

/// The error of a streamed read whose bytes could not be written where they were going (a full
/// spool folder, an object past its size limit).
pub fn sink_error(site: &str, path: &str, e: io::Error) -> SiteError {
    SiteError::Permanent {
        site: site.to_string(),
        operation: "get",
        path: path.to_string(),
        message: format!(
            "cannot keep the bytes read: {e} (the local spool folder, $TMPDIR, may be full: free \
             space there or point TMPDIR at a larger disk)"
        ),
    }
}

/// The error of a streamed write whose bytes could not be read from their source.
pub fn source_error(site: &str, path: &str, e: io::Error) -> SiteError {
    SiteError::Permanent {
        site: site.to_string(),
        operation: "put",
        path: path.to_string(),
        message: format!("cannot read the bytes to write from the local spool: {e}"),
    }
}

/// Copies everything `from` yields into `sink` through one fixed buffer, refusing more than
/// `limit` bytes (an error of kind `InvalidData`); returns the bytes copied.
pub fn copy_bounded(from: &mut dyn io::Read, sink: &mut dyn Write, limit: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; COPY_BUFFER];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        total += n as u64;
        if total > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than the {limit} bytes the format allows for this object"),
            ));
        }
        sink.write_all(&buf[..n])?;
    }
}

/// The buffer a streamed copy goes through: large enough for few system calls, small enough to
/// hold one per thread.
pub const COPY_BUFFER: usize = 1024 * 1024;

/// Whether `path` is a valid object path: relative, `/`-separated, no empty, `.` or `..`
/// component, no NUL byte. Every site refuses other paths (a permanent error), so a hostile
/// name can never reach outside the vault.
pub fn valid_object_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}
