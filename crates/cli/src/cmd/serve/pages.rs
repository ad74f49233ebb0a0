//! The pages `embassy serve` renders: datasets, a dataset's versions, a folder of a version,
//! and a file's check page (how to check it against the signed history with the CLI). Each as
//! HTML (no script: the pages' CSP forbids any) or JSON.

use embassy_core::format::tree::NodeKind;
use embassy_core::Result;
use embassy_ops::browse::content::FileContent;
use embassy_ops::browse::{self, Content, Opened};
use serde_json::json;

use super::http::percent_encode;
use super::Server;
use crate::output;

/// The CSP of the pages: no script, no plug-in, no frame, no form; inline style only.
pub const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                            form-action 'none'; frame-ancestors 'none'";

/// The CSP of file bodies: a sandbox (an opaque origin, no script) whatever the bytes are.
pub const FILE_CSP: &str = "sandbox; default-src 'none'; frame-ancestors 'none'";

/// A rendered page.
pub struct Page {
    /// `text/html` or `application/json`.
    pub content_type: &'static str,
    /// The bytes.
    pub body: String,
}

fn html(title: &str, body: &str) -> Page {
    Page {
        content_type: "text/html; charset=utf-8",
        body: format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>{}</title><style>\
             body{{font-family:sans-serif;margin:2em;max-width:70em}}\
             table{{border-collapse:collapse}}td,th{{padding:.2em .8em;text-align:left}}\
             tr:nth-child(even){{background:#f3f3f3}}code,pre{{background:#eee}}\
             pre{{padding:.6em;overflow-x:auto}}.n{{text-align:right}}</style></head>\
             <body>\n{body}\n<p><small>Data Embassy: read-only. Every byte is checked \
             against its chunk id before it is sent.</small></p></body></html>\n",
            esc(title)
        ),
    }
}

fn json_page(value: serde_json::Value) -> Page {
    let mut value = value;
    output::mark_ok(&mut value);
    Page {
        content_type: "application/json",
        body: format!("{value}\n"),
    }
}

/// HTML-escapes text (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A shell-quoted word (single quotes).
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./@=:,+".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A dataset's newest version number, count of versions and newest capture time, or why not.
type Summary = std::result::Result<(u64, usize, i64), String>;

/// The served datasets and their versions (newest, count).
pub fn datasets(server: &Server, json: bool) -> Page {
    let rows: Vec<(String, Summary)> = server
        .datasets
        .iter()
        .map(|d| {
            let r = browse::versions(&server.vault, d, false)
                .map(|vs| {
                    let newest = vs.last();
                    (
                        newest.map_or(0, |v| v.number),
                        vs.len(),
                        newest.map_or(0, |v| v.captured_at_ns),
                    )
                })
                .map_err(|e| e.to_string());
            (d.clone(), r)
        })
        .collect();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(d, r)| match r {
                Ok((newest, count, captured)) => json!({
                    "dataset": d, "versions": count, "newest": newest,
                    "newest_captured_at": output::time(*captured),
                }),
                Err(e) => json!({"dataset": d, "error": e}),
            })
            .collect();
        return json_page(json!({ "datasets": list }));
    }
    let mut body = String::from(
        "<h1>Datasets</h1>\n<table><tr><th>Dataset</th><th>Versions</th><th>Newest</th>\
         <th>Captured (UTC)</th></tr>\n",
    );
    for (d, r) in &rows {
        let link = format!("/{}/", percent_encode(d));
        match r {
            Ok((newest, count, captured)) => body.push_str(&format!(
                "<tr><td><a href=\"{link}\">{}</a></td><td class=\"n\">{count}</td>\
                 <td class=\"n\"><a href=\"{link}{newest}/\">{newest}</a></td><td>{}</td></tr>\n",
                esc(d),
                output::time(*captured)
            )),
            Err(e) => body.push_str(&format!(
                "<tr><td>{}</td><td colspan=\"3\">cannot be shown: {}</td></tr>\n",
                esc(d),
                esc(e)
            )),
        }
    }
    body.push_str("</table>\n");
    html("Datasets", &body)
}

/// A dataset's versions (under a witness quorum, the witnessed ones).
pub fn versions(server: &Server, dataset: &str, json: bool) -> Result<Page> {
    let versions = browse::versions(&server.vault, dataset, false)?;
    if json {
        let list: Vec<_> = versions.iter().map(output::version_json).collect();
        return Ok(json_page(json!({"dataset": dataset, "versions": list})));
    }
    let mut body = format!(
        "<p><a href=\"/\">Datasets</a></p><h1>{}</h1>\n<table><tr><th>Version</th>\
         <th>Captured (UTC)</th><th>Files</th><th>Bytes</th><th>Ledger entry</th></tr>\n",
        esc(dataset)
    );
    for v in versions.iter().rev() {
        body.push_str(&format!(
            "<tr><td class=\"n\"><a href=\"{n}/\">{n}</a></td><td>{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td><code>{} {}</code></td></tr>\n",
            output::time(v.captured_at_ns),
            v.stats.files,
            v.stats.bytes,
            v.seq,
            v.ledger_id.short(),
            n = v.number
        ));
    }
    body.push_str("</table>\n");
    Ok(html(dataset, &body))
}

/// The breadcrumb and version line above a version's pages.
fn version_header(opened: &Opened, path: &str) -> String {
    let v = &opened.version;
    let ds = percent_encode(&v.dataset);
    let mut crumbs = format!(
        "<p><a href=\"/\">Datasets</a> / <a href=\"/{ds}/\">{}</a> / \
         <a href=\"/{ds}/{n}/\">version {n}</a>",
        esc(&v.dataset),
        n = v.number
    );
    let mut at = format!("/{ds}/{}", v.number);
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(&percent_encode(part));
        crumbs.push_str(&format!(" / <a href=\"{at}/\">{}</a>", esc(part)));
    }
    crumbs.push_str(&format!(
        "</p>\n<p>Version {} of {}, captured {} UTC; ledger entry {} (<code>{}</code>).</p>\n",
        v.number,
        esc(&v.dataset),
        output::time(v.captured_at_ns),
        v.seq,
        v.ledger_id.to_hex()
    ));
    crumbs
}

/// A folder of a version (a stream's version: its one object, `stream`).
pub fn folder(opened: &Opened, path: &str, json: bool) -> Result<Page> {
    let listing = browse::list(opened, path, false)?;
    let v = &opened.version;
    if json {
        let mut value = serde_json::to_value(&listing)
            .map_err(|e| embassy_core::Error::invalid(format!("rendering JSON: {e}")))?;
        if let Some(map) = value.as_object_mut() {
            map.insert("ledger_seq".into(), v.seq.into());
            map.insert("ledger_entry".into(), v.ledger_id.to_hex().into());
        }
        return Ok(json_page(value));
    }
    let mut body = version_header(opened, path);
    if opened.content == Content::Stream {
        body.push_str("<p>A stream dataset: the version holds one object, the whole stream.</p>\n");
    }
    body.push_str("<table><tr><th>Name</th><th>Size</th><th>Modified (UTC)</th><th></th></tr>\n");
    for e in &listing.entries {
        let name = e.path.rsplit('/').next().unwrap_or(&e.path);
        let href = percent_encode(name);
        let row = match e.kind {
            NodeKind::Dir => format!("<a href=\"{href}/\">{}/</a>", esc(name)),
            NodeKind::File => format!("<a href=\"{href}\">{}</a>", esc(name)),
            NodeKind::Symlink => format!(
                "{} &rarr; {}",
                esc(name),
                esc(e.target.as_deref().unwrap_or(""))
            ),
            NodeKind::Fifo => format!("{} (named pipe)", esc(name)),
        };
        let check = if e.kind == NodeKind::File {
            format!(
                "<a href=\"{href}?check\">check</a> <a href=\"{href}?view=text\">view as text</a>"
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{row}</td><td class=\"n\">{}</td><td>{}</td><td>{check}</td></tr>\n",
            if e.kind == NodeKind::File {
                e.size.to_string()
            } else {
                String::new()
            },
            output::time(e.mtime_ns)
        ));
    }
    body.push_str("</table>\n");
    let title = format!("{}@{} /{}", v.dataset, v.number, listing.path);
    Ok(html(&title, &body))
}

/// How to check one file against the signed history with the CLI.
pub fn check(opened: &Opened, path: &str, content: &FileContent) -> Page {
    let v = &opened.version;
    let target = format!("{}@{}", v.dataset, v.number);
    let name = path.rsplit('/').next().unwrap_or(path);
    let url_path = format!(
        "/{}/{}/{}",
        percent_encode(&v.dataset),
        v.number,
        path.split('/')
            .map(percent_encode)
            .collect::<Vec<_>>()
            .join("/")
    );
    let (restore, restored) = if opened.content == Content::Stream {
        (
            format!(
                "embassy --site SITE restore {} --to /tmp/check-{}",
                sh(&target),
                sh(name)
            ),
            format!("/tmp/check-{name}"),
        )
    } else {
        (
            format!(
                "embassy --site SITE restore {} --include {} --to /tmp/check",
                sh(&target),
                sh(path)
            ),
            format!("/tmp/check/{path}"),
        )
    };
    let commands = format!(
        "# 1. The vault's signed history is intact (ledger, checkpoints, every object):\n\
         embassy --site SITE verify\n\
         # 2. Restore this one file from version {n} (ledger entry {seq}):\n\
         {restore}\n\
         # 3. The file you downloaded here, and the restored one: the two hashes must be equal.\n\
         sha256sum {} {}\n",
        sh(name),
        sh(&restored),
        n = v.number,
        seq = v.seq,
    );
    let mut body = version_header(opened, path);
    body.push_str(&format!(
        "<h1>Check {}</h1>\n<p>{} bytes; ETag <code>\"{}\"</code> (BLAKE3 of the file's \
         chunk ids: the same bytes give the same tag).</p>\n<p><a href=\"{}\">Download</a></p>\n\
         <p>Check the downloaded file against the signed history with the <code>embassy</code> \
         command line, on a machine holding a key or reader credential of this vault (SITE: any \
         site holding the vault):</p>\n<pre id=\"commands\">{}</pre>\n",
        esc(path),
        content.size,
        content.content_hash(),
        esc(&url_path),
        esc(&commands)
    ));
    html(&format!("Check {path}"), &body)
}

/// A `Content-Disposition` value naming the file (ASCII fallback and RFC 5987 UTF-8 name).
pub fn disposition(kind: &str, name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        percent_encode(name)
    )
}

/// The time now as an HTTP date (`Sun, 06 Dec 2026 21:30:06 GMT`).
pub fn http_date_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = embassy_core::time::date_of_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1).clamp(0, 11) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
