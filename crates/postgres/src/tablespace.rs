//! Tablespaces outside the data directory in base backups: the map of their original
//! locations (PostgreSQL's tablespace_map format, kept in a base backup's manifest properties),
//! the operator's relocations (`OLD=NEW`, like `pg_basebackup -T`), and putting each tablespace
//! back on restore — its files at its location, the data directory's `pg_tblspc/<oid>` a link
//! to it, as PostgreSQL expects.
//!
//! A base backup version holds a tablespace's files under `pg_tblspc/<oid>/` (the
//! `PG_<major>_<catversion>` folder and below, as they sit in the tablespace's location).

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use embassy_core::engine::reader::VersionReader;
use embassy_core::format::tree::{NodeKind, Tree};
use embassy_core::id::ChunkId;
use embassy_core::progress::Progress;
use embassy_sources::files::{self, RestoreOptions};
use embassy_sources::selection::Patterns;

use crate::error::PgError;
use crate::replication::basebackup::TablespaceInfo;

/// The tablespace_map text for `tablespaces` (`<oid> <location>\n` each, a backslash before
/// any backslash, line feed or carriage return in the location); `None` when there are none.
pub fn map_text(tablespaces: &[TablespaceInfo]) -> Option<String> {
    if tablespaces.is_empty() {
        return None;
    }
    let mut out = String::new();
    for t in tablespaces {
        out.push_str(&t.oid.to_string());
        out.push(' ');
        for c in t.location.chars() {
            if matches!(c, '\\' | '\n' | '\r') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\n');
    }
    Some(out)
}

/// Reads tablespace_map text back into (OID, location) pairs.
pub fn parse_map(text: &str) -> Result<Vec<TablespaceInfo>, PgError> {
    let bad = |why: &str| {
        PgError::Restore(format!(
            "the base backup's tablespace map is damaged ({why}): {text:?}"
        ))
    };
    let mut out = Vec::new();
    let mut chars = text.chars();
    loop {
        let mut oid = String::new();
        let mut started = false;
        for c in chars.by_ref() {
            if c == ' ' {
                started = true;
                break;
            }
            oid.push(c);
        }
        if !started {
            if oid.trim().is_empty() {
                return Ok(out);
            }
            return Err(bad("a line without a location"));
        }
        let mut location = String::new();
        let mut ended = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => location.extend(chars.next()),
                '\n' => {
                    ended = true;
                    break;
                }
                c => location.push(c),
            }
        }
        let oid = oid.parse().map_err(|_| bad("an OID is not a number"))?;
        out.push(TablespaceInfo { oid, location });
        if !ended {
            return Ok(out);
        }
    }
}

/// One relocation asked for by the operator: the tablespace at `old` goes to `new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relocation {
    /// The tablespace's location when the backup was taken.
    pub old: PathBuf,
    /// Where to put it now.
    pub new: PathBuf,
}

impl std::str::FromStr for Relocation {
    type Err = PgError;

    /// `OLD=NEW` (a `\=` stands for an `=` inside a path), both absolute.
    fn from_str(s: &str) -> Result<Self, PgError> {
        let mut old = String::new();
        let mut new = None::<String>;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            let c = match c {
                '\\' if chars.peek() == Some(&'=') => chars.next().unwrap_or(c),
                '=' if new.is_none() => {
                    new = Some(String::new());
                    continue;
                }
                '=' => {
                    return Err(PgError::Invalid(format!(
                        "tablespace relocation {s:?} has more than one '=': write OLD=NEW, with \
                         \\= for an '=' inside a path"
                    )))
                }
                c => c,
            };
            new.as_mut().unwrap_or(&mut old).push(c);
        }
        let new = new.unwrap_or_default();
        if !old.starts_with('/') || !new.starts_with('/') {
            return Err(PgError::Invalid(format!(
                "tablespace relocation {s:?} must be OLD=NEW with both absolute paths"
            )));
        }
        Ok(Relocation {
            old: PathBuf::from(old),
            new: PathBuf::from(new),
        })
    }
}

/// A tablespace to put back: its OID and the folder its files go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedTablespace {
    /// Its OID (`pg_tblspc/<oid>`).
    pub oid: u32,
    /// Its location when the backup was taken.
    pub original: PathBuf,
    /// Where it is restored (the original, or the relocation's new folder).
    pub location: PathBuf,
}

/// Decides where each tablespace of a backup goes, before anything is written. The backup's
/// locations come from its source host, which may be hostile, and a restore often runs as
/// root: a location outside the data directory is never written unless the operator chose a
/// folder for it (`OLD=NEW`, NEW may equal OLD). Every relocation must name one of the
/// backup's tablespaces; two tablespaces may not share a folder; a chosen folder must be new
/// (its parent exists: the restore creates only the folder itself) or an empty folder (not a
/// link) that the server's owner `owner` (this process's user when `None`) owns already — a
/// restore never takes over a folder that belongs to someone else. Locations inside the data
/// directory (`pg_tblspc/<oid>` of an in-place tablespace) stay where they are.
pub fn plan(
    map: Option<&str>,
    relocations: &[Relocation],
    owner: Option<(u32, u32)>,
) -> Result<Vec<PlacedTablespace>, PgError> {
    let tablespaces = match map {
        Some(text) => parse_map(text)?,
        None => Vec::new(),
    };
    for r in relocations {
        if !tablespaces.iter().any(|t| Path::new(&t.location) == r.old) {
            let known: Vec<&str> = tablespaces.iter().map(|t| t.location.as_str()).collect();
            return Err(PgError::Restore(format!(
                "the tablespace relocation names {}, which is not a tablespace location of this \
                 base backup ({}): relocate one of those",
                r.old.display(),
                if known.is_empty() {
                    "it has none".to_string()
                } else {
                    format!("it has {}", known.join(", "))
                }
            )));
        }
    }
    let unchosen: Vec<&TablespaceInfo> = tablespaces
        .iter()
        .filter(|t| Path::new(&t.location).is_absolute())
        .filter(|t| !relocations.iter().any(|r| r.old == Path::new(&t.location)))
        .collect();
    if !unchosen.is_empty() {
        return Err(PgError::Vault(embassy_core::Error::Refused {
            kind: embassy_core::ErrorKind::Config,
            problem: format!(
                "this base backup has tablespaces at {}: a restore never writes where a backup \
                 alone says (its source host may have been tampered with, and a restore often \
                 runs as root), so choose a folder for each, even to put it back where it was; \
                 nothing was written",
                unchosen
                    .iter()
                    .map(|t| format!("{} (OID {})", t.location, t.oid))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            way_out: embassy_core::error::WayOut::PgTablespaceMap {
                locations: unchosen.iter().map(|t| t.location.clone()).collect(),
            },
        }));
    }
    let owner_uid = owner.map_or_else(effective_uid, |(uid, _)| uid);
    let mut placed: Vec<PlacedTablespace> = Vec::new();
    for t in &tablespaces {
        let original = PathBuf::from(&t.location);
        if !original.is_absolute() {
            continue;
        }
        let location = relocations
            .iter()
            .rev()
            .find(|r| r.old == original)
            .map_or_else(|| original.clone(), |r| r.new.clone());
        // A path that climbs with `..` could lead a restore run as root somewhere the
        // operator did not read in it.
        if location
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(PgError::Restore(format!(
                "tablespace {} would be restored to {}, a path with '..': relocate it to a \
                 plain absolute folder",
                t.oid,
                location.display()
            )));
        }
        if let Some(other) = placed.iter().find(|p| p.location == location) {
            return Err(PgError::Restore(format!(
                "tablespaces {} and {} would both be restored to {}: relocate one of them to \
                 another folder",
                other.oid,
                t.oid,
                location.display()
            )));
        }
        check_target(t.oid, &original, &location, owner_uid)?;
        placed.push(PlacedTablespace {
            oid: t.oid,
            original,
            location,
        });
    }
    Ok(placed)
}

/// This process's effective user id.
fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A tablespace's chosen folder: new under an existing folder, or an existing empty folder
/// (not a link) that `owner_uid` owns.
fn check_target(oid: u32, original: &Path, location: &Path, owner_uid: u32) -> Result<(), PgError> {
    let relocated = if original == location {
        "(its location when backed up) ".to_string()
    } else {
        format!("(relocated from {}) ", original.display())
    };
    let meta = match fs::symlink_metadata(location) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = location.parent().unwrap_or(Path::new("/"));
            return match fs::metadata(parent) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(PgError::Restore(format!(
                    "tablespace {oid} would be restored to {} {relocated}but {} is not an \
                     existing folder: a restore creates only the tablespace's own folder, in a \
                     folder you made; nothing was written",
                    location.display(),
                    parent.display()
                ))),
            };
        }
        Err(e) => {
            return Err(PgError::Restore(format!(
                "cannot check tablespace {oid}'s folder {}: {e}",
                location.display()
            )))
        }
    };
    let empty = meta.is_dir()
        && fs::read_dir(location)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
    if !empty {
        return Err(PgError::Restore(format!(
            "tablespace {oid} would be restored to {} {relocated}but that {}: empty it or move \
             it away, or relocate the tablespace to a new or empty folder; nothing was written",
            location.display(),
            if meta.is_dir() {
                "folder is not empty"
            } else {
                "is not a folder"
            }
        )));
    }
    if meta.uid() != owner_uid {
        return Err(PgError::Restore(format!(
            "tablespace {oid} would be restored to {} {relocated}but that folder belongs to \
             uid {}, not to the server's owner (uid {owner_uid}): a restore never takes over a \
             folder that belongs to someone else; choose a new folder, or give this one to the \
             server's owner yourself; nothing was written",
            location.display(),
            meta.uid()
        )));
    }
    Ok(())
}

/// Patterns that leave the tablespaces restored apart out of the data directory's restore.
pub fn excluded(placed: &[PlacedTablespace]) -> Result<Patterns, PgError> {
    let texts: Vec<String> = placed
        .iter()
        .map(|p| format!("/pg_tblspc/{}", p.oid))
        .collect();
    Patterns::parse(&texts).map_err(|e| PgError::Restore(format!("tablespace patterns: {e}")))
}

/// How deep a tablespace's folders go: `PG_<major>_<catversion>/<database>/<file>`, with room
/// for PostgreSQL's own subfolders; a deeper tree is not a tablespace.
const TABLESPACE_DEPTH: usize = 4;

/// Checks, before anything is written, that each tablespace the restore puts back holds what
/// a PostgreSQL tablespace holds: only `PG_<major>_<catversion>` folders at its top, and only
/// folders and regular files below, a few levels deep. Its files and their names come from the
/// source host, which may be compromised, and a restore (often run as root) writes them at a
/// location the backup names: a link, a pipe or any other name there is refused.
pub fn check_layouts(reader: &VersionReader, placed: &[PlacedTablespace]) -> Result<(), PgError> {
    let root = reader.root().map_err(PgError::Vault)?;
    let pg_tblspc = root
        .find(b"pg_tblspc")
        .and_then(|n| n.subtree)
        .map(|id| reader.read_tree(&id))
        .transpose()
        .map_err(PgError::Vault)?
        .unwrap_or_default();
    let read = |id: &ChunkId| reader.read_tree(id).map_err(PgError::Vault);
    for p in placed {
        let oid = p.oid.to_string();
        let Some(node) = pg_tblspc.find(oid.as_bytes()) else {
            continue; // reported as damage when it is restored
        };
        let tree = match node.subtree {
            Some(id) => read(&id)?,
            None => Tree::default(),
        };
        check_layout(p.oid, &tree, &read)?;
    }
    Ok(())
}

/// The layout rule of [`check_layouts`] for one tablespace's top folder `tree`.
fn check_layout(
    oid: u32,
    tree: &Tree,
    read: &dyn Fn(&ChunkId) -> Result<Tree, PgError>,
) -> Result<(), PgError> {
    let refused = |path: &[u8], why: &str| {
        PgError::Restore(format!(
            "tablespace {oid} of this base backup holds {}, which {why}: a tablespace holds only \
             PostgreSQL's PG_<major>_<catversion> folders, with folders and files below, and the \
             backup's source host may have been tampered with; nothing was written: restore \
             another base backup, and check the source host",
            String::from_utf8_lossy(path)
        ))
    };
    for child in &tree.nodes {
        if child.kind != NodeKind::Dir || !is_version_folder(&child.name) {
            return Err(refused(
                &child.name,
                "is not a PG_<major>_<catversion> folder",
            ));
        }
        let mut pending = vec![(child.name.clone(), child.subtree, 1usize)];
        while let Some((path, subtree, depth)) = pending.pop() {
            let Some(id) = subtree else { continue };
            for node in &read(&id)?.nodes {
                let mut below = path.clone();
                below.push(b'/');
                below.extend_from_slice(&node.name);
                match node.kind {
                    NodeKind::File => {}
                    NodeKind::Dir if depth < TABLESPACE_DEPTH => {
                        pending.push((below, node.subtree, depth + 1))
                    }
                    NodeKind::Dir => return Err(refused(&below, "lies too deep")),
                    NodeKind::Symlink | NodeKind::Fifo => {
                        return Err(refused(&below, "is neither a folder nor a regular file"))
                    }
                }
            }
        }
    }
    Ok(())
}

/// `PG_<digits>_<digits>`: the folder PostgreSQL makes in a tablespace per major version.
fn is_version_folder(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(b"PG_") else {
        return false;
    };
    let mut parts = rest.split(|b| *b == b'_');
    let digits =
        |p: Option<&[u8]>| p.is_some_and(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// Restores each tablespace's files from `reader` into its chosen folder and links the data
/// directory's `pg_tblspc/<oid>` to it; with `owner`, gives the folder's contents and then the
/// folder to that owner.
///
/// Each folder is held open and written only through that handle (`/proc/self/fd/N`), and
/// belongs to this process's user, mode 0700, while it is filled: no other local user (the
/// server's owner included, when the folder was already its) can add to it or swap a link into
/// it meanwhile; the owner gets everything deepest first and the folder itself last.
pub fn restore_tablespaces(
    reader: &VersionReader,
    data_dir: &Path,
    placed: &[PlacedTablespace],
    owner: Option<(u32, u32)>,
    progress: &dyn Progress,
) -> Result<(), PgError> {
    let root = reader.root().map_err(PgError::Vault)?;
    for p in placed {
        let io = |what: String| move |e: std::io::Error| PgError::Restore(format!("{what}: {e}"));
        let oid = p.oid.to_string();
        let children = root
            .find(b"pg_tblspc")
            .and_then(|n| n.subtree)
            .map(|id| reader.read_tree(&id))
            .transpose()
            .map_err(PgError::Vault)?
            .and_then(|t| t.find(oid.as_bytes()).and_then(|n| n.subtree))
            .map(|id| reader.read_tree(&id))
            .transpose()
            .map_err(PgError::Vault)?
            .ok_or_else(|| {
                PgError::Restore(format!(
                    "the base backup lists tablespace {oid} but holds no pg_tblspc/{oid}: it is \
                     damaged; restore another base backup"
                ))
            })?;
        let folder = take_folder(p, owner)?;
        // The folder itself, whatever its path is made to name meanwhile.
        let through = PathBuf::from(format!("/proc/self/fd/{}/.", folder.as_raw_fd()));
        for child in &children.nodes {
            let name = std::ffi::OsStr::from_bytes(&child.name);
            let options = RestoreOptions {
                subpath: Some(Path::new("pg_tblspc").join(&oid).join(name)),
                // Checked empty when taken; later children join the first.
                overwrite: true,
                ..RestoreOptions::default()
            };
            files::restore(reader, &through, &options, progress).map_err(PgError::Vault)?;
        }
        if let Some((uid, gid)) = owner {
            crate::owner::chown_tree(&through, uid, gid)?;
        }
        drop(folder);
        let link = data_dir.join("pg_tblspc").join(&oid);
        if let Ok(meta) = fs::symlink_metadata(&link) {
            if meta.is_dir() {
                fs::remove_dir(&link).map_err(io(format!("removing {}", link.display())))?;
            } else {
                fs::remove_file(&link).map_err(io(format!("removing {}", link.display())))?;
            }
        }
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        std::os::unix::fs::symlink(&p.location, &link)
            .map_err(io(format!("linking {}", link.display())))?;
        if let Some((uid, gid)) = owner {
            crate::owner::chown_tree(&link, uid, gid)?;
        }
    }
    Ok(())
}

/// Opens tablespace folder `p.location` (creating it, mode 0700, when new; a link is refused)
/// and makes it this process's user's, mode 0700, for the restore to fill: [`plan`]'s checks
/// again on the open folder (what it names may have changed since), its emptiness checked once
/// nobody else can add to it.
fn take_folder(p: &PlacedTablespace, owner: Option<(u32, u32)>) -> Result<OwnedFd, PgError> {
    use std::os::unix::fs::OpenOptionsExt;
    let at = p.location.display();
    let refused = |why: String| {
        PgError::Restore(format!(
            "tablespace {}'s folder {at} {why}: nothing was written there; choose a new folder \
             and restore again",
            p.oid
        ))
    };
    let created = match fs::DirBuilder::new().mode(0o700).create(&p.location) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(PgError::Restore(format!("creating {at}: {e}"))),
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&p.location)
        .map_err(|e| {
            refused(format!(
                "cannot be opened as a folder (a link is refused): {e}"
            ))
        })?;
    let meta = file
        .metadata()
        .map_err(|e| PgError::Restore(format!("reading {at}: {e}")))?;
    let me = effective_uid();
    let expected = if created {
        me
    } else {
        owner.map_or(me, |(uid, _)| uid)
    };
    if meta.uid() != expected {
        return Err(refused(format!(
            "belongs to uid {}, not {expected} (it changed after it was checked)",
            meta.uid()
        )));
    }
    let fd = file.as_raw_fd();
    if meta.uid() != me {
        // SAFETY: fd is an open descriptor this function owns; getegid cannot fail.
        if unsafe { libc::fchown(fd, me, libc::getegid()) } != 0 {
            return Err(PgError::Restore(format!(
                "taking {at} for the restore: {}; run the restore as root or as the server's \
                 owner",
                std::io::Error::last_os_error()
            )));
        }
    }
    // SAFETY: as above.
    if unsafe { libc::fchmod(fd, 0o700) } != 0 {
        return Err(PgError::Restore(format!(
            "setting mode 0700 on {at}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let through = format!("/proc/self/fd/{fd}");
    let empty = fs::read_dir(&through)
        .map_err(|e| PgError::Restore(format!("listing {at} through {through}: {e}")))?
        .next()
        .is_none();
    if !empty {
        // Given back as it was found.
        // SAFETY: as above.
        unsafe { libc::fchown(fd, meta.uid(), meta.gid()) };
        return Err(refused(
            "is not empty (it changed after it was checked)".into(),
        ));
    }
    Ok(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip_with_postgresqls_escapes() {
        let ts = vec![
            TablespaceInfo {
                oid: 16400,
                location: "/srv/ts one".into(),
            },
            TablespaceInfo {
                oid: 16401,
                location: "/srv/odd\\name\nx".into(),
            },
        ];
        let text = map_text(&ts).unwrap();
        assert_eq!(text, "16400 /srv/ts one\n16401 /srv/odd\\\\name\\\nx\n");
        assert_eq!(parse_map(&text).unwrap(), ts);
        assert!(map_text(&[]).is_none());
        assert!(parse_map("x /a\n").is_err());
    }

    #[test]
    fn relocations_parse_like_pg_basebackups() {
        let r: Relocation = "/old=/new".parse().unwrap();
        assert_eq!(
            (r.old.as_path(), r.new.as_path()),
            (Path::new("/old"), Path::new("/new"))
        );
        let r: Relocation = "/a\\=b=/c".parse().unwrap();
        assert_eq!(r.old, Path::new("/a=b"));
        assert!("old=/new".parse::<Relocation>().is_err());
        assert!("/old".parse::<Relocation>().is_err());
        assert!("/a=/b=/c".parse::<Relocation>().is_err());
    }

    /// A tablespace in a backup from a compromised source: anything but PostgreSQL's layout
    /// is refused before the restore writes it where the backup says.
    #[test]
    fn a_tablespace_holds_only_postgresqls_layout() {
        use embassy_core::format::tree::Node;
        use std::collections::HashMap;
        let node = |name: &str, kind: NodeKind, subtree: Option<ChunkId>| Node {
            name: name.as_bytes().to_vec(),
            kind,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            ctime_ns: 0,
            inode: 0,
            size: 0,
            content: Vec::new(),
            subtree,
            target: None,
        };
        let mut trees: HashMap<ChunkId, Tree> = HashMap::new();
        let mut put = |nodes: Vec<Node>| {
            let tree = Tree { nodes };
            let id = ChunkId(embassy_core::id::ObjectId::of(&tree.encode()).0);
            trees.insert(id, tree);
            id
        };
        let relations = put(vec![
            node("16384", NodeKind::File, None),
            node("16384_fsm", NodeKind::File, None),
        ]);
        let database = put(vec![node("16390", NodeKind::Dir, Some(relations))]);
        let link = put(vec![node("16384", NodeKind::Symlink, None)]);
        let linked_database = put(vec![node("16390", NodeKind::Dir, Some(link))]);
        let deep = (0..5).fold(None, |below, i| {
            Some(put(vec![node(&format!("d{i}"), NodeKind::Dir, below)]))
        });
        let read = |id: &ChunkId| {
            trees
                .get(id)
                .cloned()
                .ok_or_else(|| PgError::Restore("no such tree".into()))
        };
        let top = |nodes: Vec<Node>| Tree { nodes };
        let fine = top(vec![node("PG_15_202209061", NodeKind::Dir, Some(database))]);
        check_layout(16400, &fine, &read).unwrap();
        check_layout(16400, &top(vec![]), &read).unwrap();
        for (bad, why) in [
            (
                top(vec![node("authorized_keys", NodeKind::File, None)]),
                "authorized_keys",
            ),
            (
                top(vec![node("cron", NodeKind::Dir, Some(database))]),
                "cron",
            ),
            (
                top(vec![node("PG_15_x", NodeKind::Dir, Some(database))]),
                "PG_15_x",
            ),
            (
                top(vec![node("PG_15_1", NodeKind::Symlink, None)]),
                "PG_15_1",
            ),
            (
                top(vec![node("PG_15_1", NodeKind::Dir, Some(linked_database))]),
                "PG_15_1/16390/16384",
            ),
            (
                top(vec![node("PG_15_1", NodeKind::Dir, deep)]),
                "lies too deep",
            ),
        ] {
            let e = check_layout(16400, &bad, &read).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("nothing was written"), "{e}");
        }
    }

    #[test]
    fn plans_refuse_what_would_mix_or_miss() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full");
        fs::create_dir(&full).unwrap();
        fs::write(full.join("x"), b"x").unwrap();
        let map = format!("16400 {}\n", full.display());
        let back = |new: &Path| Relocation {
            old: full.clone(),
            new: new.to_path_buf(),
        };
        let e = plan(Some(&map), &[back(&full)], None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&full.display().to_string()) && e.contains("not empty"),
            "{e}"
        );
        let new = dir.path().join("new");
        let placed = plan(Some(&map), &[back(&new)], None).unwrap();
        assert_eq!(placed[0].location, new);
        let stranger = Relocation {
            old: "/nowhere".into(),
            new: new.clone(),
        };
        assert!(plan(Some(&map), &[stranger], None).is_err());
        assert!(plan(None, &[], None).unwrap().is_empty());
        let climbing = "16400 /srv/../etc/x\n";
        let up = Relocation {
            old: "/srv/../etc/x".into(),
            new: "/srv/../etc/x".into(),
        };
        let e = plan(Some(climbing), &[up], None).unwrap_err().to_string();
        assert!(e.contains("'..'"), "{e}");
    }

    /// Red team: a base backup (sealing credential stolen) named /usr/local/sbin as a
    /// tablespace location, and a root restore handed that root folder to postgres. A location
    /// the operator did not choose is never written; a chosen one is new under an existing
    /// folder, or empty and the server owner's already.
    #[test]
    fn a_restore_writes_only_where_the_operator_chose() {
        let dir = tempfile::tempdir().unwrap();
        let map = "16400 /usr/local/sbin\n16401 /etc/systemd/system/ssh.service.d\n";
        let e = plan(Some(map), &[], None).unwrap_err();
        match &e {
            PgError::Vault(embassy_core::Error::Refused {
                way_out: embassy_core::error::WayOut::PgTablespaceMap { locations },
                ..
            }) => assert_eq!(
                locations,
                &["/usr/local/sbin", "/etc/systemd/system/ssh.service.d"]
            ),
            other => panic!("{other}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("/usr/local/sbin") && text.contains("nothing was written"),
            "{text}"
        );
        let to = |old: &str, new: &Path| Relocation {
            old: old.into(),
            new: new.to_path_buf(),
        };
        // One chosen, one not: still refused, naming the other.
        let e = plan(
            Some(map),
            &[to("/usr/local/sbin", &dir.path().join("a"))],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ssh.service.d") && !e.contains("sbin (OID"),
            "{e}"
        );
        // A new folder needs an existing parent: only the folder itself is created.
        let e = plan(
            Some("16400 /usr/local/sbin\n"),
            &[to("/usr/local/sbin", &dir.path().join("no/such/ts"))],
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not an existing folder"), "{e}");
        // An empty folder someone else owns is never taken over.
        let theirs = dir.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        let mine = fs::metadata(&theirs).unwrap().uid();
        let e = plan(
            Some("16400 /usr/local/sbin\n"),
            &[to("/usr/local/sbin", &theirs)],
            Some((mine + 1, 0)),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("belongs to uid") && e.contains("someone else"),
            "{e}"
        );
        // The server owner's empty folder, or a new one, is fine.
        plan(
            Some("16400 /usr/local/sbin\n"),
            &[to("/usr/local/sbin", &theirs)],
            Some((mine, 0)),
        )
        .unwrap();
    }
}
