//! Rendering for people (tables, sizes, times, progress bars) and for machines (`--json`).

use std::io::IsTerminal;

use embassy_core::progress::Progress;
use embassy_core::vault::Version;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

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
    let secs = unix_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A version as JSON.
pub fn version_json(v: &Version) -> serde_json::Value {
    json!({
        "dataset": v.dataset,
        "version": v.seq,
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

/// One line per version for people.
pub fn version_rows(versions: &[Version]) -> String {
    let mut out = format!(
        "{:<24} {:>7}  {:<20}  {:<6} {:>8} {:>10} {:>10}  {}\n",
        "DATASET", "VERSION", "CAPTURED (UTC)", "KIND", "FILES", "SIZE", "ADDED", "ID"
    );
    for v in versions {
        out.push_str(&format!(
            "{:<24} {:>7}  {:<20}  {:<6} {:>8} {:>10} {:>10}  {}\n",
            v.dataset,
            v.seq,
            time(v.captured_at_ns),
            match v.kind {
                embassy_core::manifest::VersionKind::Tree => "tree",
                embassy_core::manifest::VersionKind::Stream => "stream",
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
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(1_795_737_600 * 1_000_000_000), "2026-11-27T00:00:00Z");
        assert_eq!(time(951_782_400 * 1_000_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(size(999), "999 B");
        assert_eq!(size(2_700_000_000), "2.7 GB");
    }
}
