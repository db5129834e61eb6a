//! The memory-read probe that decode speed is judged against: how fast `threads` threads can
//! stream a buffer far larger than any cache. `anatomy bench` divides it by the weight bytes to get
//! the decode bound.
//!
//! The probe reads the way the dot kernels do (512-bit loads where the CPU has them, software
//! prefetch into L1 the same distance ahead), so that a kernel cannot look faster than "memory"
//! merely because the probe was the weaker reader: measured on the 2-core VM, a plain summing
//! loop (SSE2 in a baseline build) read 25.5 GB/s with two threads where this one reads 29.8. The
//! kernels' second prefetch, into L2 further ahead, is left out here: it made this plain stream no
//! faster with two threads (0.96-1.16x, alternating) and slower with one (0.86-0.96x).

/// Wrapping sum of `buf`, read once front to back.
pub fn read_sum(buf: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected; the kernel reads only inside `buf`.
            return unsafe { x86::sum512(buf) };
        }
    }
    buf.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}

/// A buffer far larger than any cache for `threads` threads to stream, filled once, so that the
/// probes bracketing a measurement share one allocation and its first touches.
///
/// The buffer is on transparent huge pages where the OS grants them: weights read into memory
/// (`Residence::Copied`) are, and on the 2-vCPU KVM VM 4 KiB pages read 0.85-0.9x as fast, so a
/// probe on them would be the weaker reader again.
pub struct ReadProbe {
    buf: Buffer,
    threads: usize,
}

/// Huge-page memory where the OS grants it, an ordinary vector otherwise.
enum Buffer {
    Huge(memmap2::MmapMut),
    Plain(Vec<u64>),
}

impl Buffer {
    fn words(&self) -> &[u64] {
        match self {
            Buffer::Huge(m) => bytemuck::cast_slice(&m[..]),
            Buffer::Plain(v) => v,
        }
    }

    fn words_mut(&mut self) -> &mut [u64] {
        match self {
            Buffer::Huge(m) => bytemuck::cast_slice_mut(&mut m[..]),
            Buffer::Plain(v) => v,
        }
    }
}

impl ReadProbe {
    /// A probe of `bytes` bytes (rounded down to whole u64s, at least one).
    pub fn new(threads: usize, bytes: usize) -> Self {
        let n = (bytes / 8).max(1);
        let mut buf = match crate::gguf::huge_anon(n * 8) {
            Ok(m) => Buffer::Huge(m),
            Err(_) => Buffer::Plain(vec![0; n]),
        };
        for (i, v) in buf.words_mut().iter_mut().enumerate() {
            *v = i as u64 % 7;
        }
        Self {
            buf,
            threads: threads.max(1),
        }
    }

    /// Best of `passes` read rates, bytes per second, of the threads each summing their share.
    pub fn best_rate(&self, passes: usize) -> f64 {
        let buf = self.buf.words();
        let chunk = buf.len().div_ceil(self.threads);
        let mut best = 0.0f64;
        for _ in 0..passes.max(1) {
            let t = std::time::Instant::now();
            let total: u64 = std::thread::scope(|s| {
                let hs: Vec<_> = buf
                    .chunks(chunk)
                    .map(|c| s.spawn(move || read_sum(c)))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or(0))
                    .fold(0u64, u64::wrapping_add)
            });
            std::hint::black_box(total);
            best = best.max((buf.len() * 8) as f64 / t.elapsed().as_secs_f64());
        }
        best
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Four accumulators of eight lanes over 256-byte steps, four cache lines prefetched per step.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn sum512(buf: &[u64]) -> u64 {
        let mut acc = [_mm512_setzero_si512(); 4];
        let steps = buf.chunks_exact(32);
        let tail = steps.remainder();
        for step in steps {
            let p = step.as_ptr() as *const i8;
            for l in 0..4 {
                // A prefetch never faults, so the address may lie past the buffer.
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(crate::quant::PREFETCH_BYTES + 64 * l));
            }
            for (i, a) in acc.iter_mut().enumerate() {
                let v = &step[8 * i..8 * i + 8];
                // SAFETY: a 64-byte load of a bounds-checked slice of eight u64s.
                *a = _mm512_add_epi64(*a, unsafe { _mm512_loadu_si512(v.as_ptr() as *const _) });
            }
        }
        let s = _mm512_add_epi64(
            _mm512_add_epi64(acc[0], acc[1]),
            _mm512_add_epi64(acc[2], acc[3]),
        );
        let rest = tail.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        (_mm512_reduce_add_epi64(s) as u64).wrapping_add(rest)
    }
}

#[cfg(test)]
mod tests {
    /// The vector path against a plain fold, on lengths around its 32-element step.
    #[test]
    fn the_sum_is_the_plain_sum() {
        for n in [0usize, 1, 31, 32, 33, 100, 1000] {
            let buf: Vec<u64> = (0..n as u64)
                .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                .collect();
            let want = buf.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            assert_eq!(super::read_sum(&buf), want, "n = {n}");
        }
        let probe = super::ReadProbe::new(2, 1 << 20);
        assert!(probe.best_rate(1) > 0.0);
        assert!(probe.best_rate(2) > 0.0);
    }
}
