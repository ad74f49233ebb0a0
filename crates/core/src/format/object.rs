//! Reading one content-addressed object from a site: its bytes must hash to its name. Every
//! layer above reads through this, so a missing or altered object is reported one way.

use crate::error::{Error, Result};
use crate::id::ObjectId;
use crate::site::{Site, SiteError};

/// Fetches an object and checks it hashes to its name.
pub fn get_checked(
    site: &dyn Site,
    path: &str,
    id: &ObjectId,
    referenced_by: &str,
) -> Result<Vec<u8>> {
    let bytes = site.get(path).map_err(|e| match e {
        SiteError::NotFound { .. } => Error::Missing {
            path: path.to_string(),
            site: site.location().to_string(),
            referenced_by: referenced_by.to_string(),
        },
        e => e.into(),
    })?;
    if ObjectId::of(&bytes) != *id {
        return Err(Error::corrupt(
            path,
            "bytes do not hash to the object's name (altered or truncated)",
        ));
    }
    Ok(bytes)
}
