//! Encoders, written after llama.cpp's `quantize_row_*_ref` functions (the path `llama-quantize`
//! takes without an importance matrix), so files we write match theirs in error.

use super::search::{make_qkx2_quants, make_qx_quants, GROUP_MAX_EPS};
use super::types::{GgmlType, QK, QK_K};
use super::{check_len, f16_at, f16_bytes, nearest_int, QuantError};

/// Encodes `src` into `dst` (whole blocks of `ty`). Q2_K and Q3_K have no encoder.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_len(ty, src.len(), dst.len())?;
    let encode: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => |x, b| b.copy_from_slice(&x[0].to_le_bytes()),
        GgmlType::F16 => |x, b| b.copy_from_slice(&f16_bytes(x[0])),
        GgmlType::BF16 => |x, b| b.copy_from_slice(&half::bf16::from_f32(x[0]).to_le_bytes()),
        GgmlType::Q4_0 => block_q4_0,
        GgmlType::Q4_1 => block_q4_1,
        GgmlType::Q5_0 => block_q5_0,
        GgmlType::Q5_1 => block_q5_1,
        GgmlType::Q8_0 => block_q8_0,
        GgmlType::Q8_1 => block_q8_1,
        GgmlType::Q4_K => block_q4_k,
        GgmlType::Q5_K => block_q5_k,
        GgmlType::Q6_K => block_q6_k,
        GgmlType::Q8_K => block_q8_k,
        GgmlType::Q2_K | GgmlType::Q3_K => {
            return Err(QuantError::Unsupported {
                ty,
                op: "quantizer",
            })
        }
    };
    for (x, b) in src
        .chunks_exact(ty.block_size())
        .zip(dst.chunks_exact_mut(ty.type_size()))
    {
        encode(x, b);
    }
    Ok(())
}

/// Encodes a whole row into a new vector.
pub fn quantize_to_vec(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>, QuantError> {
    let block = ty.block_size();
    if !src.len().is_multiple_of(block) {
        return Err(QuantError::PartialBlock {
            ty,
            elements: src.len(),
            block,
        });
    }
    let mut out = vec![0u8; src.len() / block * ty.type_size()];
    quantize_row(ty, src, &mut out)?;
    Ok(out)
}

/// The element of largest magnitude, with its sign.
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Symmetric 4/5-bit encoding shared by Q4_0 and Q5_0: levels `0..2*half`, value `(l - half) * d`.
fn symmetric_levels(x: &[f32], half: f32, top: i32) -> (f32, [u8; QK]) {
    let d = signed_absmax(x) / -half;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        // ggml truncates through an int8 cast after adding half + 0.5; `as i8` saturates the same way
        // for the in-range values this produces.
        *q = ((v * id + half + 0.5) as i8 as i32).min(top) as u8;
    }
    (d, q)
}

/// Asymmetric encoding shared by Q4_1 and Q5_1: value `l * d + min`.
fn affine_levels(x: &[f32], top: i32) -> (f32, f32, [u8; QK]) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        min = min.min(v);
        max = max.max(v);
    }
    let d = (max - min) / top as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0u8; QK];
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (((v - min) * id + 0.5) as i8 as i32).min(top) as u8;
    }
    (d, min, q)
}

fn pack_nibbles(q: &[u8; QK], qs: &mut [u8]) {
    for j in 0..QK / 2 {
        qs[j] = (q[j] & 0x0f) | ((q[j + QK / 2] & 0x0f) << 4);
    }
}

fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (j, &v) in q.iter().enumerate() {
        qh |= (((v >> 4) & 1) as u32) << j;
    }
    qh.to_le_bytes()
}

fn block_q4_0(x: &[f32], b: &mut [u8]) {
    let (d, q) = symmetric_levels(x, 8.0, 15);
    b[0..2].copy_from_slice(&f16_bytes(d));
    pack_nibbles(&q, &mut b[2..18]);
}

fn block_q4_1(x: &[f32], b: &mut [u8]) {
    let (d, m, q) = affine_levels(x, 15);
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..4].copy_from_slice(&f16_bytes(m));
    pack_nibbles(&q, &mut b[4..20]);
}

fn block_q5_0(x: &[f32], b: &mut [u8]) {
    let (d, q) = symmetric_levels(x, 16.0, 31);
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..6].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut b[6..22]);
}

fn block_q5_1(x: &[f32], b: &mut [u8]) {
    let (d, m, q) = affine_levels(x, 31);
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..4].copy_from_slice(&f16_bytes(m));
    b[4..8].copy_from_slice(&high_bits(&q));
    pack_nibbles(&q, &mut b[8..24]);
}

/// Q8_0 levels: `round(x / d)` with `d = max|x| / 127` (C `roundf`: half away from zero).
fn q8_levels(x: &[f32], qs: &mut [u8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
    d
}

fn block_q8_0(x: &[f32], b: &mut [u8]) {
    let d = q8_levels(x, &mut b[2..34]);
    b[0..2].copy_from_slice(&f16_bytes(d));
}

fn block_q8_1(x: &[f32], b: &mut [u8]) {
    let d = q8_levels(x, &mut b[4..36]);
    let sum: i32 = b[4..36].iter().map(|&q| q as i8 as i32).sum();
    b[0..2].copy_from_slice(&f16_bytes(d));
    // ggml stores s = d * Σq with the f32 d (not its f16 rounding) so the Q4_1/Q5_1 dot's min term
    // uses the same value theirs does.
    b[2..4].copy_from_slice(&f16_bytes(sum as f32 * d));
}

fn block_q8_k(x: &[f32], b: &mut [u8]) {
    let max = signed_absmax(x);
    b.fill(0);
    if max == 0.0 {
        return;
    }
    let iscale = -127.0 / max;
    b[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
    #[cfg(target_arch = "x86_64")]
    if x.len() == QK_K && b.len() >= 4 + QK_K + QK_K / 8 && is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F detected; x holds QK_K floats and b the block's level and sum bytes.
        unsafe { q8_k_levels_avx512(x, iscale, b) };
        return;
    }
    q8_k_levels(x, iscale, b);
}

/// The levels of a Q8_K block and their per-16 sums, after its 4-byte scale.
fn q8_k_levels(x: &[f32], iscale: f32, b: &mut [u8]) {
    for (j, &v) in x.iter().enumerate() {
        b[4 + j] = nearest_int(iscale * v).min(127) as i8 as u8;
    }
    for j in 0..QK_K / 16 {
        let sum: i16 = b[4 + 16 * j..4 + 16 * j + 16]
            .iter()
            .map(|&q| q as i8 as i16)
            .sum();
        b[260 + 2 * j..262 + 2 * j].copy_from_slice(&sum.to_le_bytes());
    }
}

/// The levels and per-16 sums of [`block_q8_k`], 16 at a time: decoding quantizes every
/// activation row a matrix reads, and the scalar loop was 1.6% of a 3B decode step. The
/// conversion rounds half to even, as `nearest_int` does, and truncates to a byte, as its
/// `as i8` does, so the bytes are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn q8_k_levels_avx512(x: &[f32], iscale: f32, b: &mut [u8]) {
    use std::arch::x86_64::*;
    let (s, top) = (_mm512_set1_ps(iscale), _mm512_set1_epi32(127));
    for j in 0..QK_K / 16 {
        // SAFETY: x holds QK_K floats and b at least 4 + QK_K + QK_K / 8 bytes (the caller
        // checks both); group j reads x[16j..16j + 16] and writes b[4 + 16j..][..16] and its sum.
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * j));
            let q = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, s)), top);
            _mm_storeu_si128(
                b.as_mut_ptr().add(4 + 16 * j).cast(),
                _mm512_cvtepi32_epi8(q),
            );
            let sum = _mm512_reduce_add_epi32(q) as i16;
            b[4 + QK_K + 2 * j..4 + QK_K + 2 * j + 2].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

/// Scale search of one Q4_K/Q5_K super-block: per-32 scales and mins quantized to 6 bits against
/// the block maxima, packed into the 12 scale bytes; then the final levels against those rounded
/// scales. Returns `(d, dmin, levels)`.
fn k_scales_and_levels(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
    packed: &mut [u8],
) -> (f32, f32, [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let (mut scales, mut mins) = ([0.0f32; 8], [0.0f32; 8]);
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let mut weights = [0.0f32; 32];
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut levels[32 * j..32 * j + 32],
            rmin,
            0.1,
            nstep,
        );
        scales[j] = s;
        mins[j] = m;
        max_scale = max_scale.max(s);
        max_min = max_min.max(m);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    packed.fill(0);
    for j in 0..QK_K / 32 {
        // ggml stores nearest_int into a uint8_t before clamping, so out-of-range values wrap first.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d_bytes = f16_bytes(max_scale / 63.0);
    let dmin_bytes = f16_bytes(max_min / 63.0);
    let (d, dmin) = (f16_at(&d_bytes), f16_at(&dmin_bytes));
    for j in 0..QK_K / 32 {
        let (sc, m) = super::dequant::scale_min_k4(j, packed);
        let dl = d * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        for ii in 0..32 {
            levels[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dl).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, levels)
}

fn block_q4_k(x: &[f32], b: &mut [u8]) {
    let (d, dmin, l) = k_scales_and_levels(x, 15, -1.0, 20, &mut b[4..16]);
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..4].copy_from_slice(&f16_bytes(dmin));
    let qs = &mut b[16..144];
    for g in 0..QK_K / 64 {
        for l2 in 0..32 {
            qs[32 * g + l2] = l[64 * g + l2] | (l[64 * g + 32 + l2] << 4);
        }
    }
}

fn block_q5_k(x: &[f32], b: &mut [u8]) {
    let (d, dmin, l) = k_scales_and_levels(x, 31, -0.5, 15, &mut b[4..16]);
    b[0..2].copy_from_slice(&f16_bytes(d));
    b[2..4].copy_from_slice(&f16_bytes(dmin));
    let (qh, qs) = b[16..176].split_at_mut(32);
    qh.fill(0);
    for g in 0..QK_K / 64 {
        for j in 0..32 {
            let (l1, l2) = (l[64 * g + j], l[64 * g + 32 + j]);
            qh[j] |= ((l1 >> 4) & 1) << (2 * g);
            qh[j] |= ((l2 >> 4) & 1) << (2 * g + 1);
            qs[32 * g + j] = (l1 & 0x0f) | ((l2 & 0x0f) << 4);
        }
    }
}

fn block_q6_k(x: &[f32], b: &mut [u8]) {
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ib in 0..QK_K / 16 {
        let s = make_qx_quants(
            32,
            &x[16 * ib..16 * ib + 16],
            &mut levels[16 * ib..16 * ib + 16],
        );
        scales[ib] = s;
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    b.fill(0);
    if max_abs_scale < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d_bytes = f16_bytes(1.0 / iscale);
    b[208..210].copy_from_slice(&d_bytes);
    let d = f16_at(&d_bytes);
    for ib in 0..QK_K / 16 {
        b[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    for j in 0..QK_K / 16 {
        let dl = d * (b[192 + j] as i8) as f32;
        if dl == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let l = nearest_int(x[16 * j + ii] / dl).clamp(-32, 31);
            levels[16 * j + ii] = (l + 32) as i8;
        }
    }
    let (ql, rest) = b.split_at_mut(128);
    let qh = &mut rest[..64];
    for half in 0..2 {
        let (lv, ql, qh) = (
            &levels[128 * half..],
            &mut ql[64 * half..],
            &mut qh[32 * half..],
        );
        for l in 0..32 {
            let q = [
                lv[l] as u8,
                lv[l + 32] as u8,
                lv[l + 64] as u8,
                lv[l + 96] as u8,
            ];
            ql[l] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
            ql[l + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
            qh[l] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 levels against the scalar formula, byte for byte: random rows, rows whose
    /// products land exactly half-way between two levels, and a row whose largest magnitude is
    /// negative.
    #[test]
    fn q8_k_blocks_match_the_scalar_formula() {
        let mut rows: Vec<Vec<f32>> = (0..40)
            .map(|r| crate::quant::test_values::xorshift_values(QK_K, r + 1))
            .collect();
        rows.push((0..QK_K).map(|i| (i as f32 - 127.0) * 0.5).collect());
        rows.push((0..QK_K).map(|i| -((i % 7) as f32) * 1.25 - 0.5).collect());
        for (r, x) in rows.iter().enumerate() {
            let mut got = vec![0u8; 292];
            block_q8_k(x, &mut got);
            let max = signed_absmax(x);
            let iscale = -127.0 / max;
            let mut want = vec![0u8; 292];
            want[0..4].copy_from_slice(&(1.0 / iscale).to_le_bytes());
            q8_k_levels(x, iscale, &mut want);
            assert_eq!(got, want, "row {r}");
        }
    }
}
