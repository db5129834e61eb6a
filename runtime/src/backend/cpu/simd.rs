//! Vector primitives of the row kernels (dot product, `y += a·x`, SwiGLU, and the vector `exp`
//! that SwiGLU and attention's softmax share), with AVX-512 and AVX2 paths chosen at run time (the
//! crate is built for baseline x86-64, where the compiler alone only reaches SSE2) and NEON ones
//! on aarch64, where it is part of the base.

/// Cephes' `expf`: x = n ln 2 + r with ln 2 split in two, so r is exact to f32, and e^r = 1 + r +
/// r²·p(r) with `p`'s coefficients from the highest power down.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// Where the vector `exp`s without a `scalef` (AVX2, NEON) clamp their input: 2^n is built in the
/// exponent bits, and from -87 to 88 n + 127 stays a normal exponent (e^-87 is about 1.6e-38).
const EXP_MIN: f32 = -87.0;
const EXP_MAX: f32 = 88.0;

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

/// `gate = silu(gate)·up` over the common length, silu(g) = g / (1 + e^-g) as torch computes it.
/// In a decode step the 11008 values of each layer are too few to split between threads, and one
/// scalar `expf` and division each took 2-2.6% of a 3B Q4_K_M step's time with two threads.
pub(super) fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let (gate, up) = (&mut gate[..n], &up[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if n >= 16 && is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F detected; both slices hold `n` elements and the kernel touches no
            // more.
            unsafe { x86::swiglu512(gate, up) };
            return;
        }
        if n >= 8 && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2/FMA detected; as above.
            unsafe { x86::swiglu256(gate, up) };
            return;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if n >= 4 {
        arm::swiglu(gate, up);
        return;
    }
    swiglu_scalar(gate, up);
}

fn swiglu_scalar(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    /// The mask of the first `left` of 16 lanes (all 16 from 16 on).
    fn lanes(left: usize) -> __mmask16 {
        if left >= 16 {
            !0
        } else {
            ((1u32 << left) - 1) as u16
        }
    }

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
            let mask = lanes(n - i);
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
            let mask = lanes(n - i);
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

    /// Equal lengths.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn swiglu512(gate: &mut [f32], up: &[f32]) {
        let n = gate.len();
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < n {
            let mask = lanes(n - i);
            // SAFETY: the mask covers only lanes below n of both slices.
            unsafe {
                let g = _mm512_maskz_loadu_ps(mask, pg.add(i));
                let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
                let s = _mm512_div_ps(g, _mm512_add_ps(one, e));
                let r = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(mask, pu.add(i)));
                _mm512_mask_storeu_ps(pg.add(i), mask, r);
            }
            i += 16;
        }
    }

    /// `e^x` to about 1 ulp of f32 over the range softmax needs (Cephes' `expf` polynomial); inputs
    /// below -100 give 0 (or a denormal), never NaN for finite or -inf input.
    #[target_feature(enable = "avx512f")]
    pub(in super::super) fn exp512(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(-100.0)),
            _mm512_set1_ps(88.0),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), r);
        let mut y = _mm512_set1_ps(super::EXP_POLY[0]);
        for c in &super::EXP_POLY[1..] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(*c));
        }
        let y = _mm512_fmadd_ps(
            y,
            _mm512_mul_ps(r, r),
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        _mm512_scalef_ps(y, n)
    }

    /// Equal lengths, at least 8.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn swiglu256(gate: &mut [f32], up: &[f32]) {
        let n = gate.len();
        let (pg, pu) = (gate.as_mut_ptr(), up.as_ptr());
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        // The tail is the last eight values, read before the loop overwrites any of them: the
        // ones the loop already did come out the same bits again.
        // SAFETY: 8 <= n, so `n - 8` is in bounds; every access below is of 8 floats from an
        // index at most `n - 8`.
        let last = unsafe {
            (
                _mm256_loadu_ps(pg.add(n - 8)),
                _mm256_loadu_ps(pu.add(n - 8)),
            )
        };
        let f = |g: __m256, u: __m256| {
            let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), g));
            _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u)
        };
        while i + 8 <= n {
            // SAFETY: i + 8 <= n.
            unsafe {
                let r = f(_mm256_loadu_ps(pg.add(i)), _mm256_loadu_ps(pu.add(i)));
                _mm256_storeu_ps(pg.add(i), r);
            }
            i += 8;
        }
        if i < n {
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(pg.add(n - 8), f(last.0, last.1)) };
        }
    }

    /// [`exp512`] on eight lanes for CPUs without AVX-512, its input clamped to
    /// [`super::EXP_MIN`]..[`super::EXP_MAX`] (SwiGLU's range: silu needs no smaller values).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp256(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(super::EXP_MIN)),
            _mm256_set1_ps(super::EXP_MAX),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_LO), r);
        let mut y = _mm256_set1_ps(super::EXP_POLY[0]);
        for c in &super::EXP_POLY[1..] {
            y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_fmadd_ps(
            y,
            _mm256_mul_ps(r, r),
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::aarch64::*;

    fn load(s: &[f32], i: usize) -> float32x4_t {
        let s = &s[i..i + 4];
        // SAFETY: `s` is a bounds-checked slice of 4 floats; `vld1q_f32` needs no alignment.
        unsafe { vld1q_f32(s.as_ptr()) }
    }

    fn store(d: &mut [f32], i: usize, v: float32x4_t) {
        let d = &mut d[i..i + 4];
        // SAFETY: as in `load`.
        unsafe { vst1q_f32(d.as_mut_ptr(), v) }
    }

    /// [`super::swiglu`] four lanes at a time; equal lengths of at least 4, the tail as in the
    /// AVX2 kernel (the last four values, read before the loop overwrites any of them).
    pub(super) fn swiglu(gate: &mut [f32], up: &[f32]) {
        let n = gate.len();
        let f = |g: float32x4_t, u: float32x4_t| {
            // SAFETY: register-only NEON arithmetic, part of the aarch64 base.
            unsafe {
                vmulq_f32(
                    vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0), exp(vnegq_f32(g)))),
                    u,
                )
            }
        };
        let last = (load(gate, n - 4), load(up, n - 4));
        let mut i = 0;
        while i + 4 <= n {
            let r = f(load(gate, i), load(up, i));
            store(gate, i, r);
            i += 4;
        }
        if i < n {
            store(gate, n - 4, f(last.0, last.1));
        }
    }

    /// The AVX2 `exp` on four lanes, its input clamped the same way.
    pub(super) fn exp(x: float32x4_t) -> float32x4_t {
        use super::{EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO};
        // SAFETY: register-only NEON arithmetic, part of the aarch64 base.
        unsafe {
            let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_MIN)), vdupq_n_f32(EXP_MAX));
            let n = vrndnq_f32(vmulq_n_f32(x, std::f32::consts::LOG2_E));
            let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
            let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
            let mut y = vdupq_n_f32(EXP_POLY[0]);
            for c in &EXP_POLY[1..] {
                y = vfmaq_f32(vdupq_n_f32(*c), y, r);
            }
            let y = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), y, vmulq_f32(r, r));
            let pow2 = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
            vmulq_f32(y, vreinterpretq_f32_s32(pow2))
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

    /// The vector SwiGLUs this CPU runs (the dispatching one, and each vector kernel directly)
    /// against torch's formula in f64, at every length up to 70 (the tails) and over the range
    /// where silu bends and saturates.
    #[test]
    fn swiglu_matches_the_formula() {
        type Kernel = Box<dyn Fn(&mut [f32], &[f32])>;
        let mut kernels: Vec<(&str, usize, Kernel)> = vec![
            ("swiglu", 0, Box::new(swiglu)),
            ("scalar", 0, Box::new(swiglu_scalar)),
        ];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: AVX2/FMA detected; the test passes equal lengths of at least 8.
            kernels.push(("avx2", 8, Box::new(|g, u| unsafe { x86::swiglu256(g, u) })));
        } else {
            eprintln!("no AVX2/FMA here: the AVX2 SwiGLU is not checked on this machine");
        }
        #[cfg(target_arch = "aarch64")]
        kernels.push(("neon", 4, Box::new(arm::swiglu)));
        for n in 0..70 {
            let g: Vec<f32> = (0..n).map(|i| (i as f32 - 35.0) * 0.9).collect();
            let u: Vec<f32> = (0..n).map(|i| 1.0 + (i as f32 * 0.3).sin()).collect();
            for (what, min_len, kernel) in &kernels {
                if n < *min_len {
                    continue;
                }
                let mut got = g.clone();
                kernel(&mut got, &u);
                for i in 0..n {
                    let x = g[i] as f64;
                    let want = x / (1.0 + (-x).exp()) * u[i] as f64;
                    let v = got[i] as f64;
                    assert!(
                        (v - want).abs() <= 1e-6 * want.abs().max(1e-3),
                        "{what} n={n} g={}: {v} vs {want}",
                        g[i]
                    );
                }
            }
        }
    }

    /// A vector `exp` (`f`, on `LANES` values at once) against f64's from -90 to 87: within
    /// 4e-7 relative wherever e^x is above 1e-30 (below, the AVX2 and NEON ones clamp), and -inf
    /// giving a non-negative value below `at_neg_inf`.
    fn check_exp<const LANES: usize>(
        what: &str,
        f: impl Fn([f32; LANES]) -> [f32; LANES],
        at_neg_inf: f32,
    ) {
        let mut worst = 0f32;
        let mut x = -90.0f32;
        while x < 87.0 {
            let xs: [f32; LANES] = std::array::from_fn(|i| x + i as f32 * 0.0071);
            for (g, v) in f(xs).iter().zip(xs) {
                let want = (v as f64).exp();
                if want > 1e-30 {
                    worst = worst.max(((*g as f64 - want) / want).abs() as f32);
                }
            }
            x += 0.113;
        }
        assert!(worst < 4e-7, "{what}: worst relative error {worst}");
        let got = f([f32::NEG_INFINITY; LANES]);
        assert!(
            got.iter().all(|&g| (0.0..at_neg_inf).contains(&g)),
            "{what}: {got:?}"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exps_match_the_library_exp() {
        use std::arch::x86_64::*;
        if is_x86_feature_detected!("avx512f") {
            let exp = |xs: [f32; 16]| {
                let mut got = [0f32; 16];
                // SAFETY: AVX-512F detected; 16 floats each way.
                unsafe {
                    _mm512_storeu_ps(got.as_mut_ptr(), x86::exp512(_mm512_loadu_ps(xs.as_ptr())))
                };
                got
            };
            check_exp("AVX-512", exp, 1e-40);
        } else {
            eprintln!("no AVX-512F here: its vector exp is not checked on this machine");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let exp = |xs: [f32; 8]| {
                let mut got = [0f32; 8];
                // SAFETY: AVX2/FMA detected; 8 floats each way.
                unsafe {
                    _mm256_storeu_ps(got.as_mut_ptr(), x86::exp256(_mm256_loadu_ps(xs.as_ptr())))
                };
                got
            };
            check_exp("AVX2", exp, 2e-38);
        } else {
            eprintln!("no AVX2/FMA here: its vector exp is not checked on this machine");
        }
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn vector_exp_matches_the_library_exp() {
        use std::arch::aarch64::*;
        let exp = |xs: [f32; 4]| {
            let mut got = [0f32; 4];
            // SAFETY: NEON is part of the aarch64 base; 4 floats each way.
            unsafe { vst1q_f32(got.as_mut_ptr(), arm::exp(vld1q_f32(xs.as_ptr()))) };
            got
        };
        check_exp("NEON", exp, 2e-38);
    }
}
