//! Text that writers or sites control (a deletion's `reason`, a signer's `role`, a version's
//! host and source, dataset names from a site), made safe to print: a hostile writer must not
//! be able to move the cursor, rewrite earlier lines, set the terminal title or fake new lines
//! of output.
//!
//! Every front end (CLI text output, agent status and dashboard, alarms) prints such strings
//! through [`escape`].

use std::borrow::Cow;

/// True for characters [`escape`] replaces: control characters (C0, DEL, C1) and the Unicode
/// format characters that reorder or hide text (bidirectional overrides and isolates, zero-width
/// characters, the BOM).
pub fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

/// `text` with every character of [`needs_escape`] written as a Rust-style escape: `\n`, `\r`,
/// `\t`, else `\u{1b}`. Other text, backslashes included, is unchanged; borrowed when nothing
/// needs escaping.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_reordering_characters_are_escaped() {
        assert!(matches!(escape("plain text, ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\x1b[2J\nb\r\t\u{7f}\u{9b}\u{202e}c"),
            "a\\u{1b}[2J\\nb\\r\\t\\u{7f}\\u{9b}\\u{202e}c"
        );
    }
}

/// A size for people, in binary units with their IEC names (`999 B`, `1.5 KiB`, `2.5 GiB`):
/// the one formatting of sizes every front end uses, so that the CLI, the agent's log and the
/// dashboard never mix MB and MiB.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `n` and the noun, singular for one (`1 file`, `2 files`): `one` and `many` are the noun's
/// two forms (`entry`, `entries`).
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn sizes_are_binary_with_iec_names_and_counts_agree_with_their_number() {
        assert_eq!(size(999), "999 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(1_631_135), "1.6 MiB");
        assert_eq!(size(2_700_000_000), "2.5 GiB");
        assert_eq!(count(1, "file", "files"), "1 file");
        assert_eq!(count(0, "file", "files"), "0 files");
        assert_eq!(count(2, "entry", "entries"), "2 entries");
    }
}
