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

/// Bytes for people: 1.2 GB (decimal units, like the figures in our benchmarks).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
        assert_eq!(size(2_700_000_000), "2.7 GB");
    }
}
