//! Files the client creates on the local machine (restored streams and files, state, queues):
//! never through a name someone else could have planted.
//!
//! A new file is first created under a random name in the folder of its final name, with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` (a symlink or file planted at that name makes the creation fail
//! instead of being followed or truncated), written, synced, then renamed over its final name
//! (a rename replaces a symlink there rather than following it) and the folder synced.
//! Dropped before [`NewFile::persist`], the temporary file is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Suffix of the temporary names (`.<final name>.<random>.embassy.tmp`).
pub const TEMP_SUFFIX: &str = "embassy.tmp";

/// A file being written under a random temporary name beside its final name.
#[derive(Debug)]
pub struct NewFile {
    file: File,
    temp: PathBuf,
    target: PathBuf,
    persisted: bool,
}

impl NewFile {
    /// Creates a new, empty file (mode 0600) under a random name in the folder of `target`.
    pub fn beside(target: &Path) -> io::Result<NewFile> {
        Self::beside_with_mode(target, 0o600)
    }

    /// [`NewFile::beside`] with permission bits `mode` (the umask applies).
    pub fn beside_with_mode(target: &Path, mode: u32) -> io::Result<NewFile> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} does not name a file", target.display()),
            )
        })?;
        // Long names are shortened so that the temporary name stays within NAME_MAX.
        let stem: String = String::from_utf8_lossy(name.as_bytes())
            .chars()
            .take(64)
            .collect();
        let mut last = None;
        for _ in 0..16 {
            let temp = dir.join(format!(
                ".{stem}.{:016x}.{TEMP_SUFFIX}",
                rand::random::<u64>()
            ));
            match create_new(&temp, mode) {
                Ok(file) => {
                    return Ok(NewFile {
                        file,
                        temp,
                        target: target.to_path_buf(),
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The temporary name it has until persisted.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Syncs the file, renames it over its final name and syncs the folder; returns the file.
    pub fn persist(mut self) -> io::Result<File> {
        self.file.sync_all()?;
        std::fs::rename(&self.temp, &self.target)?;
        self.persisted = true;
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        // The file is moved out; Drop sees `persisted` and leaves the name alone.
        let file = self.file.try_clone()?;
        Ok(file)
    }

    /// Renames the file over its final name without syncing (for files whose content is
    /// written afterwards, through the returned handle or the name); returns the file.
    pub fn persist_unsynced(mut self) -> io::Result<File> {
        std::fs::rename(&self.temp, &self.target)?;
        self.persisted = true;
        self.file.try_clone()
    }

    /// Closes the file and keeps it under its temporary name, to be written later by that name
    /// and put in place with [`PendingFile::persist`] (many files filled at once, without one
    /// open descriptor each).
    pub fn into_pending(mut self) -> PendingFile {
        // The name passes to the pending file, which removes it if dropped unpersisted.
        self.persisted = true;
        PendingFile {
            temp: self.temp.clone(),
            target: self.target.clone(),
            persisted: false,
        }
    }
}

/// A new file, closed, under its temporary name beside its final name: nothing shows under the
/// final name until [`PendingFile::persist`]; dropped before that, the temporary file is
/// removed. A restore that fails half-way leaves no half-filled file under a final name.
#[derive(Debug)]
pub struct PendingFile {
    temp: PathBuf,
    target: PathBuf,
    persisted: bool,
}

impl PendingFile {
    /// The temporary name, to open and write by (with `O_NOFOLLOW`).
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Renames the file over its final name (without syncing).
    pub fn persist(mut self) -> io::Result<()> {
        std::fs::rename(&self.temp, &self.target)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

impl Write for NewFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(&buf[..buf.len().min(WRITE_SLICE)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Creates `path`, which must not exist (not even as a symlink): `O_CREAT|O_EXCL|O_NOFOLLOW`.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(mode)
        .open(path)
}

/// The most one `write` system call is given. In one series on the project's VM (Linux 6.18,
/// ext4) a `write` of 2 MiB or more into the page cache ran at 170–430 MiB/s against about
/// 5,700 for 1.5 MiB or less; later series showed buffered writes there swinging widely
/// whatever the size, so the gain is not proven (bench/README.md). Slices of 1 MiB cost
/// nothing measurable anywhere, so big buffers (a WAL segment, a restored chunk) go in them.
pub const WRITE_SLICE: usize = 1024 * 1024;

/// Writes all of `bytes` to `out` in slices of at most [`WRITE_SLICE`].
pub fn write_sliced(out: &mut (impl Write + ?Sized), bytes: &[u8]) -> io::Result<()> {
    bytes.chunks(WRITE_SLICE).try_for_each(|s| out.write_all(s))
}

/// Writes all of `bytes` to `file` at `offset` in slices of at most [`WRITE_SLICE`].
pub fn write_sliced_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut at = offset;
    for s in bytes.chunks(WRITE_SLICE) {
        file.write_all_at(s, at)?;
        at += s.len() as u64;
    }
    Ok(())
}

/// Replaces `target` with `bytes` atomically through a [`NewFile`] (mode 0600).
pub fn write_atomic(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = NewFile::beside(target)?;
    file.write_all(bytes)?;
    file.persist().map(drop)
}

/// The default state folder of this user: `$XDG_STATE_HOME/data-embassy`, else
/// `~/.local/state/data-embassy` (what a client remembers of vaults, and the ledger locks).
pub fn default_state_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|base| base.join("data-embassy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the size of every write it is given.
    struct Calls(Vec<usize>, Vec<u8>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            self.1.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A big buffer reaches the system in slices of at most WRITE_SLICE, whole and in order,
    /// through `write_sliced`, `write_sliced_at` and a `NewFile` written with `write_all`.
    #[test]
    fn big_writes_go_in_slices_of_at_most_one_mib() {
        let bytes: Vec<u8> = (0..5 * WRITE_SLICE + 123)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut calls = Calls(Vec::new(), Vec::new());
        write_sliced(&mut calls, &bytes).unwrap();
        assert_eq!(calls.1, bytes);
        assert_eq!(calls.0.len(), 6);
        assert!(calls.0.iter().all(|&n| n <= WRITE_SLICE));

        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at");
        let file = File::create(&at).unwrap();
        write_sliced_at(&file, &bytes, 7).unwrap();
        let back = std::fs::read(&at).unwrap();
        assert_eq!(&back[7..], &bytes[..]);

        let mut new = NewFile::beside(&dir.path().join("new")).unwrap();
        assert_eq!(
            new.write(&bytes).unwrap(),
            WRITE_SLICE,
            "one call, one slice"
        );
        new.write_all(&bytes[WRITE_SLICE..]).unwrap();
        new.persist().unwrap();
        assert_eq!(std::fs::read(dir.path().join("new")).unwrap(), bytes);
    }

    #[test]
    fn temporary_names_are_fresh_and_planted_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let target = dir.path().join("out");
        // A link planted at the final name is replaced, never written through.
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(!std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink());
        // A link planted at a name create_new is asked for fails the creation.
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(create_new(&planted, 0o600).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // Nothing temporary is left, and a dropped file leaves nothing either.
        let pending = NewFile::beside(&dir.path().join("dropped")).unwrap();
        let temp = pending.temp_path().to_path_buf();
        assert!(temp.exists());
        drop(pending);
        assert!(!temp.exists());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
