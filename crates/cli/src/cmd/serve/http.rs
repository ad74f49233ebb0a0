//! The little HTTP/1.1 `embassy serve` speaks: one request per connection (`Connection:
//! close`), GET and HEAD only, no request body. Parsing the request head, the path inside a
//! version (no `..`, no encoded slash, no NUL), and the rules of RFC 9110 for ranges and
//! validators (`Range`, `If-Range`, `If-None-Match`) live here, apart from any vault.

use std::io::{BufRead, Read};

/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 16 * 1024;

/// A request's head.
#[derive(Debug)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The path, percent-decoded segment by segment (each segment checked).
    pub segments: Vec<String>,
    /// Whether the path ended with `/`.
    pub trailing_slash: bool,
    /// The query (after `?`, not decoded).
    pub query: String,
    /// The headers: lower-case name, value.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The values of every header named `name` (lower-case).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when the query holds the flag `name` (`?name` or `?name=...`).
    pub fn has_query(&self, name: &str) -> bool {
        self.query
            .split('&')
            .any(|p| p == name || p.split_once('=').is_some_and(|(k, _)| k == name))
    }

    /// The value of `name` in the query.
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query.split('&').find_map(|p| {
            p.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v)
        })
    }
}

/// Why a request is answered with an error before any vault is read.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a request we can read (400).
    Bad(&'static str),
    /// A path that would leave the version or is not a name (400).
    Path(&'static str),
}

/// Reads one request head from `stream`. `Ok(None)`: the peer closed before sending one.
pub fn read_request(
    stream: &mut impl BufRead,
) -> std::io::Result<Option<Result<Request, Refusal>>> {
    let mut head = Vec::new();
    let mut limited = stream.take(MAX_HEAD as u64);
    loop {
        let before = head.len();
        let n = limited.read_until(b'\n', &mut head)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Ok(Some(Err(Refusal::Bad(
                "the request head is cut or too long",
            ))));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                // Blank lines before the request line are allowed (RFC 9112 2.2).
                head.clear();
                continue;
            }
            break;
        }
    }
    let Ok(text) = std::str::from_utf8(&head) else {
        return Ok(Some(Err(Refusal::Bad("the request head is not text"))));
    };
    Ok(Some(parse_head(text)))
}

/// Parses a request head (request line, headers, blank line).
pub fn parse_head(text: &str) -> Result<Request, Refusal> {
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Bad(
            "the request line is not METHOD TARGET HTTP/1.x",
        ));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Err(Refusal::Bad("only HTTP/1.x is spoken here"));
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Refusal::Bad("a header line without a colon"));
        };
        if name.is_empty() || name.contains(|c: char| c.is_whitespace()) {
            return Err(Refusal::Bad("a header name with white space"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(Refusal::Bad("only paths (origin-form targets) are served"));
    }
    let segments = path_segments(path)?;
    Ok(Request {
        method: method.to_string(),
        trailing_slash: path.len() > 1 && path.ends_with('/'),
        segments,
        query: query.to_string(),
        headers,
    })
}

/// The path's segments, each percent-decoded and checked: no `.` or `..`, no encoded `/` or
/// `\`, no NUL or control character, valid UTF-8. Empty segments (`//`) are dropped.
pub fn path_segments(path: &str) -> Result<Vec<String>, Refusal> {
    let mut out = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let bytes = percent_decode(raw).ok_or(Refusal::Path("a bad %-escape in the path"))?;
        let Ok(segment) = String::from_utf8(bytes) else {
            return Err(Refusal::Path("a path segment that is not UTF-8"));
        };
        if segment == "." || segment == ".." {
            return Err(Refusal::Path("`.` and `..` are not served"));
        }
        if segment.contains(['/', '\\']) {
            return Err(Refusal::Path("an encoded slash in the path"));
        }
        if segment.chars().any(char::is_control) {
            return Err(Refusal::Path("a NUL or control character in the path"));
        }
        out.push(segment);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Percent-encodes a path segment for a link (unreserved characters kept).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a `Range` header asks of a representation of `size` bytes (RFC 9110 14.2).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// The whole representation (no range, a range we ignore, or several ranges).
    Whole,
    /// Bytes `start..end` (end exclusive): 206.
    Part(u64, u64),
    /// No byte of the range is there: 416.
    Unsatisfiable,
}

/// Reads a `Range` header for `size` bytes: one `bytes=` range (`a-b`, `a-`, `-n`). A header
/// that is not a valid bytes range, or asks for several ranges, is ignored (the whole is sent,
/// as RFC 9110 allows).
pub fn range(header: Option<&str>, size: u64) -> RangeAnswer {
    let Some(value) = header else {
        return RangeAnswer::Whole;
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    match (a.trim(), b.trim()) {
        ("", n) if digits(n) => match n.parse::<u64>() {
            Ok(0) => RangeAnswer::Unsatisfiable,
            Ok(n) if size > 0 => RangeAnswer::Part(size.saturating_sub(n), size),
            Ok(_) => RangeAnswer::Unsatisfiable,
            Err(_) if size > 0 => RangeAnswer::Part(0, size),
            Err(_) => RangeAnswer::Unsatisfiable,
        },
        (a, b) if digits(a) && (b.is_empty() || digits(b)) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeAnswer::Unsatisfiable;
            };
            let last = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(l) if l >= start => l,
                    Ok(_) => return RangeAnswer::Whole,
                    Err(_) => u64::MAX,
                }
            };
            if start >= size {
                RangeAnswer::Unsatisfiable
            } else {
                RangeAnswer::Part(start, last.saturating_add(1).min(size))
            }
        }
        _ => RangeAnswer::Whole,
    }
}

/// True when an `If-None-Match` value names `etag` (or is `*`): weak comparison, as RFC 9110
/// 13.1.2 asks.
pub fn none_match(header: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    header.trim() == "*" || header.split(',').any(|t| bare(t) == bare(etag))
}

/// True when an `If-Range` value lets the range apply: it must be our strong `etag`, exactly
/// (a date, or a weak or other tag, means "send the whole").
pub fn if_range_holds(header: Option<&str>, etag: &str) -> bool {
    header.is_none_or(|h| h.trim() == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        use RangeAnswer::*;
        assert_eq!(range(None, 10), Whole);
        assert_eq!(range(Some("bytes=0-0"), 10), Part(0, 1));
        assert_eq!(range(Some("bytes=2-5"), 10), Part(2, 6));
        assert_eq!(range(Some("bytes=2-"), 10), Part(2, 10));
        assert_eq!(range(Some("bytes=5-100"), 10), Part(5, 10));
        assert_eq!(range(Some("bytes=-3"), 10), Part(7, 10));
        assert_eq!(range(Some("bytes=-30"), 10), Part(0, 10));
        assert_eq!(range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(range(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(range(Some("items=0-1"), 10), Whole);
        assert_eq!(range(Some("bytes=x-1"), 10), Whole);
        assert_eq!(
            range(Some("bytes=99999999999999999999999-"), 10),
            Unsatisfiable
        );
    }

    #[test]
    fn paths_cannot_leave_the_version() {
        assert_eq!(
            path_segments("/d/a%20b/1/x").unwrap(),
            ["d", "a b", "1", "x"]
        );
        for bad in [
            "/d/../x",
            "/d/%2e%2e/x",
            "/d/a%2Fb",
            "/d/a%5cb",
            "/d/a%00b",
            "/d/%zz",
            "/d/%ff",
            "/d/./x",
        ] {
            assert!(path_segments(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validators() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("W/\"abc\", \"x\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abd\"", tag));
        assert!(if_range_holds(None, tag));
        assert!(if_range_holds(Some("\"abc\""), tag));
        assert!(!if_range_holds(Some("W/\"abc\""), tag));
        assert!(!if_range_holds(Some("Sun, 06 Dec 2026 21:00:00 GMT"), tag));
    }

    #[test]
    fn heads_parse() {
        let r =
            parse_head("GET /d/x/?json HTTP/1.1\r\nHost: a\r\nRange: bytes=1-2\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.segments, ["d", "x"]);
        assert!(r.trailing_slash);
        assert!(r.has_query("json"));
        assert_eq!(r.header("range"), Some("bytes=1-2"));
        assert!(parse_head("GET http://x/ HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head("GET / SPDY/3\r\n\r\n").is_err());
    }
}
