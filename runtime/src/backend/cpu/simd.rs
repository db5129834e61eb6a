//! Vector primitives of the row kernels (dot product, `y += a·x`), with AVX-512 and AVX2 paths
//! chosen at run time: the crate is built for baseline x86-64, where the compiler alone only
//! reaches SSE2, and attention spends its time in exactly these two loops.

/// `Σ a·b` over the common length.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if n >= 16 && is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected; both slices hold `n` elements and the kernel reads no more.
            return unsafe { x86::dot512(a, b) };
        }
        if n >= 8 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2/FMA detected; as above.
            return unsafe { x86::dot256(a, b) };
        }
    }
    dot_scalar(a, b)
}

/// Eight independent accumulators so the compiler keeps a vector register per lane group.
fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `y += a·x` over the common length.
pub(super) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    let n = y.len().min(x.len());
    let (y, x) = (&mut y[..n], &x[..n]);
    #[cfg(target_arch = "x86_64")]
    if n >= 16 && is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; both slices hold `n` elements and the kernel touches no more.
        unsafe { x86::axpy512(y, a, x) };
        return;
    }
    for (o, v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Equal lengths.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dot512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut i = 0;
        while i + 32 <= n {
            // SAFETY: i + 32 <= n.
            unsafe {
                s0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), s0);
                s1 = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i + 16)),
                    _mm512_loadu_ps(pb.add(i + 16)),
                    s1,
                );
            }
            i += 32;
        }
        while i < n {
            let mask: __mmask16 = if n - i >= 16 {
                !0
            } else {
                ((1u32 << (n - i)) - 1) as u16
            };
            // SAFETY: the mask covers only lanes below n.
            unsafe {
                s0 = _mm512_fmadd_ps(
                    _mm512_maskz_loadu_ps(mask, pa.add(i)),
                    _mm512_maskz_loadu_ps(mask, pb.add(i)),
                    s0,
                );
            }
            i += 16;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(s0, s1))
    }

    /// Equal lengths.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot256(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n.
            unsafe {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                s1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i + 8)),
                    _mm256_loadu_ps(pb.add(i + 8)),
                    s1,
                );
            }
            i += 16;
        }
        let v = _mm256_add_ps(s0, s1);
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s) + a[i..].iter().zip(&b[i..]).map(|(x, y)| x * y).sum::<f32>()
    }

    /// Equal lengths.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn axpy512(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len();
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let av = _mm512_set1_ps(a);
        let mut i = 0;
        while i < n {
            let mask: __mmask16 = if n - i >= 16 {
                !0
            } else {
                ((1u32 << (n - i)) - 1) as u16
            };
            // SAFETY: the mask covers only lanes below n of both slices.
            unsafe {
                let r = _mm512_fmadd_ps(
                    av,
                    _mm512_maskz_loadu_ps(mask, px.add(i)),
                    _mm512_maskz_loadu_ps(mask, py.add(i)),
                );
                _mm512_mask_storeu_ps(py.add(i), mask, r);
            }
            i += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_and_axpy_match_plain_loops_at_every_length() {
        for n in 0..70 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - want).abs() < 1e-4, "dot n={n}");
            assert!((dot_scalar(&a, &b) - want).abs() < 1e-4, "dot_scalar n={n}");
            let mut y = b.clone();
            axpy(&mut y, 0.5, &a);
            for i in 0..n {
                assert!(
                    (y[i] - (b[i] + 0.5 * a[i])).abs() < 1e-6,
                    "axpy n={n} [{i}]"
                );
            }
        }
    }
}
