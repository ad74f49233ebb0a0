//! Durations (`90s`, `15min`, `1h30min`: core's one grammar, [`embassy_core::duration`]) and
//! calendar schedules ("daily 02:00", "hourly :15",
//! "weekly sun 03:00"), all in UTC, so a schedule means the same on every host of a state.
//!
//! Grammar (times are UTC):
//!
//! ```text
//! duration := (NUMBER UNIT)+ | 0    UNIT := s | min | h | d | w | mo (30 d) | y (365 d)   e.g. 90s, 1h30min, 7y
//! schedule := "hourly" ":" MM        at minute MM of every hour
//!           | "daily" HH ":" MM      every day at HH:MM
//!           | "weekly" DAY HH ":" MM every week on DAY (mon tue wed thu fri sat sun) at HH:MM
//! ```

use std::time::Duration;

/// Parses a duration with [`embassy_core::duration::parse_duration`] (`90s`, `15min`, `1h30min`,
/// `2d`, `1w`, `7y`); the error names the problem (an ambiguous `m`, a missing unit).
pub fn parse_duration(text: &str) -> embassy_core::Result<Duration> {
    embassy_core::duration::parse_duration(text).map(Duration::from_secs)
}

/// Writes a duration the way [`parse_duration`] reads it: `90s`, `15min`, `1h30min`.
pub fn format_duration(d: Duration) -> String {
    embassy_core::duration::format_duration(d.as_secs())
}

/// When a periodic dataset runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every so often, counted from the end of the previous successful run's start.
    Every(Duration),
    /// At minute `minute` of every hour (UTC).
    Hourly {
        /// 0..=59.
        minute: u32,
    },
    /// Every day at `hour:minute` (UTC).
    Daily {
        /// 0..=23.
        hour: u32,
        /// 0..=59.
        minute: u32,
    },
    /// Every week on `weekday` (0 = Monday) at `hour:minute` (UTC).
    Weekly {
        /// 0 = Monday ... 6 = Sunday.
        weekday: u32,
        /// 0..=23.
        hour: u32,
        /// 0..=59.
        minute: u32,
    },
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn parse_hhmm(text: &str) -> Option<(u32, u32)> {
    let (h, m) = text.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

impl Schedule {
    /// Parses a calendar schedule ("hourly :15", "daily 02:00", "weekly sun 03:00").
    pub fn parse_calendar(text: &str) -> Option<Schedule> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            ["hourly", m] => {
                let m = m.strip_prefix(':')?;
                if m.len() != 2 {
                    return None;
                }
                let minute: u32 = m.parse().ok()?;
                (minute < 60).then_some(Schedule::Hourly { minute })
            }
            ["daily", t] => parse_hhmm(t).map(|(hour, minute)| Schedule::Daily { hour, minute }),
            ["weekly", day, t] => {
                let weekday = DAYS
                    .iter()
                    .position(|d| day.to_ascii_lowercase().starts_with(d))?
                    as u32;
                parse_hhmm(t).map(|(hour, minute)| Schedule::Weekly {
                    weekday,
                    hour,
                    minute,
                })
            }
            _ => None,
        }
    }

    /// The longest gap between two runs (how stale a dataset may get by design).
    pub fn period(&self) -> Duration {
        match self {
            Schedule::Every(d) => *d,
            Schedule::Hourly { .. } => Duration::from_secs(3600),
            Schedule::Daily { .. } => Duration::from_secs(86_400),
            Schedule::Weekly { .. } => Duration::from_secs(7 * 86_400),
        }
    }

    /// The first run time strictly after `after` (Unix seconds), for a dataset whose last run
    /// started at `last_start` (Unix seconds, `None` if never).
    pub fn next_run(&self, after: i64, last_start: Option<i64>) -> i64 {
        match self {
            Schedule::Every(d) => match last_start {
                None => after,
                Some(s) => s + d.as_secs().max(1) as i64,
            },
            Schedule::Hourly { minute } => next_slot(after, 3600, *minute as i64 * 60),
            Schedule::Daily { hour, minute } => {
                next_slot(after, 86_400, (*hour as i64) * 3600 + (*minute as i64) * 60)
            }
            Schedule::Weekly {
                weekday,
                hour,
                minute,
            } => {
                // 1970-01-01 was a Thursday (weekday 3 with Monday = 0).
                let offset = ((*weekday as i64 + 7 - 3) % 7) * 86_400
                    + (*hour as i64) * 3600
                    + (*minute as i64) * 60;
                next_slot(after, 7 * 86_400, offset)
            }
        }
    }
}

fn next_slot(after: i64, period: i64, offset: i64) -> i64 {
    let base = (after - offset).div_euclid(period) * period + offset;
    if base > after {
        base
    } else {
        base + period
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Every(d) => write!(f, "every {}", format_duration(*d)),
            Schedule::Hourly { minute } => write!(f, "hourly :{minute:02}"),
            Schedule::Daily { hour, minute } => write!(f, "daily {hour:02}:{minute:02} UTC"),
            Schedule::Weekly {
                weekday,
                hour,
                minute,
            } => write!(
                f,
                "weekly {} {hour:02}:{minute:02} UTC",
                DAYS[*weekday as usize % 7]
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_the_one_grammar() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_duration("1h30min").unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            parse_duration("6mo").unwrap(),
            Duration::from_secs(180 * 86_400)
        );
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("6m").is_err());
        assert!(parse_duration("5 minutes").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30min");
    }

    #[test]
    fn calendar() {
        // 2026-11-27 is a Friday; 2026-11-27T10:20:00Z = 1795774800.
        let t = 1_795_774_800;
        let hourly = Schedule::parse_calendar("hourly :15").unwrap();
        assert_eq!(hourly.next_run(t, None), t + 55 * 60);
        let daily = Schedule::parse_calendar("daily 02:00").unwrap();
        // Saturday 2026-11-28 02:00 UTC.
        assert_eq!(
            daily.next_run(t, None),
            t - (10 * 3600 + 20 * 60) + 86_400 + 2 * 3600
        );
        let weekly = Schedule::parse_calendar("weekly sun 03:00").unwrap();
        let next = weekly.next_run(t, None);
        // Sunday 2026-11-29 03:00 UTC.
        assert_eq!(next, t - (10 * 3600 + 20 * 60) + 2 * 86_400 + 3 * 3600);
        assert!(Schedule::parse_calendar("daily 24:00").is_none());
        assert!(Schedule::parse_calendar("weekly funday 03:00").is_none());
        assert!(Schedule::parse_calendar("hourly 15").is_none());
    }
}
