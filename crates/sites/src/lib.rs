//! Storage sites for Data Embassy vaults, all behind [`embassy_core::site::Site`].

pub mod local;

use std::sync::Arc;

use embassy_core::site::{Site, SiteError};

pub use local::LocalSite;

/// Opens a site from a location: a folder path (or `file://` URL).
pub fn open(location: &str) -> Result<Arc<dyn Site>, SiteError> {
    if location.trim().is_empty() {
        return Err(SiteError::Permanent {
            site: location.to_string(),
            operation: "open",
            path: String::new(),
            message: "empty site location: give --site PATH (or set EMBASSY_SITE)".into(),
        });
    }
    if let Some((scheme, _)) = location.split_once("://") {
        if scheme != "file" {
            return Err(SiteError::Permanent {
                site: location.to_string(),
                operation: "open",
                path: String::new(),
                message: format!(
                    "'{scheme}://' sites are not supported by this build; use a local folder path"
                ),
            });
        }
    }
    let path = location.strip_prefix("file://").unwrap_or(location);
    Ok(Arc::new(LocalSite::new(path)?))
}
