//! The one small storage trait every site implements (local folder, S3, ...).
//!
//! Sites are untrusted: they store opaque bytes under paths. Writes are create-only and durable
//! when they return, so a path, once written, never changes (invariant 3).

use std::fmt;

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

/// Why a site operation failed. Callers retry only [`SiteError::Retryable`].
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

/// Runs a site operation, retrying [`SiteError::Retryable`] failures with exponential backoff and
/// jitter (5 tries over about 6 seconds); other failures return at once.
pub fn with_retry<T>(mut op: impl FnMut() -> Result<T, SiteError>) -> Result<T, SiteError> {
    let mut delay_ms = 200u64;
    for _ in 0..4 {
        match op() {
            Err(SiteError::Retryable { .. }) => {
                let jitter = rand::random::<u64>() % (delay_ms / 2 + 1);
                std::thread::sleep(std::time::Duration::from_millis(delay_ms + jitter));
                delay_ms *= 2;
            }
            other => return other,
        }
    }
    op()
}

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
