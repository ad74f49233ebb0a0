//! Progress reporting hooks, so the CLI can draw bars while libraries stay silent.

/// Receives progress from long operations. Every method has a no-op default.
pub trait Progress: Sync {
    /// The amount of work expected, in bytes, once known.
    fn set_total(&self, _bytes: u64) {}
    /// `bytes` more were processed.
    fn add(&self, _bytes: u64) {}
    /// What is being worked on now.
    fn note(&self, _what: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
