//! Integer matrix-matrix product for many activation rows on CPUs with AVX-512 VNNI and no AMX:
//! prefill against Q4_K, Q6_K and Q8_0 weights without decoding them to floats.
//!
//! The f32 kernel (`gemm`) runs the FMA units at their peak, 16 multiply-adds per 512-bit
//! instruction; `vpdpbusd` does 64 byte products per instruction. So activations are quantized
//! once per product to signed bytes (one scale per block of the weight type's `vec_dot_type` size,
//! 256 values for the k-quants and 32 for Q8_0, as ggml pairs them), weight rows are decoded once
//! per panel to unsigned bytes with an affine map per group (`quant::affine`), and a register tile
//! of 4 activation rows x 32 weight rows accumulates each group's products in i32 lanes (one
//! weight row per lane, four activation bytes broadcast), then applies the group's scales in f32:
//! `Σ_g sa·(scale_g·Σ u·a + offset_g·Σ a)`.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::{for_each_panel, grow, panel_rows, store_tile};
use crate::quant::affine::{affine_group, decode_affine};
use crate::quant::{nearest_int, GgmlType, QuantError};

// Weight rows per tile: two vectors of 16 i32 lanes, the f32 kernel's width (its tile store and
// panel sizes are shared).
use super::gemm::NW;
/// Activation rows per tile.
const NX: usize = 4;

/// A worker's decoded panel rows, packed panels, their group maps and the panel rows' maps.
#[derive(Default)]
struct Scratch {
    dec: Vec<u8>,
    packed: Vec<u8>,
    scale: Vec<f32>,
    offset: Vec<f32>,
    row_scale: Vec<f32>,
    row_offset: Vec<f32>,
}

thread_local! {
    /// Reused across calls, so a product allocates nothing once warm.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Whether this CPU runs the kernel and `ty` has an affine decoder.
pub(super) fn supports(ty: GgmlType) -> bool {
    available() && affine_group(ty).is_some()
}

fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// `n` activation rows quantized and packed in tiles of [`NX`] rows: the bytes of each 4-value
/// step side by side (`bytes[(p * NX + r) * 4..]`), and per group of the weight type the block
/// scale `sa` and `sa·Σ a` of each row (`maps[(g * NX + r) * 2..]`). Missing rows are zero.
#[derive(Default)]
pub(super) struct PackedActs {
    bytes: Vec<u8>,
    maps: Vec<f32>,
}

/// Quantizes and packs `x` (`n` rows of `k`) for products with `ty` weights.
pub(super) fn pack_activations(ty: GgmlType, x: &[f32], n: usize, k: usize, acts: &mut PackedActs) {
    let group = affine_group(ty).unwrap_or(32);
    let block = ty.vec_dot_type().block_size();
    let (tiles, groups) = (n.div_ceil(NX), k / group);
    grow(&mut acts.bytes, tiles * NX * k);
    grow(&mut acts.maps, tiles * groups * NX * 2);
    acts.bytes[..tiles * NX * k]
        .par_chunks_mut(NX * k)
        .zip(acts.maps[..tiles * groups * NX * 2].par_chunks_mut(groups * NX * 2))
        .enumerate()
        .for_each(|(t, (bytes, maps))| {
            bytes.fill(0);
            maps.fill(0.0);
            for r in 0..(n - t * NX).min(NX) {
                let row = &x[(t * NX + r) * k..(t * NX + r + 1) * k];
                quantize_row(row, block, group, r, bytes, maps, true);
            }
        });
}

/// Row `r` of a tile quantized to signed bytes, a scale per `block` values (`amax / 127`), into
/// the tile's packed bytes (value `p` at `(p / 4 · NX + r) · 4 + p % 4`) and its per-group maps
/// (the scale and the scale times the group's sum of levels). With `vector`, on a CPU with
/// AVX-512, the maxima and levels are taken sixteen values at a time, to the same results.
fn quantize_row(
    row: &[f32],
    block: usize,
    group: usize,
    r: usize,
    bytes: &mut [u8],
    maps: &mut [f32],
    vector: bool,
) {
    let vector = vector && available();
    for (b, xb) in row.chunks(block).enumerate() {
        let amax = absmax(xb, vector);
        let sa = amax / 127.0;
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (gi, xg) in xb.chunks(group).enumerate() {
            let p0 = b * block + gi * group;
            let sum = levels(xg, inv, p0, r, bytes, vector);
            let g = p0 / group;
            maps[(g * NX + r) * 2] = sa;
            maps[(g * NX + r) * 2 + 1] = sa * sum as f32;
        }
    }
}

/// The largest magnitude in `x` (0 for none); `vector` only where [`available`].
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn absmax(x: &[f32], vector: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if vector && x.len().is_multiple_of(16) {
        // SAFETY: the caller passes `vector` only where AVX-512F was detected.
        return unsafe { x86::absmax(x) };
    }
    x.iter().fold(0f32, |m, v| m.max(v.abs()))
}

/// Values `p0..` of row `r` (`xg`) as levels `nearest_int(v · inv)` in -127..=127, written to
/// their packed places in `bytes`; returns the levels' sum. `vector` only where [`available`].
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn levels(xg: &[f32], inv: f32, p0: usize, r: usize, bytes: &mut [u8], vector: bool) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if vector && xg.len().is_multiple_of(16) && p0.is_multiple_of(16) {
        // SAFETY: as in `absmax`.
        return unsafe { x86::levels(xg, inv, p0, r, bytes) };
    }
    let mut sum = 0i32;
    for (l, &v) in xg.iter().enumerate() {
        let q = nearest_int(v * inv).clamp(-127, 127);
        sum += q;
        let p = p0 + l;
        bytes[(p / 4 * NX + r) * 4 + p % 4] = q as i8 as u8;
    }
    sum
}

/// `t` as one `n x pr` block per panel of `pr` weight rows, as `gemm::gemm_panels` writes it
/// (`gemm::scatter` puts it in activation-row order): weight row `j` of `k` values is the bytes
/// `row(j)` in type `ty`, and the activations were packed by [`pack_activations`] for `ty`.
pub(super) fn int8_panels<'w>(
    ty: GgmlType,
    m: usize,
    k: usize,
    n: usize,
    acts: &PackedActs,
    t: &mut [f32],
    row: impl Fn(usize) -> &'w [u8] + Sync,
) -> Result<usize, QuantError> {
    let group = affine_group(ty).ok_or(QuantError::Unsupported {
        ty,
        op: "int8 matrix product",
    })?;
    let groups = k / group;
    let pr = panel_rows(m);
    let tiles = n.div_ceil(NX);
    let (xb, xm) = (
        &acts.bytes[..tiles * NX * k],
        &acts.maps[..tiles * groups * NX * 2],
    );
    for_each_panel(t, m, n, pr, |j0, rows, out| {
        let panels = rows.div_ceil(NW);
        SCRATCH.with(|s| {
            let Scratch {
                dec,
                packed,
                scale,
                offset,
                row_scale: s1,
                row_offset: o1,
            } = &mut *s.borrow_mut();
            grow(dec, NW * k);
            grow(packed, panels * NW * k);
            grow(scale, panels * NW * groups);
            grow(offset, panels * NW * groups);
            grow(s1, NW * groups);
            grow(o1, NW * groups);
            for p in 0..panels {
                let live = (rows - p * NW).min(NW);
                for r in 0..live {
                    decode_affine(
                        ty,
                        row(j0 + p * NW + r),
                        &mut dec[r * k..(r + 1) * k],
                        &mut s1[r * groups..(r + 1) * groups],
                        &mut o1[r * groups..(r + 1) * groups],
                    )?;
                }
                // A partial panel's missing rows multiply as zeros.
                dec[live * k..NW * k].fill(0);
                s1[live * groups..NW * groups].fill(0.0);
                o1[live * groups..NW * groups].fill(0.0);
                let (words, _) = dec[..NW * k].as_chunks::<4>();
                let (pk, _) = packed[p * NW * k..(p + 1) * NW * k].as_chunks_mut::<4>();
                interleave(words, k / 4, pk);
                let span = p * NW * groups..(p + 1) * NW * groups;
                interleave(&s1[..NW * groups], groups, &mut scale[span.clone()]);
                interleave(&o1[..NW * groups], groups, &mut offset[span]);
            }
            let mut acc = [[0f32; NW]; NX];
            for tn in 0..tiles {
                let i = tn * NX;
                let live = (n - i).min(NX);
                let xs = &xb[tn * NX * k..(tn + 1) * NX * k];
                let xmaps = &xm[tn * groups * NX * 2..(tn + 1) * groups * NX * 2];
                for p in 0..panels {
                    let w = Panel {
                        bytes: &packed[p * NW * k..(p + 1) * NW * k],
                        scale: &scale[p * NW * groups..(p + 1) * NW * groups],
                        offset: &offset[p * NW * groups..(p + 1) * NW * groups],
                    };
                    kernel(&w, xs, xmaps, group, &mut acc);
                    store_tile(out, &acc, i, live, rows, p * NW);
                }
            }
            Ok(())
        })
    })?;
    Ok(pr)
}

/// A panel's [`NW`] rows of `words` 4-byte values each (row `r` at `src[r * words..]`) in the
/// order the kernel reads them: value `w` of row `r` at `dst[w * NW + r]`. Moving the values one at
/// a time took a tenth of the prefill's time; sixteen rows' values are transposed in registers.
fn interleave<T: Copy>(src: &[T], words: usize, dst: &mut [T]) {
    assert!(
        size_of::<T>() == 4 && src.len() == NW * words && dst.len() == NW * words,
        "int8 panel interleave shapes"
    );
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if available() {
        done = words / 16 * 16;
        // SAFETY: AVX-512F was detected; `T` is four bytes and both slices hold `NW * words`
        // values (asserted), the kernel's bounds.
        unsafe { x86::interleave16(src.as_ptr().cast(), words, done, dst.as_mut_ptr().cast()) };
    }
    for r in 0..NW {
        for w in done..words {
            dst[w * NW + r] = src[r * words + w];
        }
    }
}

/// One panel of [`NW`] weight rows: bytes of each 4-value step side by side
/// (`bytes[(p * NW + r) * 4..]`), and per group the rows' scales and offsets (`[g * NW + r]`).
struct Panel<'a> {
    bytes: &'a [u8],
    scale: &'a [f32],
    offset: &'a [f32],
}

/// `acc[b][r] = Σ_g sa_bg·(scale_gr·Σ u_r·a_b + offset_gr·Σ a_b)` over the panel's groups.
fn kernel(w: &Panel, x: &[u8], maps: &[f32], group: usize, acc: &mut [[f32; NW]; NX]) {
    let k = w.bytes.len() / NW;
    assert!(
        x.len() == NX * k
            && w.scale.len() * group == NW * k
            && w.offset.len() == w.scale.len()
            && maps.len() * group == 2 * NX * k
            && group.is_multiple_of(4),
        "int8 panel shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the features were detected just above and the shapes asserted; the kernel reads
        // within those lengths.
        unsafe { x86::avx512(w, x, maps, group, acc) };
        return;
    }
    scalar(w, x, maps, group, acc);
}

/// The kernel's arithmetic without vectors: the reference the vector kernel is tested against,
/// and what runs if a caller skips [`supports`].
fn scalar(w: &Panel, x: &[u8], maps: &[f32], group: usize, acc: &mut [[f32; NW]; NX]) {
    let groups = w.scale.len() / NW;
    for (b, a) in acc.iter_mut().enumerate() {
        *a = [0.0; NW];
        for g in 0..groups {
            let (sa, ssum) = (maps[(g * NX + b) * 2], maps[(g * NX + b) * 2 + 1]);
            for (r, o) in a.iter_mut().enumerate() {
                let mut isum = 0i32;
                for p in g * group / 4..(g + 1) * group / 4 {
                    for l in 0..4 {
                        let u = w.bytes[(p * NW + r) * 4 + l] as i32;
                        isum += u * x[(p * NX + b) * 4 + l] as i8 as i32;
                    }
                }
                *o += isum as f32 * w.scale[g * NW + r] * sa + w.offset[g * NW + r] * ssum;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Panel, NW, NX};

    /// [`super::absmax`]'s fold sixteen values at a time (the same value: a maximum rounds nothing).
    /// `x.len()` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) fn absmax(x: &[f32]) -> f32 {
        let mut m = _mm512_setzero_ps();
        for c in x.chunks_exact(16) {
            // SAFETY: a 16-float chunk.
            m = _mm512_max_ps(m, _mm512_abs_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }));
        }
        _mm512_reduce_max_ps(m)
    }

    /// [`super::levels`]' loop sixteen values at a time, to the same bytes and sum on finite input
    /// (`vcvtps2dq` rounds half to even, as `nearest_int` does). `xg.len()` and `p0` are
    /// multiples of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) fn levels(xg: &[f32], inv: f32, p0: usize, r: usize, bytes: &mut [u8]) -> i32 {
        let (lo, hi, inv) = (
            _mm512_set1_epi32(-127),
            _mm512_set1_epi32(127),
            _mm512_set1_ps(inv),
        );
        let mut sum = _mm512_setzero_si512();
        for (ci, c) in xg.chunks_exact(16).enumerate() {
            // SAFETY: a 16-float chunk.
            let v = unsafe { _mm512_loadu_ps(c.as_ptr()) };
            let q = _mm512_max_epi32(
                _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)), hi),
                lo,
            );
            sum = _mm512_add_epi32(sum, q);
            let mut four = [0u32; 4];
            // SAFETY: 16 bytes into a 16-byte array.
            unsafe { _mm_storeu_si128(four.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q)) };
            let step = (p0 + 16 * ci) / 4;
            for (i, w) in four.iter().enumerate() {
                let at = ((step + i) * NX + r) * 4;
                bytes[at..at + 4].copy_from_slice(&w.to_ne_bytes());
            }
        }
        _mm512_reduce_add_epi32(sum)
    }

    /// Values `0..done` (a multiple of 16, at most `words`) of the [`NW`] rows of `words` 4-byte
    /// values at `src` (row `r` at `src + r * words`), written to `dst[w * NW + r]`: each 16 x 16
    /// block transposed in registers (32-bit, then 64-bit interleaves within 128-bit lanes, then
    /// two rounds of lane shuffles). `src` and `dst` must hold `NW * words` values each.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn interleave16(src: *const u32, words: usize, done: usize, dst: *mut u32) {
        for h in 0..NW / 16 {
            for c in (0..done).step_by(16) {
                let mut v = [_mm512_setzero_si512(); 16];
                for (i, v) in v.iter_mut().enumerate() {
                    // SAFETY: row 16h + i < NW, values c..c + 16 <= done <= words of it.
                    *v = unsafe { _mm512_loadu_si512(src.add((16 * h + i) * words + c).cast()) };
                }
                let mut t = [_mm512_setzero_si512(); 16];
                for i in 0..8 {
                    t[2 * i] = _mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
                    t[2 * i + 1] = _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
                }
                // u[4g + q]: in lane l, value 4l + q of rows 4g..4g + 4.
                let mut u = [_mm512_setzero_si512(); 16];
                for g in 0..4 {
                    let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
                    u[4 * g] = _mm512_unpacklo_epi64(a, c);
                    u[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
                    u[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
                    u[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
                }
                for q in 0..4 {
                    let (g0, g1, g2, g3) = (u[q], u[4 + q], u[8 + q], u[12 + q]);
                    let x0 = _mm512_shuffle_i32x4::<0x44>(g0, g1);
                    let x1 = _mm512_shuffle_i32x4::<0xEE>(g0, g1);
                    let x2 = _mm512_shuffle_i32x4::<0x44>(g2, g3);
                    let x3 = _mm512_shuffle_i32x4::<0xEE>(g2, g3);
                    let out = [
                        _mm512_shuffle_i32x4::<0x88>(x0, x2),
                        _mm512_shuffle_i32x4::<0xDD>(x0, x2),
                        _mm512_shuffle_i32x4::<0x88>(x1, x3),
                        _mm512_shuffle_i32x4::<0xDD>(x1, x3),
                    ];
                    for (l, o) in out.into_iter().enumerate() {
                        let w = c + 4 * l + q;
                        // SAFETY: value w < done <= words; rows 16h..16h + 16 <= NW.
                        unsafe { _mm512_storeu_si512(dst.add(w * NW + 16 * h).cast(), o) };
                    }
                }
            }
        }
    }

    /// Shapes as [`super::kernel`] asserts them.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn avx512(
        w: &Panel,
        x: &[u8],
        maps: &[f32],
        group: usize,
        acc: &mut [[f32; NW]; NX],
    ) {
        let groups = w.scale.len() / NW;
        let steps = group / 4;
        let (wb, xb) = (w.bytes.as_ptr(), x.as_ptr());
        let mut f = [[_mm512_setzero_ps(); 2]; NX];
        for g in 0..groups {
            let mut s = [[_mm512_setzero_si512(); 2]; NX];
            for p in g * steps..(g + 1) * steps {
                // SAFETY: p < k / 4, so the 128 panel bytes at `p * NW * 4` and the 4 bytes of
                // each row at `(p * NX + b) * 4` lie inside `w.bytes` (NW·k) and `x` (NX·k).
                unsafe {
                    let w0 = _mm512_loadu_si512(wb.add(p * NW * 4) as *const _);
                    let w1 = _mm512_loadu_si512(wb.add(p * NW * 4 + 64) as *const _);
                    for (b, sb) in s.iter_mut().enumerate() {
                        let a = _mm512_set1_epi32(
                            (xb.add((p * NX + b) * 4) as *const i32).read_unaligned(),
                        );
                        sb[0] = _mm512_dpbusd_epi32(sb[0], w0, a);
                        sb[1] = _mm512_dpbusd_epi32(sb[1], w1, a);
                    }
                }
            }
            let (sc, of) = (
                &w.scale[g * NW..(g + 1) * NW],
                &w.offset[g * NW..(g + 1) * NW],
            );
            // SAFETY: 16-float loads of the 32-float slices `sc` and `of`.
            let (sc, of) = unsafe {
                (
                    [
                        _mm512_loadu_ps(sc.as_ptr()),
                        _mm512_loadu_ps(sc.as_ptr().add(16)),
                    ],
                    [
                        _mm512_loadu_ps(of.as_ptr()),
                        _mm512_loadu_ps(of.as_ptr().add(16)),
                    ],
                )
            };
            for (b, (fb, sb)) in f.iter_mut().zip(&s).enumerate() {
                let sa = _mm512_set1_ps(maps[(g * NX + b) * 2]);
                let ssum = _mm512_set1_ps(maps[(g * NX + b) * 2 + 1]);
                for v in 0..2 {
                    let prod = _mm512_mul_ps(_mm512_cvtepi32_ps(sb[v]), sc[v]);
                    fb[v] = _mm512_fmadd_ps(prod, sa, fb[v]);
                    fb[v] = _mm512_fmadd_ps(of[v], ssum, fb[v]);
                }
            }
        }
        for (a, fb) in acc.iter_mut().zip(&f) {
            // SAFETY: each row of `acc` holds 32 f32s, two unaligned 16-lane stores.
            unsafe {
                _mm512_storeu_ps(a.as_mut_ptr(), fb[0]);
                _mm512_storeu_ps(a.as_mut_ptr().add(16), fb[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize::quantize_to_vec;
    use crate::quant::test_values::xorshift_values;
    use crate::quant::{dequantize_row, vec_dot_rows};

    /// Products of `n` rows with `m` weight rows of `ty`, in activation-row order.
    fn product(ty: GgmlType, w: &[u8], m: usize, k: usize, x: &[f32], n: usize) -> Vec<f32> {
        let rb = k / ty.block_size() * ty.type_size();
        let mut acts = PackedActs::default();
        pack_activations(ty, x, n, k, &mut acts);
        let mut t = vec![0f32; m * n];
        let pr = int8_panels(ty, m, k, n, &acts, &mut t, |j| &w[j * rb..(j + 1) * rb]).unwrap();
        let mut out = vec![0f32; m * n];
        super::super::gemm::scatter(&t, m, n, pr, &mut out);
        out
    }

    /// The products are within the activations' rounding of the exact product of the dequantized
    /// weights, and as close to ggml's pairing (the weights against activations quantized to their
    /// `vec_dot_type`), on shapes with a partial panel and a partial activation tile; the vector
    /// kernel runs where the CPU has it, the scalar one elsewhere.
    #[test]
    fn products_match_the_quantized_dot_products() {
        for (seed, (ty, m, k, n)) in [
            (GgmlType::Q4_K, 45, 512, 7),
            (GgmlType::Q6_K, 33, 768, 5),
            (GgmlType::Q8_0, 70, 320, 9),
        ]
        .into_iter()
        .enumerate()
        {
            let mut wv = xorshift_values(m * k, 31 + seed as u64);
            wv[3] = 7.5;
            let w = quantize_to_vec(ty, &wv).unwrap();
            let mut x = xorshift_values(n * k, 41 + seed as u64);
            x[k + 9] = -6.0;
            let got = product(ty, &w, m, k, &x, n);
            let vt = ty.vec_dot_type();
            let block = vt.block_size();
            let mut deq = vec![0f32; m * k];
            dequantize_row(ty, &w, &mut deq).unwrap();
            for i in 0..n {
                let xi = &x[i * k..(i + 1) * k];
                let a = quantize_to_vec(vt, xi).unwrap();
                let mut ggml = vec![0f32; m];
                vec_dot_rows(ty, k, &w, vt, &a, &mut ggml).unwrap();
                // Each activation is off by at most half its block's step, amax / 127 / 2.
                let step: Vec<f32> = xi
                    .chunks(block)
                    .map(|b| b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0)
                    .collect();
                // The activations as the kernel rounds them: against these the product is exact
                // but for float rounding.
                let rounded: Vec<f32> = xi
                    .iter()
                    .enumerate()
                    .map(|(p, &v)| {
                        let s = step[p / block];
                        if s == 0.0 {
                            0.0
                        } else {
                            (v / s).round_ties_even().clamp(-127.0, 127.0) * s
                        }
                    })
                    .collect();
                for j in 0..m {
                    let wj = &deq[j * k..(j + 1) * k];
                    let same: f32 = wj.iter().zip(&rounded).map(|(w, x)| w * x).sum();
                    let mag: f32 = wj.iter().zip(&rounded).map(|(w, x)| (w * x).abs()).sum();
                    assert!(
                        (got[i * m + j] - same).abs() <= 1e-5 * mag + 1e-6,
                        "{ty} row {i} col {j}: {} vs {same} with the same rounding",
                        got[i * m + j]
                    );
                    let exact: f32 = wj.iter().zip(xi).map(|(w, x)| w * x).sum();
                    let bound: f32 = wj
                        .iter()
                        .enumerate()
                        .map(|(p, w)| w.abs() * step[p / block] / 2.0)
                        .sum::<f32>()
                        * 1.01
                        + 1e-4;
                    let g = got[i * m + j];
                    assert!(
                        (g - exact).abs() <= bound,
                        "{ty} row {i} col {j}: {g} vs exact {exact} (bound {bound})"
                    );
                    // ggml's Q8 rounding is as far from exact: the two within twice the bound.
                    assert!(
                        (g - ggml[j]).abs() <= 2.0 * bound,
                        "{ty} row {i} col {j}: {g} vs ggml's pairing {}",
                        ggml[j]
                    );
                }
            }
        }
    }

    /// Every value lands at `w * NW + r`, for widths with and without a partial 16-value block
    /// (the vector transpose where the CPU has AVX-512, the scalar loop for the rest).
    #[test]
    fn interleave_puts_value_w_of_row_r_at_w_times_nw_plus_r() {
        for words in [1usize, 15, 16, 17, 48, 80, 83, 512] {
            let src: Vec<u32> = (0..NW * words).map(|i| i as u32 * 7 + 3).collect();
            let mut dst = vec![u32::MAX; NW * words];
            interleave(&src, words, &mut dst);
            for r in 0..NW {
                for w in 0..words {
                    assert_eq!(
                        dst[w * NW + r],
                        src[r * words + w],
                        "{words} values: row {r}, {w}"
                    );
                }
            }
            let bytes: Vec<u8> = (0..NW * words * 4).map(|i| (i * 13 % 251) as u8).collect();
            let mut out = vec![[0u8; 4]; NW * words];
            interleave(bytes.as_chunks::<4>().0, words, &mut out);
            for r in 0..NW {
                for w in 0..words {
                    let at = (r * words + w) * 4;
                    assert_eq!(
                        out[w * NW + r],
                        bytes[at..at + 4],
                        "{words} values: row {r}, {w}"
                    );
                }
            }
        }
    }

    /// Whether this CPU runs the vector code; when it does not, says so on stderr, so that the
    /// skipped check shows in the test output.
    fn vector_here(what: &str) -> bool {
        if !available() {
            eprintln!("no AVX-512 VNNI on this CPU: {what} is not exercised here");
        }
        available()
    }

    /// The vector quantization of activation rows writes the scalar one's bytes and maps bit for
    /// bit: Q4_K's and Q6_K's blocks of 256 (groups of 32 and 16) and Q8_0's of 32, with a zero
    /// block, values at the block maximum and levels near a half.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_activation_quantization_matches_the_scalar_one() {
        if !vector_here("the vector quantization") {
            return;
        }
        let k = 768;
        for (block, group) in [(256usize, 32usize), (256, 16), (32, 32)] {
            for r in 0..NX {
                let mut row = xorshift_values(k, 5 + r as u64);
                row[..block].fill(0.0);
                row[block + 3] = -40.0;
                row[block + 9] = 40.0;
                // Levels at (or a rounding step from) 2.5 and 3.5: where truncation and
                // rounding half away from zero would differ.
                row[block + 10] = 40.0 * 2.5 / 127.0;
                row[block + 11] = 40.0 * 3.5 / 127.0;
                let mut want = (vec![0u8; NX * k], vec![0f32; 2 * NX * k / group]);
                quantize_row(&row, block, group, r, &mut want.0, &mut want.1, false);
                let mut got = (vec![0u8; NX * k], vec![0f32; 2 * NX * k / group]);
                quantize_row(&row, block, group, r, &mut got.0, &mut got.1, true);
                assert_eq!(
                    got.0, want.0,
                    "block {block}, group {group}, row {r}: bytes"
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got.1),
                    bits(&want.1),
                    "block {block}, group {group}, row {r}: maps"
                );
            }
        }
    }

    /// The vector kernel against the scalar one on the same packed data (where the CPU has it).
    #[test]
    fn vector_kernel_matches_the_scalar_arithmetic() {
        if !vector_here("the vector kernel") {
            return;
        }
        let k = 512;
        for group in [16usize, 32] {
            let groups = k / group;
            let bytes: Vec<u8> = (0..NW * k).map(|i| (i * 37 % 251) as u8).collect();
            let scale: Vec<f32> = (0..NW * groups).map(|i| 0.01 + i as f32 * 1e-4).collect();
            let offset: Vec<f32> = (0..NW * groups).map(|i| -0.3 + i as f32 * 1e-3).collect();
            let x: Vec<u8> = (0..NX * k).map(|i| (i * 91 % 255) as u8).collect();
            let maps: Vec<f32> = (0..2 * NX * groups)
                .map(|i| 0.02 + i as f32 * 3e-3)
                .collect();
            let w = Panel {
                bytes: &bytes,
                scale: &scale,
                offset: &offset,
            };
            let (mut v, mut s) = ([[0f32; NW]; NX], [[0f32; NW]; NX]);
            kernel(&w, &x, &maps, group, &mut v);
            scalar(&w, &x, &maps, group, &mut s);
            for b in 0..NX {
                for r in 0..NW {
                    let (a, e) = (v[b][r], s[b][r]);
                    assert!(
                        (a - e).abs() <= 1e-4 * e.abs().max(1.0),
                        "{group}: {a} vs {e}"
                    );
                }
            }
        }
    }
}
