//! AVX-512 (BW + VNNI) dot products for Q4_K and Q6_K, the formats of a Q4_K_M file's weights, and
//! Q8_0, chosen at run time by `dot::RowDots` ahead of the AVX2 kernels; Q4_K and Q6_K with GFNI
//! where the CPU has it. Each kernel reads its activation row laid out on cache-line boundaries
//! (`pair_q8_k`, `align_q8_k`, `lay_out_q8_0`), which `dot::RowDots` does once per row.
//!
//! Decoding one token streams every weight once, so the kernel has to keep up with memory: the
//! AVX2 kernel spends about 76 instructions on a 144-byte block and, measured, reads 8.5 GB/s on
//! one core where the memory gives two cores 17-25. Here `vpdpbusd` multiplies 64 weight bytes
//! by 64 activations and sums them four at a time; the sums of two vectors pack into one of i16
//! and one `vpdpwssd` applies their sub-block scales.

use std::arch::x86_64::*;

use super::avx2::{f16_at, prefetch_ahead, q8_0_scales};

/// The AVX-512 result for `ty`, or `None` when this CPU lacks AVX-512 BW/VNNI or `ty` has no
/// kernel here. `w` and `a` must hold the same number of blocks (surplus bytes are ignored,
/// never read out of bounds).
#[cfg(test)]
pub(crate) fn vec_dot(ty: super::GgmlType, w: &[u8], a: &[u8]) -> Option<f32> {
    let (f, reorder) = detected_kernel(ty)?;
    let mut buf = Vec::new();
    let laid = match reorder {
        Some(reorder) => reorder(a, &mut buf),
        None => a,
    };
    // SAFETY: `detected_kernel` hands out only kernels whose features were detected.
    Some(unsafe { super::one_row(f, w, laid) })
}

/// The kernel for `ty` when this CPU can run it and `ANATOMY_AVX512=0` is not set (for a loop
/// over rows that chooses once), with the reordering of the activation row it reads, if it reads
/// another layout than the `vec_dot_type`'s.
pub(crate) fn kernel(ty: super::GgmlType) -> Option<(super::RowKernel, Option<super::Reorder>)> {
    detected_kernel(ty).filter(|_| enabled())
}

/// The two-row form of [`kernel`]'s kernel for `ty`, where there is one.
pub(crate) fn pair_kernel(ty: super::GgmlType) -> Option<super::PairKernel> {
    if !available() || !enabled() {
        return None;
    }
    match ty {
        super::GgmlType::Q4_K if gfni() => Some(q4_k_gfni_pair),
        super::GgmlType::Q4_K => Some(q4_k_pair),
        super::GgmlType::Q6_K if gfni() => Some(q6_k_gfni_pair),
        super::GgmlType::Q6_K => Some(q6_k_pair),
        super::GgmlType::Q8_0 => Some(q8_0_pair),
        _ => None,
    }
}

/// [`kernel`] whatever `ANATOMY_AVX512` says.
fn detected_kernel(ty: super::GgmlType) -> Option<(super::RowKernel, Option<super::Reorder>)> {
    use super::GgmlType;
    if !available() {
        return None;
    }
    match ty {
        GgmlType::Q4_K if gfni() => Some((q4_k_gfni, Some(pair_q8_k))),
        GgmlType::Q4_K => Some((q4_k, Some(pair_q8_k))),
        GgmlType::Q6_K if gfni() => Some((q6_k_gfni, Some(align_q8_k))),
        GgmlType::Q6_K => Some((q6_k, Some(align_q8_k))),
        GgmlType::Q8_0 => Some((q8_0_rows, Some(lay_out_q8_0))),
        _ => None,
    }
}

/// GFNI, which the Q4_K and Q6_K kernels use to move bits when the CPU has it (Ice Lake, Zen 4
/// and later; Cascade Lake has AVX-512 VNNI without it).
fn gfni() -> bool {
    is_x86_feature_detected!("gfni")
}

/// `ANATOMY_AVX512=0` sends the one-row dots to the AVX2 kernels: to compare the two, or to
/// measure on a CPU that has both the path that CPUs without AVX-512 take. Read once; the tests
/// call the kernels here directly, so they check them either way.
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ANATOMY_AVX512").map_or(true, |v| v.trim() != "0"))
}

fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// Bytes per Q8_K block in the layout [`pair_q8_k`] and [`align_q8_k`] write: five cache lines.
const LAID: usize = 320;

/// Q8_K activations laid out for [`q4_k`], in `buf` (grown as needed), returned as the slice the
/// kernel reads: as [`align_q8_k`] lays them out, except that the values of each 128-value half
/// come as 32-value chunks in the order 0, 2, 1, 3, so that the low nibbles of 64 consecutive
/// Q4_K bytes (chunks 0 and 2 of a half) meet their activations in one 64-byte load, and the high
/// nibbles (chunks 1 and 3) in the next.
fn pair_q8_k<'b>(a: &[u8], buf: &'b mut Vec<u8>) -> &'b [u8] {
    lay_out_q8_k(a, buf, [0, 2, 1, 3])
}

/// Q8_K activations laid out for the Q6_K kernels, in `buf` (grown as needed), returned as the
/// slice they read: per block of 256 values, [`LAID`] bytes starting on a 64-byte boundary, the
/// values first, then the f32 scale and the 16 sums of 16 values. A 64-byte load that straddles
/// two cache lines costs Zen 4 half again as much as one that does not (measured: `vpdpbusd` from
/// memory, 1.47 cycles against 1.00), and in Q8_K's own 292-byte blocks nearly every load of 64
/// values does; laid out, the Q4_K kernel ran 3-6% faster with its rows in L2.
fn align_q8_k<'b>(a: &[u8], buf: &'b mut Vec<u8>) -> &'b [u8] {
    lay_out_q8_k(a, buf, [0, 1, 2, 3])
}

/// The layout of [`align_q8_k`], with the 32-value chunks of each half in the order `chunks`.
fn lay_out_q8_k<'b>(a: &[u8], buf: &'b mut Vec<u8>, chunks: [usize; 4]) -> &'b [u8] {
    let blocks = a.len() / 292;
    let out = aligned(buf, blocks * LAID);
    for (src, dst) in a.chunks_exact(292).zip(out.chunks_exact_mut(LAID)) {
        for half in 0..2 {
            for (to, from) in chunks.into_iter().enumerate() {
                let (to, from) = (128 * half + 32 * to, 4 + 128 * half + 32 * from);
                dst[to..to + 32].copy_from_slice(&src[from..from + 32]);
            }
        }
        dst[256..260].copy_from_slice(&src[..4]);
        dst[260..292].copy_from_slice(&src[260..]);
    }
    out
}

/// `len` bytes of `buf` (grown as needed) starting on a 64-byte boundary.
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    buf.resize(len + 64, 0);
    // `align_offset` may answer "never" (usize::MAX) in general; the 64 spare bytes cover any
    // answer up to 64, and the kernels read unaligned rows correctly, only slower.
    let start = buf.as_ptr().align_offset(64).min(64);
    &mut buf[start..start + len]
}

/// Bytes of sixteen Q8_0 blocks, the step of the Q8_0 kernels.
const Q8_0_STEP: usize = 16 * 34;

/// Bytes per group of sixteen Q8_0 activation blocks in the layout [`lay_out_q8_0`] writes: nine
/// cache lines.
const Q8_0_LAID: usize = 576;

/// Q8_0 activations laid out for [`q8_0`], in `buf` (grown as needed), returned as the slice the
/// kernel reads: per sixteen blocks, starting on a 64-byte boundary, their scales as sixteen f32
/// and then their values, two blocks to a cache line; the last blocks (fewer than sixteen) as they
/// were. In Q8_0's own 34-byte blocks the kernel read each pair of blocks' values with two loads,
/// most of them across two cache lines, and each scale with a two-byte load, a store and a
/// reload; the activation row is the same for every weight row, so it is laid out once. Laid
/// out, the 3B Q8_0 decode (two threads, 2-vCPU Xeon) reached 91.1% of the bandwidth bound
/// against 85.8% (medians of five alternating runs; `docs/speed-log.md`).
fn lay_out_q8_0<'b>(a: &[u8], buf: &'b mut Vec<u8>) -> &'b [u8] {
    let blocks = a.len() / 34;
    let (groups, rest) = (blocks / 16, blocks % 16);
    let len = groups * Q8_0_LAID + rest * 34;
    let out = aligned(buf, len);
    let (laid, tail) = out.split_at_mut(groups * Q8_0_LAID);
    for (src, dst) in a
        .chunks_exact(Q8_0_STEP)
        .zip(laid.chunks_exact_mut(Q8_0_LAID))
    {
        for (b, block) in src.chunks_exact(34).enumerate() {
            let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
            dst[4 * b..4 * b + 4].copy_from_slice(&d.to_le_bytes());
            dst[64 + 32 * b..96 + 32 * b].copy_from_slice(&block[2..]);
        }
    }
    tail.copy_from_slice(&a[groups * Q8_0_STEP..blocks * 34]);
    out
}

/// Instantiates a kernel macro twice: for AVX-512 CPUs without GFNI, and with it.
macro_rules! without_and_with_gfni {
    ($kernel:ident, $($plain:ident),+; $($gfni:ident),+) => {
        $kernel!($($plain),+, "avx512f,avx512bw,avx512vnni,avx2,fma,f16c", false);
        $kernel!(
            $($gfni),+,
            "avx512f,avx512bw,avx512vnni,avx2,fma,f16c,gfni",
            true
        );
    };
}

/// Q4_K weights (144-byte blocks) against Q8_K activations (f32 scale, 256 values, 16 sums of 16
/// values as i16) laid out by [`pair_q8_k`].
///
/// Each 64-byte load of weight bytes covers two 32-byte chunks; their low nibbles (two 32-value
/// sub-blocks) and their high nibbles (the two between) are each one or two instructions away from
/// `vpdpbusd` against one contiguous load of activations. `vpdpbusd` sums the products four at a
/// time, so each i32 lane stays inside one sub-block and small enough (|4·15·128| < 2¹⁵) for
/// `vpackssdw` to pack two vectors into one of i16, and one `vpmaddwd` (first pair) or `vpdpwssd`
/// per pair applies the four sub-block scales. `llvm-mca -mcpu=znver4` put it at 13.7 cycles per
/// block (12.5 since the `vpmaddwd` start), where the first AVX-512 kernel (a `maddubs` and a
/// scale shuffle per 64 values, the nibbles side by side from a broadcast load of 32 bytes against
/// the activations as they are) took 19.2.
///
/// With GFNI, one bit transform moves each byte's high nibble down where a shift and an AND did:
/// with the rows in L2, 29.7 against 28.6 GB/s at n = 2048 and 33.8 against 32.5 at n = 11008 (one
/// Zen 4 core).
macro_rules! q4_k_kernel {
    ($name:ident, $pair:ident, $features:literal, $gfni:literal) => {
        one_and_two_row_kernels!($name, $pair, $features, $gfni, q4_k_parts, q4_k_apply, 144);
    };
}

/// A k-quant kernel (`$name`) and its two-row form (`$pair`) from the kernel's parts macro and
/// apply macro ([`q4_k_parts`] and [`q4_k_apply`], or Q6_K's), over blocks of `$wb` bytes. The
/// parts' `head` gives (what `scales` spreads, and the two block values `apply` takes).
///
/// In the one-row kernel each half's values and scales are made where they are used, as in the
/// kernel before the two-row form: made for both halves first, the Q4_K loop ran 3-25% slower.
/// The two-row kernel makes them once and reads them from registers for both rows.
macro_rules! one_and_two_row_kernels {
    ($name:ident, $pair:ident, $features:literal, $gfni:literal, $parts:ident, $apply:ident,
     $wb:literal) => {
        #[target_feature(enable = $features)]
        unsafe fn $name(w: &[u8], row_bytes: usize, a: &[u8], out: &mut [f32]) {
            $parts!($gfni, zero, head, values, scales, finish);
            let init = (_mm512_setzero_ps(), _mm256_setzero_ps());
            let step = |x: &[u8], y: &[u8], st| {
                let (sc, p, q) = head(x);
                $apply!(zero, y, st, p, q, |h| values(x, h), |h| scales(sc, h))
            };
            rows_of_blocks(w, row_bytes, a, $wb, out, init, step, finish);
        }

        /// The kernel above for two activation rows at once, which unpacks each weight block
        /// once for both: `out0` against `a0`, `out1` against `a1`.
        #[target_feature(enable = $features)]
        unsafe fn $pair(
            w: &[u8],
            row_bytes: usize,
            [a0, a1]: [&[u8]; 2],
            [out0, out1]: [&mut [f32]; 2],
        ) {
            $parts!($gfni, zero, head, values, scales, finish);
            let init = (_mm512_setzero_ps(), _mm256_setzero_ps());
            let step = |x: &[u8], [y0, y1]: [&[u8]; 2], [s0, s1]: [_; 2]| {
                let (sc, p, q) = head(x);
                let v = [values(x, 0), values(x, 1)];
                let sc = [scales(sc, 0), scales(sc, 1)];
                [
                    $apply!(zero, y0, s0, p, q, |h| v[h], |h| sc[h]),
                    $apply!(zero, y1, s1, p, q, |h| v[h], |h| sc[h]),
                ]
            };
            pair_rows_of_blocks(
                w,
                row_bytes,
                [a0, a1],
                $wb,
                [out0, out1],
                init,
                step,
                finish,
            );
        }
    };
}

/// Folds the dot of a Q4_K block (given as its `head` and, per half `h`, its nibbles and scales)
/// with the activation block `y` into `state`: a macro, so that the halves' parts are made where
/// they are used in the one-row kernel, and read from registers in the two-row one.
macro_rules! q4_k_apply {
    ($zero:ident, $y:expr, $state:expr, $dd:expr, $m16:expr, |$h:ident| $nib:expr, |$h2:ident| $sc:expr) => {{
        let y: &[u8] = $y;
        let (mut acc, mut acc_min): (__m512, __m256) = $state;
        let s = &y[260..292];
        // SAFETY: every load below is of a bounds-checked slice of exactly the loaded width: `s`
        // (32 bytes) and `y[128h + 64u..128h + 64u + 64]` (64 bytes, h, u < 2).
        unsafe {
            let dd = _mm_mul_ps(
                $dd,
                _mm_set1_ps(f32::from_le_bytes([y[256], y[257], y[258], y[259]])),
            );
            let m = _mm256_madd_epi16(_mm256_loadu_si256(s.as_ptr() as *const __m256i), $m16);
            let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
            acc_min = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(m), acc_min);
            let mut sumi = $zero;
            for h in 0..2 {
                let nib: [__m512i; 2] = {
                    let $h = h;
                    $nib
                };
                let dots: [__m512i; 2] = std::array::from_fn(|u| {
                    let ys = &y[128 * h + 64 * u..128 * h + 64 * u + 64];
                    _mm512_dpbusd_epi32($zero, nib[u], _mm512_loadu_si512(ys.as_ptr() as *const _))
                });
                let packed = _mm512_packs_epi32(dots[0], dots[1]);
                let sc: __m512i = {
                    let $h2 = h;
                    $sc
                };
                // The first half's products start the sum: a `vpdpwssd` onto zero became a
                // `vpmaddwd` and a `vpaddd` of the zero register (LLVM splits the chain).
                sumi = match h {
                    0 => _mm512_madd_epi16(packed, sc),
                    _ => _mm512_dpwssd_epi32(sumi, packed, sc),
                };
            }
            let d = _mm512_broadcastss_ps(dd);
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(sumi), acc);
        }
        (acc, acc_min)
    }};
}

/// The parts of the Q4_K kernels, named by the caller: `zero`; `head` reads a weight block's scales
/// and mins (bytes 0-7 and 8-15 of every 128-bit lane), d and dmin (lanes 0 and 1) and the mins
/// again, each doubled into both i16 halves of its i32 lane, so one madd multiplies the two
/// 16-value sums of its sub-block and adds them; `values` unpacks the nibbles of one half and
/// `scales` spreads that half's scales; `finish` makes a state the vector whose lanes sum to the
/// dot. [`q4_k_apply`] folds a block's dot with one activation block into a state.
///
/// `head` unpacks the twelve bytes of 6-bit scales and mins with vector shuffles from one
/// broadcast load. Unpacked in general registers (as `scales_mins_k4` does) they took about 20 of
/// the loop's 64 instructions a block (3 loads and 17 shifts, masks and moves); now it takes 47.5.
/// With the rows in L2 that ran no faster (ports 0 and 5 bound it there, and the shuffles use
/// them), but the 3B Q4_K_M decode, two threads on a 2-vCPU Xeon, reached 88.4% of the bandwidth
/// bound against 86.1% (medians of nine alternating runs; `docs/speed-log.md`).
macro_rules! q4_k_parts {
    ($gfni:literal, $zero:ident, $head:ident, $nibbles:ident, $scales:ident, $finish:ident) => {
        let low = _mm512_set1_epi8(0x0f);
        // Bit matrix taking bits 4-7 of each byte to bits 0-3 and clearing 4-7.
        let high_nibble = _mm512_set1_epi64(0x1020_4080_0000_0000);
        // Half h: the low-nibble sums are sub-blocks 4h (lanes 0..8) and 4h + 2 (8..16), the
        // high-nibble sums 4h + 1 and 4h + 3; packed, 128-bit lane l holds four sums of
        // sub-block 4h + 2(l/2) and then four of the one after it. Their scales come from byte
        // shuffles of the eight scale bytes (bytes 0-7 of every 128-bit lane; a shuffle, unlike
        // `vpermw` from widened scales, needs no widening): the low byte of i16 lane i is scale
        // 4h + 2(i/16) + (i%8)/4, the high byte zero (index bit 7).
        let pick: [__m512i; 2] = std::array::from_fn(|h| {
            byte_indices(|k| match k % 2 {
                0 => (4 * h + 2 * (k / 32) + k % 16 / 8) as u8,
                _ => 0x80,
            })
        });
        // The packed bytes p0..p11 (scales, mins, and the low four bits of scales and mins
        // 4-7) become, per 128-bit lane: scales 0-3 = p0..p3 & 63, scales 4-7 = p8..p11 & 15
        // with bits 6-7 of p0..p3 at 4-5, mins 0-3 = p4..p7 & 63, mins 4-7 = p8..p11 >> 4 with
        // bits 6-7 of p4..p7 at 4-5. `gather` places each result's low bits under it (the high
        // four bits of p8..p11 reach the low ones by a 16-bit shift of words 6 and 7), `tops`
        // the bytes whose bits 6-7 it takes.
        let lanes = |f: fn(usize) -> u8| byte_indices(move |k| f(k % 16));
        let gather = lanes(|b| [0, 8, 4, 8][b / 4] as u8 + (b % 4) as u8);
        let tops = lanes(|b| match b / 4 {
            1 => (b % 4) as u8,
            3 => 4 + (b % 4) as u8,
            _ => 0x80,
        });
        let keep = lanes(|b| [0x3f, 0x0f][b / 4 % 2]);
        let shift = i16_indices(|i| if i % 8 >= 6 { 4 } else { 0 });
        // Bit matrix taking bits 6-7 of each byte to bits 4-5 and clearing the rest.
        let top_bits = _mm512_set1_epi64(0x4080_0000);
        let thirty = _mm512_set1_epi8(0x30);
        // Min j (byte 8 + j of a lane) into both i16 halves of ymm i32 lane j.
        let min_pairs = _mm512_castsi512_si256(byte_indices(|k| match k % 2 {
            0 => (8 + k / 4) as u8,
            _ => 0x80,
        }));
        let $zero = _mm512_setzero_si512();
        let $head = |x: &[u8]| -> (__m512i, __m128, __m256i) {
            prefetch_ahead::<3>(x);
            let (head, packed) = (&x[0..8], &x[4..20]);
            // SAFETY: `head` and `packed` are bounds-checked slices of the 8 and 16 bytes loaded.
            let (dd, p) = unsafe {
                (
                    _mm_cvtph_ps(_mm_loadl_epi64(head.as_ptr() as *const __m128i)),
                    _mm512_broadcast_i32x4(_mm_loadu_si128(packed.as_ptr() as *const __m128i)),
                )
            };
            let low = _mm512_srlv_epi16(_mm512_shuffle_epi8(p, gather), shift);
            let top = _mm512_shuffle_epi8(p, tops);
            let top = if $gfni {
                _mm512_gf2p8affine_epi64_epi8::<0>(top, top_bits)
            } else {
                _mm512_and_si512(_mm512_srli_epi16::<2>(top), thirty)
            };
            // (low & keep) | top
            let sm = _mm512_ternarylogic_epi32::<0xea>(low, keep, top);
            let m16 = _mm256_shuffle_epi8(_mm512_castsi512_si256(sm), min_pairs);
            (sm, dd, m16)
        };
        // The low nibbles of half h's 64 bytes, then the high ones.
        let $nibbles = |x: &[u8], h: usize| -> [__m512i; 2] {
            let bs = &x[16 + 64 * h..16 + 64 * h + 64];
            // SAFETY: `bs` is a bounds-checked slice of the 64 bytes loaded.
            let q = unsafe { _mm512_loadu_si512(bs.as_ptr() as *const _) };
            let high = if $gfni {
                _mm512_gf2p8affine_epi64_epi8::<0>(q, high_nibble)
            } else {
                _mm512_and_si512(_mm512_srli_epi16::<4>(q), low)
            };
            [_mm512_and_si512(q, low), high]
        };
        let $scales = |sc8: __m512i, h: usize| _mm512_shuffle_epi8(sc8, pick[h]);
        let $finish =
            |(acc, acc_min): (__m512, __m256)| _mm512_sub_ps(acc, _mm512_zextps256_ps512(acc_min));
    };
}

without_and_with_gfni!(q4_k_kernel, q4_k, q4_k_pair; q4_k_gfni, q4_k_gfni_pair);

/// Q6_K weights (210-byte blocks: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed
/// scales, f16 scale) against Q8_K activations laid out by [`align_q8_k`]. A 64-byte vector holds
/// 64 consecutive values of a half block (low nibbles of `ql`, then its second 32 bytes' low
/// nibbles; or both high nibbles), so its activations are one contiguous load. The `-32` offset
/// of every value is taken out once per block from the activation sums Q8_K carries:
/// Σ s_j (q - 32)·y over group j is Σ s_j q·y - 32 Σ s_j bsum_j.
///
/// As in Q4_K, `vpdpbusd` sums four products per i32 lane (|4·63·128| < 2¹⁵, so two vectors pack
/// into one of i16) and one `vpmaddwd` or `vpdpwssd` per pair of vectors applies the scales. The
/// high bit pairs reach bits 4-5 of each byte with one GFNI bit transform per vector, or without
/// GFNI with per-half shifts and a mask.
macro_rules! q6_k_kernel {
    ($name:ident, $pair:ident, $features:literal, $gfni:literal) => {
        one_and_two_row_kernels!($name, $pair, $features, $gfni, q6_k_parts, q6_k_apply, 210);
    };
}

/// Folds the dot of a Q6_K block (given as its scale `d`, its sixteen scales `s16` as i16 and,
/// per half `h`, its 6-bit values and spread scales) with the activation block `y` into `state`,
/// as [`q4_k_apply`] does for Q4_K.
macro_rules! q6_k_apply {
    ($zero:ident, $y:expr, $state:expr, $d:expr, $s16:expr, |$h:ident| $q:expr, |$h2:ident| $sc:expr) => {{
        let y: &[u8] = $y;
        let (mut acc, mut acc_bias): (__m512, __m256) = $state;
        let d = $d * f32::from_le_bytes([y[256], y[257], y[258], y[259]]);
        let bs = &y[260..292];
        // SAFETY: every load reads a bounds-checked slice of exactly its width: `bs` 32 bytes
        // and `y[128h + 64u..]` 64 bytes (h, u < 2).
        unsafe {
            let bias = _mm256_madd_epi16($s16, _mm256_loadu_si256(bs.as_ptr() as *const __m256i));
            acc_bias =
                _mm256_fmadd_ps(_mm256_set1_ps(32.0 * d), _mm256_cvtepi32_ps(bias), acc_bias);
            let mut sumi = $zero;
            for h in 0..2 {
                let q: [__m512i; 2] = {
                    let $h = h;
                    $q
                };
                let dots: [__m512i; 2] = std::array::from_fn(|u| {
                    let ys = &y[128 * h + 64 * u..128 * h + 64 * u + 64];
                    _mm512_dpbusd_epi32($zero, q[u], _mm512_loadu_si512(ys.as_ptr() as *const _))
                });
                let packed = _mm512_packs_epi32(dots[0], dots[1]);
                let sv: __m512i = {
                    let $h2 = h;
                    $sc
                };
                sumi = match h {
                    0 => _mm512_madd_epi16(packed, sv),
                    _ => _mm512_dpwssd_epi32(sumi, packed, sv),
                };
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        }
        (acc, acc_bias)
    }};
}

/// The parts of the Q6_K kernels, named by the caller: `zero`; `head` reads a weight block's
/// sixteen scales widened to i16 (for `scales`), then its scale `d` and the same scales (for
/// [`q6_k_apply`]); `values` makes the 6-bit values of one half
/// (two vectors of 64) and `scales` spreads that half's scales; `finish` makes a state the vector
/// whose lanes sum to the dot.
/// [`q6_k_apply`] folds a block's dot with one activation block into a state.
macro_rules! q6_k_parts {
    ($gfni:literal, $zero:ident, $head:ident, $values:ident, $scales:ident, $finish:ident) => {
        let low = _mm512_set1_epi8(0x0f);
        let hi_bits = _mm512_set1_epi8(0x30);
        let per_half = |lo: i64, hi: i64| {
            _mm512_mask_blend_epi64(0xf0, _mm512_set1_epi64(lo), _mm512_set1_epi64(hi))
        };
        // Bit matrices bringing bit pair 0 (lower half) or 1 (upper half) of each `qh` byte
        // to bits 4-5, and pair 2 or 3; `high_nibble` moves bits 4-7 to 0-3 everywhere.
        let (pair01, pair23) = (
            per_half(0x0102_0000, 0x0408_0000),
            per_half(0x1020_0000, 0x4080_0000),
        );
        let high_nibble = _mm512_set1_epi64(0x1020_4080_0000_0000);
        // The shifts doing the same without GFNI: left by 4 or 2, right by 0 or 2.
        let halves = |lo: i16, hi: i16| {
            _mm512_mask_blend_epi16(0xffff_0000, _mm512_set1_epi16(lo), _mm512_set1_epi16(hi))
        };
        let (shl01, shr23) = (halves(4, 2), halves(0, 2));
        // Vector u of half h covers groups 8h + 4u..8h + 4u + 4, four i32 lanes each; packed
        // two at a time, 128-bit lane l holds four sums of group 8h + l, then four of
        // 8h + 4 + l.
        let pick: [__m512i; 2] =
            std::array::from_fn(|h| i16_indices(|i| 8 * h + (i % 8 / 4) * 4 + i / 8));
        let $zero = _mm512_setzero_si512();
        let $head = |x: &[u8]| -> (__m256i, f32, __m256i) {
            prefetch_ahead::<4>(x);
            let sc = &x[192..208];
            // SAFETY: `sc` is a bounds-checked slice of the 16 bytes loaded, and `f16_at` reads
            // the two bytes of a bounds-checked slice.
            unsafe {
                let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr() as *const __m128i));
                (s16, f16_at(&x[208..]), s16)
            }
        };
        let $values = |x: &[u8], h: usize| -> [__m512i; 2] {
            let (ql, qh) = (&x[64 * h..64 * h + 64], &x[128 + 32 * h..128 + 32 * h + 32]);
            // SAFETY: `ql` and `qh` are bounds-checked slices of the 64 and 32 bytes loaded.
            let (l, hb) = unsafe {
                (
                    _mm512_loadu_si512(ql.as_ptr() as *const _),
                    // Both halves of a vector take their two high bits from the same 32 bytes
                    // of `qh` (bit pairs 0, 1 for the first vector, 2, 3 for the second),
                    // loaded once into both.
                    _mm512_broadcast_i64x4(_mm256_loadu_si256(qh.as_ptr() as *const __m256i)),
                )
            };
            if $gfni {
                [
                    _mm512_or_si512(
                        _mm512_and_si512(l, low),
                        _mm512_gf2p8affine_epi64_epi8::<0>(hb, pair01),
                    ),
                    _mm512_or_si512(
                        _mm512_gf2p8affine_epi64_epi8::<0>(l, high_nibble),
                        _mm512_gf2p8affine_epi64_epi8::<0>(hb, pair23),
                    ),
                ]
            } else {
                let h01 = _mm512_and_si512(_mm512_sllv_epi16(hb, shl01), hi_bits);
                let h23 = _mm512_and_si512(_mm512_srlv_epi16(hb, shr23), hi_bits);
                let l4 = _mm512_srli_epi16::<4>(l);
                [
                    _mm512_or_si512(_mm512_and_si512(l, low), h01),
                    _mm512_or_si512(_mm512_and_si512(l4, low), h23),
                ]
            }
        };
        let $scales =
            |s16: __m256i, h: usize| _mm512_permutexvar_epi16(pick[h], _mm512_castsi256_si512(s16));
        let $finish = |(acc, acc_bias): (__m512, __m256)| {
            _mm512_sub_ps(acc, _mm512_zextps256_ps512(acc_bias))
        };
    };
}

without_and_with_gfni!(q6_k_kernel, q6_k, q6_k_pair; q6_k_gfni, q6_k_gfni_pair);

/// The row loop of the Q4_K and Q6_K kernels: `out[r]` = the sum of the lanes of
/// `finish(state)`, where `state` is `init` folded by `step` over the blocks of row `r` (`wb`
/// weight bytes each, against [`LAID`] bytes of `a` each) of the rows of `rb` bytes that fill `w`,
/// four blocks per trip around the loop, the sums made sixteen rows at a time ([`Sums`]).
///
/// The loop, not the blocks, was the cost at the width of most of a 3B model's rows: with one
/// block per trip a 2048-value Q4_K row (eight blocks) ran at 29.8 GB/s in L2 against 33.8 for
/// 11008 values; four per trip, 31.3-31.4 against 33.4-34.1 (one Zen 4 core, GFNI; Q6_K 36.8-36.9
/// against 35.0 before). A [`fence`] between the four keeps LLVM from interleaving them. With the
/// sums sixteen at a time, 34.9-35.2 against 31.2-31.6 at 2048 (Q6_K 39.4-39.6 against 37.1-37.2).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn rows_of_blocks<S: Copy>(
    w: &[u8],
    rb: usize,
    a: &[u8],
    wb: usize,
    out: &mut [f32],
    init: S,
    step: impl Fn(&[u8], &[u8], S) -> S,
    finish: impl Fn(S) -> __m512,
) {
    let mut sums = Sums::new();
    let rows = w.chunks_exact(rb).len().min(out.len());
    for (r, row) in w.chunks_exact(rb).take(rows).enumerate() {
        let mut st = init;
        let mut done = 0;
        for (x, y) in row.chunks_exact(4 * wb).zip(a.chunks_exact(4 * LAID)) {
            st = step(&x[..wb], &y[..LAID], st);
            fence();
            st = step(&x[wb..2 * wb], &y[LAID..2 * LAID], st);
            fence();
            st = step(&x[2 * wb..3 * wb], &y[2 * LAID..3 * LAID], st);
            fence();
            st = step(&x[3 * wb..], &y[3 * LAID..], st);
            done += 4;
        }
        let rest = row[wb * done..].chunks_exact(wb);
        for (x, y) in rest.zip(a[LAID * done..].chunks_exact(LAID)) {
            st = step(x, y, st);
        }
        sums.put(r, finish(st), out);
    }
    sums.rest(rows, out);
}

/// The sums of rows' lanes, made sixteen rows at a time ([`sum16`]) and the last few one at a
/// time, each equal bit for bit to `_mm512_reduce_add_ps` of its row.
struct Sums([__m512; 16]);

impl Sums {
    #[inline(always)]
    fn new() -> Self {
        // SAFETY: the kernels that inline this run on AVX-512 CPUs only.
        Self([unsafe { _mm512_setzero_ps() }; 16])
    }

    /// Row `r`'s vector; after every sixteenth row, the sums of the sixteen rows ending with it go
    /// to `out`.
    #[inline(always)]
    fn put(&mut self, r: usize, v: __m512, out: &mut [f32]) {
        self.0[r % 16] = v;
        if r % 16 == 15 {
            // SAFETY: as in `new`.
            unsafe { sum16(&self.0, &mut out[r - 15..=r]) };
        }
    }

    /// The sums of the rows after the last whole sixteen, of `rows` rows in all.
    #[inline(always)]
    fn rest(&self, rows: usize, out: &mut [f32]) {
        for (o, &v) in out[rows - rows % 16..rows].iter_mut().zip(&self.0) {
            // SAFETY: as in `new`.
            *o = unsafe { _mm512_reduce_add_ps(v) };
        }
    }
}

/// `out[r]` = the sum of the lanes of `v[r]` for sixteen rows at once, added in the same pairs as
/// `_mm512_reduce_add_ps` adds them (lane i and i + 8, then i and i + 4, i and i + 2, i and
/// i + 1), so each equals it bit for bit: about three vector instructions a row where one row's
/// reduction alone takes about eight. Summed one at a time, at the end of each 2048-value Q4_K row
/// (eight blocks), the reductions cost 13%: 31.5 GB/s in L2 against 36.3 with them taken out.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn sum16(v: &[__m512; 16], out: &mut [f32]) {
    // Rows 2i and 2i + 1: their halves added, row 2i in lanes 0..8, row 2i + 1 in 8..16.
    let h: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
        )
    });
    // Rows 4i..4i + 4, one per 128-bit lane, their quarters added.
    let q: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (h[2 * i], h[2 * i + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    });
    // 128-bit lane k: rows k and 4 + k (then 8 + k and 12 + k), two sums each.
    let e: [__m512; 2] = std::array::from_fn(|i| {
        let (a, b) = (_mm512_castps_pd(q[2 * i]), _mm512_castps_pd(q[2 * i + 1]));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    });
    // Lane 4k + m: row k + 4m.
    let f = _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(e[0], e[1]),
        _mm512_shuffle_ps::<0b11_01_11_01>(e[0], e[1]),
    );
    let rows = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
        f,
    );
    let out = &mut out[..16];
    // SAFETY: a 64-byte store to the 16 floats of `out`.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), rows) };
}

/// [`rows_of_blocks`] for two activation rows: `step` takes each weight block with both rows'
/// activation blocks and both states.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn pair_rows_of_blocks<S: Copy>(
    w: &[u8],
    rb: usize,
    [a0, a1]: [&[u8]; 2],
    wb: usize,
    [out0, out1]: [&mut [f32]; 2],
    init: S,
    step: impl Fn(&[u8], [&[u8]; 2], [S; 2]) -> [S; 2],
    finish: impl Fn(S) -> __m512,
) {
    let (mut s0, mut s1) = (Sums::new(), Sums::new());
    let rows = w.chunks_exact(rb).len().min(out0.len()).min(out1.len());
    for (r, row) in w.chunks_exact(rb).take(rows).enumerate() {
        let mut st = [init; 2];
        let blocks = row.chunks_exact(wb);
        for ((x, y0), y1) in blocks.zip(a0.chunks_exact(LAID)).zip(a1.chunks_exact(LAID)) {
            st = step(x, [y0, y1], st);
            fence();
        }
        s0.put(r, finish(st[0]), out0);
        s1.put(r, finish(st[1]), out1);
    }
    s0.rest(rows, out0);
    s1.rest(rows, out1);
}

/// A point LLVM may not move memory accesses across (an empty `asm!`, which may touch memory as
/// far as it knows). Between two blocks of [`rows_of_blocks`] it keeps each block's loads after
/// the previous block's, so the compiler does not interleave four blocks and run out of vector
/// registers: without it the unrolled loop spilled accumulators and scale vectors to the stack
/// (Q6_K at 35.6-35.9 GB/s where the fenced loop runs at 36.8-36.9), and the form of the loop
/// decided whether it did. The CPU still overlaps the blocks: its reorder buffer holds more than
/// four blocks' instructions.
#[inline(always)]
fn fence() {
    // SAFETY: an empty instruction sequence: it reads and writes nothing and keeps the stack and
    // the flags.
    unsafe { std::arch::asm!("", options(nostack, preserves_flags)) }
}

/// 64 byte indices, byte `k` holding `f(k)`.
#[target_feature(enable = "avx512f")]
fn byte_indices(f: impl Fn(usize) -> u8) -> __m512i {
    let idx: [u8; 64] = std::array::from_fn(f);
    // SAFETY: a 64-byte read of the 64 bytes just written.
    unsafe { _mm512_loadu_si512(idx.as_ptr() as *const _) }
}

/// 32 i16 lane indices, lane `i` holding `f(i)`.
#[target_feature(enable = "avx512f")]
fn i16_indices(f: impl Fn(usize) -> usize) -> __m512i {
    let idx: [i16; 32] = std::array::from_fn(|i| f(i) as i16);
    // SAFETY: a 64-byte read of the 32 i16 just written.
    unsafe { _mm512_loadu_si512(idx.as_ptr() as *const _) }
}

/// Q8_0 weights against Q8_0 activations (34-byte blocks: f16 scale, 32 signed values) laid out
/// by [`lay_out_q8_0`], sixteen blocks per step. `vpdpbusd` multiplies unsigned by signed bytes,
/// so the weights' signs move onto the activations (|w| · sign(w)·a), as the AVX2 kernel does
/// with `sign_epi8`, which has no 512-bit form: a masked subtraction negates the activations
/// where `w < 0`.
///
/// The f16 scales were the cost: converted one at a time (an insert and a `vcvtph2ps` each, four
/// per two blocks) they held the kernel to 8.6 GB/s with the data in cache, where the integer
/// part alone ran at 39; fetched by one gather per operand, to 22.5 (a Zen 4 gather of sixteen
/// lanes costs about as much as the eight pairs' products). Here sixteen plain two-byte reads of
/// the weights' scales ([`q8_0_scales`]) fill a small array that one load and one conversion
/// widen: 29.5-31 GB/s in cache on the same VM, 1.35x the gathers (when the activations' scales
/// were read the same way; they now come as f32 from the layout). Each pair of blocks takes its
/// two scales from that vector with one permute.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0(w: &[u8], a: &[u8]) -> f32 {
    let zero = _mm512_setzero_si512();
    let pick = q8_0_picks();
    let mut acc = _mm512_setzero_ps();
    let ws = w.chunks_exact(Q8_0_STEP);
    let (laid, ar) = split_laid(w, a);
    let wr = ws.remainder();
    for (x, y) in ws.zip(laid.chunks_exact(Q8_0_LAID)) {
        prefetch_ahead::<9>(x);
        let d = _mm512_mul_ps(q8_0_scales16(x), laid_scales(y));
        for (p, pick) in pick.iter().enumerate() {
            let dot = pair(&x[68 * p..68 * p + 68], laid_values(y, p), zero);
            acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(*pick, d), dot, acc);
        }
    }
    q8_0_tail(wr, ar, acc)
}

/// The index vectors that give each pair of blocks `2p`, `2p + 1` its two scales from a vector of
/// sixteen: lanes 0..8 block `2p`'s, lanes 8..16 block `2p + 1`'s.
#[target_feature(enable = "avx512f")]
#[inline]
fn q8_0_picks() -> [__m512i; 8] {
    std::array::from_fn(|p| {
        _mm512_mask_blend_epi32(
            0xff00,
            _mm512_set1_epi32(2 * p as i32),
            _mm512_set1_epi32(2 * p as i32 + 1),
        )
    })
}

/// The f16 scales of the sixteen Q8_0 blocks at the start of `b` (544 bytes), as floats.
#[target_feature(enable = "avx512f,f16c")]
#[inline]
fn q8_0_scales16(b: &[u8]) -> __m512 {
    let h = q8_0_scales::<16>(b);
    // SAFETY: a 32-byte load of the 16 u16 just written.
    unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(h.as_ptr() as *const __m256i)) }
}

/// The end of [`q8_0`]'s sum: the blocks after its last step of sixteen (`wr` and `ar`), two at a
/// time and then one, added to `acc`, whose lanes it sums. Always inlined (a call per row cost
/// the one-row kernel), so it takes no target features of its own: the kernels that inline it
/// run on AVX-512 CPUs only.
#[inline(always)]
fn q8_0_tail(wr: &[u8], ar: &[u8], mut acc: __m512) -> f32 {
    // SAFETY: the callers run on CPUs with the features of `q8_0`; `pair` reads 68-byte slices.
    unsafe {
        let zero = _mm512_setzero_si512();
        let (wp, ap) = (wr.chunks_exact(68), ar.chunks_exact(68));
        let (wr, ar) = (wp.remainder(), ap.remainder());
        for (x, y) in wp.zip(ap) {
            let d0 = f16_at(x) * f16_at(y);
            let d1 = f16_at(&x[34..]) * f16_at(&y[34..]);
            let d = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(d0), _mm512_set1_ps(d1));
            acc = _mm512_fmadd_ps(d, pair(x, two_blocks(y), zero), acc);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        if wr.len() >= 34 && ar.len() >= 34 {
            let d = f16_at(wr) * f16_at(ar);
            let s: i32 = wr[2..34]
                .iter()
                .zip(&ar[2..34])
                .map(|(&p, &q)| p as i8 as i32 * q as i8 as i32)
                .sum();
            sum += d * s as f32;
        }
        sum
    }
}

over_rows!(q8_0_rows, q8_0, "avx512f,avx512bw,avx512vnni,avx2,fma,f16c");

/// [`q8_0`] for two activation rows at once (`out0` against `a0`, `out1` against `a1`): each
/// weight block is read, its signs and absolute values taken and its scale widened once for both
/// rows. Each row's sum is made in the order [`q8_0`] makes it, so each equals its one-row result
/// bit for bit. Without it a pass of two rows (a prompt-lookup draft, a two-token prompt) ran the
/// one-row kernel twice over each piece of rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn q8_0_pair(
    w: &[u8],
    row_bytes: usize,
    [a0, a1]: [&[u8]; 2],
    [out0, out1]: [&mut [f32]; 2],
) {
    let zero = _mm512_setzero_si512();
    let pick = q8_0_picks();
    let rows = w
        .chunks_exact(row_bytes)
        .zip(out0.iter_mut().zip(out1.iter_mut()));
    for (w, (o0, o1)) in rows {
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let ws = w.chunks_exact(Q8_0_STEP);
        let ((b0, r0), (b1, r1)) = (split_laid(w, a0), split_laid(w, a1));
        let wr = ws.remainder();
        let groups = ws
            .zip(b0.chunks_exact(Q8_0_LAID))
            .zip(b1.chunks_exact(Q8_0_LAID));
        for ((x, y0), y1) in groups {
            prefetch_ahead::<9>(x);
            let dx = q8_0_scales16(x);
            let (d0, d1) = (
                _mm512_mul_ps(dx, laid_scales(y0)),
                _mm512_mul_ps(dx, laid_scales(y1)),
            );
            for (p, pick) in pick.iter().enumerate() {
                let x = &x[68 * p..68 * p + 68];
                let ys = [laid_values(y0, p), laid_values(y1, p)];
                let (t0, t1) = pair_two(x, ys, zero);
                acc0 = _mm512_fmadd_ps(_mm512_permutexvar_ps(*pick, d0), t0, acc0);
                acc1 = _mm512_fmadd_ps(_mm512_permutexvar_ps(*pick, d1), t1, acc1);
            }
        }
        *o0 = q8_0_tail(wr, r0, acc0);
        *o1 = q8_0_tail(wr, r1, acc1);
    }
}

/// The integer dots of two Q8_0 weight blocks (`x`: 68 bytes) with two blocks' activation values
/// (`y`: the first's in the low half) as floats: lanes 0..8 the first block's partial sums, 8..16
/// the second's.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
#[inline]
fn pair(x: &[u8], y: __m512i, zero: __m512i) -> __m512 {
    let xx = two_blocks(x);
    signed_dot(_mm512_abs_epi8(xx), _mm512_movepi8_mask(xx), y, zero)
}

/// [`pair`] of the same two weight blocks `x` against two activation rows' blocks, the weights'
/// absolute values and signs taken once.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
#[inline]
fn pair_two(x: &[u8], [y0, y1]: [__m512i; 2], zero: __m512i) -> (__m512, __m512) {
    let xx = two_blocks(x);
    let (ax, neg) = (_mm512_abs_epi8(xx), _mm512_movepi8_mask(xx));
    (signed_dot(ax, neg, y0, zero), signed_dot(ax, neg, y1, zero))
}

/// An activation row laid out by [`lay_out_q8_0`] split into the groups that meet the weight row
/// `w`'s whole steps of sixteen blocks and the blocks after them, as they were (never past its
/// end, however short it is).
fn split_laid<'a>(w: &[u8], a: &'a [u8]) -> (&'a [u8], &'a [u8]) {
    a.split_at((w.len() / Q8_0_STEP * Q8_0_LAID).min(a.len()))
}

/// The sixteen scales of a group laid out by [`lay_out_q8_0`].
#[target_feature(enable = "avx512f")]
#[inline]
fn laid_scales(y: &[u8]) -> __m512 {
    let s = &y[..64];
    // SAFETY: a 64-byte load of a bounds-checked 64-byte slice.
    unsafe { _mm512_loadu_ps(s.as_ptr() as *const f32) }
}

/// The values of blocks `2p` and `2p + 1` of a group laid out by [`lay_out_q8_0`].
#[target_feature(enable = "avx512f")]
#[inline]
fn laid_values(y: &[u8], p: usize) -> __m512i {
    let v = &y[64 + 64 * p..128 + 64 * p];
    // SAFETY: a 64-byte load of a bounds-checked 64-byte slice.
    unsafe { _mm512_loadu_si512(v.as_ptr() as *const _) }
}

/// The 32 values of each of two Q8_0 blocks (68 bytes): the first block's in the low half, the
/// second's in the high half, each from a broadcast load and a masked one, which need no shuffle
/// port.
#[target_feature(enable = "avx512f,avx512bw,avx2")]
#[inline]
fn two_blocks(b: &[u8]) -> __m512i {
    let (lo, hi) = (&b[2..34], &b[36..68]);
    // SAFETY: two 32-byte loads of bounds-checked 32-byte slices.
    unsafe {
        _mm512_mask_broadcast_i64x4(
            _mm512_broadcast_i64x4(_mm256_loadu_si256(lo.as_ptr() as *const __m256i)),
            0xf0,
            _mm256_loadu_si256(hi.as_ptr() as *const __m256i),
        )
    }
}

/// The products of the weights (`ax` their absolute values, `neg` where they are negative) with
/// the activations `y`, summed four at a time, as floats: `vpdpbusd` multiplies unsigned by signed
/// bytes, so the weights' signs move onto the activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
fn signed_dot(ax: __m512i, neg: __mmask64, y: __m512i, zero: __m512i) -> __m512 {
    let sy = _mm512_mask_sub_epi8(y, neg, zero, y);
    _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, ax, sy))
}

#[cfg(test)]
mod tests {
    use super::super::GgmlType;

    /// Both layouts start on a cache line whatever the buffer held before, keep every byte of the
    /// block but the values' order, and put chunks 1 and 2 of each half where `pair_q8_k` says.
    #[test]
    fn q8_k_layouts_are_aligned_and_complete() {
        let a: Vec<u8> = (0..3 * 292).map(|i| (i * 7 % 251) as u8).collect();
        for stale in [0, 1, 5000] {
            for (paired, lay) in [
                (false, super::align_q8_k as super::super::Reorder),
                (true, super::pair_q8_k),
            ] {
                let mut buf = vec![9u8; stale];
                let laid = lay(&a, &mut buf);
                assert_eq!(
                    laid.as_ptr() as usize % 64,
                    0,
                    "paired {paired}, stale {stale}"
                );
                assert_eq!(laid.len(), 3 * super::LAID);
                for (src, dst) in a.chunks_exact(292).zip(laid.chunks_exact(super::LAID)) {
                    assert_eq!(&dst[256..260], &src[..4]);
                    assert_eq!(&dst[260..292], &src[260..]);
                    let chunk = |half: usize, c: usize| &src[4 + 128 * half + 32 * c..][..32];
                    for half in 0..2 {
                        let order = if paired { [0, 2, 1, 3] } else { [0, 1, 2, 3] };
                        for (to, from) in order.into_iter().enumerate() {
                            assert_eq!(&dst[128 * half + 32 * to..][..32], chunk(half, from));
                        }
                    }
                }
            }
        }
    }

    /// The Q8_0 layout starts on a cache line whatever the buffer held before, gives each group of
    /// sixteen blocks their scales as f32 and then their values in order, and keeps the last
    /// blocks (here 3) as they were.
    #[test]
    fn q8_0_layout_is_aligned_and_complete() {
        let blocks = 2 * 16 + 3;
        let mut a: Vec<u8> = (0..blocks * 34).map(|i| (i * 7 % 251) as u8).collect();
        for (b, block) in a.chunks_exact_mut(34).enumerate() {
            let d = half::f16::from_f32(0.01 * (b as f32 + 1.0)).to_le_bytes();
            block[..2].copy_from_slice(&d);
        }
        for stale in [0, 1, 5000] {
            let mut buf = vec![9u8; stale];
            let laid = super::lay_out_q8_0(&a, &mut buf);
            assert_eq!(laid.as_ptr() as usize % 64, 0, "stale {stale}");
            assert_eq!(laid.len(), 2 * super::Q8_0_LAID + 3 * 34);
            let (groups, tail) = laid.split_at(2 * super::Q8_0_LAID);
            for (g, dst) in groups.chunks_exact(super::Q8_0_LAID).enumerate() {
                for (b, src) in a[g * 16 * 34..][..16 * 34].chunks_exact(34).enumerate() {
                    let d = half::f16::from_le_bytes([src[0], src[1]]).to_f32();
                    assert_eq!(
                        &dst[4 * b..4 * b + 4],
                        &d.to_le_bytes(),
                        "group {g} block {b}"
                    );
                    assert_eq!(&dst[64 + 32 * b..96 + 32 * b], &src[2..]);
                }
            }
            assert_eq!(tail, &a[32 * 34..]);
        }
    }

    /// Sixteen rows' sums at once equal `_mm512_reduce_add_ps` of each row bit for bit, in row
    /// order, on lanes of very different magnitudes (where another order of additions rounds
    /// differently).
    #[test]
    fn sixteen_sums_equal_one_reduction_each() {
        use std::arch::x86_64::*;
        if !super::available() {
            eprintln!("no AVX-512 on this CPU: the sums are not exercised here");
            return;
        }
        let vals = super::super::test_values::xorshift_values(16 * 16 * 8, 5);
        for round in vals.chunks_exact(256) {
            let lanes: Vec<f32> = round
                .iter()
                .enumerate()
                .map(|(i, v)| v * [1.0, 1e-3, 1e4, 3.0e-7][i % 4])
                .collect();
            // SAFETY: AVX-512F was detected (`available`); each load reads 16 of the 256 floats.
            let (got, want) = unsafe {
                let v: [__m512; 16] =
                    std::array::from_fn(|r| _mm512_loadu_ps(lanes[16 * r..].as_ptr()));
                let mut got = [0f32; 16];
                super::sum16(&v, &mut got);
                (got, v.map(|v| _mm512_reduce_add_ps(v)))
            };
            assert_eq!(got.map(f32::to_bits), want.map(f32::to_bits));
        }
    }

    /// Each kernel, with and without GFNI where the CPU has it, over 37 rows (two batches of
    /// sixteen sums, then five one at a time), and its two-row form on two activation rows, give
    /// each row what the kernel gives that row alone, bit for bit (the dispatch test in
    /// `tests/quant.rs` only reaches the variant this CPU picks); Q8_0 on rows of every length
    /// from 1 to 35 blocks too, for each of its tails.
    #[test]
    fn many_rows_equal_one_row_at_a_time() {
        use super::super::{PairKernel, RowKernel};
        if !super::available() {
            eprintln!("no AVX-512 BW/VNNI on this CPU: the kernels are not exercised here");
            return;
        }
        let cases = super::super::kernel_cases().take(24);
        for (ty, _, w, act, _) in cases.chain(super::super::q8_0_cases(1..36)) {
            let mut kernels: Vec<(RowKernel, PairKernel)> = match ty {
                GgmlType::Q4_K => vec![
                    (super::q4_k, super::q4_k_pair),
                    (super::q4_k_gfni, super::q4_k_gfni_pair),
                ],
                GgmlType::Q6_K => vec![
                    (super::q6_k, super::q6_k_pair),
                    (super::q6_k_gfni, super::q6_k_gfni_pair),
                ],
                _ => vec![(super::q8_0_rows, super::q8_0_pair)],
            };
            if !super::gfni() {
                kernels.truncate(1);
            }
            let Some((_, lay_out)) = super::detected_kernel(ty) else {
                panic!("{ty} has an AVX-512 kernel");
            };
            // The second activation row: each block's values reversed.
            let (block, values) = match ty {
                GgmlType::Q8_0 => (34, 2..34),
                _ => (292, 4..260),
            };
            let mut act1 = act.clone();
            for b in act1.chunks_exact_mut(block) {
                b[values.clone()].reverse();
            }
            let (mut buf, mut buf1) = (Vec::new(), Vec::new());
            let (laid, laid1) = match lay_out {
                Some(lay_out) => (lay_out(&act, &mut buf), lay_out(&act1, &mut buf1)),
                None => (&act[..], &act1[..]),
            };
            // 37 different rows: the row's blocks rotated by r.
            let bs = ty.type_size();
            let blocks: Vec<&[u8]> = w.chunks_exact(bs).collect();
            let mut rows = Vec::new();
            for r in 0..37 {
                for b in 0..blocks.len() {
                    rows.extend_from_slice(blocks[(b + r) % blocks.len()]);
                }
            }
            for (f, pair) in kernels {
                let (mut all, mut p0, mut p1) = ([0f32; 37], [0f32; 37], [0f32; 37]);
                // SAFETY: the features were detected (`available`, `gfni`); `rows` holds 37 rows
                // of `w.len()` bytes, against activation rows laid out as the kernels read them.
                unsafe {
                    f(&rows, w.len(), laid, &mut all);
                    pair(&rows, w.len(), [laid, laid1], [&mut p0, &mut p1]);
                }
                for r in 0..37 {
                    let row = &rows[r * w.len()..(r + 1) * w.len()];
                    // SAFETY: as above, for one row.
                    let one = |a| unsafe { super::super::one_row(f, row, a) };
                    let (want, want1) = (one(laid), one(laid1));
                    assert_eq!(all[r].to_bits(), want.to_bits(), "{ty} row {r}");
                    assert_eq!(p0[r].to_bits(), want.to_bits(), "{ty} pair row {r}");
                    assert_eq!(p1[r].to_bits(), want1.to_bits(), "{ty} pair row {r}");
                }
                assert_ne!(p0, p1, "{ty}: the two activation rows should differ");
            }
        }
    }

    /// The kernels against the scalar reference and the AVX2 kernels, on rows with extreme levels;
    /// on a CPU without AVX-512 VNNI it says so and checks nothing.
    #[test]
    fn kernels_match_the_scalar_and_avx2_ones() {
        if !super::available() {
            eprintln!("no AVX-512 BW/VNNI on this CPU: the kernel is not exercised here");
            return;
        }
        // Q8_0 rows of 1 to 35 blocks, odd counts too: the kernel takes sixteen blocks per step,
        // then pairs, then a last single block.
        let blocks = [1, 2, 3, 5, 8, 11, 15, 16, 17, 19, 32, 34, 35];
        for (_, n, w, act, want) in super::super::q8_0_cases(blocks) {
            let got = super::vec_dot(GgmlType::Q8_0, &w, &act).unwrap();
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "q8_0 n={n}: {got} vs {want}"
            );
        }
        for (ty, n, w, act, want) in super::super::kernel_cases() {
            let got = super::vec_dot(ty, &w, &act).unwrap();
            let avx2 = super::super::avx2::vec_dot(ty, &w, &act).unwrap();
            let mut results = vec![("avx512", got), ("avx2", avx2)];
            // The Q4_K and Q6_K kernels with and without GFNI, whichever `kernel` chose on this
            // CPU, on the layout the dispatch reads them with.
            use super::super::RowKernel;
            let variants: Option<(RowKernel, RowKernel)> = match ty {
                GgmlType::Q4_K => Some((super::q4_k, super::q4_k_gfni)),
                GgmlType::Q6_K => Some((super::q6_k, super::q6_k_gfni)),
                _ => None,
            };
            let lay_out = super::detected_kernel(ty).and_then(|(_, reorder)| reorder);
            if let (Some((plain, with_gfni)), Some(lay_out)) = (variants, lay_out) {
                let mut buf = Vec::new();
                let laid = lay_out(&act, &mut buf);
                // SAFETY: the features of each were detected (`available`, `gfni`).
                let other = |f: RowKernel| unsafe { super::super::one_row(f, &w, laid) };
                results.push(("avx512 no gfni", other(plain)));
                if super::gfni() {
                    results.push(("avx512 gfni", other(with_gfni)));
                }
            }
            for (what, v) in results {
                assert!(
                    (v - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{ty} {what} n={n}: {v} vs {want}"
                );
            }
        }
    }
}
