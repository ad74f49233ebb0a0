//! Spools: an object held in an unnamed temporary file instead of memory while it is copied or
//! checked, hashed with its object-id hash as it arrives. Sync, repair, deep verification and
//! the reader's whole-pack fallback stream objects through one, so memory per object is a fixed
//! buffer whatever a site sends (up to the cap of the object's kind, on local disk).
//!
//! The file is created with `O_TMPFILE` (no name, mode 0600) in `$TMPDIR`, so no other user can
//! open or redirect it, and it vanishes when the spool is dropped, even after a crash. Point
//! `TMPDIR` at a disk with room for one pack per core; a `tmpfs` `/tmp` would hold them in memory.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::layout;
use crate::id::ObjectId;
use crate::site::{ObjectSink, ObjectSource, Site, SiteError};

/// An object's bytes on local disk, with the BLAKE3 hash of everything written so far.
#[derive(Debug)]
pub struct Spool {
    file: File,
    hasher: blake3::Hasher,
    len: u64,
    limit: u64,
}

impl Spool {
    /// An empty spool that refuses more than `limit` bytes.
    pub fn new(limit: u64) -> Result<Self> {
        let file = tempfile::tempfile()
            .map_err(|e| Error::io("cannot create a spool file in $TMPDIR", e))?;
        // O_TMPFILE takes its mode from the umask: make it private whatever the umask says.
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(|e| Error::io("cannot make the spool file private (mode 0600)", e))?;
        }
        Ok(Self {
            file,
            hasher: blake3::Hasher::new(),
            len: 0,
            limit,
        })
    }

    /// An empty spool for the object at `path`, refusing more than its kind allows.
    pub fn for_object(path: &str) -> Result<Self> {
        Self::new(layout::max_object_size(path))
    }

    /// The id of the bytes written (the object-id hash, as [`ObjectId::of`] computes it).
    pub fn id(&self) -> ObjectId {
        ObjectId(*self.hasher.finalize().as_bytes())
    }

    /// How many bytes were written.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `len` bytes at `offset`; an error if the spool holds fewer.
    pub fn read_at(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        crate::site::read_source(self, offset, len)
    }

    /// Reads `path` from `site` into a fresh spool (the site's retry layer restarts the spool
    /// before trying again).
    pub fn read_from(site: &dyn Site, path: &str) -> std::result::Result<Spool, FetchError> {
        let mut spool = Spool::for_object(path).map_err(FetchError::Local)?;
        site.get_to(path, &mut spool).map_err(FetchError::Site)?;
        Ok(spool)
    }

    /// Like [`Spool::read_from`], and checks that the bytes hash to `id`. `Ok(Err(spool))`
    /// holds a copy that does not: the caller judges it.
    pub fn fetch(
        site: &dyn Site,
        path: &str,
        id: &ObjectId,
    ) -> std::result::Result<std::result::Result<Spool, Spool>, FetchError> {
        let spool = Spool::read_from(site, path)?;
        Ok(if spool.id() == *id {
            Ok(spool)
        } else {
            Err(spool)
        })
    }

    /// The spool as the source of a write ([`Site::put_from`]).
    pub fn into_source(self) -> Arc<dyn ObjectSource> {
        Arc::new(self)
    }
}

/// How many leading bytes a [`HashSink`] keeps (magic numbers, a pack's key id).
pub const HEAD_LEN: usize = 64;

/// A sink that keeps nothing but the hash, the size and the first [`HEAD_LEN`] bytes of what it
/// is given: checks an object against its name without holding it.
#[derive(Debug)]
pub struct HashSink {
    hasher: blake3::Hasher,
    len: u64,
    head: Vec<u8>,
}

impl HashSink {
    /// An empty hasher.
    pub fn new() -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            len: 0,
            head: Vec::new(),
        }
    }

    /// The id of the bytes given (as [`ObjectId::of`] computes it).
    pub fn id(&self) -> ObjectId {
        ObjectId(*self.hasher.finalize().as_bytes())
    }

    /// How many bytes were given.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was given.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first [`HEAD_LEN`] bytes given (fewer if the object is shorter).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// Streams `path` from `site` through a fresh hasher (the site's retry layer restarts it
    /// before trying again).
    pub fn read_from(site: &dyn Site, path: &str) -> std::result::Result<HashSink, SiteError> {
        let mut sink = HashSink::new();
        site.get_to(path, &mut sink)?;
        Ok(sink)
    }
}

impl Default for HashSink {
    fn default() -> Self {
        Self::new()
    }
}

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let keep = HEAD_LEN.saturating_sub(self.head.len()).min(buf.len());
        self.head.extend_from_slice(&buf[..keep]);
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectSink for HashSink {
    fn restart(&mut self) -> io::Result<()> {
        self.hasher.reset();
        self.len = 0;
        self.head.clear();
        Ok(())
    }
}

/// Passes what it is given on to another sink while hashing it: a read checked against the
/// object's name as it streams.
pub struct HashingSink<'a> {
    sink: &'a mut dyn ObjectSink,
    hasher: blake3::Hasher,
}

impl<'a> HashingSink<'a> {
    /// Hashes what goes to `sink`.
    pub fn new(sink: &'a mut dyn ObjectSink) -> Self {
        Self {
            sink,
            hasher: blake3::Hasher::new(),
        }
    }

    /// The id of the bytes passed on (as [`ObjectId::of`] computes it).
    pub fn id(&self) -> ObjectId {
        ObjectId(*self.hasher.finalize().as_bytes())
    }
}

impl Write for HashingSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.sink.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl ObjectSink for HashingSink<'_> {
    fn restart(&mut self) -> io::Result<()> {
        self.sink.restart()?;
        self.hasher.reset();
        Ok(())
    }
}

/// How much of an object a check needs ([`Held::read`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Its bytes in memory (kinds parsed whole: indexes, manifests; within their kind's cap).
    Whole,
    /// A spool, to read by ranges (a pack a deep verification opens blob by blob).
    Spool,
    /// Only its hash, size and first bytes.
    Hash,
}

/// An object read for checking, held no more than its [`Need`] says.
#[derive(Debug)]
pub enum Held {
    /// The bytes, and their id.
    Whole(ObjectId, Vec<u8>),
    /// On local disk.
    Spooled(Spool),
    /// Only hashed.
    Hashed(HashSink),
}

impl Held {
    /// Reads `path` from `site` as `need` says.
    pub fn read(site: &dyn Site, path: &str, need: Need) -> std::result::Result<Held, FetchError> {
        match need {
            Need::Whole => site
                .get(path)
                .map(|b| Held::Whole(ObjectId::of(&b), b))
                .map_err(FetchError::Site),
            Need::Spool => Spool::read_from(site, path).map(Held::Spooled),
            Need::Hash => HashSink::read_from(site, path)
                .map(Held::Hashed)
                .map_err(FetchError::Site),
        }
    }

    /// The id and size of the object's bytes.
    pub fn id_and_len(&self) -> (ObjectId, u64) {
        match self {
            Held::Whole(id, bytes) => (*id, bytes.len() as u64),
            Held::Spooled(spool) => (spool.id(), spool.len()),
            Held::Hashed(sink) => (sink.id(), sink.len()),
        }
    }

    /// The object's first bytes (all of them when held whole): enough for its kind's magic.
    pub fn head(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Held::Whole(_, bytes) => bytes.as_slice().into(),
            Held::Spooled(spool) => spool
                .read_at(0, spool.len().min(HEAD_LEN as u64))
                .unwrap_or_default()
                .into(),
            Held::Hashed(sink) => sink.head().into(),
        }
    }
}

/// Why [`Spool::fetch`] has no copy.
#[derive(Debug)]
pub enum FetchError {
    /// The site did not give the object.
    Site(SiteError),
    /// No spool file could be made here.
    Local(Error),
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Site(e) => e.into(),
            FetchError::Local(e) => e,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Site(e) => e.fmt(f),
            FetchError::Local(e) => e.fmt(f),
        }
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = self.limit - self.len;
        if buf.len() as u64 > room {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more than the {} bytes the format allows for this object",
                    self.limit
                ),
            ));
        }
        let n = self
            .file
            .write(&buf[..buf.len().min(crate::fsutil::WRITE_SLICE)])?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ObjectSink for Spool {
    fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hasher.reset();
        self.len = 0;
        Ok(())
    }
}

impl ObjectSource for Spool {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        self.file.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_spool_file_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask has no preconditions; a permissive umask for this check only.
        let old = unsafe { libc::umask(0o022) };
        let spool = Spool::new(10).unwrap();
        // SAFETY: as above, restoring the previous umask.
        unsafe { libc::umask(old) };
        let mode = spool.file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "spool mode {mode:o}");
    }
    use super::*;

    #[test]
    fn hashes_what_it_holds_refuses_past_its_limit_and_restarts() {
        let mut spool = Spool::new(10).unwrap();
        spool.write_all(b"hello").unwrap();
        spool.write_all(b" you").unwrap();
        assert_eq!(spool.id(), ObjectId::of(b"hello you"));
        assert_eq!(spool.read_at(6, 3).unwrap(), b"you");
        assert!(spool.read_at(6, 4).is_err());
        assert!(spool.write_all(b"!!").is_err(), "past the limit");
        spool.restart().unwrap();
        spool.write_all(b"again").unwrap();
        assert_eq!(spool.id(), ObjectId::of(b"again"));
        assert_eq!(ObjectSource::len(&spool), 5);
        let mut buf = [0u8; 5];
        spool.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"again");
    }
}
