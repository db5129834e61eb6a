//! Block formats of ggml: dequantization, quantization and dot products.
//!
//! - `types`: [`GgmlType`] ids and block geometry.
//! - `dequant`: scalar block decoders for every supported type.
//! - `quantize`: encoders (weights: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; activations:
//!   Q8_0, Q8_1, Q8_K; plus F32/F16/BF16).
//! - `search`: the scale searches the k-quant encoders use (llama.cpp's `make_qkx2_quants` and
//!   `make_qx_quants`, reimplemented).
//! - `dot`: scalar dot products of a weight row against its `vec_dot_type` activation row.
//! - `avx2`: AVX2/FMA dot products for Q8_0, Q4_K and Q6_K, chosen at run time by [`dot::vec_dot`].
//! - `avx512`: AVX-512 BW/VNNI dot products for Q4_K, Q6_K and Q8_0, tried before the AVX2 ones.
//! - `neon`: NEON dot products for Q8_0, Q4_K and Q6_K on aarch64.
//! - `affine`: Q8_0, Q4_K and Q6_K rows as unsigned bytes with an affine map per group, the form
//!   the CPU backend's int8 matrix-matrix kernel multiplies.
//!
//! All functions work on byte slices holding whole blocks, in the exact layout GGUF stores, so a
//! memory-mapped tensor row can be passed without copying.

pub mod affine;
pub mod dequant;
pub mod dot;
pub mod quantize;
pub mod search;
pub mod test_values;
pub mod types;

/// Wraps a kernel of one row (`unsafe fn(&[u8], &[u8]) -> f32`, compiled for `$features`) into a
/// [`RowKernel`] for the same features, so the one-row kernel is inlined into the loop over rows.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! over_rows {
    ($rows:ident, $one:ident, $features:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $rows(w: &[u8], row_bytes: usize, a: &[u8], out: &mut [f32]) {
            for (row, o) in w.chunks_exact(row_bytes).zip(out) {
                // SAFETY: the contract of `$rows` is that of `$one` for each row.
                *o = unsafe { $one(row, a) };
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
/// How far ahead of the block being read the x86 kernels prefetch, in bytes.
#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::PREFETCH as PREFETCH_BYTES;

pub use dequant::{dequantize_row, dequantize_row_scalar};
pub use dot::{pairs_in_one_pass, vec_dot, vec_dot_rows, vec_dot_scalar, RowDots};
pub use quantize::quantize_row;
pub use types::{GgmlType, QK, QK_K};

/// A dot-product kernel of consecutive weight rows with one activation row, built for CPU
/// features that must be detected before it is called: `kernel(w, row_bytes, a, out)` sets
/// `out[r]` to the dot of `w`'s row `r` (`row_bytes > 0` bytes, as many blocks as `a` holds) for
/// every `r < out.len()`. One call per task's rows, not per row: the loop over rows then keeps the
/// kernel's constants in registers and its row loop inlined, which took the AVX-512 Q6_K kernel
/// from 34.9 to 36.3 GB/s with 2048-value rows in L2 (one Zen 4 core).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) type RowKernel = unsafe fn(&[u8], usize, &[u8], &mut [f32]);

/// A [`RowKernel`] for two activation rows at once (both laid out as the one-row kernel reads
/// them), which unpacks each weight block once for both: `kernel(w, row_bytes, [a0, a1], [out0,
/// out1])` sets `out0[r]` and `out1[r]` to the dots of row `r` with `a0` and `a1`, for every
/// `r < out0.len() == out1.len()`.
#[cfg(target_arch = "x86_64")]
pub(crate) type PairKernel = unsafe fn(&[u8], usize, [&[u8]; 2], [&mut [f32]; 2]);

/// The dot of one weight row `w` with `a` through a [`RowKernel`] (for the kernels' tests).
///
/// # Safety
/// `f`'s CPU features must have been detected.
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) unsafe fn one_row(f: RowKernel, w: &[u8], a: &[u8]) -> f32 {
    let mut out = [0f32];
    if !w.is_empty() {
        // SAFETY: the caller's.
        unsafe { f(w, w.len(), a, &mut out) };
    }
    out[0]
}

/// Rewrites an activation row (`vec_dot_type` blocks) into the layout a row kernel reads, in the
/// buffer (grown as needed), and returns that layout: a slice of the buffer, which may start past
/// its beginning (for alignment) and need not have the input's length.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) type Reorder = for<'b> fn(&[u8], &'b mut Vec<u8>) -> &'b [u8];

/// Misuse of the row functions: a buffer whose length does not match the type's block geometry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{ty}: {elements} elements are not a whole number of {block}-element blocks")]
    PartialBlock {
        ty: GgmlType,
        elements: usize,
        block: usize,
    },
    #[error("{ty}: {bytes} bytes given for {elements} elements, expected {expected}")]
    ByteLength {
        ty: GgmlType,
        elements: usize,
        bytes: usize,
        expected: usize,
    },
    #[error(
        "{weights} weights cannot be dotted with {activations} activations (expected {expected})"
    )]
    ActivationType {
        weights: GgmlType,
        activations: GgmlType,
        expected: GgmlType,
    },
    #[error("no {op} for {ty}")]
    Unsupported { ty: GgmlType, op: &'static str },
}

/// Checks that `bytes` holds exactly `elements` elements of `ty`.
pub(crate) fn check_len(ty: GgmlType, elements: usize, bytes: usize) -> Result<(), QuantError> {
    let block = ty.block_size();
    if !elements.is_multiple_of(block) {
        return Err(QuantError::PartialBlock {
            ty,
            elements,
            block,
        });
    }
    let expected = elements / block * ty.type_size();
    if bytes != expected {
        return Err(QuantError::ByteLength {
            ty,
            elements,
            bytes,
            expected,
        });
    }
    Ok(())
}

/// Reads a little-endian IEEE half at the start of `b`.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Little-endian bytes of `x` rounded to IEEE half (round to nearest even, as `GGML_FP32_TO_FP16`).
#[inline]
pub(crate) fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// ggml's `nearest_int`: round half to even by its magic-number trick (adding 1.5 * 2^23 leaves
/// the rounded integer in the low mantissa bits). `round_ties_even` gives the same values but is a
/// libm call on a baseline x86-64 build (no SSE4.1), which cost 1-2% of a decode step in
/// quantizing activations. Out of the trick's range (ggml asserts against it) the slow way.
#[inline]
pub(crate) fn nearest_int(x: f32) -> i32 {
    if x.abs() <= 4_194_303.0 {
        ((x + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
    } else {
        x.round_ties_even() as i32
    }
}

/// The rows the vector kernels' tests check against the scalar kernels: for 40 seeds, rows of
/// 256 to 11008 values with one extreme level each side, as `(type, n, weights, activations,
/// scalar result)` for Q4_K, Q6_K and Q8_0.
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn kernel_cases() -> impl Iterator<Item = (GgmlType, usize, Vec<u8>, Vec<u8>, f32)> {
    (0..40u64).flat_map(|seed| {
        let n = 256 * (1 + seed as usize % 43);
        let mut x = test_values::xorshift_values(n, 2 * seed + 1);
        let mut a = test_values::xorshift_values(n, 2 * seed + 2);
        x[(seed as usize * 37) % n] = 9.0;
        a[(seed as usize * 53) % n] = -7.0;
        [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0].map(|ty| {
            let w = quantize::quantize_to_vec(ty, &x).unwrap();
            let act = quantize::quantize_to_vec(ty.vec_dot_type(), &a).unwrap();
            let want = vec_dot_scalar(ty, n, &w, ty.vec_dot_type(), &act).unwrap();
            (ty, n, w, act, want)
        })
    })
}

/// Q8_0 rows of each count of 32-value blocks in `blocks`, as [`kernel_cases`] gives them: the
/// Q8_0 kernels take several blocks per step, then pairs, then a last block, so their tests need
/// short rows of every remainder.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn q8_0_cases(
    blocks: impl IntoIterator<Item = usize>,
) -> impl Iterator<Item = (GgmlType, usize, Vec<u8>, Vec<u8>, f32)> {
    blocks.into_iter().map(|blocks| {
        let (n, seed) = (32 * blocks, blocks as u64);
        let x = test_values::xorshift_values(n, 3 * seed + 5);
        let a = test_values::xorshift_values(n, 3 * seed + 6);
        let w = quantize::quantize_to_vec(GgmlType::Q8_0, &x).unwrap();
        let act = quantize::quantize_to_vec(GgmlType::Q8_0, &a).unwrap();
        let want = vec_dot_scalar(GgmlType::Q8_0, n, &w, GgmlType::Q8_0, &act).unwrap();
        (GgmlType::Q8_0, n, w, act, want)
    })
}

#[cfg(test)]
mod tests {
    /// The magic-number rounding equals round-half-even on ties, near the range limit and past it.
    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, want) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (-2.5, -2),
            (0.49999997, 0),
            (126.6, 127),
            (-127.4, -127),
            (4_194_303.0, 4_194_303),
            (-4_194_303.0, -4_194_303),
            (8_388_609.0, 8_388_609),
        ] {
            assert_eq!(super::nearest_int(x), want, "{x}");
        }
        for i in -20_000..20_000 {
            let x = i as f32 * 0.0137;
            assert_eq!(super::nearest_int(x), x.round_ties_even() as i32, "{x}");
        }
    }
}
