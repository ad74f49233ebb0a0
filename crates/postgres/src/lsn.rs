//! Log sequence numbers (positions in the WAL) and WAL segment file names.

use std::fmt;
use std::str::FromStr;

use crate::error::PgError;

/// Size of a WAL segment file. Only PostgreSQL's default (16 MiB) is supported; the streamer
/// checks the server's `wal_segment_size` and refuses others with a clear error.
pub const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
const SEGMENTS_PER_XLOGID: u64 = 0x1_0000_0000 / SEGMENT_SIZE;

/// A WAL position (PostgreSQL's `XLogRecPtr`), printed as `X/Y` like PostgreSQL does
/// (`16/B374D848`): the one LSN type of the workspace. The vault's own records (core's WAL log
/// object names, ledger events) keep the raw `u64`; this crate and the front ends wrap it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl FromStr for Lsn {
    type Err = PgError;
    fn from_str(s: &str) -> Result<Self, PgError> {
        let bad = || {
            PgError::Invalid(format!(
                "'{s}' is not an LSN: write it as PostgreSQL prints it, like 16/B374D848"
            ))
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        // from_str_radix takes a leading sign, which no LSN has.
        let hex = |part: &str| {
            (!part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(part, 16).ok())
                .flatten()
                .ok_or_else(bad)
        };
        let (hi, lo) = (hex(hi)?, hex(lo)?);
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl Lsn {
    /// Start of the segment holding this position.
    pub fn segment_start(self) -> Lsn {
        Lsn(self.0 - self.0 % SEGMENT_SIZE)
    }

    /// Segment number of this position.
    pub fn segment_no(self) -> u64 {
        self.0 / SEGMENT_SIZE
    }

    /// Offset inside its segment.
    pub fn segment_offset(self) -> u64 {
        self.0 % SEGMENT_SIZE
    }
}

/// The file name PostgreSQL gives the segment `segno` of `timeline` (`000000010000000000000003`).
pub fn segment_file_name(timeline: u32, segno: u64) -> String {
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segno / SEGMENTS_PER_XLOGID,
        segno % SEGMENTS_PER_XLOGID
    )
}

/// The name of a timeline history file (`00000002.history`).
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// What a WAL file name asked for by `restore_command` denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFile {
    /// A segment: timeline and segment number.
    Segment {
        /// Timeline.
        timeline: u32,
        /// Segment number (start LSN / segment size).
        segno: u64,
    },
    /// A timeline history file.
    History {
        /// Timeline.
        timeline: u32,
    },
    /// A partial segment (`...partial`) or backup label (`...backup`): never stored.
    Other,
}

/// Parses a WAL file name as PostgreSQL passes it in `%f`.
pub fn parse_wal_file_name(name: &str) -> Result<WalFile, PgError> {
    let hex8 = |s: &str| u32::from_str_radix(s, 16).ok();
    if let Some(tl) = name.strip_suffix(".history") {
        if tl.len() == 8 {
            if let Some(timeline) = hex8(tl) {
                return Ok(WalFile::History { timeline });
            }
        }
    } else if name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let (Some(timeline), Some(log), Some(seg)) =
            (hex8(&name[..8]), hex8(&name[8..16]), hex8(&name[16..]))
        {
            if (seg as u64) < SEGMENTS_PER_XLOGID {
                return Ok(WalFile::Segment {
                    timeline,
                    segno: log as u64 * SEGMENTS_PER_XLOGID + seg as u64,
                });
            }
        }
    } else if name.len() > 24
        && name[..24].bytes().all(|b| b.is_ascii_hexdigit())
        && (name.ends_with(".partial") || name.ends_with(".backup"))
    {
        return Ok(WalFile::Other);
    }
    Err(PgError::Invalid(format!(
        "'{name}' is not a WAL file name (24 hex digits, or 8 hex digits and .history)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lsns_round_trip() {
        let l: Lsn = "1/2A000028".parse().unwrap();
        assert_eq!(l.0, 0x1_2A00_0028);
        assert_eq!(l.to_string(), "1/2A000028");
        assert_eq!(
            segment_file_name(1, l.segment_no()),
            "00000001000000010000002A"
        );
        assert_eq!(
            parse_wal_file_name("00000001000000010000002A").unwrap(),
            WalFile::Segment {
                timeline: 1,
                segno: l.segment_no()
            }
        );
        assert_eq!(
            parse_wal_file_name("00000002.history").unwrap(),
            WalFile::History { timeline: 2 }
        );
        assert!(parse_wal_file_name("000000010000000100000100").is_err());
        assert!(parse_wal_file_name("../etc/passwd").is_err());
        assert!("12".parse::<Lsn>().is_err());
    }

    #[test]
    fn lsns_parse_and_print_as_postgresql_does() {
        for (text, value) in [
            ("16/B374D848", 0x16_B374_D848u64),
            ("0/0", 0),
            ("0/16B3748", 0x16B_3748),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value), "{text}");
            assert_eq!(lsn.to_string(), text);
            assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }
        // PostgreSQL accepts lower case and surrounding blanks; printing is upper case.
        assert_eq!(
            " 16/b374d848\n".parse::<Lsn>().unwrap().to_string(),
            "16/B374D848"
        );
        for bad in [
            "",
            "/",
            "16B374D848",
            "16/",
            "/B374D848",
            "16/B374D848/1",
            "-1/0",
            "+1/0",
            "1/+0",
            "G/0",
            "100000000/0",
            "0/100000000",
            "16 /B374D848",
        ] {
            let e = bad.parse::<Lsn>().unwrap_err().to_string();
            assert!(
                e.contains("is not an LSN") && e.contains("16/B374D848"),
                "{bad:?}: {e}"
            );
        }
    }
}
