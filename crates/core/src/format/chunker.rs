//! Content-defined chunking (FastCDC 2020) with a per-dataset secret gear seed.
//!
//! The driver reads into one reusable buffer and asks FastCDC for cut points over it. A chunk
//! whose end is the end of the buffered data (and that is shorter than the maximum) may not be
//! finished: its bytes move to the front and the buffer is refilled. Cut points depend only on
//! the bytes from the chunk's start, so the result equals chunking the whole stream at once,
//! without copying or zeroing the buffer per chunk.

use std::io::{ErrorKind, Read};

use crate::format::config::ChunkerParams;

/// A failure while chunking: reading the source, or the consumer's own error.
#[derive(Debug)]
pub enum ChunkError<E> {
    /// The source could not be read.
    Read(std::io::Error),
    /// The consumer stopped with an error.
    Consumer(E),
}

/// How a file's content is cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    /// Content-defined (FastCDC) cut points: survives insertions and deletions.
    ContentDefined,
    /// Fixed-size chunks of this many bytes at aligned offsets (the last may be shorter). For
    /// files changed in place in fixed units, such as PostgreSQL relation files (8 KiB pages):
    /// a changed page costs one chunk, and unchanged pages dedup wherever they are.
    Aligned(u32),
}

/// Size of a PostgreSQL page, the chunk size for relation files.
pub const PG_PAGE: u32 = 8192;

/// Splits everything `reader` yields into `size`-byte chunks (the last may be shorter),
/// calling `consume` with each in order. `buf` is reused between calls.
pub fn aligned_chunks<E>(
    mut reader: impl Read,
    size: u32,
    buf: &mut Vec<u8>,
    mut consume: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), ChunkError<E>> {
    let size = size.max(1) as usize;
    // Read several chunks at a time: fewer system calls for small chunk sizes.
    let capacity = size * (1 + (1 << 20) / size);
    if buf.len() < capacity {
        buf.resize(capacity, 0);
    }
    loop {
        let mut len = 0;
        let mut eof = false;
        while len < capacity {
            match reader.read(&mut buf[len..capacity]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(ChunkError::Read(e)),
            }
        }
        for chunk in buf[..len].chunks(size) {
            consume(chunk).map_err(ChunkError::Consumer)?;
        }
        if eof {
            return Ok(());
        }
    }
}

/// A reusable chunking buffer (one per thread).
pub struct ChunkBuffer {
    buf: Vec<u8>,
}

impl ChunkBuffer {
    /// A buffer for chunks of at most `params.max` bytes.
    pub fn new(params: ChunkerParams) -> Self {
        Self {
            buf: vec![0u8; params.max as usize + 2 * params.avg as usize],
        }
    }

    /// Splits everything `reader` yields into chunks, calling `consume` with each in order.
    pub fn chunks<E>(
        &mut self,
        mut reader: impl Read,
        params: ChunkerParams,
        seed: u64,
        mut consume: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), ChunkError<E>> {
        let needed = params.max as usize + 2 * params.avg as usize;
        if self.buf.len() < needed {
            self.buf.resize(needed, 0);
        }
        let capacity = self.buf.len();
        let mut len = 0;
        let mut eof = false;
        loop {
            while !eof && len < capacity {
                match reader.read(&mut self.buf[len..]) {
                    Ok(0) => eof = true,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(ChunkError::Read(e)),
                }
            }
            if len == 0 {
                return Ok(());
            }
            let cdc = fastcdc::v2020::FastCDC::with_level_and_seed(
                &self.buf[..len],
                params.min,
                params.avg,
                params.max,
                fastcdc::v2020::Normalization::Level1,
                seed,
            );
            let mut consumed = 0;
            for chunk in cdc {
                let end = chunk.offset + chunk.length;
                if !eof && end == len && chunk.length < params.max as usize {
                    break; // unfinished: wait for more data
                }
                consume(&self.buf[chunk.offset..end]).map_err(ChunkError::Consumer)?;
                consumed = end;
            }
            if eof && consumed == len {
                return Ok(());
            }
            self.buf.copy_within(consumed..len, 0);
            len -= consumed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_chunks_cut_at_fixed_offsets() {
        let data: Vec<u8> = (0..(3 * 8192 + 100)).map(|i| (i % 251) as u8).collect();
        for piece in [1usize, 7, 8192, 9000, 1 << 21] {
            let mut reader = Trickle(&data, piece);
            let mut at = 0;
            let mut lens = Vec::new();
            let mut buf = Vec::new();
            aligned_chunks::<()>(&mut reader, PG_PAGE, &mut buf, |c| {
                assert_eq!(c, &data[at..at + c.len()]);
                at += c.len();
                lens.push(c.len());
                Ok(())
            })
            .unwrap();
            assert_eq!(lens, vec![8192, 8192, 8192, 100]);
        }
        let mut none = Vec::new();
        aligned_chunks::<()>(&[][..], PG_PAGE, &mut Vec::new(), |c| {
            none.push(c.len());
            Ok(())
        })
        .unwrap();
        assert!(none.is_empty());
    }

    /// Reads in small, irregular pieces, as pipes do.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.1 = (self.1 * 7 + 3) % 9000 + 1;
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn streaming_equals_whole_buffer_chunking() {
        let params = ChunkerParams {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let mut state = 1u64;
        let data: Vec<u8> = (0..3_000_000)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if i % 100_000 < 30_000 {
                    0
                } else {
                    (state >> 33) as u8
                }
            })
            .collect();
        let whole: Vec<(usize, usize)> = fastcdc::v2020::FastCDC::with_level_and_seed(
            &data,
            params.min,
            params.avg,
            params.max,
            fastcdc::v2020::Normalization::Level1,
            99,
        )
        .map(|c| (c.offset, c.length))
        .collect();
        let mut streamed = Vec::new();
        let mut at = 0;
        let mut buffer = ChunkBuffer::new(params);
        buffer
            .chunks::<()>(Trickle(&data, 1), params, 99, |c| {
                assert_eq!(c, &data[at..at + c.len()]);
                streamed.push((at, c.len()));
                at += c.len();
                Ok(())
            })
            .unwrap();
        assert_eq!(streamed, whole);
        assert!(whole.len() > 40);
    }
}
