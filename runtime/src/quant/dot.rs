//! Dot products of one weight row with one activation row in the weight type's `vec_dot_type`
//! (Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the k-quants, the float type itself for
//! F32/F16/BF16), the pairing ggml's CPU backend uses, so activations are quantized once per row.
//!
//! The scalar code works on integer levels per sub-block and applies scales once per sub-block, as
//! ggml's generic code does; [`vec_dot`] dispatches to `avx512` or `avx2` where the CPU has
//! them, and to `neon` on aarch64.

use super::dequant::{q3_k_scales, q5_values, q6_k_values, scale_min_k4};
use super::types::{GgmlType, QK, QK_K};
use super::{check_len, f16_at, QuantError};

/// Checks the pairing and lengths of a dot product of `n` elements.
fn check(ty: GgmlType, act: GgmlType, n: usize, w: usize, a: &[u8]) -> Result<(), QuantError> {
    let expected = ty.vec_dot_type();
    if act != expected {
        return Err(QuantError::ActivationType {
            weights: ty,
            activations: act,
            expected,
        });
    }
    check_len(ty, n, w)?;
    check_len(act, n, a.len())
}

/// `Σ w·a` over `n` elements, with the fastest kernel this CPU supports.
pub fn vec_dot(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    act: GgmlType,
    a: &[u8],
) -> Result<f32, QuantError> {
    let mut out = [0f32];
    vec_dot_rows(ty, n, w, act, a, &mut out)?;
    Ok(out[0])
}

/// `out[r] = Σ w_r·a` for the consecutive weight rows `w_r` of `n` elements each that fill `w`:
/// one check and one choice of kernel for all of them (per row, those cost a few percent of a
/// decode step), and the activation row laid out once where the kernel reads another layout.
pub fn vec_dot_rows(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    act: GgmlType,
    a: &[u8],
    out: &mut [f32],
) -> Result<(), QuantError> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    return REORDERED.with_borrow_mut(|buf| RowDots::new(ty, n, act, a, buf)?.rows(w, out));
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    RowDots::new(ty, n, act, a, &mut Vec::new())?.rows(w, out)
}

/// Whether [`RowDots::rows_pair`] has a two-row kernel for weights of `ty` on this CPU (it falls
/// back to one row after the other where not).
pub fn pairs_in_one_pass(ty: GgmlType) -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::avx512::pair_kernel(ty).is_some();
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        false
    }
}

/// One activation row made ready for its dot products with any number of weight rows of one
/// type: the pairing and lengths checked, the kernel chosen and the row laid out for it once. A
/// decode step splits each product into many pieces of rows; preparing the row once per product
/// instead of once per task of up to 64 rows raised the share of a 3B step's time spent in the dots
/// from 92.5% to 94.0% on one thread (the layout was most of it: the output layer alone had 2374
/// tasks, each laying out the same 2048 values).
#[derive(Clone, Copy)]
pub struct RowDots<'a> {
    ty: GgmlType,
    n: usize,
    row_bytes: usize,
    a: &'a [u8],
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    kernel: Option<super::RowKernel>,
    #[cfg(target_arch = "x86_64")]
    pair: Option<super::PairKernel>,
}

impl<'a> RowDots<'a> {
    /// Checks `a` (`n` values of type `act`) against weight rows of `ty` and lays it out in `buf`
    /// (grown as needed) where the kernel reads another layout.
    pub fn new(
        ty: GgmlType,
        n: usize,
        act: GgmlType,
        a: &'a [u8],
        buf: &'a mut Vec<u8>,
    ) -> Result<Self, QuantError> {
        let row_bytes = n / ty.block_size() * ty.type_size();
        check(ty, act, n, row_bytes, a)?;
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if let Some((f, reorder)) = simd_kernel(ty) {
            return Ok(Self {
                ty,
                n,
                row_bytes,
                a: reorder.map_or(a, |reorder| reorder(a, buf)),
                kernel: Some(f),
                // Only where the AVX-512 one-row kernel was chosen, whose layout it reads.
                #[cfg(target_arch = "x86_64")]
                pair: super::avx512::pair_kernel(ty),
            });
        }
        let _ = buf;
        Ok(Self {
            ty,
            n,
            row_bytes,
            a,
            #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
            kernel: None,
            #[cfg(target_arch = "x86_64")]
            pair: None,
        })
    }

    /// That `w` holds exactly `rows` weight rows.
    fn check_rows(&self, w: &[u8], rows: usize) -> Result<(), QuantError> {
        if w.len() == self.row_bytes * rows {
            return Ok(());
        }
        Err(QuantError::ByteLength {
            ty: self.ty,
            elements: self.n * rows,
            bytes: w.len(),
            expected: self.row_bytes * rows,
        })
    }

    /// `out[r] = Σ w_r·a` for the consecutive weight rows `w_r` that fill `w`.
    pub fn rows(&self, w: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
        self.check_rows(w, out.len())?;
        let rb = self.row_bytes;
        if rb == 0 {
            // No elements: every dot is an empty sum.
            out.fill(0.0);
            return Ok(());
        }
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        if let Some(f) = self.kernel {
            // SAFETY: `simd_kernel` hands out only kernels whose CPU features were detected
            // (NEON is part of the aarch64 base); `rb > 0`, and each row and `a` (laid out or
            // not) hold the same number of blocks (checked in `new`; a layout keeps the block
            // count).
            unsafe { f(w, rb, self.a, out) };
            return Ok(());
        }
        for (row, o) in w.chunks_exact(rb).zip(out.iter_mut()) {
            *o = scalar(self.ty, row, self.a);
        }
        Ok(())
    }

    /// [`Self::rows`] for `self` into `out0` and `other` (a row of the same type and length) into
    /// `out1`, through a two-row kernel where there is one: it unpacks each weight block once for
    /// both rows, so a few-row product (a short prompt, a follow-up question) does less work per
    /// row. The results equal two calls of [`Self::rows`] bit for bit.
    pub fn rows_pair(
        &self,
        other: &RowDots<'_>,
        w: &[u8],
        [out0, out1]: [&mut [f32]; 2],
    ) -> Result<(), QuantError> {
        // The same type and length: the same kernel, chosen by the same function.
        #[cfg(target_arch = "x86_64")]
        let same = other.ty == self.ty && other.n == self.n && out0.len() == out1.len();
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = self.pair.filter(|_| same && other.pair.is_some()) {
            self.check_rows(w, out0.len())?;
            let rb = self.row_bytes;
            if rb > 0 {
                // SAFETY: `pair_kernel` hands out only kernels whose CPU features were detected,
                // for the type and layout of the one-row kernel both rows were laid out for;
                // `rb > 0`, both rows hold `n` values, and `w` holds `out0.len()` rows of `rb`.
                unsafe { f(w, rb, [self.a, other.a], [out0, out1]) };
                return Ok(());
            }
        }
        self.rows(w, out0)?;
        other.rows(w, out1)
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
thread_local! {
    /// The activation row laid out for a kernel that reads another layout than the
    /// `vec_dot_type`'s: one buffer per thread, grown once, so that decoding allocates nothing
    /// per token.
    static REORDERED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The fastest vector kernel for `ty` this CPU runs, AVX-512 VNNI then AVX2, with the reordering
/// of the activation row it reads, if any.
#[cfg(target_arch = "x86_64")]
fn simd_kernel(ty: GgmlType) -> Option<(super::RowKernel, Option<super::Reorder>)> {
    super::avx512::kernel(ty).or_else(|| super::avx2::kernel(ty).map(|f| (f, None)))
}

/// The NEON kernel for `ty` (NEON is part of the aarch64 base).
#[cfg(target_arch = "aarch64")]
fn simd_kernel(ty: GgmlType) -> Option<(super::RowKernel, Option<super::Reorder>)> {
    super::neon::kernel(ty).map(|f| (f, None))
}

/// `Σ w·a` with the portable reference kernels only.
pub fn vec_dot_scalar(
    ty: GgmlType,
    n: usize,
    w: &[u8],
    act: GgmlType,
    a: &[u8],
) -> Result<f32, QuantError> {
    check(ty, act, n, w.len(), a)?;
    Ok(scalar(ty, w, a))
}

fn scalar(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    let (wt, at) = (ty.type_size(), ty.vec_dot_type().type_size());
    let block: fn(&[u8], &[u8]) -> f32 = match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => return float_dot(ty, w, a),
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q8_1 => q8_1,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        GgmlType::Q8_K => q8_k,
    };
    w.chunks_exact(wt)
        .zip(a.chunks_exact(at))
        .map(|(x, y)| block(x, y))
        .sum()
}

fn float_dot(ty: GgmlType, w: &[u8], a: &[u8]) -> f32 {
    let mut out = vec![0.0f32; w.len() / ty.type_size()];
    let mut act = vec![0.0f32; out.len()];
    // Lengths were checked by the caller, so decoding cannot fail.
    let ok = super::dequantize_row(ty, w, &mut out).is_ok()
        && super::dequantize_row(ty, a, &mut act).is_ok();
    debug_assert!(ok);
    // ggml accumulates float dots in double (`ggml_float`).
    out.iter()
        .zip(&act)
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum::<f64>() as f32
}

fn i8s(b: &[u8]) -> impl Iterator<Item = i32> + '_ {
    b.iter().map(|&v| v as i8 as i32)
}

fn q8_0(x: &[u8], y: &[u8]) -> f32 {
    let s: i32 = i8s(&x[2..34]).zip(i8s(&y[2..34])).map(|(a, b)| a * b).sum();
    s as f32 * f16_at(x) * f16_at(y)
}

fn q8_1(x: &[u8], y: &[u8]) -> f32 {
    let s: i32 = i8s(&x[4..36]).zip(i8s(&y[4..36])).map(|(a, b)| a * b).sum();
    s as f32 * f16_at(x) * f16_at(y)
}

fn nibbles(qs: &[u8]) -> [i32; QK] {
    let mut q = [0i32; QK];
    for j in 0..QK / 2 {
        q[j] = (qs[j] & 0x0f) as i32;
        q[j + QK / 2] = (qs[j] >> 4) as i32;
    }
    q
}

fn q4_0(x: &[u8], y: &[u8]) -> f32 {
    let s: i32 = nibbles(&x[2..18])
        .iter()
        .zip(i8s(&y[2..34]))
        .map(|(a, b)| (a - 8) * b)
        .sum();
    s as f32 * f16_at(x) * f16_at(y)
}

fn q4_1(x: &[u8], y: &[u8]) -> f32 {
    let s: i32 = nibbles(&x[4..20])
        .iter()
        .zip(i8s(&y[4..36]))
        .map(|(a, b)| a * b)
        .sum();
    s as f32 * f16_at(x) * f16_at(y) + f16_at(&x[2..]) * f16_at(&y[2..])
}

fn q5_0(x: &[u8], y: &[u8]) -> f32 {
    let q = q5_values(&x[2..6], &x[6..22]);
    let s: i32 = q
        .iter()
        .zip(i8s(&y[2..34]))
        .map(|(&a, b)| (a as i32 - 16) * b)
        .sum();
    s as f32 * f16_at(x) * f16_at(y)
}

fn q5_1(x: &[u8], y: &[u8]) -> f32 {
    let q = q5_values(&x[4..8], &x[8..24]);
    let s: i32 = q
        .iter()
        .zip(i8s(&y[4..36]))
        .map(|(&a, b)| a as i32 * b)
        .sum();
    s as f32 * f16_at(x) * f16_at(y) + f16_at(&x[2..]) * f16_at(&y[2..])
}

/// Scale, quants and 16-element partial sums of a Q8_K activation block.
fn q8k(y: &[u8]) -> (f32, &[u8], [i32; 16]) {
    let d = f32::from_le_bytes([y[0], y[1], y[2], y[3]]);
    let mut bsums = [0i32; 16];
    for (j, b) in bsums.iter_mut().enumerate() {
        *b = i16::from_le_bytes([y[260 + 2 * j], y[261 + 2 * j]]) as i32;
    }
    (d, &y[4..260], bsums)
}

/// `Σ_j scale_j · Σ_{i in sub-block j} q_i·y_i` over sub-blocks of `width` elements.
fn scaled_sum(
    q: impl Iterator<Item = i32>,
    y: &[u8],
    width: usize,
    scale: impl Fn(usize) -> i32,
) -> i32 {
    let mut total = 0;
    let mut acc = 0;
    for (i, (q, yv)) in q.zip(i8s(y)).enumerate() {
        acc += q * yv;
        if (i + 1) % width == 0 {
            total += scale(i / width) * acc;
            acc = 0;
        }
    }
    total
}

fn q2_k(x: &[u8], y: &[u8]) -> f32 {
    let (yd, yq, bsums) = q8k(y);
    let (scales, qs) = (&x[0..16], &x[16..80]);
    let (d, dmin) = (f16_at(&x[80..]) * yd, f16_at(&x[82..]) * yd);
    let mut levels = [0i32; QK_K];
    let mut out = 0;
    for half in 0..2 {
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                for l in 0..16 {
                    levels[out] = ((qs[half * 32 + 16 * part + l] >> shift) & 3) as i32;
                    out += 1;
                }
            }
        }
    }
    let sumi = scaled_sum(levels.into_iter(), yq, 16, |j| (scales[j] & 0x0f) as i32);
    let mins: i32 = (0..16).map(|j| (scales[j] >> 4) as i32 * bsums[j]).sum();
    d * sumi as f32 - dmin * mins as f32
}

fn q3_k(x: &[u8], y: &[u8]) -> f32 {
    let (yd, yq, _) = q8k(y);
    let (hmask, qs) = (&x[0..32], &x[32..96]);
    let scales = q3_k_scales(&x[96..108]);
    let d = f16_at(&x[108..]) * yd;
    let mut levels = [0i32; QK_K];
    let (mut out, mut bit) = (0, 0);
    for half in 0..2 {
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                for l in 0..16 {
                    let idx = 16 * part + l;
                    let low = ((qs[half * 32 + idx] >> shift) & 3) as i32;
                    levels[out] = low - if hmask[idx] & (1 << bit) != 0 { 0 } else { 4 };
                    out += 1;
                }
            }
            bit += 1;
        }
    }
    d * scaled_sum(levels.into_iter(), yq, 16, |j| scales[j] as i32) as f32
}

/// Shared by Q4_K and Q5_K: `levels` are the unsigned values in element order.
fn k4_style(x: &[u8], y: &[u8], levels: &[i32; QK_K]) -> f32 {
    let (yd, yq, bsums) = q8k(y);
    let (d, dmin) = (f16_at(x) * yd, f16_at(&x[2..]) * yd);
    let scales = &x[4..16];
    let sumi = scaled_sum(levels.iter().copied(), yq, 32, |j| {
        scale_min_k4(j, scales).0 as i32
    });
    let mins: i32 = (0..8)
        .map(|j| scale_min_k4(j, scales).1 as i32 * (bsums[2 * j] + bsums[2 * j + 1]))
        .sum();
    d * sumi as f32 - dmin * mins as f32
}

fn q4_k(x: &[u8], y: &[u8]) -> f32 {
    let qs = &x[16..144];
    let mut levels = [0i32; QK_K];
    for g in 0..4 {
        for l in 0..32 {
            levels[64 * g + l] = (qs[32 * g + l] & 0x0f) as i32;
            levels[64 * g + 32 + l] = (qs[32 * g + l] >> 4) as i32;
        }
    }
    k4_style(x, y, &levels)
}

fn q5_k(x: &[u8], y: &[u8]) -> f32 {
    let (qh, qs) = (&x[16..48], &x[48..176]);
    let mut levels = [0i32; QK_K];
    for g in 0..4 {
        for l in 0..32 {
            let h1 = ((qh[l] >> (2 * g)) & 1) << 4;
            let h2 = ((qh[l] >> (2 * g + 1)) & 1) << 4;
            levels[64 * g + l] = ((qs[32 * g + l] & 0x0f) | h1) as i32;
            levels[64 * g + 32 + l] = ((qs[32 * g + l] >> 4) | h2) as i32;
        }
    }
    k4_style(x, y, &levels)
}

fn q6_k(x: &[u8], y: &[u8]) -> f32 {
    let (yd, yq, _) = q8k(y);
    let q = q6_k_values(&x[0..128], &x[128..192]);
    let scales = &x[192..208];
    let d = f16_at(&x[208..]) * yd;
    d * scaled_sum(q.iter().map(|&v| v as i32), yq, 16, |j| {
        scales[j] as i8 as i32
    }) as f32
}

fn q8_k(x: &[u8], y: &[u8]) -> f32 {
    let (xd, xq, _) = q8k(x);
    let (yd, yq, _) = q8k(y);
    let s: i32 = i8s(xq).zip(i8s(yq)).map(|(a, b)| a * b).sum();
    xd * yd * s as f32
}
