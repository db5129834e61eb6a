//! Scalar decoders: one function per block layout, written from the layouts in ggml-common.h.
//!
//! These are the reference every faster path is tested against, so they favour the plainest
//! transcription of the format over speed; [`dequantize_row`] gets its speed by compiling the same
//! functions for AVX2 (see `decode_avx2`), not from other code.

use super::types::{GgmlType, QK, QK_K};
use super::{check_len, f16_at, QuantError};

/// Decodes `src` (whole blocks of `ty`) into `dst`, one f32 per element: the decoders below
/// compiled for AVX2/FMA/F16C where the CPU has them (the many-row matmul decodes every weight of
/// a product through here), the plain build elsewhere. Same values as [`dequantize_row_scalar`].
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, dst.len(), src.len())?;
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        // SAFETY: the three features `decode_avx2` is compiled for were detected just above.
        unsafe { decode_avx2(ty, src, dst) };
        return Ok(());
    }
    decode(ty, src, dst);
    Ok(())
}

/// [`dequantize_row`] without the vector build: the reference it is tested against.
pub fn dequantize_row_scalar(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_len(ty, dst.len(), src.len())?;
    decode(ty, src, dst);
    Ok(())
}

/// The same decoders inlined into a function built for AVX2, so the compiler vectorises their
/// element loops; F16 rows are widened eight at a time with F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_avx2(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    if ty == GgmlType::F16 {
        let (ys, bs) = (dst.chunks_exact_mut(8), src.chunks_exact(16));
        for (y, b) in ys.zip(bs) {
            // SAFETY: `b` holds 16 bytes (8 halves) and `y` 8 f32s; both accesses are unaligned.
            unsafe {
                let h = _mm_loadu_si128(b.as_ptr() as *const __m128i);
                _mm256_storeu_ps(y.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        let done = dst.len() / 8 * 8;
        decode(ty, &src[2 * done..], &mut dst[done..]);
        return;
    }
    decode(ty, src, dst);
}

/// Every block of `src` decoded by its layout's function (lengths checked by the caller).
#[inline(always)]
fn decode(ty: GgmlType, src: &[u8], dst: &mut [f32]) {
    // Float rows element by element without a call per element.
    match ty {
        GgmlType::F32 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            return;
        }
        GgmlType::F16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            return;
        }
        GgmlType::BF16 => {
            for (y, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
            return;
        }
        _ => {}
    }
    let (bs, ts) = (ty.block_size(), ty.type_size());
    // A macro rather than a function taking the decoder: a call through `Fn` is an outlined shim
    // built without `decode_avx2`'s target features.
    macro_rules! each {
        ($f:ident) => {
            for (b, y) in src.chunks_exact(ts).zip(dst.chunks_exact_mut(bs)) {
                $f(b, y)
            }
        };
    }
    match ty {
        GgmlType::F32 => each!(block_f32),
        GgmlType::F16 => each!(block_f16),
        GgmlType::BF16 => each!(block_bf16),
        GgmlType::Q4_0 => each!(block_q4_0),
        GgmlType::Q4_1 => each!(block_q4_1),
        GgmlType::Q5_0 => each!(block_q5_0),
        GgmlType::Q5_1 => each!(block_q5_1),
        GgmlType::Q8_0 => each!(block_q8_0),
        GgmlType::Q8_1 => each!(block_q8_1),
        GgmlType::Q2_K => each!(block_q2_k),
        GgmlType::Q3_K => each!(block_q3_k),
        GgmlType::Q4_K => each!(block_q4_k),
        GgmlType::Q5_K => each!(block_q5_k),
        GgmlType::Q6_K => each!(block_q6_k),
        GgmlType::Q8_K => each!(block_q8_k),
    }
}

/// Decodes a whole row into a new vector.
pub fn dequantize_to_vec(
    ty: GgmlType,
    src: &[u8],
    elements: usize,
) -> Result<Vec<f32>, QuantError> {
    check_len(ty, elements, src.len())?;
    let mut out = vec![0.0; elements];
    dequantize_row(ty, src, &mut out)?;
    Ok(out)
}

#[inline(always)]
fn block_f32(b: &[u8], y: &mut [f32]) {
    y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
}

#[inline(always)]
fn block_f16(b: &[u8], y: &mut [f32]) {
    y[0] = f16_at(b);
}

#[inline(always)]
fn block_bf16(b: &[u8], y: &mut [f32]) {
    y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
}

#[inline(always)]
fn block_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b);
    let qs = &b[2..18];
    for j in 0..QK / 2 {
        y[j] = ((qs[j] & 0x0f) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

#[inline(always)]
fn block_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b), f16_at(&b[2..]));
    let qs = &b[4..20];
    for j in 0..QK / 2 {
        y[j] = (qs[j] & 0x0f) as f32 * d + m;
        y[j + QK / 2] = (qs[j] >> 4) as f32 * d + m;
    }
}

/// The 32 five-bit values of a Q5 block (unsigned, 0..=31).
#[inline(always)]
pub(crate) fn q5_values(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        let h0 = ((qh >> j) & 1) as u8;
        let h1 = ((qh >> (j + 16)) & 1) as u8;
        q[j] = (qs[j] & 0x0f) | (h0 << 4);
        q[j + QK / 2] = (qs[j] >> 4) | (h1 << 4);
    }
    q
}

#[inline(always)]
fn block_q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b);
    for (y, q) in y.iter_mut().zip(q5_values(&b[2..6], &b[6..22])) {
        *y = (q as i32 - 16) as f32 * d;
    }
}

#[inline(always)]
fn block_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b), f16_at(&b[2..]));
    for (y, q) in y.iter_mut().zip(q5_values(&b[4..8], &b[8..24])) {
        *y = q as f32 * d + m;
    }
}

#[inline(always)]
fn block_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

#[inline(always)]
fn block_q8_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b);
    for (y, &q) in y.iter_mut().zip(&b[4..36]) {
        *y = q as i8 as f32 * d;
    }
}

/// The eight 6-bit scales and mins of a k-quant super-block (`scales`: its 12 packed bytes), as
/// one 16-byte value: scales in bytes 0..8, mins in 8..16. Worked on as four u32 words (the
/// layout packs the top two bits of the first four of each into the high bits of bytes 0..8):
/// ten word operations where byte by byte took about thirty, a third of the Q4_K block's
/// instructions.
#[inline(always)]
pub(crate) fn scales_mins_k4(q: &[u8]) -> [u32; 4] {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    [
        w0 & LOW6,
        (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4),
        w1 & LOW6,
        ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4),
    ]
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

#[inline(always)]
fn block_q2_k(b: &[u8], y: &mut [f32]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(&b[80..]), f16_at(&b[82..]));
    let mut out = 0;
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                for l in 0..16 {
                    y[out] = dl * ((q[l + 16 * part] >> shift) & 3) as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

/// The sixteen 6-bit scales of a Q3_K block, already offset by -32.
#[inline(always)]
pub(crate) fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = ((low | (high << 4)) as i32 - 32) as i8;
    }
    out
}

#[inline(always)]
fn block_q3_k(b: &[u8], y: &mut [f32]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(&b[108..]);
    let mut out = 0;
    let mut is = 0;
    let mut bit = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                for l in 0..16 {
                    let idx = l + 16 * part;
                    let low = ((q[idx] >> shift) & 3) as i32;
                    let high = if hmask[idx] & (1 << bit) != 0 { 0 } else { 4 };
                    y[out] = dl * (low - high) as f32;
                    out += 1;
                }
            }
            bit += 1;
        }
    }
}

#[inline(always)]
fn block_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b), f16_at(&b[2..]));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for g in 0..QK_K / 64 {
        let q = &qs[g * 32..g * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, dm1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, dm2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            y[g * 64 + l] = d1 * (q[l] & 0x0f) as f32 - dm1;
            y[g * 64 + 32 + l] = d2 * (q[l] >> 4) as f32 - dm2;
        }
    }
}

#[inline(always)]
fn block_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b), f16_at(&b[2..]));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for g in 0..QK_K / 64 {
        let q = &qs[g * 32..g * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, dm1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, dm2) = (d * sc2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * g)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * g + 1)) & 1) << 4;
            y[g * 64 + l] = d1 * ((q[l] & 0x0f) | h1) as f32 - dm1;
            y[g * 64 + 32 + l] = d2 * ((q[l] >> 4) | h2) as f32 - dm2;
        }
    }
}

/// The 256 signed six-bit values (-32..=31) of a Q6_K block, in element order.
#[inline(always)]
pub(crate) fn q6_k_values(ql: &[u8], qh: &[u8]) -> [i8; QK_K] {
    let mut q = [0i8; QK_K];
    for half in 0..2 {
        let (ql, qh, o) = (&ql[half * 64..], &qh[half * 32..], half * 128);
        for l in 0..32 {
            q[o + l] = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[o + l + 32] = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[o + l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[o + l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    q
}

#[inline(always)]
fn block_q6_k(b: &[u8], y: &mut [f32]) {
    let q = q6_k_values(&b[0..128], &b[128..192]);
    let scales = &b[192..208];
    let d = f16_at(&b[208..]);
    for (i, (y, q)) in y.iter_mut().zip(q).enumerate() {
        *y = d * (scales[i / 16] as i8) as f32 * q as f32;
    }
}

#[inline(always)]
fn block_q8_k(b: &[u8], y: &mut [f32]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (y, &q) in y.iter_mut().zip(&b[4..260]) {
        *y = d * q as i8 as f32;
    }
}
