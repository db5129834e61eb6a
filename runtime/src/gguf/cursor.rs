//! Bounds-checked little-endian reads over the mapped bytes. Every length or count the file states
//! is compared against the bytes that remain before anything is sliced or allocated.

use super::error::GgufError;

pub(crate) struct Cursor<'a> {
    pub bytes: &'a [u8],
    pub pos: usize,
    pub path: &'a str,
}

impl<'a> Cursor<'a> {
    pub fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    pub fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path.to_string(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                len: self.bytes.len() as u64,
            });
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    pub fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-prefixed UTF-8 string, borrowed from the map.
    pub fn str(&mut self, what: &dyn Fn() -> String) -> Result<&'a str, GgufError> {
        let len = self.u64(what)?;
        if len > self.remaining() {
            return Err(GgufError::AbsurdString {
                path: self.path.to_string(),
                what: what(),
                len,
                remaining: self.remaining(),
            });
        }
        let b = self.take(len, what)?;
        std::str::from_utf8(b).map_err(|_| GgufError::InvalidUtf8 {
            path: self.path.to_string(),
            what: what(),
        })
    }

    /// A count of items each at least `min_size` bytes long, refused when they could not fit.
    pub fn count(&mut self, min_size: u64, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let count = self.u64(what)?;
        if count.saturating_mul(min_size.max(1)) > self.remaining() {
            return Err(GgufError::AbsurdCount {
                path: self.path.to_string(),
                what: what(),
                count,
                remaining: self.remaining(),
            });
        }
        Ok(count)
    }
}
