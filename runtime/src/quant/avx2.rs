//! AVX2/FMA dot products for the formats that carry most weights in our recipes: Q8_0 (and the
//! mmproj / fallback tensors), Q4_K and Q6_K. Selected at run time by `dot::vec_dot`; each must
//! equal the scalar kernel within float rounding (tested below against `vec_dot_scalar`).
//!
//! Integer products are formed with `maddubs` (unsigned × signed bytes), so every kernel first
//! makes its weight operand non-negative, as ggml's x86 kernels do.

use std::arch::x86_64::*;

use super::dequant::scale_min_k4;
use super::f16_at;
use super::types::GgmlType;

/// The AVX2 result for `ty`, or `None` when this CPU lacks AVX2/FMA or `ty` has no AVX2 kernel.
/// `w` and `a` must hold the same number of blocks (checked by the caller; surplus bytes are
/// ignored, never read out of bounds).
pub(crate) fn vec_dot(ty: GgmlType, w: &[u8], a: &[u8]) -> Option<f32> {
    if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
        return None;
    }
    // SAFETY: the features these functions are compiled for were detected just above.
    unsafe {
        match ty {
            GgmlType::Q8_0 => Some(q8_0(w, a)),
            GgmlType::Q4_K => Some(q4_k(w, a)),
            GgmlType::Q6_K => Some(q6_k(w, a)),
            _ => None,
        }
    }
}

#[target_feature(enable = "avx2,fma")]
unsafe fn hsum(v: __m256) -> f32 {
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

#[target_feature(enable = "avx2,fma")]
unsafe fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let d = _mm256_set1_ps(f16_at(x) * f16_at(y));
        let s = dot_i8(load32(x, 2), load32(y, 2));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
    }
    hsum(acc)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn q4_k(w: &[u8], a: &[u8]) -> f32 {
    let low = _mm256_set1_epi8(0x0f);
    let mut acc = _mm256_setzero_ps();
    let mut mins_total = 0.0f32;
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let yd = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let (d, dmin) = (f16_at(x) * yd, f16_at(&x[2..]) * yd);
        let scales = &x[4..16];
        let mut mins = 0i32;
        let mut sumi = _mm256_setzero_si256();
        for g in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * g, scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
            let bs = |k: usize| i16::from_le_bytes([y[260 + 2 * k], y[261 + 2 * k]]) as i32;
            mins += m1 as i32 * (bs(4 * g) + bs(4 * g + 1))
                + m2 as i32 * (bs(4 * g + 2) + bs(4 * g + 3));
            let q = load32(x, 16 + 32 * g);
            let ql = _mm256_and_si256(q, low);
            let qh = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
            let pl = _mm256_maddubs_epi16(ql, load32(y, 4 + 64 * g));
            let ph = _mm256_maddubs_epi16(qh, load32(y, 4 + 64 * g + 32));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(pl, _mm256_set1_epi16(sc1 as i16)));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(ph, _mm256_set1_epi16(sc2 as i16)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        mins_total += dmin * mins as f32;
    }
    hsum(acc) - mins_total
}

#[target_feature(enable = "avx2,fma")]
unsafe fn q6_k(w: &[u8], a: &[u8]) -> f32 {
    let low = _mm256_set1_epi8(0x0f);
    let two = _mm256_set1_epi8(3);
    let bias = _mm256_set1_epi8(32);
    let mut acc = _mm256_setzero_ps();
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let yd = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let d = f16_at(&x[208..]) * yd;
        let scales = &x[192..208];
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
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
                let s0 = scales[8 * half + 2 * k] as i8 as i16;
                let s1 = scales[8 * half + 2 * k + 1] as i8 as i16;
                let sv = _mm256_setr_epi16(
                    s0, s0, s0, s0, s0, s0, s0, s0, s1, s1, s1, s1, s1, s1, s1, s1,
                );
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sv));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum(acc)
}
