//! One request, answered: the checks every request passes (method, credential), the route to a
//! page or a file, and the file's bytes, sent chunk by chunk as each is checked.

use std::io::Write;

use embassy_core::format::tree::NodeKind;
use embassy_core::Error;
use embassy_ops::browse::content::FileContent;
use embassy_ops::browse::{self, Content, Opened};

use super::http::{self, RangeAnswer, Refusal, Request};
use super::pages;
use super::Server;

/// A response's status and headers (`Connection: close` and the safety headers are added).
pub(crate) struct Head {
    status: u16,
    headers: Vec<(&'static str, String)>,
}

impl Head {
    pub(crate) fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
        }
    }

    pub(crate) fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        // A header value never carries a line break (names with control characters are
        // refused before, this is the last guard).
        let value: String = value.into().replace(|c: char| c.is_control(), " ");
        self.headers.push((name, value));
        self
    }

    /// The version's headers: which dataset, version and ledger entry the response is from.
    pub(crate) fn version(self, opened: &Opened) -> Self {
        let v = &opened.version;
        self.with("Embassy-Dataset", v.dataset.clone())
            .with("Embassy-Version", v.number.to_string())
            .with(
                "Embassy-Ledger-Entry",
                format!("seq={}; id={}", v.seq, v.ledger_id.to_hex()),
            )
    }

    fn write(&self, out: &mut dyn Write, length: u64) -> std::io::Result<()> {
        let mut text = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        text.push_str(&format!("Date: {}\r\n", pages::http_date_now()));
        text.push_str("Server: embassy-serve\r\nConnection: close\r\n");
        text.push_str("X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n");
        text.push_str("X-Frame-Options: DENY\r\n");
        if self.status != 304 {
            text.push_str(&format!("Content-Length: {length}\r\n"));
        }
        for (name, value) in &self.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        out.write_all(text.as_bytes())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Sends a whole, small body (none for HEAD or 304).
fn send(out: &mut dyn Write, head: Head, body: &[u8], head_only: bool) -> Result<(), ()> {
    head.write(out, body.len() as u64).map_err(|_| ())?;
    if !head_only && head.status != 304 {
        out.write_all(body).map_err(|_| ())?;
    }
    Ok(())
}

/// A plain-text error answer.
fn error_page(out: &mut dyn Write, status: u16, message: &str, head_only: bool) -> Result<(), ()> {
    let head = Head::new(status)
        .with("Content-Type", "text/plain; charset=utf-8")
        .with("Cache-Control", "no-store");
    send(out, head, format!("{message}\n").as_bytes(), head_only)
}

/// The whole answer to a request the server is too busy to take: fixed bytes, small enough to
/// go into a fresh socket's buffer without waiting.
pub(crate) const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nServer: embassy-serve\r\n\
Connection: close\r\nRetry-After: 5\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Length: 38\r\nCache-Control: no-store\r\n\r\nbusy: too many connections, try again\n";

/// The HTTP status for an error of the vault.
fn status_of(e: &Error) -> u16 {
    match e {
        Error::NotFound(_) | Error::UnknownDataset { .. } | Error::NoSuchVersion { .. } => 404,
        // A version selector that is not one (`-1`, an ambiguous id prefix): the request's fault.
        Error::Invalid(_) => 400,
        Error::Unwitnessed { .. } => 403,
        e if e.is_integrity() => 502,
        _ => 500,
    }
}

fn vault_error(out: &mut dyn Write, e: &Error, head_only: bool) -> Result<(), ()> {
    let status = status_of(e);
    if status >= 500 {
        eprintln!("error: {e}");
    }
    let message = if e.is_integrity() {
        format!("damaged in the vault, not served: {e}")
    } else {
        e.to_string()
    };
    error_page(out, status, &message, head_only)
}

/// Answers `request` on `out`. `Err`: the body was cut after the head went out (the caller
/// aborts the connection).
pub(crate) fn answer(
    server: &Server,
    request: Result<Request, Refusal>,
    out: &mut dyn Write,
) -> Result<(), ()> {
    let request = match request {
        Ok(r) => r,
        Err(Refusal::Bad(why) | Refusal::Path(why)) => return error_page(out, 400, why, false),
    };
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
        let head = Head::new(405)
            .with("Allow", "GET, HEAD")
            .with("Content-Type", "text/plain; charset=utf-8");
        let body = "this server is read-only: GET and HEAD only\n";
        return send(out, head, body.as_bytes(), false);
    }
    if let Some(token) = &server.token {
        let admitted = request
            .headers_named("authorization")
            .any(|v| token.admits_authorization(v));
        if !admitted {
            let head = Head::new(401)
                .with("WWW-Authenticate", "Bearer realm=\"Data Embassy\"")
                .with("WWW-Authenticate", "Basic realm=\"Data Embassy\"")
                .with("Content-Type", "text/plain; charset=utf-8")
                .with("Cache-Control", "no-store");
            let body = "this server needs its token: send `Authorization: Bearer TOKEN`\n";
            return send(out, head, body.as_bytes(), head_only);
        }
    }
    let json = request.query_value("format") == Some("json");
    let segments = request.segments.clone();
    match segments.as_slice() {
        [] => {
            let page = pages::datasets(server, json);
            listing(out, &request, Head::new(200), page, head_only)
        }
        [dataset, ..] if !server.datasets.contains(dataset) => error_page(
            out,
            404,
            &format!("no dataset {dataset} is served here"),
            head_only,
        ),
        [dataset] => {
            if !request.trailing_slash && !json {
                return redirect(out, &format!("/{}/", http::percent_encode(dataset)));
            }
            match pages::versions(server, dataset, json) {
                Ok(page) => listing(out, &request, Head::new(200), page, head_only),
                Err(e) => vault_error(out, &e, head_only),
            }
        }
        [dataset, selector, path @ ..] => {
            let opened = match server.open(dataset, selector) {
                Ok(o) => o,
                Err(e) => return vault_error(out, &e, head_only),
            };
            in_version(out, &request, &opened, &path.join("/"), json, head_only)
        }
    }
}

fn redirect(out: &mut dyn Write, to: &str) -> Result<(), ()> {
    let head = Head::new(308)
        .with("Location", to)
        .with("Content-Type", "text/plain; charset=utf-8");
    send(out, head, format!("see {to}\n").as_bytes(), false)
}

/// A page (HTML or JSON) with an ETag of its bytes: never cached without asking again.
fn listing(
    out: &mut dyn Write,
    request: &Request,
    head: Head,
    page: pages::Page,
    head_only: bool,
) -> Result<(), ()> {
    let etag = format!(
        "\"l-{}\"",
        &blake3::hash(page.body.as_bytes()).to_hex()[..32]
    );
    let head = head
        .with("Content-Type", page.content_type)
        .with("Cache-Control", "no-cache")
        .with("ETag", etag.clone())
        .with("Content-Security-Policy", pages::PAGE_CSP);
    if request
        .header("if-none-match")
        .is_some_and(|h| http::none_match(h, &etag))
    {
        return send(
            out,
            Head {
                status: 304,
                ..head
            },
            b"",
            true,
        );
    }
    send(out, head, page.body.as_bytes(), head_only)
}

/// A path inside a version: a folder's listing, a file's bytes or its check page.
fn in_version(
    out: &mut dyn Write,
    request: &Request,
    opened: &Opened,
    path: &str,
    json: bool,
    head_only: bool,
) -> Result<(), ()> {
    if opened.content == Content::PostgresBaseBackup {
        let message = format!(
            "{} is a PostgreSQL dataset: its versions are base backups, not served here (serve \
             is for file and stream datasets; restore a PostgreSQL dataset instead)",
            opened.version.dataset
        );
        return error_page(out, 404, &message, head_only);
    }
    let node = match browse::resolve(&opened.reader, path) {
        Ok(n) => n,
        Err(e) => return vault_error(out, &e, head_only),
    };
    match node.kind {
        NodeKind::Dir => {
            if !request.trailing_slash && !json {
                let mut to = format!(
                    "/{}/{}/",
                    http::percent_encode(&opened.version.dataset),
                    opened.version.number
                );
                for s in request.segments.iter().skip(2) {
                    to.push_str(&http::percent_encode(s));
                    to.push('/');
                }
                return redirect(out, &to);
            }
            match pages::folder(opened, path, json) {
                Ok(page) => listing(
                    out,
                    request,
                    Head::new(200).version(opened),
                    page,
                    head_only,
                ),
                Err(e) => vault_error(out, &e, head_only),
            }
        }
        NodeKind::File => {
            let content = match FileContent::of(&opened.reader, &node) {
                Ok(c) => c,
                Err(e) => return vault_error(out, &e, head_only),
            };
            if request.has_query("check") {
                let page = pages::check(opened, path, &content);
                return listing(
                    out,
                    request,
                    Head::new(200).version(opened),
                    page,
                    head_only,
                );
            }
            file(out, request, opened, path, &content, head_only)
        }
        NodeKind::Symlink | NodeKind::Fifo => {
            let what = match &node.target {
                Some(t) => format!(
                    "a link to {} (links are not followed)",
                    String::from_utf8_lossy(t)
                ),
                None => "a named pipe".to_string(),
            };
            error_page(out, 404, &format!("{path} is {what}"), head_only)
        }
    }
}

/// A file's bytes: whole, one range (206), or none (304, 416, HEAD); each chunk checked
/// before it is sent. The head goes out only once the first chunk checked, so damage there is
/// a clean 502; damage further on cuts the body (`Err`, the connection is aborted).
fn file(
    out: &mut dyn Write,
    request: &Request,
    opened: &Opened,
    path: &str,
    content: &FileContent,
    head_only: bool,
) -> Result<(), ()> {
    let etag = format!("\"{}\"", content.content_hash());
    let size = content.size;
    let name = path.rsplit('/').next().unwrap_or(path);
    let as_text = request.query_value("view") == Some("text");
    let mut head = Head::new(200)
        .version(opened)
        .with("ETag", etag.clone())
        .with("Accept-Ranges", "bytes")
        .with("Cache-Control", "private, no-cache")
        .with("Content-Security-Policy", pages::FILE_CSP);
    head = if as_text {
        head.with("Content-Type", "text/plain; charset=utf-8")
            .with("Content-Disposition", pages::disposition("inline", name))
    } else {
        head.with("Content-Type", "application/octet-stream").with(
            "Content-Disposition",
            pages::disposition("attachment", name),
        )
    };
    if request
        .header("if-none-match")
        .is_some_and(|h| http::none_match(h, &etag))
    {
        return send(
            out,
            Head {
                status: 304,
                ..head
            },
            b"",
            true,
        );
    }
    let wanted = if http::if_range_holds(request.header("if-range"), &etag) {
        http::range(request.header("range"), size)
    } else {
        RangeAnswer::Whole
    };
    let (start, end) = match wanted {
        RangeAnswer::Whole => (0, size),
        RangeAnswer::Part(s, e) => {
            head.status = 206;
            head = head.with("Content-Range", format!("bytes {s}-{}/{size}", e - 1));
            (s, e)
        }
        RangeAnswer::Unsatisfiable => {
            let head = Head::new(416)
                .version(opened)
                .with("Content-Range", format!("bytes */{size}"))
                .with("Content-Type", "text/plain; charset=utf-8");
            let body = format!("{path} has {size} bytes: the range asked for is not in it\n");
            return send(out, head, body.as_bytes(), head_only);
        }
    };
    if head_only || start == end {
        return head.write(out, end - start).map_err(|_| ());
    }
    let mut head = Some(head);
    let mut failed_io = false;
    let result = content.read_range(&opened.reader, start, end, &mut |bytes| {
        let written = match head.take() {
            Some(h) => h
                .write(out, end - start)
                .and_then(|()| out.write_all(bytes)),
            None => out.write_all(bytes),
        };
        written.map_err(|e| {
            failed_io = true;
            Error::io("sending", e)
        })
    });
    match result {
        Ok(()) => Ok(()),
        // The client went away: nothing more to say to it.
        Err(_) if failed_io => Err(()),
        Err(e) if head.is_some() => vault_error(out, &e, false),
        Err(e) => {
            eprintln!(
                "error: {path} of {} version {}: {e} (the transfer was cut)",
                opened.version.dataset, opened.version.number
            );
            Err(())
        }
    }
}
