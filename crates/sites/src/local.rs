//! A vault in a local folder (or any mounted file system).
//!
//! Create-only writes: the bytes go to a temporary file under `tmp/`, are fsynced, then
//! hard-linked into place (`link(2)` fails if the name exists, so nothing is ever overwritten),
//! and the directory is fsynced. A crash leaves at worst a stray file under `tmp/`. Only regular
//! files are objects: a link, FIFO, socket or device is never listed, and a put at its name
//! removes it (never its target) and writes the object.
//!
//! Objects are opened beneath the vault folder one path component at a time with `openat(2)`
//! and `O_NOFOLLOW`: a symbolic link planted inside the folder (a `packs/<ds>/xx` pointing at
//! `/etc`, a pack that links to a secret) is refused, never followed, for reads and writes alike.
//! The folder itself may be reached through a link: the operator chose it.

#[cfg(test)]
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use embassy_core::format::layout;
use std::sync::Arc;

use embassy_core::site::{
    copy_bounded, sink_error, ObjectInfo, ObjectSink, ObjectSource, Put, Site, SiteError,
    COPY_BUFFER,
};

const TMP: &str = "tmp";

mod direct;
mod fd;
pub(crate) mod vault_gone;
use direct::{DirectWriter, DIRECT_FROM};
use fd::{linkat, lstat_at, open_beneath, open_dir_beneath, openat, split, unlinkat};

/// A site in a local folder.
#[derive(Debug)]
pub struct LocalSite {
    root: PathBuf,
    location: String,
    swept: std::sync::Once,
    /// Most bytes one listing may hold (paths and bookkeeping), as for S3.
    listing_limit: u64,
    /// Once this process saw the vault's `config` here, a folder without it is a vault gone
    /// (an unmounted disk, a moved or deleted folder), never one to start again.
    vault: vault_gone::VaultWatch,
}

impl LocalSite {
    /// A site rooted at `root`; the folder is created on first write.
    pub fn new(root: impl AsRef<Path>) -> Result<Self, SiteError> {
        let root = root.as_ref();
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| SiteError::Permanent {
                    site: root.display().to_string(),
                    operation: "open",
                    path: String::new(),
                    message: format!("cannot resolve the current directory: {e}"),
                })?
                .join(root)
        };
        Ok(Self {
            location: root.display().to_string(),
            root,
            swept: std::sync::Once::new(),
            listing_limit: crate::s3::DEFAULT_LISTING_LIMIT,
            // A stat is cheap: every write checks.
            vault: vault_gone::VaultWatch::new(std::time::Duration::ZERO),
        })
    }

    /// The most memory one listing may hold, in bytes (paths and 32 bytes of bookkeeping an
    /// entry; 1 GiB by default, as S3's `listing-limit-mib`): a folder planted with millions of
    /// files or folders is refused instead of filling memory.
    pub fn with_listing_limit(mut self, bytes: u64) -> Self {
        self.listing_limit = bytes;
        self
    }

    fn resolve(&self, path: &str, operation: &'static str) -> Result<PathBuf, SiteError> {
        if crate::valid_object_path(path) {
            Ok(self.root.join(path))
        } else {
            Err(self.permanent(operation, path, "invalid object path".into()))
        }
    }

    /// Opens an object for reading, refusing links and anything but a regular file no larger
    /// than the format allows for its kind. Returns the file and its size.
    fn open_object(&self, path: &str, operation: &'static str) -> Result<(File, u64), SiteError> {
        self.resolve(path, operation)?;
        let file = open_beneath(&self.root, path).map_err(|e| self.io_error(operation, path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| self.io_error(operation, path, e))?;
        if !meta.file_type().is_file() {
            return Err(self.permanent(
                operation,
                path,
                "not a regular file: something else was put in the vault folder at this \
                 object's name; remove it and repair this site from another one"
                    .into(),
            ));
        }
        let cap = layout::max_object_size(path);
        if meta.len() > cap {
            return Err(self.permanent(
                operation,
                path,
                format!(
                    "the file holds {} bytes, more than the {cap} the format allows for this \
                     kind of object: damaged or planted; nothing was read",
                    meta.len()
                ),
            ));
        }
        Ok((file, meta.len()))
    }

    fn permanent(&self, operation: &'static str, path: &str, message: String) -> SiteError {
        SiteError::Permanent {
            site: self.location.clone(),
            operation,
            path: path.to_string(),
            message,
        }
    }

    fn io_error(&self, operation: &'static str, path: &str, e: std::io::Error) -> SiteError {
        if e.raw_os_error() == Some(libc::ELOOP) {
            return self.permanent(
                operation,
                path,
                format!(
                    "{e}: a symbolic link inside the vault folder is on the way to this object; \
                     objects are never read or written through links (someone may have planted \
                     it to redirect the vault): remove the link and repair this site from \
                     another one"
                ),
            );
        }
        match e.kind() {
            ErrorKind::NotFound => SiteError::NotFound {
                site: self.location.clone(),
                path: path.to_string(),
            },
            ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                SiteError::Retryable {
                    site: self.location.clone(),
                    operation,
                    path: path.to_string(),
                    message: e.to_string(),
                }
            }
            ErrorKind::StorageFull | ErrorKind::QuotaExceeded => self.permanent(
                operation,
                path,
                format!("{e}: the site's disk is full; free space there or move the vault, then run again (nothing acknowledged was lost)"),
            ),
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => self.permanent(
                operation,
                path,
                format!("{e}: check the folder's owner and permissions"),
            ),
            _ => self.permanent(operation, path, e.to_string()),
        }
    }

    /// Refuses a write once the vault this process saw here is gone: creating its folders
    /// again would store objects (WAL a streamer then acknowledges) where no vault is, on
    /// the disk under a mount point, say, and they would be missing when the vault returns
    /// ([`vault_gone`]).
    fn check_vault_still_here(&self, path: &str) -> Result<(), SiteError> {
        self.vault.check(
            path,
            || match fs::symlink_metadata(self.root.join(layout::CONFIG)) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(self.io_error("put", path, e)),
            },
            || {
                self.permanent(
                    "put",
                    path,
                    vault_gone::gone_reason(
                        "folder",
                        "an unmounted disk, a moved or deleted folder",
                        "mount the disk or put the folder back",
                        &self.location,
                    ),
                )
            },
        )
    }

    /// Opens (creating when missing) the folders `dirs` beneath the root, none a link.
    fn ensure_dir(&self, dirs: &[&str], path: &str) -> Result<OwnedFd, SiteError> {
        open_dir_beneath(&self.root, dirs, true)
            .map_err(|e| self.io_error("create directory", path, e))
    }
}

impl LocalSite {
    /// A create-only write whose bytes `write` puts into the staging file.
    fn put_with(
        &self,
        path: &str,
        write: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<Put, SiteError> {
        self.resolve(path, "put")?;
        self.check_vault_still_here(path)?;
        let (dirs, name) = split(path);
        let tmp_dir = self.ensure_dir(&[TMP], path)?;
        self.sweep_stale_parts(&tmp_dir);
        let dir = self.ensure_dir(&dirs, path)?;
        // An object (a regular file) at the name is never written again. Anything else there
        // (a planted link, FIFO, socket or device) is not an object: it is never listed nor
        // read, so it is removed (the link itself, never its target) and the object written.
        match lstat_at(&dir, name) {
            Ok(st) => match st.st_mode & libc::S_IFMT {
                libc::S_IFREG | libc::S_IFDIR => return Ok(Put::AlreadyExisted),
                _ => match unlinkat(&dir, name) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io_error("put", path, e)),
                },
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(self.io_error("put", path, e)),
        }
        let tmp = format!("{:016x}.part", rand::random::<u64>());
        let written = (|| {
            let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
            let mut file = File::from(openat(&tmp_dir, &tmp, flags, 0o666)?);
            write(&mut file)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = unlinkat(&tmp_dir, &tmp);
            return Err(self.io_error("put", path, e));
        }
        let linked = linkat(&tmp_dir, &tmp, &dir, name);
        let _ = unlinkat(&tmp_dir, &tmp);
        let put = match linked {
            Ok(()) => {
                sync_dir(&dir).map_err(|e| self.io_error("sync directory", path, e))?;
                Put::Created
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Put::AlreadyExisted,
            Err(e) => return Err(self.io_error("put", path, e)),
        };
        self.vault.saw(path, true);
        Ok(put)
    }

    /// Once per process, removes staging files that writers killed mid-write left behind. Only
    /// files older than an hour: another process may be writing the younger ones right now.
    fn sweep_stale_parts(&self, tmp_dir: &OwnedFd) {
        self.swept.call_once(|| {
            // The staging folder is a folder, not a link (it was just opened so); its stale
            // files are removed through its descriptor.
            let tmp = self.root.join(TMP);
            if !fs::symlink_metadata(&tmp).is_ok_and(|m| m.is_dir()) {
                return;
            }
            let Ok(entries) = fs::read_dir(&tmp) else {
                return;
            };
            let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let stale = name.ends_with(".part")
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t < hour_ago);
                if stale {
                    let _ = unlinkat(tmp_dir, &name);
                }
            }
        });
    }
}

/// Passes writes to a sink, remembering a failure of the sink itself (so a full spool is not
/// blamed on the site).
struct SinkWriter<'a> {
    sink: &'a mut dyn ObjectSink,
    failed: Option<std::io::Error>,
}

impl Write for SinkWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.write(buf).inspect_err(|e| {
            self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.flush()
    }
}

fn sync_dir(dir: &OwnedFd) -> std::io::Result<()> {
    File::from(dir.try_clone()?).sync_all()
}

impl Site for LocalSite {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.put_with(path, |file| {
            if bytes.len() as u64 >= DIRECT_FROM {
                let mut w = DirectWriter::new(file);
                w.write_all(bytes)?;
                w.finish()
            } else {
                embassy_core::fsutil::write_sliced(file, bytes)
            }
        })
    }

    fn put_from(&self, path: &str, source: Arc<dyn ObjectSource>) -> Result<Put, SiteError> {
        // Through one fixed buffer: the object is never held whole.
        self.put_with(path, |file| {
            let len = source.len();
            let copy = |out: &mut dyn Write| -> std::io::Result<()> {
                let mut buf = vec![0u8; COPY_BUFFER.min(len as usize)];
                let mut at = 0u64;
                while at < len {
                    let n = (len - at).min(buf.len() as u64) as usize;
                    source.read_exact_at(&mut buf[..n], at)?;
                    out.write_all(&buf[..n])?;
                    at += n as u64;
                }
                Ok(())
            };
            if len >= DIRECT_FROM {
                let mut w = DirectWriter::new(file);
                copy(&mut w)?;
                w.finish()
            } else {
                copy(file)
            }
        })
    }

    fn get_to(&self, path: &str, sink: &mut dyn ObjectSink) -> Result<u64, SiteError> {
        let (file, _) = self.open_object(path, "get")?;
        self.vault.saw(path, false);
        let cap = layout::max_object_size(path);
        let mut file = file;
        let mut out = SinkWriter { sink, failed: None };
        match copy_bounded(&mut file, &mut out, cap) {
            Ok(n) => Ok(n),
            Err(e) => Err(match out.failed.take() {
                // The bytes could not be kept: not the site's fault.
                Some(kept) => sink_error(&self.location, path, kept),
                None if e.kind() == ErrorKind::InvalidData => self.permanent(
                    "get",
                    path,
                    format!(
                        "the file grew past the {cap} bytes the format allows while being read"
                    ),
                ),
                None => self.io_error("get", path, e),
            }),
        }
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        let (file, size) = self.open_object(path, "get")?;
        self.vault.saw(path, false);
        let cap = layout::max_object_size(path);
        let mut buf = Vec::with_capacity(size as usize);
        file.take(cap.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| self.io_error("get", path, e))?;
        if buf.len() as u64 > cap {
            return Err(self.permanent(
                "get",
                path,
                format!("the file grew past the {cap} bytes the format allows while being read"),
            ));
        }
        Ok(buf)
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        let (file, size) = self.open_object(path, "get")?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(self.permanent(
                "get",
                path,
                format!(
                    "asked for bytes {offset}..{} but the object has {size}: truncated",
                    offset.saturating_add(len)
                ),
            ));
        }
        // Read into spare capacity: no zero-filling of large ranges.
        let mut buf = Vec::with_capacity(len as usize);
        let mut file = file;
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.take(len).read_to_end(&mut buf))
            .map_err(|e| self.io_error("get", path, e))?;
        if buf.len() as u64 != len {
            return Err(self.permanent("get", path, "object shrank while being read".into()));
        }
        Ok(buf)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        // Start at the deepest folder the prefix names, then filter by the full prefix.
        let dir_part = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.resolve(dir_part, "list")?
        };
        // Never list through a link inside the vault folder.
        let mut cur = self.root.clone();
        for component in dir_part.split('/').filter(|c| !c.is_empty()) {
            cur.push(component);
            if fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(self.io_error(
                    "list",
                    prefix,
                    std::io::Error::from_raw_os_error(libc::ELOOP),
                ));
            }
        }
        let mut out = Vec::new();
        let mut stack = vec![start];
        // What the listing holds so far: listed objects and folders still to walk.
        let mut held = 0u64;
        let mut count = |rel: &str, entries: usize| {
            held = held.saturating_add(rel.len() as u64 + crate::LISTED_ENTRY_COST);
            if held > self.listing_limit || entries >= crate::MAX_LISTED {
                return Err(self.permanent(
                    "list",
                    prefix,
                    format!(
                        "the listing of '{prefix}' passed {entries} objects or {} MiB, the most \
                         one listing may hold: files or folders planted in the vault folder \
                         (remove them), or a vault larger than this site allows",
                        self.listing_limit / (1024 * 1024)
                    ),
                ));
            }
            Ok(())
        };
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                // A prefix naming a file ("a/b/" where a/b is an object) lists nothing.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                    continue
                }
                Err(e) => return Err(self.io_error("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io_error("list", prefix, e))?;
                let path = entry.path();
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let Some(rel) = rel.to_str() else { continue };
                if rel == TMP {
                    continue;
                }
                let file_type = entry
                    .file_type()
                    .map_err(|e| self.io_error("list", rel, e))?;
                if file_type.is_symlink() {
                    // Not an object: a link planted in the vault folder is never followed.
                    continue;
                }
                if !file_type.is_dir() && !file_type.is_file() {
                    // Not an object either: a FIFO, socket or device is never listed (reading
                    // it refuses it anyway), so it cannot pose as a ledger entry or a pack.
                    continue;
                }
                if file_type.is_dir() {
                    if prefix.starts_with(rel) || rel.starts_with(prefix) || prefix.is_empty() {
                        count(rel, out.len() + stack.len())?;
                        stack.push(path);
                    }
                } else if rel.starts_with(prefix) {
                    let size = entry
                        .metadata()
                        .map_err(|e| self.io_error("list", rel, e))?
                        .len();
                    count(rel, out.len() + stack.len())?;
                    out.push(ObjectInfo {
                        path: rel.to_string(),
                        size,
                    });
                }
            }
        }
        Ok(out)
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.resolve(path, "delete")?;
        let (dirs, name) = split(path);
        let dir = match open_dir_beneath(&self.root, &dirs, false) {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io_error("delete", path, e)),
        };
        match unlinkat(&dir, name) {
            Ok(()) => sync_dir(&dir).map_err(|e| self.io_error("sync directory", path, e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("delete", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {

    /// Red team 7: the vault's folder moved away (or its disk unmounted) while a streamer
    /// wrote; the site made empty folders again and stored WAL there, which the streamer
    /// acknowledged and the vault then lacked. Once the vault was seen, its absence refuses.
    #[test]
    fn a_vault_gone_from_its_folder_is_never_started_again_by_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vault");
        let site = LocalSite::new(&root).unwrap();
        site.put(layout::CONFIG, b"config").unwrap();
        site.get(layout::CONFIG).unwrap();
        site.put("wal/a", b"one").unwrap();
        fs::rename(&root, dir.path().join("moved")).unwrap();
        let err = site.put("wal/b", b"two").unwrap_err().to_string();
        assert!(err.contains("config is gone"), "{err}");
        assert!(!root.exists(), "the vault folder was made again");
        // Emptied in place (a mount point left behind): the same.
        fs::create_dir_all(&root).unwrap();
        let err = site.put("wal/b", b"two").unwrap_err().to_string();
        assert!(err.contains("config is gone"), "{err}");
        assert!(
            !root.join("wal").exists(),
            "a folder was made in the empty mount point"
        );
        // Put back, writes go on.
        fs::remove_dir(&root).unwrap();
        fs::rename(dir.path().join("moved"), &root).unwrap();
        site.put("wal/b", b"two").unwrap();
    }

    use super::*;

    #[test]
    fn stale_staging_files_are_swept_but_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let site = LocalSite::new(dir.path()).unwrap();
        fs::create_dir_all(dir.path().join(TMP)).unwrap();
        let old = dir.path().join(TMP).join("killed.part");
        let fresh = dir.path().join(TMP).join("in-flight.part");
        fs::write(&old, b"half a pack").unwrap();
        fs::write(&fresh, b"being written").unwrap();
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
        assert_eq!(site.put("a/b", b"x").unwrap(), Put::Created);
        assert!(
            !old.exists(),
            "a staging file left by a killed writer is removed"
        );
        assert!(
            fresh.exists(),
            "a young staging file may belong to a live writer"
        );
        assert_eq!(site.get("a/b").unwrap(), b"x");
        assert!(site
            .list("")
            .unwrap()
            .iter()
            .all(|i| !i.path.starts_with("tmp")));
    }

    fn refused_as_link(result: Result<impl std::fmt::Debug, SiteError>) {
        match result {
            Err(SiteError::Permanent { message, .. }) => {
                assert!(message.contains("symbolic link"), "{message}")
            }
            other => panic!("a link was followed: {other:?}"),
        }
    }

    #[test]
    fn links_planted_in_the_vault_folder_are_never_followed_for_reads() {
        let vault = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, b"a secret of the host").unwrap();
        let site = LocalSite::new(vault.path()).unwrap();
        site.put("packs/ds/ab/real", b"object").unwrap();
        // A pack that is a link to a secret file.
        std::os::unix::fs::symlink(&secret, vault.path().join("packs/ds/ab/linked")).unwrap();
        refused_as_link(site.get("packs/ds/ab/linked"));
        refused_as_link(site.get_range("packs/ds/ab/linked", 0, 2));
        // A folder on the way that is a link (packs/ds/cd -> the outside folder).
        std::os::unix::fs::symlink(outside.path(), vault.path().join("packs/ds/cd")).unwrap();
        refused_as_link(site.get("packs/ds/cd/secret"));
        refused_as_link(site.get_range("packs/ds/cd/secret", 0, 2));
        refused_as_link(site.list("packs/ds/cd/"));
        // Listing the vault does not walk into the link, nor list the linked pack.
        let listed: Vec<String> = site.list("").unwrap().into_iter().map(|i| i.path).collect();
        assert_eq!(listed, ["packs/ds/ab/real"]);
        assert_eq!(site.get("packs/ds/ab/real").unwrap(), b"object");
    }

    #[test]
    fn links_planted_in_the_vault_folder_are_never_followed_for_writes() {
        let vault = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let site = LocalSite::new(vault.path()).unwrap();
        site.put("packs/ds/ab/real", b"object").unwrap();
        std::os::unix::fs::symlink(outside.path(), vault.path().join("packs/ds/cd")).unwrap();
        refused_as_link(site.put("packs/ds/cd/new", b"redirected?"));
        refused_as_link(site.put("packs/ds/cd/deeper/new", b"redirected?"));
        // A link at the object's own name is not written through: it is replaced by the
        // object (so that `sync --repair` can put a planted link right).
        let target = outside.path().join("target");
        std::os::unix::fs::symlink(&target, vault.path().join("packs/ds/ab/named")).unwrap();
        assert_eq!(site.put("packs/ds/ab/named", b"x").unwrap(), Put::Created);
        assert!(!target.exists());
        assert_eq!(site.get("packs/ds/ab/named").unwrap(), b"x");
        assert!(
            !fs::symlink_metadata(vault.path().join("packs/ds/ab/named"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // Deleting through a link removes nothing outside.
        fs::write(outside.path().join("victim"), b"keep me").unwrap();
        refused_as_link(site.delete("packs/ds/cd/victim"));
        assert!(outside.path().join("victim").exists());
        // The staging folder as a link: nothing is staged outside.
        fs::remove_dir_all(vault.path().join(TMP)).unwrap();
        std::os::unix::fs::symlink(outside.path(), vault.path().join(TMP)).unwrap();
        let fresh = LocalSite::new(vault.path()).unwrap();
        refused_as_link(fresh.put("index/ds/new", b"staged?"));
        let outside_files: Vec<_> = fs::read_dir(outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            outside_files,
            ["victim"],
            "something was written outside the vault"
        );
    }

    #[test]
    fn a_fifo_at_an_object_name_is_refused_without_hanging() {
        let vault = tempfile::tempdir().unwrap();
        let site = LocalSite::new(vault.path()).unwrap();
        site.put("index/ds/real", b"x").unwrap();
        let fifo = CString::new(vault.path().join("index/ds/fifo").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        match site.get("index/ds/fifo") {
            Err(SiteError::Permanent { message, .. }) => {
                assert!(message.contains("not a regular file"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        // Not listed: only regular files are objects.
        let listed: Vec<String> = site
            .list("index/ds/")
            .unwrap()
            .into_iter()
            .map(|i| i.path)
            .collect();
        assert_eq!(listed, ["index/ds/real"]);
        // A write at its name replaces it.
        assert_eq!(site.put("index/ds/fifo", b"y").unwrap(), Put::Created);
        assert_eq!(site.get("index/ds/fifo").unwrap(), b"y");
    }

    #[test]
    fn a_listing_past_its_limit_is_refused() {
        let vault = tempfile::tempdir().unwrap();
        for i in 0..200 {
            fs::create_dir_all(vault.path().join(format!("planted/{i}"))).unwrap();
            fs::write(vault.path().join(format!("planted/{i}/x")), b"").unwrap();
        }
        let roomy = LocalSite::new(vault.path()).unwrap();
        assert_eq!(roomy.list("").unwrap().len(), 200);
        let tight = LocalSite::new(vault.path())
            .unwrap()
            .with_listing_limit(4096);
        match tight.list("") {
            Err(SiteError::Permanent { message, .. }) => {
                assert!(
                    message.contains("the most one listing may hold"),
                    "{message}"
                )
            }
            other => panic!("{:?}", other.map(|l| l.len())),
        }
    }

    #[test]
    fn an_oversized_file_is_refused_before_it_is_read() {
        let vault = tempfile::tempdir().unwrap();
        let site = LocalSite::new(vault.path()).unwrap();
        let big = File::create(vault.path().join(layout::CONFIG)).unwrap();
        big.set_len(layout::MAX_CONFIG_SIZE + 1).unwrap();
        match site.get(layout::CONFIG) {
            Err(SiteError::Permanent { message, .. }) => {
                assert!(message.contains("format allows"), "{message}")
            }
            other => panic!("{:?}", other.map(|b| b.len())),
        }
    }
}
