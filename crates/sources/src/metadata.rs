//! Reading and applying file metadata (owner, mode, times) the way the tree format stores it.

use std::ffi::CString;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use embassy_core::format::tree::{Node, NodeKind};
use embassy_core::{Error, Result};

/// A tree node for `name` with the metadata of `meta` (content, subtree and target left empty).
pub fn node_from(name: &[u8], kind: NodeKind, meta: &Metadata) -> Node {
    Node {
        name: name.to_vec(),
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        inode: meta.ino(),
        size: if kind == NodeKind::File {
            meta.size()
        } else {
            0
        },
        content: Vec::new(),
        subtree: None,
        target: None,
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::invalid(format!("path {} contains a NUL byte", path.display())))
}

fn check(rc: libc::c_int, what: &str, path: &Path) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::io(
            format!("{what} {}", path.display()),
            std::io::Error::last_os_error(),
        ))
    }
}

/// True when this process may give files away (restores ownership only then).
pub fn can_chown() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Applies owner (when permitted), mode and modification time to `path`, without following a
/// final symlink. Owner first: chown clears set-id bits that chmod then restores.
pub fn apply(path: &Path, node: &Node, chown: bool) -> Result<()> {
    let c = c_path(path)?;
    if chown {
        // SAFETY: c is a valid NUL-terminated path; lchown does not retain it.
        check(
            unsafe { libc::lchown(c.as_ptr(), node.uid, node.gid) },
            "setting owner of",
            path,
        )?;
    }
    if node.kind != NodeKind::Symlink {
        // SAFETY: as above; chmod on a non-symlink.
        check(
            unsafe { libc::chmod(c.as_ptr(), node.mode as libc::mode_t) },
            "setting mode of",
            path,
        )?;
    }
    let ts = libc::timespec {
        tv_sec: node.mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: node.mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = [ts, ts];
    // SAFETY: times points at two valid timespecs; AT_FDCWD with an absolute or relative path.
    check(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        "setting times of",
        path,
    )
}

/// Creates a named pipe.
pub fn make_fifo(path: &Path) -> Result<()> {
    let c = c_path(path)?;
    // SAFETY: c is a valid path.
    check(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        "creating fifo",
        path,
    )
}
