//! Retention: which versions of a dataset a policy keeps, and why. A pure function of the
//! versions' times, the policy and the time of evaluation, so that a keyless verifier can
//! recompute every deletion recorded in a ledger and check that it followed the policy it names.
//!
//! The keep rules follow restic's `forget`: versions are taken newest first; `keep_last` keeps the
//! newest n; each of `keep_hourly` .. `keep_yearly` keeps the newest version in each of the n most
//! recent hours (days, ISO weeks, months, years; UTC) that hold a version. A version is kept when
//! any rule keeps it. Two rules of our own come first: the newest version is always kept, and a
//! version younger than the policy's minimum age (the legal minimum) is always kept.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::date_of_days;

const NS_PER_SEC: i64 = 1_000_000_000;

/// A dataset's retention policy. Serialised into the ledger entry of each deletion it makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep the newest n versions.
    #[serde(default)]
    pub keep_last: u32,
    /// Keep the newest version of each of the n most recent hours that have one.
    #[serde(default)]
    pub keep_hourly: u32,
    /// Likewise per day (UTC).
    #[serde(default)]
    pub keep_daily: u32,
    /// Likewise per ISO week (Monday to Sunday, UTC).
    #[serde(default)]
    pub keep_weekly: u32,
    /// Likewise per calendar month.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Likewise per calendar year.
    #[serde(default)]
    pub keep_yearly: u32,
    /// Never delete a version younger than this many seconds (the legal minimum age).
    #[serde(default)]
    pub min_age_secs: u64,
    /// The point-in-time window of streamed WAL (seconds, 0: none, format 4): WAL streamed
    /// within this long before the policy was applied stays even when no kept version needs it
    /// (`history::wal_retention`). It keeps nothing else.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wal_keep_secs: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl RetentionPolicy {
    /// True when no keep rule is set (only the newest and young versions would be kept).
    pub fn keeps_nothing(&self) -> bool {
        self.keep_last == 0
            && self.keep_hourly == 0
            && self.keep_daily == 0
            && self.keep_weekly == 0
            && self.keep_monthly == 0
            && self.keep_yearly == 0
    }

    /// Refuses a policy without any keep rule: almost certainly a mistake that would delete
    /// every version but the newest.
    pub fn check(&self) -> Result<()> {
        if self.keeps_nothing() {
            return Err(Error::invalid(
                "the retention policy has no keep rule, so it would delete every version but the \
                 newest: give at least one of keep-last, keep-hourly, keep-daily, keep-weekly, \
                 keep-monthly, keep-yearly",
            ));
        }
        Ok(())
    }

    /// This policy with its minimum age raised to at least `floor_secs` (the vault's pinned legal
    /// minimum).
    pub fn with_min_age_at_least(mut self, floor_secs: u64) -> Self {
        self.min_age_secs = self.min_age_secs.max(floor_secs);
        self
    }
}

impl fmt::Display for RetentionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (n, name) in [
            (self.keep_last, "last"),
            (self.keep_hourly, "hourly"),
            (self.keep_daily, "daily"),
            (self.keep_weekly, "weekly"),
            (self.keep_monthly, "monthly"),
            (self.keep_yearly, "yearly"),
        ] {
            if n > 0 {
                parts.push(format!("keep {name} {n}"));
            }
        }
        if self.min_age_secs > 0 {
            parts.push(format!(
                "min age {}",
                crate::duration::format_duration(self.min_age_secs)
            ));
        }
        if self.wal_keep_secs > 0 {
            parts.push(format!(
                "WAL window {}",
                crate::duration::format_duration(self.wal_keep_secs)
            ));
        }
        if parts.is_empty() {
            f.write_str("no keep rule")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// One version as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Its version number (`Version::number`), carried for reports.
    pub number: u64,
    /// Its ledger sequence number.
    pub seq: u64,
    /// Its recovery point (capture time, ns since the epoch): what the calendar rules bucket.
    pub captured_at_ns: i64,
    /// When its ledger entry was made; the minimum age counts from the later of the two.
    pub recorded_at_ns: i64,
}

/// Why a version is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum KeepReason {
    /// It is the dataset's newest version.
    Newest,
    /// Younger than the minimum age.
    YoungerThanMinAge,
    /// One of the newest `keep_last`.
    Last,
    /// Newest of its hour, day, week, month or year.
    Bucket {
        /// `hourly`, `daily`, `weekly`, `monthly` or `yearly`.
        period: &'static str,
        /// The bucket, for people (`2026-11-27`, `week of 2026-11-23`, ...).
        bucket: String,
    },
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Newest => f.write_str("newest version"),
            KeepReason::YoungerThanMinAge => f.write_str("younger than the minimum age"),
            KeepReason::Last => f.write_str("keep-last"),
            KeepReason::Bucket { period, bucket } => write!(f, "{period} ({bucket})"),
        }
    }
}

/// The policy's verdict on one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The version's number, as `embassy versions` lists it.
    #[serde(rename = "version")]
    pub number: u64,
    /// The version's ledger sequence number.
    #[serde(rename = "ledger_seq")]
    pub seq: u64,
    /// Its recovery point.
    pub captured_at_ns: i64,
    /// Why it is kept; empty when the policy deletes it.
    pub reasons: Vec<KeepReason>,
}

impl Decision {
    /// True when the version is kept.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// Decides, for each version, whether `policy` keeps it at time `now_ns`, and why. Returned
/// newest first.
pub fn select(versions: &[Candidate], policy: &RetentionPolicy, now_ns: i64) -> Vec<Decision> {
    let mut sorted: Vec<Candidate> = versions.to_vec();
    sorted.sort_by(|a, b| {
        (b.captured_at_ns, b.seq)
            .cmp(&(a.captured_at_ns, a.seq))
            .then(b.recorded_at_ns.cmp(&a.recorded_at_ns))
    });
    let mut decisions: Vec<Decision> = sorted
        .iter()
        .map(|c| Decision {
            number: c.number,
            seq: c.seq,
            captured_at_ns: c.captured_at_ns,
            reasons: Vec::new(),
        })
        .collect();
    if let Some(first) = decisions.first_mut() {
        first.reasons.push(KeepReason::Newest);
    }
    let min_age_ns = i64::try_from(policy.min_age_secs)
        .unwrap_or(i64::MAX)
        .saturating_mul(NS_PER_SEC);
    for (c, d) in sorted.iter().zip(decisions.iter_mut()) {
        let born = c.captured_at_ns.max(c.recorded_at_ns);
        if now_ns.saturating_sub(born) < min_age_ns {
            d.reasons.push(KeepReason::YoungerThanMinAge);
        }
    }
    for d in decisions.iter_mut().take(policy.keep_last as usize) {
        d.reasons.push(KeepReason::Last);
    }
    type BucketOf = fn(i64) -> (i64, String);
    let periods: [(u32, &'static str, BucketOf); 5] = [
        (policy.keep_hourly, "hourly", hour_bucket),
        (policy.keep_daily, "daily", day_bucket),
        (policy.keep_weekly, "weekly", week_bucket),
        (policy.keep_monthly, "monthly", month_bucket),
        (policy.keep_yearly, "yearly", year_bucket),
    ];
    for (n, period, bucket_of) in periods {
        if n == 0 {
            continue;
        }
        let mut used = 0u32;
        let mut last: Option<i64> = None;
        for d in decisions.iter_mut() {
            if used >= n {
                break;
            }
            let (key, label) = bucket_of(d.captured_at_ns);
            if last != Some(key) {
                last = Some(key);
                used += 1;
                d.reasons.push(KeepReason::Bucket {
                    period,
                    bucket: label,
                });
            }
        }
    }
    decisions
}

/// (year, month, day, hour) in UTC, and days since the epoch.
fn civil(unix_ns: i64) -> (i64, i64, i64, i64, i64) {
    let secs = unix_ns.div_euclid(NS_PER_SEC);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    let (y, m, d) = date_of_days(days);
    (y, m, d, hour, days)
}

fn hour_bucket(ns: i64) -> (i64, String) {
    let (y, m, d, h, _) = civil(ns);
    (
        ns.div_euclid(3600 * NS_PER_SEC),
        format!("{y:04}-{m:02}-{d:02} {h:02}h"),
    )
}

fn day_bucket(ns: i64) -> (i64, String) {
    let (y, m, d, _, days) = civil(ns);
    (days, format!("{y:04}-{m:02}-{d:02}"))
}

fn week_bucket(ns: i64) -> (i64, String) {
    let (_, _, _, _, days) = civil(ns);
    // 1970-01-01 was a Thursday: Monday is weekday 0.
    let monday = days - (days + 3).rem_euclid(7);
    let (y, m, d) = date_of_days(monday);
    (monday, format!("week of {y:04}-{m:02}-{d:02}"))
}

fn month_bucket(ns: i64) -> (i64, String) {
    let (y, m, _, _, _) = civil(ns);
    (y * 12 + m, format!("{y:04}-{m:02}"))
}

fn year_bucket(ns: i64) -> (i64, String) {
    let (y, _, _, _, _) = civil(ns);
    (y, format!("{y:04}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = 3600 * NS_PER_SEC;
    const D: i64 = 24 * H;
    /// 2026-11-27T00:00:00Z.
    const T0: i64 = 1_795_737_600 * NS_PER_SEC;

    fn at(seq: u64, ns: i64) -> Candidate {
        Candidate {
            number: seq,
            seq,
            captured_at_ns: ns,
            recorded_at_ns: ns,
        }
    }

    fn kept(decisions: &[Decision]) -> Vec<u64> {
        let mut k: Vec<u64> = decisions
            .iter()
            .filter(|d| d.keep())
            .map(|d| d.seq)
            .collect();
        k.sort();
        k
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let vs: Vec<Candidate> = (1..=5).map(|i| at(i, T0 + i as i64 * H)).collect();
        let p = RetentionPolicy {
            keep_last: 2,
            ..Default::default()
        };
        assert_eq!(kept(&select(&vs, &p, T0 + 10 * D)), vec![4, 5]);
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        // Three versions a day for four days.
        let mut vs = Vec::new();
        let mut seq = 0;
        for day in 0..4 {
            for hour in [1, 9, 17] {
                seq += 1;
                vs.push(at(seq, T0 + day * D + hour * H));
            }
        }
        let p = RetentionPolicy {
            keep_daily: 3,
            ..Default::default()
        };
        let d = select(&vs, &p, T0 + 30 * D);
        // Newest of days 3, 2, 1 (seqs 12, 9, 6); day 0 falls out.
        assert_eq!(kept(&d), vec![6, 9, 12]);
        let why = d.iter().find(|d| d.seq == 9).unwrap();
        assert_eq!(
            why.reasons,
            vec![KeepReason::Bucket {
                period: "daily",
                bucket: "2026-11-29".into()
            }]
        );
    }

    #[test]
    fn weekly_monthly_yearly_buckets() {
        // 2026-11-23 is a Monday; 2026-11-22 a Sunday.
        assert_eq!(week_bucket(T0).1, "week of 2026-11-23");
        assert_eq!(week_bucket(T0 - 5 * D + H).1, "week of 2026-11-16");
        assert_eq!(month_bucket(T0).1, "2026-11");
        assert_eq!(year_bucket(T0).1, "2026");
        assert_eq!(hour_bucket(T0 + 5 * H).1, "2026-11-27 05h");
        // Leap day.
        assert_eq!(day_bucket(951_782_400 * NS_PER_SEC).1, "2000-02-29");
        let vs: Vec<Candidate> = (0..400).map(|i| at(i + 1, T0 - i as i64 * D)).collect();
        let p = RetentionPolicy {
            keep_monthly: 3,
            keep_yearly: 2,
            ..Default::default()
        };
        let d = select(&vs, &p, T0 + D);
        // Newest of Nov, Oct, Sep 2026 and of 2026 (same as Nov's) and 2025.
        let k = kept(&d);
        assert_eq!(k.len(), 4, "{k:?}");
        assert!(k.contains(&1)); // newest overall
    }

    #[test]
    fn min_age_and_newest_always_kept() {
        let vs = vec![at(1, T0 - 10 * D), at(2, T0 - 2 * D), at(3, T0 - H)];
        let p = RetentionPolicy {
            keep_last: 1,
            min_age_secs: 3 * 86_400,
            ..Default::default()
        };
        let d = select(&vs, &p, T0);
        assert_eq!(kept(&d), vec![2, 3]);
        assert!(d
            .iter()
            .find(|d| d.seq == 2)
            .unwrap()
            .reasons
            .contains(&KeepReason::YoungerThanMinAge));
        // A policy without rules still keeps the newest.
        assert_eq!(kept(&select(&vs, &RetentionPolicy::default(), T0)), vec![3]);
        assert!(RetentionPolicy::default().check().is_err());
    }

    #[test]
    fn recorded_time_counts_for_min_age() {
        // Captured long ago but only recorded an hour ago: still young.
        let vs = vec![
            Candidate {
                number: 1,
                seq: 1,
                captured_at_ns: T0 - 100 * D,
                recorded_at_ns: T0 - H,
            },
            at(2, T0),
        ];
        let p = RetentionPolicy {
            keep_last: 1,
            min_age_secs: 86_400,
            ..Default::default()
        };
        assert_eq!(kept(&select(&vs, &p, T0)), vec![1, 2]);
    }

    fn policy() -> impl Strategy<Value = RetentionPolicy> {
        (
            0u32..4,
            0u32..4,
            0u32..5,
            0u32..4,
            0u32..4,
            0u32..3,
            0u64..(20 * 86_400),
        )
            .prop_map(|(l, h, d, w, m, y, age)| RetentionPolicy {
                keep_last: l,
                keep_hourly: h,
                keep_daily: d,
                keep_weekly: w,
                keep_monthly: m,
                keep_yearly: y,
                min_age_secs: age,
                wal_keep_secs: 0,
            })
    }

    fn versions() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec((0i64..(400 * D), 0i64..(2 * H)), 1..60).prop_map(|times| {
            times
                .into_iter()
                .enumerate()
                .map(|(i, (t, delay))| Candidate {
                    number: i as u64 + 1,
                    seq: i as u64 + 1,
                    captured_at_ns: T0 - t,
                    recorded_at_ns: T0 - t + delay,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn never_deletes_the_newest_or_the_young(vs in versions(), p in policy(), later in 0i64..(30 * D)) {
            let now = T0 + later;
            let d = select(&vs, &p, now);
            prop_assert_eq!(d.len(), vs.len());
            let newest = vs.iter().max_by_key(|c| (c.captured_at_ns, c.seq)).unwrap();
            prop_assert!(d.iter().any(|x| x.seq == newest.seq && x.keep()));
            for c in &vs {
                let young = now - c.captured_at_ns.max(c.recorded_at_ns) < p.min_age_secs as i64 * NS_PER_SEC;
                if young {
                    prop_assert!(d.iter().any(|x| x.seq == c.seq && x.keep()), "young version {} deleted", c.seq);
                }
            }
            // keep-last keeps at least min(n, len) versions.
            prop_assert!(kept(&d).len() >= (p.keep_last as usize).min(vs.len()));
        }

        #[test]
        fn idempotent(vs in versions(), p in policy(), later in 0i64..(30 * D)) {
            let now = T0 + later;
            let first = select(&vs, &p, now);
            let survivors: Vec<Candidate> = vs.iter().copied().filter(|c| first.iter().any(|d| d.seq == c.seq && d.keep())).collect();
            let second = select(&survivors, &p, now);
            prop_assert!(second.iter().all(|d| d.keep()), "a second run deletes more: {:?}", second.iter().filter(|d| !d.keep()).map(|d| d.seq).collect::<Vec<_>>());
        }

        #[test]
        fn more_rules_keep_more(vs in versions(), p in policy(), extra in 1u32..3) {
            let mut q = p;
            q.keep_daily += extra;
            let a = kept(&select(&vs, &p, T0));
            let b = kept(&select(&vs, &q, T0));
            prop_assert!(a.iter().all(|s| b.contains(s)));
        }
    }
}
