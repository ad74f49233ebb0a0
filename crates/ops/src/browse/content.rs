//! A file's bytes in a version, read by range, chunk by chunk: what `embassy mount` answers a
//! `read` with and what `embassy serve` sends for a (range) request. Each chunk is decrypted and
//! checked against its id before a byte of it is handed on, so damage is an error, never wrong
//! bytes; only one chunk at a time is held, so a large file never sits whole in memory.

use embassy_core::engine::reader::VersionReader;
use embassy_core::format::tree::{Node, NodeKind};
use embassy_core::id::ChunkId;
use embassy_core::{Error, Result};

/// Where each chunk of one file starts: enough to read any byte range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// The file's size in bytes.
    pub size: u64,
    chunks: Vec<ChunkId>,
    /// Where each chunk starts, and the end (one more entry than `chunks`).
    offsets: Vec<u64>,
}

impl FileContent {
    /// The chunk map of `node`, a file of the version `reader` reads (sizes from the index, no
    /// chunk read). A file whose chunks add up to another size than it records is corrupt.
    pub fn of(reader: &VersionReader, node: &Node) -> Result<Self> {
        if node.kind != NodeKind::File {
            return Err(Error::NotFound(format!(
                "{} in version {} of {} is not a file",
                String::from_utf8_lossy(&node.name),
                reader.version.number,
                reader.version.dataset
            )));
        }
        let mut offsets = Vec::with_capacity(node.content.len() + 1);
        let mut end = 0u64;
        for id in &node.content {
            offsets.push(end);
            end += u64::from(reader.blob_size(id)?);
        }
        offsets.push(end);
        if end != node.size {
            return Err(Error::corrupt(
                format!(
                    "version {} of {}",
                    reader.version.number, reader.version.dataset
                ),
                format!("a file of {} bytes whose chunks hold {end}", node.size),
            ));
        }
        Ok(Self {
            size: node.size,
            chunks: node.content.clone(),
            offsets,
        })
    }

    /// A strong validator of the file's bytes: BLAKE3 of its size and its chunks' ids (each a
    /// keyed hash of its plaintext), so two files with the same bytes in one dataset share it
    /// across versions and any change of a byte changes it. Computed without reading a chunk.
    pub fn content_hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"embassy file content v1");
        hasher.update(&self.size.to_le_bytes());
        for id in &self.chunks {
            hasher.update(&id.0);
        }
        hasher.finalize().to_hex().to_string()
    }

    /// Calls `sink` with the bytes `start..end` of the file (clamped to its size), one checked
    /// chunk's worth at a time. An error of `sink` stops the read and is returned as is; a
    /// chunk that does not open or has another size than its index says is an error before any
    /// byte of it reaches `sink`.
    pub fn read_range(
        &self,
        reader: &VersionReader,
        start: u64,
        end: u64,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.read_range_with(
            start,
            end,
            &mut |id| reader.read_blob(id).map(ChunkBytes::new),
            sink,
        )
    }

    /// [`FileContent::read_range`] with the chunks from `chunk` (a cache in front of the
    /// reader, as the mount keeps).
    pub fn read_range_with(
        &self,
        start: u64,
        end: u64,
        chunk: &mut dyn FnMut(&ChunkId) -> Result<ChunkBytes>,
        sink: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let end = end.min(self.size);
        if start >= end {
            return Ok(());
        }
        // The chunk holding `start`: the last that starts at or before it.
        let mut i = self
            .offsets
            .partition_point(|&s| s <= start)
            .saturating_sub(1);
        while i < self.chunks.len() && self.offsets[i] < end {
            let plain = chunk(&self.chunks[i])?;
            let (from, to) = (self.offsets[i], self.offsets[i + 1]);
            if plain.len() as u64 != to - from {
                return Err(Error::corrupt(
                    format!("chunk {}", self.chunks[i].short()),
                    "holds another size than its index says",
                ));
            }
            let a = (start.max(from) - from) as usize;
            let b = (end.min(to) - from) as usize;
            sink(&plain[a..b])?;
            i += 1;
        }
        Ok(())
    }
}

/// A chunk's checked plaintext, owned or shared with a cache.
pub type ChunkBytes = std::sync::Arc<Vec<u8>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn content(sizes: &[u64]) -> (FileContent, Vec<Vec<u8>>) {
        let mut offsets = vec![0];
        let mut chunks = Vec::new();
        let mut bytes = Vec::new();
        for (i, &s) in sizes.iter().enumerate() {
            offsets.push(offsets[i] + s);
            chunks.push(ChunkId([i as u8; 32]));
            bytes.push(
                (0..s)
                    .map(|b| (b as u8).wrapping_add(i as u8 * 50))
                    .collect(),
            );
        }
        let size = *offsets.last().unwrap_or(&0);
        (
            FileContent {
                size,
                chunks,
                offsets,
            },
            bytes,
        )
    }

    fn read(f: &FileContent, bytes: &[Vec<u8>], start: u64, end: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        f.read_range_with(
            start,
            end,
            &mut |id| Ok(std::sync::Arc::new(bytes[id.0[0] as usize].clone())),
            &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            },
        )?;
        Ok(out)
    }

    #[test]
    fn ranges_cross_chunks_and_clamp_at_the_end() {
        let (f, bytes) = content(&[10, 5, 7]);
        let whole: Vec<u8> = bytes.concat();
        for (s, e) in [
            (0, 22),
            (3, 12),
            (10, 15),
            (9, 10),
            (14, 100),
            (21, 22),
            (5, 5),
        ] {
            let got = read(&f, &bytes, s, e).unwrap();
            let e = (e as usize).min(whole.len());
            assert_eq!(got, whole[(s as usize).min(e)..e], "{s}..{e}");
        }
    }

    #[test]
    fn a_chunk_of_the_wrong_size_is_an_error_before_its_bytes() {
        let (f, mut bytes) = content(&[4, 4]);
        bytes[1].push(0);
        let mut seen = Vec::new();
        let e = f.read_range_with(
            0,
            8,
            &mut |id| Ok(std::sync::Arc::new(bytes[id.0[0] as usize].clone())),
            &mut |b| {
                seen.extend_from_slice(b);
                Ok(())
            },
        );
        assert!(e.is_err());
        assert_eq!(seen.len(), 4, "only the good chunk was handed on");
    }

    #[test]
    fn the_content_hash_follows_the_chunks() {
        let (a, _) = content(&[4, 4]);
        let (mut b, _) = content(&[4, 4]);
        assert_eq!(a.content_hash(), b.content_hash());
        b.chunks[1].0[5] ^= 1;
        assert_ne!(a.content_hash(), b.content_hash());
    }
}
