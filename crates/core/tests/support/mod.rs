//! An in-memory site for the core's parser and collection tests (the core has no sites of its
//! own; the real ones and their conformance suite live in embassy-sites).

use std::collections::HashMap;
use std::sync::Mutex;

use embassy_core::site::{ObjectInfo, Put, Site, SiteError};

/// Objects in a map; create-only like every site.
#[derive(Debug, Default)]
pub struct MemorySite(Mutex<HashMap<String, Vec<u8>>>);

#[allow(dead_code)] // Not every test file uses every helper.
impl MemorySite {
    /// A site holding these objects.
    pub fn with(objects: &[(&str, &[u8])]) -> Self {
        Self(Mutex::new(
            objects
                .iter()
                .map(|(p, b)| (p.to_string(), b.to_vec()))
                .collect(),
        ))
    }

    /// The objects, for a test to look at or change (as a hostile site would).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Site for MemorySite {
    fn location(&self) -> &str {
        "memory:test"
    }
    fn put(&self, path: &str, bytes: &[u8]) -> Result<Put, SiteError> {
        let mut o = self.lock();
        if o.contains_key(path) {
            return Ok(Put::AlreadyExisted);
        }
        o.insert(path.into(), bytes.to_vec());
        Ok(Put::Created)
    }
    fn get(&self, path: &str) -> Result<Vec<u8>, SiteError> {
        self.lock()
            .get(path)
            .cloned()
            .ok_or_else(|| SiteError::NotFound {
                site: "memory:test".into(),
                path: path.into(),
            })
    }
    fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Vec<u8>, SiteError> {
        let all = self.get(path)?;
        offset
            .checked_add(len)
            .and_then(|end| all.get(offset as usize..end as usize))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| SiteError::Permanent {
                site: "memory:test".into(),
                operation: "get range",
                path: path.into(),
                message: "short".into(),
            })
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, SiteError> {
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
        self.lock().remove(path);
        Ok(())
    }
}
