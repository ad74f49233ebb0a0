//! Several sites as one: every write goes to all of them in parallel and succeeds once
//! `min_sites` hold the object durably; reads fall back from a site that lacks an object, or
//! holds a damaged copy, to the next. Sites that missed writes are reported as lagging, to be
//! caught up with `embassy sync` (every site stays complete on its own, invariant 8).

use std::sync::{Arc, Mutex};

use embassy_core::id::ObjectId;
use embassy_core::layout;
use embassy_core::site::{ObjectInfo, Put, Site, SiteError};

/// A vault kept at several sites at once.
#[derive(Debug)]
pub struct ReplicatedSite {
    sites: Vec<Arc<dyn Site>>,
    min_sites: usize,
    location: String,
    lagging: Mutex<Vec<(String, String)>>,
}

impl ReplicatedSite {
    /// Writes to all `sites`; a write succeeds once `min_sites` of them hold it.
    pub fn new(sites: Vec<Arc<dyn Site>>, min_sites: usize) -> Result<Self, SiteError> {
        let location = sites
            .iter()
            .map(|s| s.location())
            .collect::<Vec<_>>()
            .join(" + ");
        if sites.is_empty() || min_sites == 0 || min_sites > sites.len() {
            return Err(SiteError::Permanent {
                site: location,
                operation: "open",
                path: String::new(),
                message: format!(
                    "--min-sites {min_sites} does not fit {} sites: give 1 to {}",
                    sites.len(),
                    sites.len()
                ),
            });
        }
        Ok(Self {
            sites,
            min_sites,
            location,
            lagging: Mutex::new(Vec::new()),
        })
    }

    /// The sites.
    pub fn sites(&self) -> &[Arc<dyn Site>] {
        &self.sites
    }

    /// Records a site as behind before any write (unreachable or empty when opened).
    pub fn mark_lagging(&self, site: &str, why: String) {
        self.lagging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((site.to_string(), why));
    }

    fn first_ok<T>(
        &self,
        op: impl Fn(&dyn Site) -> Result<T, SiteError>,
        path: &str,
    ) -> Result<T, SiteError> {
        let mut last = None;
        for site in &self.sites {
            match op(site.as_ref()) {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| SiteError::NotFound {
            site: self.location.clone(),
            path: path.to_string(),
        }))
    }
}

impl Site for ReplicatedSite {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let results: Vec<Result<Put, SiteError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .sites
                .iter()
                .map(|site| scope.spawn(move || site.put(path, bytes)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(SiteError::Permanent {
                            site: "?".into(),
                            operation: "put",
                            path: path.to_string(),
                            message: "a site's writer panicked".into(),
                        })
                    })
                })
                .collect()
        });
        let mut stored = 0;
        let mut created = false;
        let mut failures = Vec::new();
        for (site, result) in self.sites.iter().zip(results) {
            match result {
                Ok(put) => {
                    stored += 1;
                    created |= put == Put::Created;
                }
                Err(e) => failures.push((site.location().to_string(), e)),
            }
        }
        if !failures.is_empty() {
            let mut lagging = self.lagging.lock().unwrap_or_else(|p| p.into_inner());
            for (site, e) in &failures {
                lagging.push((site.clone(), e.to_string()));
            }
        }
        if stored >= self.min_sites {
            return Ok(if created {
                Put::Created
            } else {
                Put::AlreadyExisted
            });
        }
        let all_retryable = failures
            .iter()
            .all(|(_, e)| matches!(e, SiteError::Retryable { .. }));
        let message = format!(
            "stored at {stored} of {} sites, {} required: {}",
            self.sites.len(),
            self.min_sites,
            failures
                .iter()
                .map(|(s, e)| format!("{s}: {e}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
        Err(if all_retryable {
            SiteError::Retryable {
                site: self.location.clone(),
                operation: "put",
                path: path.to_string(),
                message,
            }
        } else {
            SiteError::Permanent {
                site: self.location.clone(),
                operation: "put",
                path: path.to_string(),
                message,
            }
        })
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        let expected = layout::id_in_path(path);
        self.first_ok(
            |site| {
                let bytes = site.get(path)?;
                match expected {
                    // A damaged copy: try the next site.
                    Some(id) if ObjectId::of(&bytes) != id => Err(SiteError::Permanent {
                        site: site.location().to_string(),
                        operation: "get",
                        path: path.to_string(),
                        message: "the copy here is damaged (bytes do not hash to its name)".into(),
                    }),
                    _ => Ok(bytes),
                }
            },
            path,
        )
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.first_ok(|site| site.get_range(path, offset, len), path)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        // The union: an object any site holds can be read through the fallback.
        let mut all = std::collections::BTreeMap::new();
        let mut answered = 0;
        let mut last = None;
        for site in &self.sites {
            match site.list(prefix) {
                Ok(infos) => {
                    answered += 1;
                    for i in infos {
                        all.entry(i.path.clone()).or_insert(i);
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        if answered == 0 {
            return Err(last.unwrap_or_else(|| SiteError::NotFound {
                site: self.location.clone(),
                path: prefix.to_string(),
            }));
        }
        Ok(all.into_values().collect())
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        for site in &self.sites {
            site.delete(path)?;
        }
        Ok(())
    }

    fn lagging(&self) -> Vec<(String, String)> {
        self.lagging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
