//! Giving restored files to the database's owner (a restore often runs as root).

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::PgError;

fn io(what: String) -> impl FnOnce(std::io::Error) -> PgError {
    move |e| PgError::Restore(format!("{what}: {e}"))
}

/// Gives every file and folder under `dir` (links not followed) to `uid:gid`, deepest first:
/// each folder after everything in it and `dir` last, so that a folder stays closed to the new
/// owner until all below it is given away (nobody can swap a link into a path still to walk).
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), PgError> {
    let mut stack = vec![(dir.to_path_buf(), false)];
    while let Some((p, listed)) = stack.pop() {
        if !listed {
            let meta = fs::symlink_metadata(&p).map_err(io(format!("reading {}", p.display())))?;
            if meta.is_dir() {
                let entries: Vec<_> = fs::read_dir(&p)
                    .map_err(io(format!("listing {}", p.display())))?
                    .collect::<Result<_, _>>()
                    .map_err(io(format!("listing {}", p.display())))?;
                stack.push((p, true));
                stack.extend(entries.into_iter().map(|e| (e.path(), false)));
                continue;
            }
        }
        let c = std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| PgError::Restore(format!("{} has a NUL byte", p.display())))?;
        // SAFETY: c is a valid NUL-terminated path; lchown does not keep it.
        if unsafe { libc::lchown(c.as_ptr(), uid, gid) } != 0 {
            return Err(PgError::Restore(format!(
                "giving {} to uid {uid}: {}; run the restore as root or as the database's owner",
                p.display(),
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}
