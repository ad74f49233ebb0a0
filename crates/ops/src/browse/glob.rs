//! The glob patterns `embassy find` takes: `*` (any run of characters but `/`), `**` (any run,
//! `/` included), `?` (one character but `/`), `[abc]`, `[a-z]`, `[!a-z]` (one character of a
//! set, or not of it), `\x` (`x` itself). A pattern without `/` is matched against each entry's
//! name; a pattern with `/` against its whole path in the version (a leading `/` ignored).

/// A parsed pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: Vec<char>,
    whole_path: bool,
}

impl Pattern {
    /// Parses a pattern (any text is a pattern; an unclosed `[` matches itself).
    pub fn new(pattern: &str) -> Self {
        let trimmed = pattern.trim_start_matches('/');
        Self {
            whole_path: pattern.contains('/'),
            text: trimmed.chars().collect(),
        }
    }

    /// True if the entry at `path` (its name is the part after the last `/`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let subject = if self.whole_path {
            path
        } else {
            path.rsplit('/').next().unwrap_or(path)
        };
        let subject: Vec<char> = subject.chars().collect();
        matches_at(&self.text, &subject)
    }
}

/// Matches `p` against all of `s` (backtracking; patterns are short).
fn matches_at(p: &[char], s: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('*') => {
            let crosses = p.get(1) == Some(&'*');
            let rest = if crosses { &p[2..] } else { &p[1..] };
            // `**/` also matches no folder at all.
            if crosses && rest.first() == Some(&'/') && matches_at(&rest[1..], s) {
                return true;
            }
            for i in 0..=s.len() {
                if matches_at(rest, &s[i..]) {
                    return true;
                }
                if i < s.len() && s[i] == '/' && !crosses {
                    return false;
                }
            }
            false
        }
        Some('?') => !s.is_empty() && s[0] != '/' && matches_at(&p[1..], &s[1..]),
        Some('[') => match class(&p[1..]) {
            Some((set, negated, used)) => {
                !s.is_empty()
                    && s[0] != '/'
                    && (set.iter().any(|&(lo, hi)| lo <= s[0] && s[0] <= hi) != negated)
                    && matches_at(&p[1 + used..], &s[1..])
            }
            None => s.first() == Some(&'[') && matches_at(&p[1..], &s[1..]),
        },
        Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && matches_at(&p[2..], &s[1..]),
        Some(c) => s.first() == Some(c) && matches_at(&p[1..], &s[1..]),
    }
}

/// A character class's ranges, whether it is negated, and how many pattern characters it used
/// (its `]` included).
type Class = (Vec<(char, char)>, bool, usize);

/// The character class after a `[`; None when it is not closed.
fn class(p: &[char]) -> Option<Class> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut set = Vec::new();
    let mut first = true;
    while i < p.len() {
        let c = p[i];
        if c == ']' && !first {
            return Some((set, negated, i + 1));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            set.push((c, p[i + 2]));
            i += 3;
        } else {
            set.push((c, c));
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Pattern;

    fn m(pattern: &str, path: &str) -> bool {
        Pattern::new(pattern).matches(path)
    }

    #[test]
    fn names_and_paths() {
        assert!(m("*.csv", "registry/2026/people.csv"));
        assert!(!m("*.csv", "registry/2026/people.csv.bak"));
        assert!(m("people.???", "a/people.csv"));
        assert!(m("[pq]eople*", "a/people.csv"));
        assert!(!m("[!p]eople*", "a/people.csv"));
        assert!(m("registry/*/people.csv", "registry/2026/people.csv"));
        assert!(!m("registry/*.csv", "registry/2026/people.csv"));
        assert!(m("registry/**.csv", "registry/2026/people.csv"));
        assert!(m("**/people.csv", "people.csv"));
        assert!(m("/registry/**", "registry/2026/people.csv"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("[a", "[a"));
        assert!(m("[0-9][0-9]", "x/42"));
    }
}
