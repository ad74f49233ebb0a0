//! Content-defined chunking (FastCDC 2020) with a per-dataset secret gear seed.

use std::io::Read;

use crate::config::ChunkerParams;

/// Splits a byte stream into content-defined chunks.
pub struct Chunker<R: Read> {
    inner: fastcdc::v2020::StreamCDC<R>,
}

impl<R: Read> Chunker<R> {
    /// A chunker over `reader`; `params` must come from a checked [`crate::config::VaultConfig`].
    pub fn new(reader: R, params: ChunkerParams, seed: u64) -> Self {
        Self {
            inner: fastcdc::v2020::StreamCDC::with_level_and_seed(
                reader,
                params.min,
                params.avg,
                params.max,
                fastcdc::v2020::Normalization::Level1,
                seed,
            ),
        }
    }
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.inner.next()? {
            Ok(chunk) => Some(Ok(chunk.data)),
            Err(fastcdc::v2020::Error::IoError(e)) => Some(Err(e)),
            Err(fastcdc::v2020::Error::Empty) => None,
            Err(fastcdc::v2020::Error::Other(m)) => Some(Err(std::io::Error::other(m))),
        }
    }
}
