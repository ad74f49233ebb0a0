//! UTC timestamps for people and reports, without a calendar dependency.

/// `2026-11-26T23:59:01Z` for nanoseconds since the Unix epoch.
pub fn utc(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = date_of_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Civil (year, month, day) of days since 1970-01-01, proleptic Gregorian (H. Hinnant's algorithm).
/// One copy for every place that names a UTC date (reports, retention buckets).
pub fn date_of_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::utc(1_795_737_600 * 1_000_000_000),
            "2026-11-27T00:00:00Z"
        );
        assert_eq!(
            super::utc(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00Z"
        );
    }
}
