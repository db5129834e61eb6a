//! [`ChunkWriter`]: the GGUF writer's output buffer, which hands the file only whole, aligned
//! chunks of [`CHUNK`] bytes.
//!
//! Why not `BufWriter`: the page cache keeps a written file in folios no larger than the writes
//! that made them (Linux 6.x on ext4: 4 MiB writes left a 1.9 GB file in 2 MiB folios, the 1 MiB
//! writes of a `BufWriter` in smaller ones). Only 2 MiB folios can be mapped with huge-page
//! entries, and decoding from a map of small ones misses the TLB on every 4 KiB page: on a
//! 2-vCPU Xeon the 3B Q4_K_M decode reached 74-75% of the bandwidth bound from a file written in
//! 1 MiB pieces and 88-90% from the same bytes written in 4 MiB pieces (alternating runs).
//! `BufWriter` also passes a write larger than its buffer straight through, at whatever offset it
//! starts; this writer never does.

use std::io::{self, Write};

/// Bytes per write: a multiple of the 2 MiB a huge page maps on x86-64 and aarch64 (4 KiB base
/// pages), so every chunk starts on a huge-page boundary of the file.
pub(crate) const CHUNK: usize = 4 << 20;

/// Collects bytes into [`CHUNK`]-sized writes to `inner`; the rest goes out on [`Self::finish`]
/// (or a `flush`, which the GGUF writer only calls at the end).
pub(crate) struct ChunkWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> ChunkWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    /// Writes what is buffered and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.drain()?;
        Ok(self.inner)
    }

    /// Writes what is buffered; on an error it stays buffered.
    fn drain(&mut self) -> io::Result<()> {
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for ChunkWriter<W> {
    /// Takes at most what fits in the current chunk; a full chunk is written before anything new
    /// is taken, so an error means that none of `data` was taken.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() == CHUNK {
            self.drain()?;
        }
        let take = (CHUNK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the length of every write it is given.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: Vec<usize>,
    }

    impl Write for Recorder {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(data);
            self.writes.push(data.len());
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn only_whole_chunks_reach_the_file_until_the_end() {
        // Pieces smaller and larger than a chunk, as a header and tensors of every size come.
        let sizes = [7, 300, CHUNK + 5, 1 << 20, 3 * CHUNK, 1, CHUNK - 13, 12_345];
        let mut expect = Vec::new();
        let mut w = ChunkWriter::new(Recorder::default());
        for (i, &n) in sizes.iter().enumerate() {
            let piece: Vec<u8> = (0..n).map(|j| (i * 31 + j * 7) as u8).collect();
            w.write_all(&piece).unwrap();
            expect.extend_from_slice(&piece);
        }
        let r = w.finish().unwrap();
        assert_eq!(r.bytes, expect);
        let (last, whole) = r.writes.split_last().unwrap();
        assert!(whole.iter().all(|&n| n == CHUNK), "{:?}", r.writes);
        assert_eq!(whole.len(), expect.len() / CHUNK);
        assert_eq!(*last, expect.len() % CHUNK);
    }

    /// A failed chunk write takes none of the new bytes, so the writer's count stays true.
    #[test]
    fn a_failed_write_takes_nothing() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = ChunkWriter::new(Full);
        assert_eq!(w.write(&vec![1u8; CHUNK]).unwrap(), CHUNK);
        assert!(w.write(&[2u8; 10]).is_err());
        assert_eq!(w.buf.len(), CHUNK);
        assert!(w.finish().is_err());
    }
}
