//! Rendering for people (tables, sizes, times, progress bars) and for machines (`--json`).

use std::io::IsTerminal;

use embassy_core::history::version::Version;
use embassy_core::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Writer- and site-controlled text made safe to print (control characters escaped).
pub use embassy_core::text::escape;

/// A progress bar on stderr when it is a terminal, else nothing.
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar, shown only on a terminal and when not quiet.
    pub fn new(show: bool) -> Self {
        if !show || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = ProgressBar::new(0);
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Self(Some(bar))
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn set_total(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.set_length(bytes);
        }
    }
    fn add(&self, bytes: u64) {
        if let Some(b) = &self.0 {
            b.inc(bytes);
        }
    }
}

/// Bytes for people: `1.2 GiB` (binary units with IEC names, core's one formatting of sizes).
pub use embassy_core::text::size;

/// `n` and a noun, singular for one: `1 file`, `2 files` (core's).
pub use embassy_core::text::count;

/// A JSON success says so: an object without `"ok"` gets `"ok": true`, as an error carries
/// `"ok": false`. Every command answers with an object (`versions --json` lists its versions
/// under `"versions"`, `history --json` its entries under `"entries"`).
pub fn mark_ok(value: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = value {
        map.entry("ok").or_insert(serde_json::Value::Bool(true));
    }
}

/// The causes of an error to print under it, outermost first, leaving out a cause whose text
/// the message above it already shows (errors written `"{context}: {source}"` also return that
/// source, which would print it twice).
pub fn causes(e: &dyn std::error::Error) -> Vec<String> {
    let mut shown = e.to_string();
    let mut out = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !shown.contains(&text) {
            out.push(text.clone());
        }
        shown = text;
        source = s.source();
    }
    out
}

/// A UTC time for people and logs: `2026-11-26T23:59:01Z`.
pub fn time(unix_ns: i64) -> String {
    embassy_core::time::utc(unix_ns)
}

/// A version as JSON.
pub fn version_json(v: &Version) -> serde_json::Value {
    json!({
        "dataset": v.dataset,
        "version": v.number,
        "ledger_seq": v.seq,
        "id": v.manifest.to_hex(),
        "ledger_entry": v.ledger_id.to_hex(),
        "kind": v.kind,
        "captured_at": time(v.captured_at_ns),
        "captured_at_unix_ns": v.captured_at_ns,
        "recorded_at": time(v.recorded_at_ns),
        "files": v.stats.files,
        "dirs": v.stats.dirs,
        "bytes": v.stats.bytes,
        "bytes_read": v.stats.bytes_read,
        "new_chunks": v.stats.new_chunks,
        "new_bytes_stored": v.stats.new_bytes_stored,
    })
}

/// One line per version for people: its number (what `DATASET@N` names) and, beside it, its
/// ledger entry's sequence number (what `embassy history` lists).
pub fn version_rows(versions: &[Version]) -> String {
    let mut out = format!(
        "{:<24} {:>7} {:>6}  {:<20}  {:<6} {:>8} {:>10} {:>10}  {}\n",
        "DATASET", "VERSION", "ENTRY", "CAPTURED (UTC)", "KIND", "FILES", "SIZE", "ADDED", "ID"
    );
    for v in versions {
        out.push_str(&format!(
            "{:<24} {:>7} {:>6}  {:<20}  {:<6} {:>8} {:>10} {:>10}  {}\n",
            escape(&v.dataset),
            v.number,
            v.seq,
            time(v.captured_at_ns),
            match v.kind {
                embassy_core::format::manifest::VersionKind::Tree => "tree",
                embassy_core::format::manifest::VersionKind::Stream => "stream",
            },
            v.stats.files,
            size(v.stats.bytes),
            size(v.stats.new_bytes_stored),
            v.manifest.short()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes() {
        assert_eq!(size(999), "999 B");
        assert_eq!(size(2_700_000_000), "2.5 GiB");
    }

    #[test]
    fn json_successes_say_ok() {
        let mut v = json!({"version": 1});
        mark_ok(&mut v);
        assert_eq!(v["ok"], true);
        let mut v = json!({"ok": false});
        mark_ok(&mut v);
        assert_eq!(v["ok"], false);
    }

    #[test]
    fn a_cause_the_message_already_shows_is_not_printed_again() {
        let e = embassy_core::Error::io(
            "writing restored/x",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied"),
        );
        assert!(e.to_string().contains("permission denied"), "{e}");
        assert_eq!(causes(&e), Vec::<String>::new());
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("opening the vault")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("site down"));
        assert_eq!(causes(&e), vec!["site down".to_string()]);
    }
}
