//! AVX2/FMA dot products for the formats that carry most weights in our recipes: Q8_0 (and the
//! mmproj / fallback tensors), Q4_K and Q6_K. Selected at run time by `dot::vec_dot`; each must
//! equal the scalar kernel within float rounding (tested below against `vec_dot_scalar`).
//!
//! Integer products are formed with `maddubs` (unsigned × signed bytes), so every kernel first
//! makes its weight operand non-negative, as ggml's x86 kernels do.

use std::arch::x86_64::*;

use super::dequant::scales_mins_k4;
use super::types::GgmlType;

/// The AVX2 result for `ty`, or `None` when this CPU lacks AVX2/FMA or `ty` has no AVX2 kernel.
/// `w` and `a` must hold the same number of blocks (checked by the caller; surplus bytes are
/// ignored, never read out of bounds).
#[cfg(test)]
pub(crate) fn vec_dot(ty: GgmlType, w: &[u8], a: &[u8]) -> Option<f32> {
    // SAFETY: `kernel` hands out only kernels whose features were detected.
    kernel(ty).map(|f| unsafe { super::one_row(f, w, a) })
}

/// The kernel for `ty` when this CPU can run it (for a loop over rows that chooses once).
pub(crate) fn kernel(ty: GgmlType) -> Option<super::RowKernel> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    match ty {
        GgmlType::Q8_0 => Some(q8_0_rows),
        GgmlType::Q4_K => Some(q4_k_rows),
        GgmlType::Q6_K => Some(q6_k_rows),
        _ => None,
    }
}

over_rows!(q8_0_rows, q8_0, "avx2,fma,f16c");
over_rows!(q4_k_rows, q4_k, "avx2,fma,f16c");
over_rows!(q6_k_rows, q6_k, "avx2,fma,f16c");

/// The f16 at `b[0..2]` widened with F16C: the scalar `f16_at` is an out-of-line call per block,
/// which cost a seventh of decode time.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn f16_at(b: &[u8]) -> f32 {
    let bits = u16::from_le_bytes([b[0], b[1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Asks for `LINES` cache lines of weights [`PREFETCH`] bytes ahead of `block` into L1, and the
/// same lines [`PREFETCH_L2`] bytes ahead into L2 (the next blocks of this row, or the next rows,
/// which follow in memory). Decode streams every weight once and, measured, stalls on these loads
/// with the hardware prefetcher alone.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) fn prefetch_ahead<const LINES: usize>(block: &[u8]) {
    // A prefetch never faults, so the address may lie past the slice; `wrapping_add` keeps the
    // pointer arithmetic itself defined.
    let near = block.as_ptr().wrapping_add(PREFETCH) as *const i8;
    let far = block.as_ptr().wrapping_add(PREFETCH_L2) as *const i8;
    for l in 0..LINES {
        _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(64 * l));
        _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64 * l));
    }
}

/// How far ahead of the block being read its row is prefetched into L2, in bytes. Measured on
/// the 3B decode (Zen 4 VM, tokens alternating between variants in one process, so both see the
/// same memory): with it a token took 0.90-1.00x the time (median 0.94) at Q4_K_M with two
/// threads, 0.91-0.97x at Q8_0, 0.92-0.94x with one thread. 12 KiB did about as well, 8 KiB
/// less; 24 KiB lost with one thread. The same lines asked into L1 (`T0`) instead took 1.12-1.19x (L1 holds 32 KiB, so
/// far lines there push out the near ones before they are read). `T2` did as well as `T1`.
pub(crate) const PREFETCH_L2: usize = 16384;

/// How far ahead of the block being read its row is prefetched into L1, in bytes. Measured on the
/// 3B Q4_K_M decode with two threads (before the L2 prefetch was added): 1 KiB reached 65-72% of
/// the bandwidth bound, 2 KiB 75-78%, 4 KiB 85-90%, 8 KiB 77%. With the L2 prefetch, 1 and 2 KiB
/// did as well as 4.
pub(crate) const PREFETCH: usize = 4096;

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// 32 bytes from `b[off..off + 32]`.
#[target_feature(enable = "avx2,fma")]
unsafe fn load32(b: &[u8], off: usize) -> __m256i {
    let s = &b[off..off + 32];
    // SAFETY: `s` is a bounds-checked 32-byte slice; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr() as *const __m256i) }
}

/// Σ x·y of 32 signed bytes each, as 8 i32 lanes: the sign of `x` moves onto `y` so `maddubs`
/// can take |x| as its unsigned operand.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

/// The f16 scales of `N` consecutive Q8_0 blocks (34 bytes each) side by side, for one load and
/// one conversion to widen. Plain two-byte reads: a gather (AVX-512) or one conversion per block
/// (the scales widened one at a time) each cost about as much as the blocks' products.
#[inline(always)]
pub(super) fn q8_0_scales<const N: usize>(b: &[u8]) -> [u16; N] {
    let mut h = [0u16; N];
    for (c, h) in b.chunks_exact(34).zip(h.iter_mut()) {
        *h = u16::from_le_bytes([c[0], c[1]]);
    }
    h
}

/// Q8_0 against Q8_0, eight blocks per step: their scales widened together
/// ([`q8_0_scales`]), each block's taken from that vector with one permute, and two accumulators,
/// since one FMA chain alone (4 cycles per 34 bytes) would bound the loop below the memory rate.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    const STEP: usize = 8 * 34;
    let mut acc = [_mm256_setzero_ps(); 2];
    let (ws, as_) = (w.chunks_exact(STEP), a.chunks_exact(STEP));
    let (wr, ar) = (ws.remainder(), as_.remainder());
    for (x, y) in ws.zip(as_) {
        prefetch_ahead::<5>(x);
        let scales = |b: &[u8]| {
            let h = q8_0_scales::<8>(b);
            // SAFETY: a 16-byte load of the eight u16 just written.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr() as *const __m128i) })
        };
        let d = _mm256_mul_ps(scales(x), scales(y));
        for b in 0..8 {
            let s = dot_i8(load32(x, 34 * b + 2), load32(y, 34 * b + 2));
            let db = _mm256_permutevar8x32_ps(d, _mm256_set1_epi32(b as i32));
            acc[b % 2] = _mm256_fmadd_ps(db, _mm256_cvtepi32_ps(s), acc[b % 2]);
        }
    }
    let (wp, ap) = (wr.chunks_exact(68), ar.chunks_exact(68));
    let (wr, ar) = (wp.remainder(), ap.remainder());
    for (x, y) in wp.zip(ap) {
        let d0 = _mm256_set1_ps(f16_at(x) * f16_at(y));
        let d1 = _mm256_set1_ps(f16_at(&x[34..]) * f16_at(&y[34..]));
        let s0 = dot_i8(load32(x, 2), load32(y, 2));
        let s1 = dot_i8(load32(x, 36), load32(y, 36));
        acc[0] = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s0), acc[0]);
        acc[1] = _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(s1), acc[1]);
    }
    if wr.len() >= 34 && ar.len() >= 34 {
        let d = _mm256_set1_ps(f16_at(wr) * f16_at(ar));
        let s = dot_i8(load32(wr, 2), load32(ar, 2));
        acc[0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[0]);
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k(w: &[u8], a: &[u8]) -> f32 {
    let low = _mm256_set1_epi8(0x0f);
    // Byte shuffles of the eight scales (as i16, the same eight in both 128-bit lanes): `splat[j]`
    // fills every i16 with scale j. Each used to be a scalar byte moved into a vector and
    // broadcast, three instructions where this is one.
    let splat: [__m256i; 8] =
        std::array::from_fn(|j| _mm256_set1_epi16((((2 * j + 1) << 8) | (2 * j)) as i16));
    // Each min into both i16 halves of its i32 lane (mins 0-3 in the low 128-bit lane, 4-7 in
    // the high), zeros between, so one madd applies it to the two 16-value sums of its sub-block.
    let spread = _mm256_setr_epi8(
        0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1, 4, -1, 4, -1, 5, -1, 5, -1, 6, -1,
        6, -1, 7, -1, 7, -1,
    );
    let mut acc = _mm256_setzero_ps();
    let mut acc_min = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        prefetch_ahead::<3>(x);
        // d and dmin (lanes 0 and 1) times the activations' scale.
        let head = u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
        let yd = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let dd = _mm_mul_ps(
            _mm_cvtph_ps(_mm_cvtsi32_si128(head as i32)),
            _mm_set1_ps(yd),
        );
        let [w0, w1, w2, w3] = scales_mins_k4(&x[4..16]);
        let scales = (w1 as u64) << 32 | w0 as u64;
        let mins = (w3 as u64) << 32 | w2 as u64;
        let m16 = _mm256_shuffle_epi8(
            _mm256_broadcastsi128_si256(_mm_cvtsi64_si128(mins as i64)),
            spread,
        );
        let m = _mm256_madd_epi16(load32(y, 260), m16);
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
        acc_min = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(m), acc_min);
        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
        let mut sumi = _mm256_setzero_si256();
        for g in 0..4 {
            let q = load32(x, 16 + 32 * g);
            let ql = _mm256_and_si256(q, low);
            let qh = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            let pl = _mm256_maddubs_epi16(ql, load32(y, 4 + 64 * g));
            let ph = _mm256_maddubs_epi16(qh, load32(y, 4 + 64 * g + 32));
            let s1 = _mm256_shuffle_epi8(sc, splat[2 * g]);
            let s2 = _mm256_shuffle_epi8(sc, splat[2 * g + 1]);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, s1));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, s2));
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(dd), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc) - hsum(acc_min)
}

/// Shuffle control that fills the low 128-bit lane with i16 number `2k` of that lane and the
/// high lane with number `2k + 1`.
#[target_feature(enable = "avx2,fma,f16c")]
fn pick_pair(k: usize) -> __m256i {
    let (a, b) = ((4 * k) as i8, (4 * k + 2) as i8);
    _mm256_setr_epi8(
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        a,
        a + 1,
        b,
        b + 1,
        b,
        b + 1,
        b,
        b + 1,
        b,
        b + 1,
        b,
        b + 1,
        b,
        b + 1,
        b,
        b + 1,
        b,
        b + 1,
    )
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(w: &[u8], a: &[u8]) -> f32 {
    let low = _mm256_set1_epi8(0x0f);
    let two = _mm256_set1_epi8(3);
    let bias = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        prefetch_ahead::<3>(x);
        let yd = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let d = f16_at(&x[208..]) * yd;
        // The 16 signed scales widened to i16 once; each 32-value chunk then takes its two
        // scales (one per 16 values, one per 128-bit lane) with a byte shuffle.
        let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x[192..208].as_ptr() as *const __m128i));
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let sh = if half == 0 {
                _mm256_permute2x128_si256(s16, s16, 0x00)
            } else {
                _mm256_permute2x128_si256(s16, s16, 0x11)
            };
            let ql0 = load32(x, 64 * half);
            let ql1 = load32(x, 64 * half + 32);
            let qh = load32(x, 128 + 32 * half);
            let hi = |h: __m256i| _mm256_slli_epi16(_mm256_and_si256(h, two), 4);
            let q = [
                _mm256_or_si256(_mm256_and_si256(ql0, low), hi(qh)),
                _mm256_or_si256(_mm256_and_si256(ql1, low), hi(_mm256_srli_epi16(qh, 2))),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low),
                    hi(_mm256_srli_epi16(qh, 4)),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                    hi(_mm256_srli_epi16(qh, 6)),
                ),
            ];
            for (k, qk) in q.into_iter().enumerate() {
                let yv = load32(y, 4 + 128 * half + 32 * k);
                // (q - 32)·y = q·y - 32·y keeps the unsigned operand of maddubs non-negative.
                let p =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(qk, yv), _mm256_maddubs_epi16(bias, yv));
                let sv = _mm256_shuffle_epi8(sh, pick_pair(k));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sv));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}

#[cfg(test)]
mod tests {
    use super::super::GgmlType;

    /// The kernels against the scalar reference: Q8_0 rows of 1 to 19 blocks (eight-block steps,
    /// then pairs, then a last block) and the shared cases with extreme levels; on a CPU without
    /// AVX2 it says so and checks nothing.
    #[test]
    fn kernels_match_the_scalar_ones() {
        if super::kernel(GgmlType::Q8_0).is_none() {
            eprintln!("no AVX2/FMA/F16C on this CPU: the kernels are not exercised here");
            return;
        }
        let cases = super::super::q8_0_cases(1..20).chain(super::super::kernel_cases());
        for (ty, n, w, act, want) in cases {
            let got = super::vec_dot(ty, &w, &act).unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "{ty} n={n}: {got} vs {want}"
            );
        }
    }
}
