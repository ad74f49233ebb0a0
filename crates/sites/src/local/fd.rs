//! The `openat(2)` helpers of [`super::LocalSite`]: each path component opened beneath the vault
//! folder with `O_NOFOLLOW`, so a planted link is refused, never followed.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `openat(2)` of one path component beneath `dir`, never following a final symbolic link.
pub(super) fn openat(dir: &OwnedFd, name: &str, flags: i32, mode: u32) -> std::io::Result<OwnedFd> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the folder `root` itself (following a link there: the operator chose it).
fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags_directory()
        .open(root)?;
    Ok(OwnedFd::from(dir))
}

/// `OpenOptions` with `O_DIRECTORY`.
trait DirectoryFlag {
    fn custom_flags_directory(&mut self) -> &mut Self;
}

impl DirectoryFlag for fs::OpenOptions {
    fn custom_flags_directory(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY)
    }
}

/// Opens the directory `components` beneath `root`, none of them a symbolic link; with `create`,
/// makes missing ones (fsyncing each parent so the new entries survive a crash).
pub(super) fn open_dir_beneath(
    root: &Path,
    components: &[&str],
    create: bool,
) -> std::io::Result<OwnedFd> {
    let mut dir = match open_root(root) {
        Err(e) if create && e.kind() == ErrorKind::NotFound => {
            fs::create_dir_all(root)?;
            open_root(root)?
        }
        other => other?,
    };
    for name in components {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let next = match openat(&dir, name, flags, 0) {
            Err(e) if create && e.kind() == ErrorKind::NotFound => {
                let c = CString::new(*name)
                    .map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
                // SAFETY: a valid directory descriptor and a NUL-terminated name.
                let r = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o777) };
                if r != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != ErrorKind::AlreadyExists {
                        return Err(e);
                    }
                }
                File::from(dir.try_clone()?).sync_all()?;
                openat(&dir, name, flags, 0)?
            }
            // O_DIRECTORY | O_NOFOLLOW on a link says "not a directory": say what it is.
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) && is_link(&dir, name) => {
                return Err(std::io::Error::from_raw_os_error(libc::ELOOP))
            }
            other => other?,
        };
        dir = next;
    }
    Ok(dir)
}

/// `fstatat(2)` of `name` in `dir`, not following a link.
pub(super) fn lstat_at(dir: &OwnedFd, name: &str) -> std::io::Result<libc::stat> {
    let c = CString::new(name).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: a zeroed stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, a NUL-terminated name and a stat buffer we own.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `name` in `dir` is a symbolic link (not followed).
fn is_link(dir: &OwnedFd, name: &str) -> bool {
    lstat_at(dir, name).is_ok_and(|st| (st.st_mode & libc::S_IFMT) == libc::S_IFLNK)
}

/// Splits an object path into its folders and its name.
pub(super) fn split(path: &str) -> (Vec<&str>, &str) {
    let mut parts: Vec<&str> = path.split('/').collect();
    let name = parts.pop().unwrap_or_default();
    (parts, name)
}

/// Opens the object `path` beneath `root` without following any symbolic link.
pub(super) fn open_beneath(root: &Path, path: &str) -> std::io::Result<File> {
    let (dirs, name) = split(path);
    let dir = open_dir_beneath(root, &dirs, false)?;
    // O_NONBLOCK: a FIFO planted at an object's name must not hang the open (it is then
    // refused as not a regular file); it changes nothing for regular files.
    Ok(File::from(openat(
        &dir,
        name,
        libc::O_RDONLY | libc::O_NONBLOCK,
        0,
    )?))
}

/// `linkat(2)` of `from` in `from_dir` to `to` in `to_dir` (fails if `to` exists, whatever it
/// is, a link included).
pub(super) fn linkat(
    from_dir: &OwnedFd,
    from: &str,
    to_dir: &OwnedFd,
    to: &str,
) -> std::io::Result<()> {
    let from = CString::new(from).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    let to = CString::new(to).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: valid directory descriptors and NUL-terminated names; flags 0 follows nothing.
    let r = unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `unlinkat(2)` of `name` in `dir` (a link is removed itself, never its target).
pub(super) fn unlinkat(dir: &OwnedFd, name: &str) -> std::io::Result<()> {
    let name = CString::new(name).map_err(|_| std::io::Error::from(ErrorKind::InvalidInput))?;
    // SAFETY: a valid directory descriptor and a NUL-terminated name.
    let r = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
