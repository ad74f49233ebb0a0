//! `embassy mount DATASET MOUNTPOINT`: a dataset's versions as a read-only file system (FUSE):
//! a folder per version number and `latest`, a link to the newest. Every read goes through the
//! version's reader, so a damaged or tampered chunk is an I/O error (EIO), never wrong bytes.
//! Runs until Ctrl-C or SIGTERM, then unmounts.
//!
//! The tree itself (inodes, listings, byte ranges) is `embassy_ops::browse::mount::MountTree`;
//! this file adapts it to the kernel through the `fuser` crate's pure-Rust mount (no libfuse):
//! as root it mounts directly, otherwise through `fusermount3` (Debian package `fuse3`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use clap::Args;
use embassy_core::format::tree::NodeKind;
use embassy_core::{Error, Result};
use embassy_ops::browse::mount::{Attr, MountTree};
use fuser::{
    FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry,
    ReplyOpen, Request,
};

use crate::{open_vault, unlock, Cli};

/// Arguments of `embassy mount`.
#[derive(Args)]
pub struct MountArgs {
    /// The dataset.
    pub dataset: String,
    /// An empty folder to mount it on.
    pub mountpoint: PathBuf,
    /// Also versions no witnessed checkpoint covers yet (when the vault requires witnesses).
    #[arg(long)]
    pub unwitnessed: bool,
}

/// Versions never change: the kernel may keep what it was told.
const TTL: Duration = Duration::from_secs(3600);

/// Runs `embassy mount`.
pub fn run(cli: &Cli, args: &MountArgs) -> Result<ExitCode> {
    fuse_available()?;
    mountpoint_usable(&args.mountpoint)?;
    let vault = open_vault(cli)?;
    // The newest version is proved first (an unknown dataset is an error here).
    let versions = embassy_ops::browse::versions(&vault, &args.dataset, args.unwitnessed)?;
    let keyring = unlock(cli, &vault)?;
    let newest = versions.last().map_or(0, |v| v.number);
    let count = versions.len();
    let tree = MountTree::new(vault.site().clone(), keyring, versions);
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| Error::io("listening for Ctrl-C and SIGTERM", e))?;
    let options = [
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::FSName(format!("embassy:{}", args.dataset)),
        MountOption::Subtype("embassy".into()),
    ];
    let session = fuser::spawn_mount2(Fs { tree }, &args.mountpoint, &options).map_err(|e| {
        Error::io(
            format!(
                "mounting {} on {} (FUSE)",
                args.dataset,
                args.mountpoint.display()
            ),
            e,
        )
    })?;
    eprintln!(
        "mounted {} read-only on {}: {count} version{} (folders 1..{newest} as numbered, `latest` -> {newest}); \
         Ctrl-C or SIGTERM unmounts",
        args.dataset,
        args.mountpoint.display(),
        if count == 1 { "" } else { "s" }
    );
    let mut signals = signals;
    // Until a signal, or until someone else unmounted it (the session then ends).
    let mut stopped_by = None;
    while stopped_by.is_none() && !session.guard.is_finished() {
        stopped_by = signals.pending().next();
        if stopped_by.is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if stopped_by.is_some() {
        unmount(&args.mountpoint);
    }
    drop(session);
    eprintln!("unmounted {}", args.mountpoint.display());
    Ok(ExitCode::SUCCESS)
}

/// Unmounts; when the mount point is busy (a shell inside it), detaches it lazily and says so.
fn unmount(mountpoint: &Path) {
    let Ok(path) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: umount2 reads a NUL-terminated path we own.
    if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
        return;
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EBUSY) {
        eprintln!(
            "{} is busy (a program or shell is inside it): detached now, gone once they leave",
            mountpoint.display()
        );
        // SAFETY: as above.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
            return;
        }
    }
    // Not root: fusermount3 unmounts for us (lazily, like the detach above).
    for tool in ["fusermount3", "fusermount"] {
        let done = std::process::Command::new(tool)
            .args(["-u", "-z", "--"])
            .arg(mountpoint)
            .status()
            .is_ok_and(|s| s.success());
        if done {
            return;
        }
    }
}

/// FUSE is usable here: /dev/fuse exists and, when not root, fusermount3 is installed.
fn fuse_available() -> Result<()> {
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match fuse_problem(Path::new("/dev/fuse"), root, std::env::var_os("PATH")) {
        Some(problem) => Err(Error::invalid(problem)),
        None => Ok(()),
    }
}

/// Why FUSE cannot be used, given the device, whether we are root and the PATH.
fn fuse_problem(device: &Path, root: bool, path: Option<std::ffi::OsString>) -> Option<String> {
    if !device.exists() {
        return Some(format!(
            "FUSE is not available on this machine: {} does not exist (load the module with \
             `modprobe fuse`; in a container, start it with --device /dev/fuse); `embassy \
             restore` works without FUSE",
            device.display()
        ));
    }
    let on_path = |tool: &str| {
        path.as_ref()
            .is_some_and(|p| std::env::split_paths(p).any(|dir| dir.join(tool).is_file()))
    };
    if !root && !on_path("fusermount3") && !on_path("fusermount") {
        return Some(
            "mounting without root needs fusermount3, which is not installed: install the fuse3 \
             package (`apt-get install fuse3` on Debian and Ubuntu)"
                .to_string(),
        );
    }
    None
}

fn mountpoint_usable(mountpoint: &Path) -> Result<()> {
    let mut entries = std::fs::read_dir(mountpoint).map_err(|e| {
        Error::io(
            format!(
                "opening the mount point {} (it must be an empty folder)",
                mountpoint.display()
            ),
            e,
        )
    })?;
    if entries.next().is_some() {
        return Err(Error::invalid(format!(
            "the mount point {} is not empty: mount on an empty folder",
            mountpoint.display()
        )));
    }
    Ok(())
}

/// The tree as a FUSE file system.
struct Fs {
    tree: MountTree,
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let time = if a.mtime_ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(a.mtime_ns as u64)
    } else {
        UNIX_EPOCH
    };
    FileAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        nlink: if a.kind == NodeKind::Dir { 2 } else { 1 },
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// The errno for an error: no such entry, or EIO for everything else (damage included).
fn errno(e: &Error) -> i32 {
    match e {
        Error::NotFound(_) => libc::ENOENT,
        _ => libc::EIO,
    }
}

impl Filesystem for Fs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent, name.as_bytes()) {
            Ok(Some(attr)) => reply.entry(&TTL, &file_attr(&attr), 0),
            Ok(None) => reply.error(libc::ENOENT),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.tree.attr(ino) {
            Some(attr) => reply.attr(&TTL, &file_attr(&attr)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.tree.link_target(ino) {
            Some(target) => reply.data(&target),
            None => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, _ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        reply.opened(0, 0);
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        match self.tree.read(ino, offset, size) {
            Ok(bytes) => reply.data(&bytes),
            Err(e) => {
                eprintln!(
                    "error: reading inode {ino}: {}",
                    crate::output::escape(&e.to_string())
                );
                reply.error(errno(&e))
            }
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.tree.list(ino) {
            Ok(entries) => entries,
            Err(e) => return reply.error(errno(&e)),
        };
        let dots = [
            (b".".to_vec(), ino, NodeKind::Dir),
            (b"..".to_vec(), ino, NodeKind::Dir),
        ];
        let all = dots.into_iter().chain(entries);
        for (i, (name, child, kind)) in all.enumerate().skip(offset.max(0) as usize) {
            if reply.add(
                child,
                (i + 1) as i64,
                file_type(kind),
                OsStr::from_bytes(&name),
            ) {
                break;
            }
        }
        reply.ok();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::fuse_problem;

    #[test]
    fn without_fuse_the_error_names_what_to_install() {
        let missing = fuse_problem(Path::new("/nonexistent/fuse"), true, None).unwrap();
        assert!(
            missing.contains("/nonexistent/fuse does not exist"),
            "{missing}"
        );
        assert!(missing.contains("modprobe fuse"), "{missing}");
        let empty = tempfile::tempdir().unwrap();
        let no_tool = fuse_problem(
            Path::new("/"),
            false,
            Some(empty.path().as_os_str().to_os_string()),
        )
        .unwrap();
        assert!(no_tool.contains("fuse3"), "{no_tool}");
        // Root mounts without fusermount3.
        assert_eq!(
            fuse_problem(Path::new("/"), true, Some(empty.path().into())),
            None
        );
        std::fs::write(empty.path().join("fusermount3"), "").unwrap();
        assert_eq!(
            fuse_problem(Path::new("/"), false, Some(empty.path().into())),
            None
        );
    }
}
