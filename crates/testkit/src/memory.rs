//! A site in memory: objects in a map, create-only like every site, with the same path rule, and
//! cheap fault injection (the next N calls of an operation fail, retryably or not). For tests of
//! the layers above the sites (parsers, collection, readers) that need no disk or server; it
//! passes the same conformance suite as the real sites.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use embassy_core::site::{valid_object_path, ObjectInfo, Put, Site, SiteError};

/// The location every memory site reports unless named otherwise.
pub const LOCATION: &str = "memory:test";

/// An operation of the [`Site`] trait, for fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `put`.
    Put,
    /// `get` and `get_range`.
    Get,
    /// `list`.
    List,
    /// `delete`.
    Delete,
}

/// How an injected fault fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// [`SiteError::Retryable`]: a timeout or reset; the same call may succeed.
    Retryable,
    /// [`SiteError::Permanent`]: refused for good (permissions, full disk).
    Permanent,
}

#[derive(Debug)]
struct Injected {
    op: Op,
    failure: Failure,
    times: u32,
}

/// Objects in a map; create-only like every site. Safe to share between threads.
#[derive(Debug)]
pub struct MemorySite {
    location: String,
    objects: Mutex<HashMap<String, Vec<u8>>>,
    faults: Mutex<Vec<Injected>>,
}

impl Default for MemorySite {
    fn default() -> Self {
        Self::named(LOCATION)
    }
}

impl MemorySite {
    /// An empty site reporting `location` (to tell several apart in messages).
    pub fn named(location: &str) -> Self {
        Self {
            location: location.to_string(),
            objects: Mutex::new(HashMap::new()),
            faults: Mutex::new(Vec::new()),
        }
    }

    /// A site holding these objects.
    pub fn with(objects: &[(&str, &[u8])]) -> Self {
        let site = Self::default();
        site.lock()
            .extend(objects.iter().map(|(p, b)| (p.to_string(), b.to_vec())));
        site
    }

    /// The objects, for a test to look at or change (as a hostile site would).
    pub fn lock(&self) -> MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the next `times` calls of `op` fail with `failure` (added to faults already set).
    pub fn fail_next(&self, op: Op, times: u32, failure: Failure) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Injected { op, failure, times });
    }

    /// The injected failure for this call of `op`, if one is due.
    fn fault(&self, op: Op, operation: &'static str, path: &str) -> Result<(), SiteError> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let Some(due) = faults.iter_mut().find(|f| f.op == op && f.times > 0) else {
            return Ok(());
        };
        due.times -= 1;
        let (site, path) = (self.location.clone(), path.to_string());
        let message = "injected by the test".to_string();
        Err(match due.failure {
            Failure::Retryable => SiteError::Retryable {
                site,
                operation,
                path,
                message,
            },
            Failure::Permanent => SiteError::Permanent {
                site,
                operation,
                path,
                message,
            },
        })
    }

    fn check(&self, op: Op, operation: &'static str, path: &str) -> Result<(), SiteError> {
        if !valid_object_path(path) {
            return Err(self.permanent(operation, path, "invalid object path"));
        }
        self.fault(op, operation, path)
    }

    fn permanent(&self, operation: &'static str, path: &str, message: &str) -> SiteError {
        SiteError::Permanent {
            site: self.location.clone(),
            operation,
            path: path.to_string(),
            message: message.to_string(),
        }
    }
}

impl Site for MemorySite {
    fn location(&self) -> &str {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.check(Op::Put, "put", path)?;
        let mut objects = self.lock();
        if objects.contains_key(path) {
            return Ok(Put::AlreadyExisted);
        }
        objects.insert(path.to_string(), bytes.to_vec());
        Ok(Put::Created)
    }

    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.check(Op::Get, "get", path)?;
        self.lock()
            .get(path)
            .cloned()
            .ok_or_else(|| SiteError::NotFound {
                site: self.location.clone(),
                path: path.to_string(),
            })
    }

    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.check(Op::Get, "get range", path)?;
        let objects = self.lock();
        let all = objects.get(path).ok_or_else(|| SiteError::NotFound {
            site: self.location.clone(),
            path: path.to_string(),
        })?;
        offset
            .checked_add(len)
            .filter(|end| *end <= all.len() as u64)
            .map(|end| all[offset as usize..end as usize].to_vec())
            .ok_or_else(|| {
                self.permanent("get range", path, "the range reaches past the object's end")
            })
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        if let Some((dir, _)) = prefix.rsplit_once('/') {
            if !valid_object_path(dir) {
                return Err(self.permanent("list", prefix, "invalid object path"));
            }
        }
        self.fault(Op::List, "list", prefix)?;
        Ok(self
            .lock()
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(p, b)| ObjectInfo {
                path: p.clone(),
                size: b.len() as u64,
            })
            .collect())
    }

    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.check(Op::Delete, "delete", path)?;
        self.lock().remove(path);
        Ok(())
    }
}

/// A site that passes everything to `inner` and counts the GETs of paths under a prefix (the
/// ledger's, say): how tests prove how many reads a load or a sync makes.
#[derive(Debug)]
pub struct CountingGets {
    /// The site every call goes to.
    pub inner: std::sync::Arc<dyn Site>,
    prefix: String,
    gets: std::sync::atomic::AtomicU64,
}

impl CountingGets {
    /// Counts the GETs of paths starting with `prefix` made through it to `inner`.
    pub fn new(inner: std::sync::Arc<dyn Site>, prefix: &str) -> Self {
        Self {
            inner,
            prefix: prefix.to_string(),
            gets: Default::default(),
        }
    }

    /// GETs counted so far.
    pub fn gets(&self) -> u64 {
        self.gets.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Site for CountingGets {
    fn location(&self) -> &str {
        self.inner.location()
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        self.inner.put(path, bytes)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        if path.starts_with(&self.prefix) {
            self.gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.inner.get(path)
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        self.inner.get_range(path, offset, len)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
        self.inner.list(prefix)
    }
    fn delete(&self, path: &str) -> Result<(), SiteError> {
        self.inner.delete(path)
    }
}
