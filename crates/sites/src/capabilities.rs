//! What a site guarantees (create-only writes, retention), found by probing it, for `init` to
//! report.

use embassy_core::site::{Site, SiteError};

use crate::{open, s3, S3Site};

/// How a site keeps objects from being overwritten (invariant 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOnly {
    /// The store itself refuses to replace an existing name.
    Enforced {
        /// How, in words.
        how: String,
    },
    /// The site looks before writing; two writers racing on one name could both write.
    BestEffort {
        /// How, in words.
        how: String,
    },
}

/// Retention on created objects (write-once storage at the site).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// The site kind has no such thing (a local folder).
    NotApplicable,
    /// No retention: whoever holds the site's credentials can delete objects.
    None,
    /// Every object this site creates carries this retention, checked on a probe object.
    Enforced {
        /// Governance or compliance.
        mode: s3::LockMode,
        /// Days from creation.
        days: u32,
    },
    /// The bucket applies its own default retention (e.g. `GOVERNANCE 30 days`).
    BucketDefault(String),
}

/// What a site guarantees, found by probing it: `init` prints [`SiteCapabilities::warnings`] and
/// refuses the site when [`SiteCapabilities::problems`] is not empty
/// ([`SiteCapabilities::ensure_usable`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteCapabilities {
    /// The site.
    pub location: String,
    /// How create-only writes are enforced.
    pub create_only: CreateOnly,
    /// Retention on created objects.
    pub retention: Retention,
    /// What the store lacks and what that means, for the operator.
    pub warnings: Vec<String>,
    /// What makes the site unusable as configured, and what to do.
    pub problems: Vec<String>,
}

impl SiteCapabilities {
    /// `Err(Permanent)` listing the problems, if any.
    pub fn ensure_usable(&self) -> Result<(), SiteError> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(SiteError::Permanent {
            site: self.location.clone(),
            operation: "check",
            path: String::new(),
            message: self.problems.join("; "),
        })
    }
}

/// Probes the site at `location` (as [`open`] understands it) for what it guarantees. For S3 this
/// writes and deletes small probe objects under `tmp/` (a lock probe, if retention is configured,
/// stays for a day) and reads the bucket's Object Lock configuration.
pub fn check_capabilities(location: &str) -> Result<SiteCapabilities, SiteError> {
    if location.starts_with("s3://") {
        return S3Site::open(location)?.capabilities();
    }
    let site = open(location)?;
    Ok(SiteCapabilities {
        location: site.location().to_string(),
        create_only: CreateOnly::Enforced {
            how: "files are written aside, fsynced, then hard-linked into place; link(2) refuses \
                  an existing name"
                .into(),
        },
        retention: Retention::NotApplicable,
        warnings: Vec::new(),
        problems: Vec::new(),
    })
}

impl S3Site {
    /// Probes conditional writes and Object Lock (see [`check_capabilities`]).
    pub fn capabilities(&self) -> Result<SiteCapabilities, SiteError> {
        use s3::{BucketLock, ConditionalWrites};
        let cfg = self.config();
        let mut warnings = Vec::new();
        let mut problems = Vec::new();
        let immutability_note = "immutability then rests on content-addressed object names and \
                                 the signed, hash-chained ledger: an overwrite or deletion is \
                                 detected by readers and `verify`, not prevented";
        let create_only = if cfg.conditional_writes == ConditionalWrites::CheckThenPut {
            warnings.push(format!(
                "configured conditional-writes=check-then-put: objects are looked for before \
                 being written, and two writers racing on one name could both write; \
                 {immutability_note}"
            ));
            CreateOnly::BestEffort {
                how: "look (HEAD) then write, by configuration".into(),
            }
        } else {
            let probe = self.probe_conditional_writes()?;
            let mib = cfg.multipart_threshold / (1024 * 1024);
            if probe.complete() {
                CreateOnly::Enforced {
                    how: "the server refuses PutObject and CompleteMultipartUpload with \
                          If-None-Match: * on an existing key"
                        .into(),
                }
            } else {
                let what = if probe.put {
                    format!(
                        "the server honours If-None-Match: * on PutObject but ignores it on \
                         multipart uploads (objects above {mib} MiB), which are looked for before \
                         being completed"
                    )
                } else {
                    "the server ignores If-None-Match: * (it would silently overwrite); this site \
                     looks (HEAD) before every write instead"
                        .to_string()
                };
                if cfg.conditional_writes == ConditionalWrites::Required {
                    problems.push(format!(
                        "{what}, but the site is configured conditional-writes=required: use a \
                         server that honours conditional writes (AWS S3 does) or set \
                         conditional-writes=auto"
                    ));
                } else {
                    warnings.push(format!(
                        "{what}; two writers racing on one name could both write; \
                         {immutability_note}"
                    ));
                }
                CreateOnly::BestEffort { how: what }
            }
        };

        let retention = match (self.probe_object_lock(), cfg.object_lock) {
            (Err(e), Some(_)) => return Err(e),
            (Err(e), None) => {
                warnings.push(format!(
                    "cannot read the bucket's Object Lock configuration ({e}); objects have no \
                     retention as far as this site knows"
                ));
                Retention::None
            }
            (Ok(p), Some(lock)) => match (&p.bucket, p.verified_on_object) {
                (BucketLock::Enabled { .. }, Some(true)) => Retention::Enforced {
                    mode: lock.mode,
                    days: lock.days,
                },
                (BucketLock::Enabled { .. }, _) => {
                    problems.push(format!(
                        "the bucket has Object Lock, but a probe object written with {} \
                         retention did not come back locked: the server does not apply \
                         retention; drop object-lock or use a server that does",
                        lock.mode
                    ));
                    Retention::None
                }
                (BucketLock::NotEnabled, _) => {
                    problems.push(format!(
                        "object-lock={}:{}d is configured but bucket '{}' was created without \
                         Object Lock: create a bucket with Object Lock enabled (it can only be \
                         turned on at creation on most servers) or drop object-lock",
                        lock.mode, lock.days, cfg.bucket
                    ));
                    Retention::None
                }
                (BucketLock::Unsupported(why), _) => {
                    problems.push(format!(
                        "object-lock is configured but the server does not implement Object Lock \
                         ({why}): drop object-lock or use a server that has it"
                    ));
                    Retention::None
                }
            },
            (Ok(p), None) => match p.bucket {
                BucketLock::Enabled {
                    default_retention: Some(r),
                } => Retention::BucketDefault(r),
                BucketLock::Enabled {
                    default_retention: None,
                } => {
                    warnings.push(
                        "the bucket has Object Lock but neither a default retention nor a \
                         configured one: set object-lock=governance:DAYS or compliance:DAYS so \
                         that objects cannot be deleted early"
                            .into(),
                    );
                    Retention::None
                }
                BucketLock::NotEnabled | BucketLock::Unsupported(_) => {
                    warnings.push(format!(
                        "no Object Lock retention: whoever holds the bucket's credentials can \
                         delete objects; {immutability_note} (for write-once storage use a bucket \
                         with Object Lock and object-lock=MODE:DAYS)"
                    ));
                    Retention::None
                }
            },
        };
        Ok(SiteCapabilities {
            location: self.location().to_string(),
            create_only,
            retention,
            warnings,
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open;

    #[test]
    fn open_rejects_unknown_schemes_and_empty_locations() {
        for (loc, needle) in [
            ("", "empty site location"),
            ("gs://bucket", "not supported"),
            ("s3://x", "bucket name"),
        ] {
            let err = open(loc).unwrap_err().to_string();
            assert!(err.contains(needle), "{loc}: {err}");
        }
    }

    #[test]
    fn local_capabilities() {
        let dir = tempfile::tempdir().unwrap();
        let caps = check_capabilities(dir.path().to_str().unwrap()).unwrap();
        assert!(matches!(caps.create_only, CreateOnly::Enforced { .. }));
        assert_eq!(caps.retention, Retention::NotApplicable);
        caps.ensure_usable().unwrap();
    }
}
