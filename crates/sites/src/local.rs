//! A vault in a local folder (or any mounted file system).
//!
//! Create-only writes: the bytes go to a temporary file under `tmp/`, are fsynced, then
//! hard-linked into place (`link(2)` fails if the name exists, so nothing is ever overwritten),
//! and the directory is fsynced. A crash leaves at worst a stray file under `tmp/`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use embassy_core::site::{ObjectInfo, Put, Site, SiteError};

const TMP: &str = "tmp";

/// A site in a local folder.
#[derive(Debug)]
pub struct LocalSite {
    root: PathBuf,
    location: String,
    known_dirs: Mutex<HashSet<PathBuf>>,
    swept: std::sync::Once,
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
            known_dirs: Mutex::new(HashSet::new()),
            swept: std::sync::Once::new(),
        })
    }

    fn resolve(&self, path: &str, operation: &'static str) -> Result<PathBuf, SiteError> {
        let safe = !path.is_empty()
            && !path.starts_with('/')
            && path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if safe {
            Ok(self.root.join(path))
        } else {
            Err(self.permanent(operation, path, "invalid object path".into()))
        }
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

    /// Creates `dir` and any missing parents, fsyncing each parent so the new entries survive a
    /// crash.
    fn ensure_dir(&self, dir: &Path, path: &str) -> Result<(), SiteError> {
        if self
            .known_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(dir)
        {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cur = dir;
        while !cur.is_dir() {
            missing.push(cur.to_path_buf());
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        for d in missing.iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io_error("create directory", path, e)),
            }
            if let Some(parent) = d.parent() {
                sync_dir(parent).map_err(|e| self.io_error("sync directory", path, e))?;
            }
        }
        self.known_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_path_buf());
        Ok(())
    }
}

impl LocalSite {
    /// Once per process, removes staging files that writers killed mid-write left behind. Only
    /// files older than an hour: another process may be writing the younger ones right now.
    fn sweep_stale_parts(&self, tmp_dir: &Path) {
        self.swept.call_once(|| {
            let Ok(entries) = fs::read_dir(tmp_dir) else {
                return;
            };
            let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            for entry in entries.flatten() {
                let stale = entry.file_name().to_string_lossy().ends_with(".part")
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t < hour_ago);
                if stale {
                    let _ = fs::remove_file(entry.path());
                }
            }
        });
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Site for LocalSite {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let target = self.resolve(path, "put")?;
        if target.exists() {
            return Ok(Put::AlreadyExisted);
        }
        let tmp_dir = self.root.join(TMP);
        self.ensure_dir(&tmp_dir, path)?;
        self.sweep_stale_parts(&tmp_dir);
        let dir = target.parent().unwrap_or(&self.root).to_path_buf();
        self.ensure_dir(&dir, path)?;
        let tmp = tmp_dir.join(format!("{:016x}.part", rand::random::<u64>()));
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io_error("put", path, e));
        }
        let linked = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&dir).map_err(|e| self.io_error("sync directory", path, e))?;
                Ok(Put::Created)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(Put::AlreadyExisted),
            Err(e) => Err(self.io_error("put", path, e)),
        }
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        let full = self.resolve(path, "get")?;
        fs::read(&full).map_err(|e| self.io_error("get", path, e))
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        let full = self.resolve(path, "get")?;
        let file = File::open(&full).map_err(|e| self.io_error("get", path, e))?;
        let size = file
            .metadata()
            .map_err(|e| self.io_error("get", path, e))?
            .len();
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
        let mut out = Vec::new();
        let mut stack = vec![start];
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
                if file_type.is_dir() {
                    if prefix.starts_with(rel) || rel.starts_with(prefix) || prefix.is_empty() {
                        stack.push(path);
                    }
                } else if rel.starts_with(prefix) {
                    let size = entry
                        .metadata()
                        .map_err(|e| self.io_error("list", rel, e))?
                        .len();
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
        let full = self.resolve(path, "delete")?;
        match fs::remove_file(&full) {
            Ok(()) => {
                if let Some(dir) = full.parent() {
                    sync_dir(dir).map_err(|e| self.io_error("sync directory", path, e))?;
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("delete", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
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
}
