//! One rule for every site kind: a site never refills a place its vault is gone from (red team 7
//! for local folders, red team 8 for S3 buckets; docs/sites.md). Once this process read or
//! wrote the vault's `config` through a site, a write there first checks that `config` is still
//! there and is refused with a `Permanent` error when it is not; `config` and `config.sig`
//! themselves are always written (`init`, and the repair of a site that lost its vault, write
//! them first). Each site kind says how it checks and how long a check that found the config
//! counts (a folder: not at all, a `stat` is cheap; a bucket: [`crate::s3::CONFIG_RECHECK`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use embassy_core::format::layout;
use embassy_core::site::SiteError;

/// Whether this process saw the vault at a site, and when a check last found its `config`.
#[derive(Debug)]
pub(crate) struct VaultWatch {
    /// How long a check that found the config counts (zero: every write checks).
    recheck: Duration,
    /// Set once the `config` was read or written through the site.
    seen: AtomicBool,
    /// When a check (or a write of the config) last found it; none since it was read.
    found_at: Mutex<Option<Instant>>,
}

impl VaultWatch {
    /// A watch whose checks count for `recheck`.
    pub(crate) fn new(recheck: Duration) -> Self {
        Self {
            recheck,
            seen: AtomicBool::new(false),
            found_at: Mutex::new(None),
        }
    }

    /// Notes that `path` was read (`written` false) or written through the site: the vault's
    /// `config` marks the vault seen.
    pub(crate) fn saw(&self, path: &str, written: bool) {
        if path != layout::CONFIG {
            return;
        }
        self.seen.store(true, Ordering::Relaxed);
        if written {
            *self.found_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
    }

    /// Whether `path` may be written: yes for the config and its signature, and while the
    /// vault was never seen here; else when `config_here` (asked at most once a `recheck`;
    /// writers running at once wait for one answer) finds the config. `gone` makes the
    /// refusal from [`gone_reason`].
    pub(crate) fn check(
        &self,
        path: &str,
        config_here: impl FnOnce() -> Result<bool, SiteError>,
        gone: impl FnOnce() -> SiteError,
    ) -> Result<(), SiteError> {
        if matches!(path, layout::CONFIG | layout::CONFIG_SIGNATURE)
            || !self.seen.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        if self.recheck.is_zero() {
            return if config_here()? { Ok(()) } else { Err(gone()) };
        }
        // Held across the check: writers running at once wait for one answer, not ask each.
        let mut found_at = self.found_at.lock().unwrap_or_else(|p| p.into_inner());
        if found_at.is_some_and(|t| t.elapsed() < self.recheck) {
            return Ok(());
        }
        if !config_here()? {
            return Err(gone());
        }
        *found_at = Some(Instant::now());
        Ok(())
    }
}

/// Why a write is refused where the vault is gone: `place` ("folder", "bucket"), what may have
/// happened there, and what the user can do besides a repair from another site.
pub(crate) fn gone_reason(place: &str, causes: &str, remedies: &str, location: &str) -> String {
    format!(
        "the vault's config is gone from this {place} ({causes}?): nothing is written here; \
         {remedies}, or repair the site from another one (`embassy sync --seed --from \
         SITE-WITH-THE-VAULT --to {location}`)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn refused() -> SiteError {
        SiteError::Permanent {
            site: "s".into(),
            operation: "put",
            path: "p".into(),
            message: gone_reason("bucket", "wiped", "restore it", "s"),
        }
    }

    /// docs/sites.md, *A vault gone from its bucket*: at most one check a `recheck`, and
    /// writers running at once wait for one answer instead of each asking.
    #[test]
    fn writers_at_once_share_one_check_and_a_found_config_counts_for_the_interval() {
        let watch = VaultWatch::new(Duration::from_secs(5));
        let asked = AtomicUsize::new(0);
        let ask = || {
            asked.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(100));
            Ok(true)
        };
        // Unseen: no check at all.
        watch.check("wal/a", ask, refused).unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 0);
        watch.saw(layout::CONFIG, false);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| watch.check("wal/a", ask, refused).unwrap());
            }
        });
        assert_eq!(asked.load(Ordering::SeqCst), 1, "each writer asked");
        // The config and its signature are never checked; a gone config refuses.
        let gone = VaultWatch::new(Duration::ZERO);
        gone.saw(layout::CONFIG, false);
        gone.check(layout::CONFIG_SIGNATURE, || Ok(false), refused)
            .unwrap();
        let err = gone.check("wal/a", || Ok(false), refused).unwrap_err();
        assert!(err.to_string().contains("embassy sync --seed"), "{err}");
    }
}
