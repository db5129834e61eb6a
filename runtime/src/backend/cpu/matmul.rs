//! Matrix products against weight rows stored in any ggml type.
//!
//! Quantized weights: each activation row is quantized once into the weight type's `vec_dot_type`
//! (Q8_0 or Q8_K), then every weight row is dotted with every activation row while it is hot in
//! cache, so a block of tokens reads the weights once (prefill and the vision tower are bound by
//! compute, not by the weight stream). Float weights (F32, F16, BF16) dot f32 activations
//! directly. Work is split by weight rows; a many-row product is computed transposed (each task
//! owns contiguous output) and transposed back.

use rayon::prelude::*;

use super::gemm::{gemm_panels, grow, pack_activations, packed_len, scatter};
use super::pieces::Pieces;
use super::simd::dot as dot_f32;
use super::{amx, int8};
use super::{CpuMatrix, CpuWorkspace, ManyRows};
use crate::backend::BackendError;
use crate::quant::{dequantize_row, pairs_in_one_pass, quantize_row, GgmlType, RowDots};

/// The most activation rows a product takes on the quantized dots, whatever the weight type.
const MAX_DOT_ROWS: usize = 48;

/// From this many activation rows on, weights of `ty` are decoded once per panel and multiplied by
/// the AMX tile kernel (`amx`), or without AMX by the int8 kernel (`int8`, for the types it
/// decodes) or the same bf16 product on AVX-512 BF16 vectors (`bf16`), or by the blocked float
/// kernel (`gemm`); below it each pair takes the quantized dot product, which reads the weights
/// without decoding them.
///
/// Decoding costs the same per weight whatever its type, once per product, and little per row
/// after that; the dot costs per row what reading its bytes does. So the fewer bits a weight
/// takes, the more rows the dot stays ahead. 3B prefill, 2 threads, Zen 4 VM: on the dots the
/// Q4_K_M file ran 34 tok/s at any length from 16 to 64 and the Q8_0 file 19; with the weights
/// decoded, 20 and 21 tok/s at 16 rows, 33 and 35 at 32. So the Q8_0 file crosses at about 14
/// rows, the Q4_K_M file (mostly 4.5 bits per weight) at about 33. Sixteen rows at 8.5 bits,
/// scaled by the bits per weight, and by 1.5 where a two-row kernel unpacks each weight block once
/// for two activation rows (`RowDots::rows_pair`): with it on its Q4_K weights, the Q4_K_M file
/// on the dots alone ran 41.5-44.3 tok/s at 24-47 rows, decoded 33.0 at 32, 37.6 at 40 and 42.2
/// at 47. Q8_0's two-row kernel saves less (its blocks need no unpacking, only their signs taken):
/// the Q8_0 file on the dots with it ran 22.4-23.9 tok/s at 16-23 rows, decoded 21.3-21.7 at 16,
/// 23.9-25.4 at 20 and 27.1-27.8 at 23, so it scales by 1.125 (18 rows).
///
/// The int8 kernel (`kernel`) moves Q8_0's switch lower: it interleaves a decoded panel's rows in
/// registers, and a Q8_0 block's decode is little more than that move. The Q8_0 file, 2 threads,
/// Zen 4 VM, 2026-12-05 night: on the dots 21.0-23.9 tok/s at 8-20 rows, decoded 19.9-20.1 at 8,
/// 23.4-23.7 at 10, 24.5-28.5 at 12, 29.6-30.0 at 14 and 29.3-33.7 at 16; so
/// [`INT8_Q8_0_MIN_ROWS`]. The Q4_K_M file's rates at 20-40 rows did not tell its Q4_K and Q6_K
/// switches of 45 and 31 from 26 and 17 (within the VM's noise), so those keep the rule above.
pub(super) fn gemm_min_rows(ty: GgmlType, kernel: ManyRows) -> usize {
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return 16;
    }
    if ty == GgmlType::Q8_0 && matches!(kernel, ManyRows::Int8) {
        return INT8_Q8_0_MIN_ROWS;
    }
    let pairs = match ty {
        _ if !pairs_in_one_pass(ty) => 1.0,
        GgmlType::Q8_0 => 1.125,
        _ => 1.5,
    };
    ((16.0 * 8.5 * pairs / ty.bits_per_weight()).round() as usize).clamp(16, MAX_DOT_ROWS)
}

/// [`gemm_min_rows`] of Q8_0 weights on the int8 kernel: the lowest switch of any type, above the
/// rows of a prompt-lookup pass (`model::text::ALL_LOGITS_ROWS`), which must take the one-row
/// kernels.
pub(super) const INT8_Q8_0_MIN_ROWS: usize = 10;

/// Activation rows the workspace keeps laid out at once: every row of a few-row product, and at
/// least one per matrix of a fused one-row product.
pub(super) const LAID_ROWS: usize = if MAX_DOT_ROWS > MAX_FUSED {
    MAX_DOT_ROWS
} else {
    MAX_FUSED
};

/// The most weight rows a task of a few-row product takes.
const MAX_ROWS_PER_TASK: usize = 64;

/// Weight rows per task: enough tasks to balance the pool, few enough to amortise scheduling.
fn rows_per_task(rows: usize) -> usize {
    let tasks = rayon::current_num_threads() * 8;
    rows.div_ceil(tasks).clamp(1, MAX_ROWS_PER_TASK)
}

pub(super) fn matmul(
    ws: &mut CpuWorkspace,
    w: &CpuMatrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    kernel: ManyRows,
) -> Result<(), BackendError> {
    let (m, k) = (w.rows, w.cols);
    let wb = w.bytes();
    let x = &x[..n * k];
    let err = |source| BackendError::Quant {
        tensor: format!("{m}x{k} {} matrix", w.ty),
        source,
    };
    let rb = w.row_bytes;
    if n >= gemm_min_rows(w.ty, kernel) {
        let decode =
            |j: usize, dst: &mut [f32]| dequantize_row(w.ty, &wb[j * rb..(j + 1) * rb], dst);
        let t = &mut ws.transposed[..m * n];
        let pr = match kernel {
            ManyRows::Int8 => {
                int8::pack_activations(w.ty, x, n, k, &mut ws.packed_int8);
                int8::int8_panels(w.ty, m, k, n, &ws.packed_int8, t, |j| {
                    &wb[j * rb..(j + 1) * rb]
                })
            }
            ManyRows::Bf16(bf16) => {
                grow(&mut ws.packed_bf16, amx::packed_len(n, k));
                amx::pack_activations(x, n, k, &mut ws.packed_bf16);
                amx::gemm_panels(bf16, m, k, n, &ws.packed_bf16, t, decode)
            }
            ManyRows::F32 => {
                grow(&mut ws.packed, packed_len(n, k));
                pack_activations(x, n, k, &mut ws.packed);
                gemm_panels(m, k, n, &ws.packed, t, decode)
            }
        }
        .map_err(err)?;
        scatter(&ws.transposed[..m * n], m, n, pr, out);
        return Ok(());
    }
    let float = matches!(w.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    if n == 1 && !float {
        return matvecs(ws, &[w], x, &mut [&mut out[..m]]);
    }
    let vt = w.ty.vec_dot_type();
    let arb = if float {
        0
    } else {
        vt.bytes_for(k as u64).unwrap_or(0) as usize
    };
    if !float {
        let q = &mut ws.quantized[..n * arb];
        q.par_chunks_mut(arb)
            .zip(x.par_chunks(k))
            .try_for_each(|(dst, src)| quantize_row(vt, src, dst))
            .map_err(err)?;
    }
    let q = &ws.quantized[..n * arb];
    // Float weight row `j` with activation row `i` (quantized rows go through `RowDots`).
    let dot =
        |j: usize, i: usize| float_dot(w.ty, &wb[j * rb..(j + 1) * rb], &x[i * k..(i + 1) * k]);
    let per = rows_per_task(m);
    if n == 1 {
        out[..m].par_chunks_mut(per).enumerate().for_each(|(c, o)| {
            for (r, y) in o.iter_mut().enumerate() {
                *y = dot(c * per + r, 0);
            }
        });
        return Ok(());
    }
    // Each activation row is checked and laid out for its kernel once, before the tasks (as in
    // `matvecs`), not once in every task. `n < gemm_min_rows <= LAID_ROWS`, so every row has a
    // buffer.
    let mut dots = [None; LAID_ROWS];
    if !float {
        for (i, (d, buf)) in dots.iter_mut().zip(&mut ws.laid).take(n).enumerate() {
            *d = Some(RowDots::new(w.ty, k, vt, &q[i * arb..(i + 1) * arb], buf).map_err(err)?);
        }
    }
    let t = &mut ws.transposed[..m * n];
    t.par_chunks_mut(per * n)
        .enumerate()
        .try_for_each(|(c, o)| {
            let j0 = c * per;
            if float {
                for (r, row) in o.chunks_exact_mut(n).enumerate() {
                    for (i, y) in row.iter_mut().enumerate() {
                        *y = dot(j0 + r, i);
                    }
                }
                return Ok(());
            }
            // Each activation row meets the task's weight rows through the same row kernel as a
            // one-row product (which may read the activation reordered), so a token's logits do
            // not depend on how many tokens share the product.
            let len = o.len() / n;
            let rows = &wb[j0 * rb..(j0 + len) * rb];
            let [mut c0, mut c1] = [[0f32; MAX_ROWS_PER_TASK]; 2];
            let mut put = |i: usize, col: &[f32]| {
                for (r, &v) in col[..len].iter().enumerate() {
                    o[r * n + i] = v;
                }
            };
            // Activation rows two at a time, which a two-row kernel unpacks each weight block
            // once for.
            let mut i = 0;
            let mut live = dots.iter().flatten();
            while let Some(d) = live.next() {
                if let Some(e) = live.next() {
                    d.rows_pair(e, rows, [&mut c0[..len], &mut c1[..len]])?;
                    put(i, &c0);
                    put(i + 1, &c1);
                    i += 2;
                } else {
                    d.rows(rows, &mut c0[..len])?;
                    put(i, &c0);
                }
            }
            Ok(())
        })
        .map_err(err)?;
    transpose_into(&ws.transposed[..m * n], m, n, out);
    Ok(())
}

/// The most matrices [`matvecs`] takes in one pass (q/k/v).
pub(super) const MAX_FUSED: usize = 3;

/// Whether [`matvecs`] takes `w`: one to three quantized matrices of one width whose activations
/// are quantized to the same type, so one quantized row serves them all.
pub(super) fn fusable(w: &[&CpuMatrix]) -> bool {
    let quantized = |m: &CpuMatrix| {
        !matches!(m.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
            && m.ty.vec_dot_type() == w[0].ty.vec_dot_type()
            && m.cols == w[0].cols
    };
    (1..=MAX_FUSED).contains(&w.len()) && w.iter().all(|m| quantized(m))
}

/// One-row products of `x` with every matrix of `w` (which [`fusable`] took) as one parallel
/// pass over all their rows, handed out in [`Pieces`]: `x` is quantized once, and the pool is
/// woken once instead of once per matrix. In decoding that matters most for k and v, whose few
/// rows are done sooner than a sleeping worker wakes. [`matmul`]'s one-row product of quantized
/// weights is this pass over one matrix, so a fused product equals one `matmul` per matrix bit for
/// bit.
pub(super) fn matvecs(
    ws: &mut CpuWorkspace,
    w: &[&CpuMatrix],
    x: &[f32],
    outs: &mut [&mut [f32]],
) -> Result<(), BackendError> {
    let k = w[0].cols;
    let vt = w[0].ty.vec_dot_type();
    let arb = vt.bytes_for(k as u64).unwrap_or(0) as usize;
    let err = |m: &CpuMatrix, source| BackendError::Quant {
        tensor: format!("{}x{} {} matrix", m.rows, m.cols, m.ty),
        source,
    };
    let q = &mut ws.quantized[..arb];
    quantize_row(vt, &x[..k], q).map_err(|e| err(w[0], e))?;
    let q = &*q;
    // The row made ready once per weight type (q, k and v usually share one), not once per task.
    let [b0, b1, b2, ..] = &mut ws.laid;
    let d0 = RowDots::new(w[0].ty, k, vt, q, b0).map_err(|e| err(w[0], e))?;
    let mut dots = [d0; MAX_FUSED];
    for (t, buf) in [(1, b1), (2, b2)] {
        let Some(m) = w.get(t) else { break };
        dots[t] = match (0..t).find(|&s| w[s].ty == m.ty) {
            Some(s) => dots[s],
            None => RowDots::new(m.ty, k, vt, q, buf).map_err(|e| err(m, e))?,
        };
    }
    let bytes: [&[u8]; MAX_FUSED] =
        std::array::from_fn(|t| w.get(t).map_or(&[][..], |m| m.bytes()));
    // Missing matrices become empty outputs, which yield no pieces, so the pass allocates nothing.
    let mut it = outs.iter_mut().zip(w);
    let outs: [&mut [f32]; MAX_FUSED] =
        std::array::from_fn(|_| it.next().map_or(&mut [][..], |(o, m)| &mut o[..m.rows]));
    let row_bytes = std::array::from_fn(|t| w.get(t).map_or(0, |m| m.row_bytes));
    Pieces::new(outs, row_bytes, rayon::current_num_threads()).run(|t, j0, o| {
        let m = w[t];
        let rows = &bytes[t][j0 * m.row_bytes..(j0 + o.len()) * m.row_bytes];
        dots[t].rows(rows, o).map_err(|e| err(m, e))
    })
}

/// `out[i * m + j] = t[j * n + i]`: the transposed product back in activation-row order, 16
/// output rows per task so each read is a whole cache line and the writes stay in L1.
fn transpose_into(t: &[f32], m: usize, n: usize, out: &mut [f32]) {
    const B: usize = 16;
    out[..n * m]
        .par_chunks_mut(B * m)
        .enumerate()
        .for_each(|(c, o)| {
            let (i0, rows) = (c * B, o.len() / m);
            for j in 0..m {
                for (ii, &v) in t[j * n + i0..j * n + i0 + rows].iter().enumerate() {
                    o[ii * m + j] = v;
                }
            }
        });
}

/// Dot of a float weight row with f32 activations; halves are widened 64 at a time on the stack.
fn float_dot(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    match ty {
        // Mapped rows are 4-aligned (page-aligned map, 32-aligned tensors, 4-byte elements) and
        // owned ones are `Vec<f32>`; the fallback only guards against a foreign file layout.
        GgmlType::F32 => match bytemuck::try_cast_slice::<u8, f32>(w) {
            Ok(w) => dot_f32(w, x),
            Err(_) => w
                .chunks_exact(4)
                .zip(x)
                .map(|(b, y)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * y)
                .sum(),
        },
        _ => {
            let mut buf = [0f32; 64];
            let mut acc = 0.0;
            for (wc, xc) in w.chunks(128).zip(x.chunks(64)) {
                let b = &mut buf[..xc.len()];
                for (d, s) in b.iter_mut().zip(wc.chunks_exact(2)) {
                    let bits = u16::from_le_bytes([s[0], s[1]]);
                    *d = if ty == GgmlType::F16 {
                        half::f16::from_bits(bits).to_f32()
                    } else {
                        half::bf16::from_bits(bits).to_f32()
                    };
                }
                acc += dot_f32(b, xc);
            }
            acc
        }
    }
}
