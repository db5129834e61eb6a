//! NEON dot products for aarch64 (Jetson-class edge GPUs' host cores, Apple silicon, Graviton):
//! Q8_0, Q4_K and Q6_K against their Q8_0 / Q8_K activation rows, the same set the x86 kernels
//! cover. NEON is part of the aarch64 base, so these need no detection. Each must equal the scalar
//! kernel within float rounding (tested below against `vec_dot_scalar`; on an x86 host the tests
//! run under qemu, see the README's "Tests" section).
//!
//! Byte products use the base instruction set only (`vmull_s8`, then pairwise widening adds into
//! i32 lanes, as ggml does without the dot-product extension): no product or partial sum can
//! overflow its lane whatever the weight bytes are.

use std::arch::aarch64::*;

use super::dequant::scales_mins_k4;
use super::f16_at;
use super::types::GgmlType;

/// The kernel for `ty`, or `None` when `ty` has no NEON kernel.
pub(crate) fn kernel(ty: GgmlType) -> Option<super::RowKernel> {
    match ty {
        GgmlType::Q8_0 => Some(q8_0_rows),
        GgmlType::Q4_K => Some(q4_k_rows),
        GgmlType::Q6_K => Some(q6_k_rows),
        _ => None,
    }
}

over_rows!(q8_0_rows, q8_0, "neon");
over_rows!(q4_k_rows, q4_k, "neon");
over_rows!(q6_k_rows, q6_k, "neon");

/// The NEON result for `ty` (tests compare it with the scalar kernel).
#[cfg(test)]
pub(crate) fn vec_dot(ty: GgmlType, w: &[u8], a: &[u8]) -> Option<f32> {
    // SAFETY: NEON is part of the aarch64 base; the tests pass rows of equal block counts.
    kernel(ty).map(|f| unsafe { super::one_row(f, w, a) })
}

/// 16 bytes from `b[off..off + 16]`.
#[inline(always)]
fn load16(b: &[u8], off: usize) -> uint8x16_t {
    let s = &b[off..off + 16];
    // SAFETY: `s` is a bounds-checked 16-byte slice; `vld1q_u8` has no alignment requirement.
    unsafe { vld1q_u8(s.as_ptr()) }
}

/// 16 signed bytes from `b[off..off + 16]`.
#[inline(always)]
fn load16_s8(b: &[u8], off: usize) -> int8x16_t {
    let s = &b[off..off + 16];
    // SAFETY: as in `load16`.
    unsafe { vld1q_s8(s.as_ptr() as *const i8) }
}

/// Σ x·y of 16 signed bytes each: i8 products widen to i16, pairs of them to i32.
#[inline(always)]
fn dot16(x: int8x16_t, y: int8x16_t) -> int32x4_t {
    // SAFETY: register-only NEON arithmetic, part of the aarch64 base.
    unsafe {
        let lo = vmull_s8(vget_low_s8(x), vget_low_s8(y));
        let hi = vmull_high_s8(x, y);
        vaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
    }
}

/// Horizontal sum of four i32 lanes.
#[inline(always)]
fn hsum_i32(v: int32x4_t) -> i32 {
    // SAFETY: register-only NEON arithmetic.
    unsafe { vaddvq_s32(v) }
}

/// # Safety
/// Runs on any aarch64 CPU; `w` and `a` hold the same number of blocks (surplus bytes of a
/// partial block are ignored: every load is a bounds-checked slice).
unsafe fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    let mut acc = 0f32;
    for (x, y) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
        let d = f16_at(x) * f16_at(y);
        let s = vaddq_s32(
            dot16(load16_s8(x, 2), load16_s8(y, 2)),
            dot16(load16_s8(x, 18), load16_s8(y, 18)),
        );
        acc += d * hsum_i32(s) as f32;
    }
    acc
}

/// # Safety
/// As for `q8_0` (Q4_K blocks of 144 bytes against Q8_K blocks of 292).
unsafe fn q4_k(w: &[u8], a: &[u8]) -> f32 {
    let low = vdupq_n_u8(0x0f);
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (x, y) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let yd = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let (d, dmin) = (f16_at(x) * yd, f16_at(&x[2..]) * yd);
        let sc: [u8; 16] = bytemuck::cast(scales_mins_k4(&x[4..16]));
        // Σ_sub min · (sum of the sub-block's 32 activations): the activation block carries those
        // sums as 16 i16, pairwise added into the eight sub-block sums.
        let bsums = &y[260..292];
        // SAFETY: bounds-checked 16-byte slices; NEON arithmetic is part of the aarch64 base.
        let m = unsafe {
            let b0 = vld1q_s16(bsums[..16].as_ptr() as *const i16);
            let b1 = vld1q_s16(bsums[16..32].as_ptr() as *const i16);
            let sums = vpaddq_s16(b0, b1);
            let mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(sc[8..16].as_ptr())));
            let p = vaddq_s32(
                vmull_s16(vget_low_s16(sums), vget_low_s16(mins)),
                vmull_high_s16(sums, mins),
            );
            vaddvq_s32(p)
        };
        acc_min += dmin * m as f32;
        let mut sumi = 0i32;
        for g in 0..4 {
            let mut lo = vdupq_n_s32(0);
            let mut hi = vdupq_n_s32(0);
            for part in 0..2 {
                let q = load16(x, 16 + 32 * g + 16 * part);
                let ql = vreinterpretq_s8_u8(vandq_u8(q, low));
                let qh = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
                lo = vaddq_s32(lo, dot16(ql, load16_s8(y, 4 + 64 * g + 16 * part)));
                hi = vaddq_s32(hi, dot16(qh, load16_s8(y, 4 + 64 * g + 32 + 16 * part)));
            }
            sumi += sc[2 * g] as i32 * hsum_i32(lo) + sc[2 * g + 1] as i32 * hsum_i32(hi);
        }
        acc += d * sumi as f32;
    }
    acc - acc_min
}

/// # Safety
/// As for `q8_0` (Q6_K blocks of 210 bytes against Q8_K blocks of 292).
unsafe fn q6_k(w: &[u8], a: &[u8]) -> f32 {
    let low = vdupq_n_u8(0x0f);
    let three = vdupq_n_u8(3);
    let bias = vdupq_n_s8(32);
    let mut acc = 0f32;
    for (x, y) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let yd = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
        let d = f16_at(&x[208..]) * yd;
        let scales = &x[192..208];
        let mut sumi = 0i32;
        for half in 0..2 {
            // Values 128*half + 32*k + 16*part + l of the block, for l in 0..16.
            for part in 0..2 {
                let ql0 = load16(x, 64 * half + 16 * part);
                let ql1 = load16(x, 64 * half + 32 + 16 * part);
                let qh = load16(x, 128 + 32 * half + 16 * part);
                let hi = |shift: u8| -> uint8x16_t {
                    // SAFETY: register-only NEON arithmetic.
                    unsafe {
                        let h = match shift {
                            0 => qh,
                            2 => vshrq_n_u8(qh, 2),
                            4 => vshrq_n_u8(qh, 4),
                            _ => vshrq_n_u8(qh, 6),
                        };
                        vshlq_n_u8(vandq_u8(h, three), 4)
                    }
                };
                let q = [
                    vorrq_u8(vandq_u8(ql0, low), hi(0)),
                    vorrq_u8(vandq_u8(ql1, low), hi(2)),
                    vorrq_u8(vshrq_n_u8(ql0, 4), hi(4)),
                    vorrq_u8(vshrq_n_u8(ql1, 4), hi(6)),
                ];
                for (k, qk) in q.into_iter().enumerate() {
                    let v = vsubq_s8(vreinterpretq_s8_u8(qk), bias);
                    let yv = load16_s8(y, 4 + 128 * half + 32 * k + 16 * part);
                    let s = scales[8 * half + 2 * k + part] as i8 as i32;
                    sumi += s * hsum_i32(dot16(v, yv));
                }
            }
        }
        acc += d * sumi as f32;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::super::{vec_dot, vec_dot_scalar, GgmlType};

    /// The kernels against the scalar reference on rows with extreme levels, and `vec_dot`
    /// choosing them.
    #[test]
    fn kernels_match_the_scalar_ones() {
        for (ty, n, w, act, want) in super::super::kernel_cases() {
            let got = super::vec_dot(ty, &w, &act).unwrap();
            let chosen = vec_dot(ty, n, &w, ty.vec_dot_type(), &act).unwrap();
            for (what, v) in [("neon", got), ("vec_dot", chosen)] {
                assert!(
                    (v - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{ty} {what} n={n}: {v} vs {want}"
                );
            }
        }
    }

    /// Weight bytes the encoders never write (Q8_0 levels of -128, Q6_K scales of -128) still
    /// give the scalar result: no lane overflows.
    #[test]
    fn extreme_bytes_do_not_overflow() {
        // Q8_0: f16 scale 1.0, 32 levels of -128, against activations of -128.
        let mut w = vec![0u8; 34 * 3];
        let mut a = vec![0u8; 34 * 3];
        for b in 0..3 {
            w[34 * b..34 * b + 2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
            a[34 * b..34 * b + 2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
            w[34 * b + 2..34 * (b + 1)].fill(0x80);
            a[34 * b + 2..34 * (b + 1)].fill(0x80);
        }
        let want = vec_dot_scalar(GgmlType::Q8_0, 96, &w, GgmlType::Q8_0, &a).unwrap();
        assert_eq!(want, 3.0 * 0.5 * 32.0 * 16384.0);
        assert_eq!(super::vec_dot(GgmlType::Q8_0, &w, &a).unwrap(), want);
        // Q6_K: every level 0 (value -32), every scale -128, against Q8_K activations of -128.
        let mut w = vec![0u8; 210];
        w[192..208].fill(0x80);
        w[208..210].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        let mut a = vec![0u8; 292];
        a[0..4].copy_from_slice(&1.0f32.to_le_bytes());
        a[4..260].fill(0x80);
        let want = vec_dot_scalar(GgmlType::Q6_K, 256, &w, GgmlType::Q8_K, &a).unwrap();
        assert_eq!(want, 256.0 * -128.0 * (-32.0 * -128.0));
        assert_eq!(super::vec_dot(GgmlType::Q6_K, &w, &a).unwrap(), want);
    }
}
