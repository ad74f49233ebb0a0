//! The one duration grammar of Data Embassy, for the CLI and embassy.toml alike: `90d`, `36h`,
//! `1y6mo`, `2w`, `1h30min`, `45s`, and `0`.
//!
//! Durations guard deletions (the legal minimum age, retention windows, the gc grace), so the
//! grammar has no ambiguous unit: `m` is refused (write `min` for minutes or `mo` for months),
//! and so is a number without a unit (is `30` seconds or days?), except `0`.

use crate::error::{Error, Result};

/// The units, longest name first so that `min` and `mo` are not read as `m`.
const UNITS: [(&str, u64); 7] = [
    ("min", 60),
    ("mo", 30 * 86_400),
    ("y", 365 * 86_400),
    ("w", 7 * 86_400),
    ("d", 86_400),
    ("h", 3600),
    ("s", 1),
];

/// Parses a duration into seconds. Units: `y` (365 days), `mo` (30 days), `w`, `d`, `h`, `min`,
/// `s`; several may follow one another (`1y6mo`, `1h30min`).
pub fn parse_duration(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = |why: &str| {
        Error::invalid(format!(
            "'{t}' is not a duration: {why}; write a number with a unit: 90d, 36h, 2w, 1y6mo, \
             30min or 45s (units: y, mo, w, d, h, min, s)"
        ))
    };
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("the number has no unit"));
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("a unit must follow a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| bad("the number is too large"))?;
        rest = &rest[digits..];
        let letters = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..letters];
        let size = match UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, size)) => *size,
            None if unit == "m" => {
                return Err(Error::invalid(format!(
                    "'{t}' is not a duration: '{n}m' is ambiguous: write {n}min for minutes or \
                     {n}mo for months"
                )))
            }
            None if unit.is_empty() => return Err(bad(&format!("'{n}' has no unit"))),
            None => return Err(bad(&format!("'{unit}' is not a unit"))),
        };
        rest = &rest[letters..];
        total = n
            .checked_mul(size)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| bad("it is too long"))?;
    }
    Ok(total)
}

/// Writes seconds the way [`parse_duration`] reads them: `90d`, `1h30min`, `45s`, `0s`.
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut rest = secs;
    let mut out = String::new();
    for (name, size) in [("d", 86_400), ("h", 3600), ("min", 60), ("s", 1)] {
        if rest >= size {
            out.push_str(&format!("{}{name}", rest / size));
            rest %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_every_unit() {
        assert_eq!(parse_duration("90d").unwrap(), 90 * 86_400);
        assert_eq!(
            parse_duration("1y6mo").unwrap(),
            365 * 86_400 + 180 * 86_400
        );
        assert_eq!(parse_duration("30min").unwrap(), 1800);
        assert_eq!(parse_duration("2w1h").unwrap(), 14 * 86_400 + 3600);
        assert_eq!(parse_duration("1h30min").unwrap(), 5400);
        assert_eq!(parse_duration(" 45s ").unwrap(), 45);
        assert_eq!(parse_duration("0").unwrap(), 0);
    }

    /// `6m` meant six months to the CLI and six minutes to embassy.toml, applied to the legal
    /// minimum age: the ambiguous unit is refused everywhere, with both readings named.
    #[test]
    fn the_ambiguous_m_is_refused_naming_both_readings() {
        let e = parse_duration("6m").unwrap_err().to_string();
        assert!(e.contains("6min") && e.contains("6mo"), "{e}");
        assert!(parse_duration("1h6m").is_err());
        let e = parse_duration("30").unwrap_err().to_string();
        assert!(e.contains("no unit"), "{e}");
        for bad in [
            "",
            "d",
            "5x",
            "-3d",
            "1.5d",
            "99999999999999999999y",
            "3 d",
            "min",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        assert_eq!(format_duration(90 * 86_400), "90d");
        assert_eq!(format_duration(5400), "1h30min");
        assert_eq!(format_duration(0), "0s");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(secs in 0u64..10_000_000_000) {
            prop_assert_eq!(parse_duration(&format_duration(secs)).unwrap(), secs);
        }
    }
}
