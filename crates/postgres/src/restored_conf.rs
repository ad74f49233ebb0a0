//! The configuration a restored data directory brings along comes from the backup: whoever
//! could write the source server's configuration chooses it. Started on the recovery host, a
//! setting such as `archive_command`, `shared_preload_libraries = './x'` or
//! `ssl_passphrase_command` runs code as the server's user there, next to the credential its
//! `restore_command` is given.
//!
//! [`neutralise`] comments such settings out of the restored configuration files
//! (`postgresql.conf`, `postgresql.auto.conf` and what they include inside the data
//! directory), with the include directives that point outside it and the recovery settings the
//! restore itself decides; [`OVERRIDES`] are then appended to `postgresql.auto.conf`, which
//! PostgreSQL reads last, so neither a spelling the scan misses nor an include it cannot edit
//! brings them back. Everything changed is listed for the operator to review.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::PgError;

/// Settings that make PostgreSQL run a program or load a library (PostgreSQL 15), and why.
pub const RUNS_CODE: &[(&str, &str)] = &[
    ("archive_command", "runs a shell command for every WAL file"),
    ("archive_library", "loads a library to archive WAL"),
    (
        "archive_cleanup_command",
        "runs a shell command at restartpoints",
    ),
    (
        "recovery_end_command",
        "runs a shell command when recovery ends",
    ),
    ("restore_command", "runs a shell command to fetch WAL"),
    (
        "ssl_passphrase_command",
        "runs a shell command when TLS keys load",
    ),
    (
        "shared_preload_libraries",
        "loads libraries when the server starts",
    ),
    (
        "session_preload_libraries",
        "loads libraries in every session",
    ),
    (
        "local_preload_libraries",
        "loads libraries in every session",
    ),
    (
        "dynamic_library_path",
        "chooses where libraries are loaded from",
    ),
    ("jit_provider", "loads a library for JIT compilation"),
    (
        "archive_mode",
        "starts the archiver (with the archive command)",
    ),
];

/// Settings that point the server at files outside its data directory (to read its
/// configuration or data from, or to write to as the server's user).
pub const POINTS_ELSEWHERE: &[(&str, &str)] = &[
    (
        "data_directory",
        "makes the server use another data directory",
    ),
    (
        "hba_file",
        "reads client authentication rules from another file",
    ),
    ("ident_file", "reads user name maps from another file"),
    ("external_pid_file", "writes a file where the backup says"),
    ("log_directory", "writes log files where the backup says"),
    ("log_filename", "names the log files the server writes"),
];

/// Recovery settings the restore decides itself (a target, a primary to follow): left in the
/// backup, they would end recovery early, conflict with the target, or follow another server.
pub const RECOVERY: &[(&str, &str)] = &[
    ("recovery_target", "recovery target chosen by the backup"),
    (
        "recovery_target_name",
        "recovery target chosen by the backup",
    ),
    (
        "recovery_target_time",
        "recovery target chosen by the backup",
    ),
    (
        "recovery_target_xid",
        "recovery target chosen by the backup",
    ),
    (
        "recovery_target_lsn",
        "recovery target chosen by the backup",
    ),
    (
        "recovery_target_inclusive",
        "recovery target chosen by the backup",
    ),
    (
        "recovery_target_timeline",
        "recovery target chosen by the backup",
    ),
    (
        "recovery_target_action",
        "recovery target chosen by the backup",
    ),
    ("recovery_min_apply_delay", "delays replay"),
    ("primary_conninfo", "follows a server the backup names"),
    ("primary_slot_name", "follows a server the backup names"),
    (
        "promote_trigger_file",
        "promotes when a file the backup names appears",
    ),
    (
        "synchronous_standby_names",
        "waits for standbys of the backed-up server: every write would hang until one connects; \
         set it again once this server's WAL is streamed",
    ),
];

/// Appended to `postgresql.auto.conf` (read last) before the recovery settings: whatever the
/// configuration says elsewhere, the restored server starts with nothing that runs code.
/// `restore_command` is set by the recovery settings that follow.
pub const OVERRIDES: &[&str] = &[
    "archive_mode = 'off'",
    "archive_command = ''",
    "archive_library = ''",
    "archive_cleanup_command = ''",
    "recovery_end_command = ''",
    "ssl_passphrase_command = ''",
    "shared_preload_libraries = ''",
    "session_preload_libraries = ''",
    "local_preload_libraries = ''",
    "dynamic_library_path = '$libdir'",
    "jit_provider = 'llvmjit'",
];

/// One line of the restored configuration that was commented out (or a file that was not
/// used as it stood).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Neutralised {
    /// The file, relative to the data directory.
    pub file: PathBuf,
    /// Line number (from 1; 0 for the file as a whole).
    pub line: usize,
    /// The setting or directive (lower case).
    pub setting: String,
    /// Its value in the backup.
    pub value: String,
    /// Why it was neutralised.
    pub why: String,
}

impl std::fmt::Display for Neutralised {
    /// `postgresql.auto.conf:3: archive_command = 'cat ...' (runs a shell command ...)`, with
    /// control characters of the backup's text escaped.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {} = '{}' ({})",
            escape_controls(&self.file.display().to_string()),
            self.line,
            escape_controls(&self.setting),
            escape_controls(&self.value),
            self.why
        )
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), the rest as it is.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The name and value of one configuration line, as PostgreSQL reads it (`name [=] value`,
/// names in any case, values bare or quoted with `''` and backslash escapes); `None` for blank
/// lines and comments.
pub fn parse_line(line: &str) -> Option<(String, String)> {
    let s = line.trim_start();
    let name_len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$' | '-')))
        .unwrap_or(s.len());
    if name_len == 0 {
        return None;
    }
    let name = s[..name_len].to_ascii_lowercase();
    let mut rest = s[name_len..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let value = match rest.strip_prefix('\'') {
        Some(quoted) => unquote(quoted),
        None => rest
            .split(|c: char| c.is_whitespace() || c == '#')
            .next()
            .unwrap_or("")
            .to_string(),
    };
    Some((name, value))
}

/// The text of a quoted value after its opening quote, unescaped as PostgreSQL does
/// (`''` is `'`; `\b \f \n \r \t`, `\` and up to three octal digits; `\x` is `x`).
fn unquote(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            '\'' => break,
            '\\' => match chars.next() {
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(d @ '0'..='7') => {
                    let mut v = d as u32 - '0' as u32;
                    for _ in 0..2 {
                        match chars.peek() {
                            Some(&o @ '0'..='7') => {
                                v = v * 8 + (o as u32 - '0' as u32);
                                chars.next();
                            }
                            _ => break,
                        }
                    }
                    out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// `path` without `.` and `..` components (no file system access: symbolic links are not
/// followed); `None` if `..` climbs above the start.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            other => out.push(other),
        }
    }
    Some(out)
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> PgError {
    move |e| PgError::Restore(format!("{what}: {e}"))
}

/// The largest configuration file read (PostgreSQL's own are a few dozen KiB).
const MAX_CONF_BYTES: u64 = 16 << 20;

/// Comments out, in the restored configuration files under `dir`, every setting of
/// [`RUNS_CODE`], [`POINTS_ELSEWHERE`] and [`RECOVERY`] and every include directive pointing
/// outside `dir`, following includes inside `dir`. Symbolic links are never followed or
/// written through: a linked `postgresql.auto.conf` is removed (the restore writes a new
/// one), other linked files are left and listed. Returns what was changed.
pub fn neutralise(dir: &Path) -> Result<Vec<Neutralised>, PgError> {
    let mut changed = Vec::new();
    let mut queue: Vec<PathBuf> = vec!["postgresql.conf".into(), "postgresql.auto.conf".into()];
    let mut seen = BTreeSet::new();
    while let Some(rel) = queue.pop() {
        if !seen.insert(rel.clone()) {
            continue;
        }
        let path = dir.join(&rel);
        if let Some(link) = linked_folder(dir, &rel) {
            changed.push(Neutralised {
                file: rel.clone(),
                line: 0,
                setting: "(symbolic link)".into(),
                value: link.display().to_string(),
                why: "included through a linked folder: left as it is, not read: settings that \
                      run code are overridden in postgresql.auto.conf"
                    .into(),
            });
            continue;
        }
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            let whole = |why: &str| Neutralised {
                file: rel.clone(),
                line: 0,
                setting: "(symbolic link)".into(),
                value: target.clone(),
                why: why.into(),
            };
            if rel == Path::new("postgresql.auto.conf") {
                fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                changed.push(whole("removed; the restore writes its own"));
            } else {
                changed.push(whole(
                    "left as it is, not read: settings that run code are overridden in \
                     postgresql.auto.conf; check what it points to",
                ));
            }
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let file_dir = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let text = read_conf(&path)?;
        let mut out = String::with_capacity(text.len() + 256);
        let mut edited = false;
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let Some((name, value)) = parse_line(line) else {
                out.push_str(line);
                continue;
            };
            let listed = RUNS_CODE
                .iter()
                .chain(POINTS_ELSEWHERE)
                .chain(RECOVERY)
                .find(|(s, _)| *s == name)
                .map(|(_, why)| why.to_string());
            // A value the overrides set anyway (an earlier restore's own block) is harmless.
            let harmless = OVERRIDES
                .iter()
                .filter_map(|o| parse_line(o))
                .any(|(n, v)| n == name && v == value);
            let why = match (listed.filter(|_| !harmless), name.as_str()) {
                (Some(why), _) => Some(why),
                (None, "include" | "include_if_exists" | "include_dir") => {
                    match normalise(&file_dir.join(&value)) {
                        Some(inner) if !Path::new(&value).is_absolute() => {
                            if name == "include_dir" {
                                queue.extend(conf_files_in(dir, &inner)?);
                            } else {
                                queue.push(inner);
                            }
                            None
                        }
                        _ => Some("includes configuration from outside the data directory".into()),
                    }
                }
                _ => None,
            };
            match why {
                Some(why) => {
                    out.push_str(&format!(
                        "# neutralised by the Data Embassy restore ({why}): "
                    ));
                    out.push_str(line.trim_start());
                    if !line.ends_with('\n') {
                        out.push('\n');
                    }
                    edited = true;
                    changed.push(Neutralised {
                        file: rel.clone(),
                        line: n + 1,
                        setting: name,
                        value,
                        why,
                    });
                }
                None => out.push_str(line),
            }
        }
        if edited {
            replace_file(&path, out.as_bytes(), meta.permissions().mode() & 0o7777)?;
        }
    }
    Ok(changed)
}

/// The first folder on the way from `dir` to `rel` that is a symbolic link, if any.
fn linked_folder(dir: &Path, rel: &Path) -> Option<PathBuf> {
    let mut at = dir.to_path_buf();
    let parent = rel.parent()?;
    for c in parent.components() {
        at.push(c);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(at.strip_prefix(dir).unwrap_or(&at).to_path_buf());
        }
    }
    None
}

/// Reads a configuration file without following a symbolic link, up to [`MAX_CONF_BYTES`].
fn read_conf(path: &Path) -> Result<String, PgError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONF_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io(format!("reading {}", path.display())))?;
    if bytes.len() as u64 > MAX_CONF_BYTES {
        return Err(PgError::Restore(format!(
            "{} is larger than {} MiB: not a configuration file PostgreSQL would read; check \
             the backup",
            path.display(),
            MAX_CONF_BYTES >> 20
        )));
    }
    // PostgreSQL reads configuration bytes as they are; invalid UTF-8 is kept as replacement
    // characters only on lines we comment out, so compare on a lossy copy.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The `*.conf` files of a folder inside the data directory (PostgreSQL's `include_dir`).
fn conf_files_in(dir: &Path, rel: &Path) -> Result<Vec<PathBuf>, PgError> {
    let path = dir.join(rel);
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(Vec::new()),
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&path).map_err(io(format!("listing {}", path.display())))? {
        let entry = entry.map_err(io(format!("listing {}", path.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".conf") && !name.starts_with('.') {
            out.push(rel.join(&*name));
        }
    }
    Ok(out)
}

/// Replaces `path` by a new file with `bytes` (written beside it, then renamed over it: the
/// old name is never followed if it is, or becomes, a symbolic link).
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PgError> {
    let tmp = path.with_file_name(format!(
        ".{}.embassy-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        hex::encode(&embassy_core::keys::crypto::random_32()[..8])
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = fs::remove_file(&tmp);
            PgError::Restore(format!("writing {}: {e}", path.display()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_as_postgres_reads_them() {
        assert_eq!(
            parse_line("  Archive_Command = 'cp %p ''x'' \\\\y' # c"),
            Some(("archive_command".into(), "cp %p 'x' \\y".into()))
        );
        assert_eq!(
            parse_line("shared_preload_libraries './evil'"),
            Some(("shared_preload_libraries".into(), "./evil".into()))
        );
        assert_eq!(
            parse_line("port=5433#x"),
            Some(("port".into(), "5433".into()))
        );
        assert_eq!(parse_line("# archive_command = 'x'"), None);
        assert_eq!(parse_line("   "), None);
        assert_eq!(
            parse_line("x = 'a\\101\\n'"),
            Some(("x".into(), "aA\n".into()))
        );
    }

    #[test]
    fn settings_that_run_code_are_commented_out_through_includes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(
            d.join("postgresql.conf"),
            "port = 5432\ninclude 'conf.d/a.conf'\ninclude_dir 'more'\ninclude '/etc/x.conf'\n",
        )
        .unwrap();
        fs::create_dir_all(d.join("conf.d")).unwrap();
        fs::create_dir_all(d.join("more")).unwrap();
        fs::write(
            d.join("conf.d/a.conf"),
            "SSL_PASSPHRASE_COMMAND = 'cat /k'\ninclude '../up.conf'\n",
        )
        .unwrap();
        fs::write(d.join("up.conf"), "recovery_end_command 'touch /x'").unwrap();
        fs::write(d.join("more/b.conf"), "data_directory = '/elsewhere'\n").unwrap();
        fs::write(d.join("more/c.txt"), "archive_command = 'not read'\n").unwrap();
        fs::write(
            d.join("postgresql.auto.conf"),
            "archive_command = 'cat /k > /tmp/leak'\nshared_preload_libraries = './evil'\n\
             recovery_target = 'immediate'\nwork_mem = '4MB'\narchive_command = ''\n",
        )
        .unwrap();
        let changed = neutralise(d).unwrap();
        let names: BTreeSet<_> = changed.iter().map(|c| c.setting.as_str()).collect();
        let expected: BTreeSet<_> = [
            "archive_command",
            "shared_preload_libraries",
            "recovery_target",
            "ssl_passphrase_command",
            "recovery_end_command",
            "data_directory",
            "include",
        ]
        .into_iter()
        .collect();
        assert_eq!(names, expected, "{changed:#?}");
        let auto = fs::read_to_string(d.join("postgresql.auto.conf")).unwrap();
        assert!(auto.contains("work_mem = '4MB'\narchive_command = ''\n"));
        for line in auto.lines().take(3) {
            assert!(parse_line(line).is_none(), "{line}");
        }
        assert!(fs::read_to_string(d.join("up.conf"))
            .unwrap()
            .starts_with("# neutralised"));
        assert!(fs::read_to_string(d.join("more/c.txt"))
            .unwrap()
            .starts_with("archive_command"));
        let conf = fs::read_to_string(d.join("postgresql.conf")).unwrap();
        assert!(conf.contains("# neutralised by the Data Embassy restore (includes"));
        assert!(conf.contains("\ninclude 'conf.d/a.conf'\n"));
    }

    #[test]
    fn symbolic_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim.conf");
        fs::write(&victim, "archive_command = 'x'\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("postgresql.auto.conf")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("postgresql.conf")).unwrap();
        let changed = neutralise(dir.path()).unwrap();
        assert_eq!(changed.len(), 2, "{changed:#?}");
        assert!(!dir.path().join("postgresql.auto.conf").exists());
        assert!(dir
            .path()
            .join("postgresql.conf")
            .symlink_metadata()
            .is_ok());
        assert_eq!(
            fs::read_to_string(&victim).unwrap(),
            "archive_command = 'x'\n"
        );
    }
}
