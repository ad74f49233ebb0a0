//! Which paths of a file tree a backup stores or a restore writes: one pattern rule for both.
//!
//! Patterns follow `.gitignore`'s grammar, matched against a path relative to the dataset's
//! root (the folder backed up, or the version's root when restoring), `/`-separated:
//!
//! - a blank line, or one starting with `#`, is nothing (in an exclude file);
//! - `!PATTERN` takes back an earlier match: of the patterns that match a path, the last wins;
//! - a trailing `/` matches directories only (`cache/`);
//! - a `/` at the start or in the middle anchors the pattern at the root (`/build`, `logs/*.gz`);
//!   without one it matches a name at any depth (`*.tmp`, `node_modules`);
//! - `*` is any run of characters but `/`, `?` one character but `/`, `[a-z]` and `[!a-z]` a
//!   class, `\` makes the next character plain; `**` as a whole component is zero or more
//!   components (`a/**/b`, `**/tmp`, `logs/**`).
//!
//! In a selection a pattern that matches a directory matches everything below it
//! ([`Patterns::covers`]); `embassy find` asks of each path alone ([`Pattern::finds`]).
//!
//! The patterns are matched here rather than by the `globset` crate: it is not among the
//! workspace's locked dependencies, and the grammar above is small enough to hold in one place.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `[` with no closing `]`.
    #[error("pattern {pattern:?}: a '[' with no closing ']' (write '\\[' for a plain '[')")]
    UnclosedClass {
        /// The pattern as given.
        pattern: String,
    },
    /// A pattern ending in a lone `\`.
    #[error("pattern {pattern:?} ends in a lone '\\' (write '\\\\' for a plain '\\')")]
    TrailingEscape {
        /// The pattern as given.
        pattern: String,
    },
    /// A pattern with nothing to match (empty, `!`, `/`).
    #[error("pattern {pattern:?} matches nothing: give a name or a glob like '*.tmp'")]
    Empty {
        /// The pattern as given.
        pattern: String,
    },
    /// An exclude file that could not be read.
    #[error("cannot read the exclude file {path}: {problem}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        problem: String,
    },
    /// A bad pattern in an exclude file, with its line.
    #[error("{path}, line {line}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// Its line (from 1).
        line: usize,
        /// What is wrong with the pattern.
        source: Box<PatternError>,
    },
}

/// One part of a component pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Byte(u8),
    AnyByte,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(u8, u8)>,
    },
}

/// One `/`-separated part of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// `**`: zero or more components.
    AnyDepth,
    /// A component glob.
    Glob(Vec<Token>),
}

/// One gitignore-style pattern (see the module's documentation for the grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    negated: bool,
    dir_only: bool,
    parts: Vec<Part>,
}

impl Pattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let mut body = text;
        let negated = body.starts_with('!');
        if negated {
            body = &body[1..];
        }
        let dir_only = body.ends_with('/') && !body.ends_with("\\/");
        let body = body.trim_end_matches('/');
        let anchored = body.trim_start_matches('/') != body || body.contains('/');
        let body = body.trim_start_matches('/');
        if body.is_empty() {
            return Err(PatternError::Empty {
                pattern: text.to_string(),
            });
        }
        let mut parts = Vec::new();
        if !anchored {
            parts.push(Part::AnyDepth);
        }
        for component in body.split('/').filter(|c| !c.is_empty()) {
            if component == "**" {
                if parts.last() != Some(&Part::AnyDepth) {
                    parts.push(Part::AnyDepth);
                }
            } else {
                parts.push(Part::Glob(tokens(component.as_bytes(), text)?));
            }
        }
        Ok(Self {
            text: text.to_string(),
            negated,
            dir_only,
            parts,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern starts with `!` (it takes a match back in a list, and finds what
    /// it does not match on its own).
    pub fn is_negated(&self) -> bool {
        self.negated
    }

    /// Whether the pattern on its own picks `path` (relative, `/`-separated) itself, not the
    /// folders holding it: it matches, or, for a `!` pattern, it does not. This is the test
    /// `embassy find` applies to each entry of a version.
    pub fn finds(&self, path: &[u8], is_dir: bool) -> bool {
        self.matches(path, is_dir) != self.negated
    }

    /// Whether the pattern itself (its `!` aside) matches `path` (relative, `/`-separated).
    pub fn matches(&self, path: &[u8], is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        let components: Vec<&[u8]> = path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        match_parts(&self.parts, &components)
    }
}

fn tokens(glob: &[u8], pattern: &str) -> Result<Vec<Token>, PatternError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < glob.len() {
        match glob[i] {
            b'\\' => {
                let next = glob
                    .get(i + 1)
                    .ok_or_else(|| PatternError::TrailingEscape {
                        pattern: pattern.to_string(),
                    })?;
                out.push(Token::Byte(*next));
                i += 2;
            }
            b'?' => {
                out.push(Token::AnyByte);
                i += 1;
            }
            b'*' => {
                if out.last() != Some(&Token::AnyRun) {
                    out.push(Token::AnyRun);
                }
                i += 1;
            }
            b'[' => {
                let mut j = i + 1;
                let negated = matches!(glob.get(j), Some(b'!' | b'^'));
                if negated {
                    j += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let Some(&c) = glob.get(j) else {
                        return Err(PatternError::UnclosedClass {
                            pattern: pattern.to_string(),
                        });
                    };
                    if c == b']' && !first {
                        break;
                    }
                    first = false;
                    let lo = if c == b'\\' {
                        j += 1;
                        *glob.get(j).ok_or_else(|| PatternError::UnclosedClass {
                            pattern: pattern.to_string(),
                        })?
                    } else {
                        c
                    };
                    j += 1;
                    if glob.get(j) == Some(&b'-') && glob.get(j + 1).is_some_and(|c| *c != b']') {
                        let hi = glob[j + 1];
                        ranges.push((lo, hi));
                        j += 2;
                    } else {
                        ranges.push((lo, lo));
                    }
                }
                out.push(Token::Class { negated, ranges });
                i = j + 1;
            }
            c => {
                out.push(Token::Byte(c));
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Glob match of one component (iterative, with one backtrack point per `*`).
fn match_component(tokens: &[Token], name: &[u8]) -> bool {
    let (mut t, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match tokens.get(t) {
            Some(Token::Byte(b)) => *b == name[n],
            Some(Token::AnyByte) => true,
            Some(Token::Class { negated, ranges }) => {
                ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&name[n])) != *negated
            }
            Some(Token::AnyRun) => {
                star = Some((t, n));
                t += 1;
                continue;
            }
            None => false,
        };
        if step {
            t += 1;
            n += 1;
        } else if let Some((st, sn)) = star {
            t = st + 1;
            n = sn + 1;
            star = Some((st, sn + 1));
        } else {
            return false;
        }
    }
    tokens[t..].iter().all(|tok| *tok == Token::AnyRun)
}

/// Whether `parts` match a prefix of `path` that ends at a component boundary (a pattern that
/// matches a directory matches what is below it too, but the walkers check each level, so a
/// whole-path match is what is asked here).
fn match_parts(parts: &[Part], path: &[&[u8]]) -> bool {
    match parts.split_first() {
        None => path.is_empty(),
        Some((Part::AnyDepth, rest)) => {
            (0..=path.len()).any(|skip| match_parts(rest, &path[skip..]))
        }
        Some((Part::Glob(tokens), rest)) => match path.split_first() {
            Some((first, more)) => match_component(tokens, first) && match_parts(rest, more),
            None => false,
        },
    }
}

/// An ordered list of patterns: the last that matches a path decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patterns {
    list: Vec<Pattern>,
}

impl Patterns {
    /// No patterns: nothing matches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Patterns from a list of texts (`--exclude`, `--include`, a configuration list).
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, PatternError> {
        let mut patterns = Self::new();
        for text in texts {
            patterns.list.push(Pattern::parse(text.as_ref())?);
        }
        Ok(patterns)
    }

    /// Adds the patterns of an exclude file: one a line, blank lines and `#` comments skipped.
    pub fn add_file(&mut self, path: &Path) -> Result<(), PatternError> {
        let text = fs::read_to_string(path).map_err(|e| PatternError::File {
            path: path.to_path_buf(),
            problem: e.to_string(),
        })?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let pattern = Pattern::parse(line).map_err(|e| PatternError::InFile {
                path: path.to_path_buf(),
                line: i + 1,
                source: Box::new(e),
            })?;
            self.list.push(pattern);
        }
        Ok(())
    }

    /// Adds the patterns of `other` after these.
    pub fn extend(&mut self, other: Patterns) {
        self.list.extend(other.list);
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The verdict on `path` itself (not its folders): `Some(true)` if the last pattern that
    /// matches it is a plain one, `Some(false)` if it is a `!` one, `None` if none matches.
    pub fn verdict(&self, path: &[u8], is_dir: bool) -> Option<bool> {
        self.list
            .iter()
            .rev()
            .find(|p| p.matches(path, is_dir))
            .map(|p| !p.negated)
    }

    /// Whether `path` or one of the folders holding it is matched (the `.gitignore` rule: once
    /// a folder is matched, everything below it is).
    pub fn covers(&self, path: &[u8], is_dir: bool) -> bool {
        let mut end = 0;
        for (i, b) in path.iter().enumerate() {
            if *b == b'/' && i > end {
                if self.verdict(&path[..i], true) == Some(true) {
                    return true;
                }
                end = i;
            }
        }
        self.verdict(path, is_dir) == Some(true)
    }
}

/// What a backup of a file tree leaves out.
#[derive(Debug, Clone, Default)]
pub struct BackupSelection {
    /// Paths matched are not stored (nor, for a folder, anything below it).
    pub exclude: Patterns,
    /// Folders holding a valid `CACHEDIR.TAG` keep only the tag (see [`is_cache_dir`]).
    pub exclude_caches: bool,
    /// Folders on another file system than the path given are stored empty (a mount point).
    pub one_file_system: bool,
    /// Nothing is written to any site: the backup only reports what it would store.
    pub dry_run: bool,
}

impl BackupSelection {
    /// The selection from its parts as a front end takes them (`--exclude`, `--exclude-file`,
    /// `--exclude-caches`, `--one-file-system`, or the same settings of `embassy.toml`): the
    /// patterns first, then each file's, in order.
    pub fn from_parts<S: AsRef<str>>(
        exclude: &[S],
        exclude_files: &[PathBuf],
        exclude_caches: bool,
        one_file_system: bool,
    ) -> Result<Self, PatternError> {
        let mut patterns = Patterns::parse(exclude)?;
        for file in exclude_files {
            patterns.add_file(file)?;
        }
        Ok(Self {
            exclude: patterns,
            exclude_caches,
            one_file_system,
            dry_run: false,
        })
    }
}

/// What a restore of a file tree writes.
#[derive(Debug, Clone, Default)]
pub struct RestoreSelection {
    /// If not empty, only paths matched (or below a folder matched) are restored, with the
    /// folders leading to them.
    pub include: Patterns,
    /// Paths matched (or below a folder matched) are not restored, nor deleted by `delete`.
    pub exclude: Patterns,
    /// Remove what the target holds under the restored tree that the version does not.
    pub delete: bool,
}

impl RestoreSelection {
    /// Whether the version's `path` is selected for restoring.
    pub fn selects(&self, path: &[u8], is_dir: bool) -> bool {
        (self.include.is_empty() || self.include.covers(path, is_dir))
            && !self.exclude.covers(path, is_dir)
    }
}

/// The signature a cache folder's `CACHEDIR.TAG` starts with (<https://bford.info/cachedir/>).
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// The name of the tag file.
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";

/// Whether `dir` holds a valid `CACHEDIR.TAG`: a regular file (not a link) whose first 43
/// bytes are [`CACHEDIR_SIGNATURE`], as the Cache Directory Tagging Specification says.
pub fn is_cache_dir(dir: &Path) -> bool {
    let tag = dir.join(CACHEDIR_TAG);
    if !fs::symlink_metadata(&tag).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; 43];
    fs::File::open(&tag)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| head == CACHEDIR_SIGNATURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, path: &str, is_dir: bool) -> bool {
        Patterns::parse(&[pattern])
            .unwrap()
            .covers(path.as_bytes(), is_dir)
    }

    #[test]
    fn names_match_at_any_depth() {
        assert!(m("*.tmp", "a.tmp", false));
        assert!(m("*.tmp", "x/y/a.tmp", false));
        assert!(!m("*.tmp", "a.tmpx", false));
        assert!(m("node_modules", "web/node_modules/x/y.js", false));
        assert!(!m("*.tmp", "a/b", false));
    }

    #[test]
    fn slashes_anchor() {
        assert!(m("/build", "build/out.o", false));
        assert!(!m("/build", "src/build", true));
        assert!(m("logs/*.gz", "logs/a.gz", false));
        assert!(!m("logs/*.gz", "x/logs/a.gz", false));
        assert!(!m("logs/*.gz", "logs/sub/a.gz", false));
    }

    #[test]
    fn double_star_spans_folders() {
        assert!(m("a/**/b", "a/b", false));
        assert!(m("a/**/b", "a/x/y/b", false));
        assert!(m("**/tmp", "q/tmp", true));
        assert!(m("logs/**", "logs/x/y", false));
        assert!(!m("a/**/b", "c/a/b", false));
    }

    #[test]
    fn trailing_slash_is_folders_only() {
        assert!(m("cache/", "cache", true));
        assert!(!m("cache/", "cache", false));
        assert!(m("cache/", "cache/file", false));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(m("file[0-9].txt", "file7.txt", false));
        assert!(!m("file[!0-9].txt", "file7.txt", false));
        assert!(m("file[!0-9].txt", "fileA.txt", false));
        assert!(m("a?c", "abc", false));
        assert!(!m("a?c", "a/c", false));
        assert!(m("\\*star", "*star", false));
        assert!(!m("\\*star", "xstar", false));
        assert!(m("*a*b*c*", "xxaxxbxxcxx", false));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx", false));
    }

    /// `embassy find`'s test: each path alone, the `!` pattern finding what it does not match.
    fn f(pattern: &str, path: &str, is_dir: bool) -> bool {
        Pattern::parse(pattern)
            .unwrap()
            .finds(path.as_bytes(), is_dir)
    }

    #[test]
    fn find_tests_each_path_alone() {
        assert!(f("*.csv", "registry/2026/people.csv", false));
        assert!(!f("*.csv", "registry/2026/people.csv.bak", false));
        assert!(f("people.???", "a/people.csv", false));
        assert!(f("[pq]eople*", "a/people.csv", false));
        assert!(!f("[!p]eople*", "a/people.csv", false));
        assert!(f("[0-9][0-9]", "x/42", false));
        assert!(f(
            "registry/*/people.csv",
            "registry/2026/people.csv",
            false
        ));
        assert!(!f("registry/*.csv", "registry/2026/people.csv", false));
        assert!(f("registry/**/*.csv", "registry/2026/people.csv", false));
        assert!(f("**/people.csv", "people.csv", false));
        assert!(f("/registry/**", "registry/2026/people.csv", false));
        // A folder matched does not make what is below it found (unlike `covers`).
        assert!(f("registry", "registry", true));
        assert!(!f("registry", "registry/2026", true));
        assert!(!f("registry/", "registry", false));
        assert!(!f("!*.csv", "a/people.csv", false));
        assert!(f("!*.csv", "a/people.txt", false));
        assert!(f("a\\*b", "a*b", false));
        assert!(!f("a\\*b", "axb", false));
    }

    #[test]
    fn the_last_match_wins() {
        let p = Patterns::parse(&["*.log", "!keep.log"]).unwrap();
        assert!(p.covers(b"x/a.log", false));
        assert!(!p.covers(b"x/keep.log", false));
        // A folder excluded stays excluded below, as in git.
        let p = Patterns::parse(&["tmp/", "!tmp/keep"]).unwrap();
        assert!(p.covers(b"tmp/keep", false));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(matches!(
            Pattern::parse("a[bc"),
            Err(PatternError::UnclosedClass { .. })
        ));
        assert!(matches!(
            Pattern::parse("a\\"),
            Err(PatternError::TrailingEscape { .. })
        ));
        assert!(matches!(
            Pattern::parse("/"),
            Err(PatternError::Empty { .. })
        ));
        assert!(matches!(
            Pattern::parse("!"),
            Err(PatternError::Empty { .. })
        ));
    }

    #[test]
    fn exclude_files_skip_comments_and_name_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("excludes");
        fs::write(&file, "# caches\n\n*.tmp\nbad[\n").unwrap();
        let mut p = Patterns::new();
        let err = p.add_file(&file).unwrap_err();
        assert!(err.to_string().contains("line 4"), "{err}");
        fs::write(&file, "# caches\n\n*.tmp\r\n").unwrap();
        let mut p = Patterns::new();
        p.add_file(&file).unwrap();
        assert!(p.covers(b"a.tmp", false));
        assert!(!p.covers(b"# caches", false));
    }

    #[test]
    fn cache_tags_must_carry_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_cache_dir(dir.path()));
        fs::write(dir.path().join(CACHEDIR_TAG), b"Signature: wrong").unwrap();
        assert!(!is_cache_dir(dir.path()));
        let mut good = CACHEDIR_SIGNATURE.to_vec();
        good.extend_from_slice(b"\n# This file is a cache directory tag.\n");
        fs::write(dir.path().join(CACHEDIR_TAG), good).unwrap();
        assert!(is_cache_dir(dir.path()));
    }
}
