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

/// Applies owner (when permitted), mode and modification time to `path`, never following a
/// final symlink (a link where a file or folder was restored is an error). Owner first: chown clears set-id bits that chmod then restores.
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
        // Never through a link: one swapped in for the restored file (by a local user who can
        // write in its folder) would hand its target this mode. A link there is an error.
        // SAFETY: as above; fchmodat with AT_SYMLINK_NOFOLLOW changes nothing a link names.
        check(
            unsafe {
                libc::fchmodat(
                    libc::AT_FDCWD,
                    c.as_ptr(),
                    node.mode as libc::mode_t,
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Red team: `apply` used chmod, which follows links: a local user who swapped a link in
    /// for a restored file got its target the file's mode (a restore runs as root).
    #[test]
    fn metadata_is_never_applied_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("restored");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let meta = std::fs::symlink_metadata(&target).unwrap();
        let mut node = node_from(b"restored", NodeKind::File, &meta);
        node.mode = 0o4777;
        assert!(apply(&link, &node, false).is_err());
        let mode = std::fs::metadata(&target).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "the link's target got mode {mode:o}");
    }
}
