//! Matrix products against weight rows stored in any ggml type.
//!
//! Quantized weights: each activation row is quantized once into the weight type's `vec_dot_type`
//! (Q8_0 or Q8_K), then every weight row is dotted with every activation row while it is hot in
//! cache, so a block of tokens reads the weights once (prefill and the vision tower are bound by
//! compute, not by the weight stream). Float weights (F32, F16, BF16) dot f32 activations
//! directly. Work is split by weight rows; a many-row product is computed transposed (each task
//! owns contiguous output) and transposed back.

use rayon::prelude::*;

use super::{CpuMatrix, CpuWorkspace};
use crate::backend::BackendError;
use crate::quant::{quantize_row, vec_dot, GgmlType};

/// Weight rows per task: enough tasks to balance the pool, few enough to amortise scheduling.
fn rows_per_task(rows: usize) -> usize {
    let tasks = rayon::current_num_threads() * 8;
    rows.div_ceil(tasks).clamp(1, 64)
}

pub(super) fn matmul(
    ws: &mut CpuWorkspace,
    w: &CpuMatrix,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), BackendError> {
    let (m, k) = (w.rows, w.cols);
    let wb = w.bytes();
    let x = &x[..n * k];
    let err = |source| BackendError::Quant {
        tensor: format!("{m}x{k} {} matrix", w.ty),
        source,
    };
    let vt = w.ty.vec_dot_type();
    let float = matches!(w.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
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
    let rb = w.row_bytes;
    // Dot of weight row `j` with activation row `i`.
    let dot = |j: usize, i: usize| -> Result<f32, crate::quant::QuantError> {
        let wr = &wb[j * rb..(j + 1) * rb];
        if float {
            Ok(float_dot(w.ty, wr, &x[i * k..(i + 1) * k]))
        } else {
            vec_dot(w.ty, k, wr, vt, &q[i * arb..(i + 1) * arb])
        }
    };
    let per = rows_per_task(m);
    if n == 1 {
        return out[..m]
            .par_chunks_mut(per)
            .enumerate()
            .try_for_each(|(c, o)| {
                for (r, y) in o.iter_mut().enumerate() {
                    *y = dot(c * per + r, 0)?;
                }
                Ok(())
            })
            .map_err(err);
    }
    let t = &mut ws.transposed[..m * n];
    t.par_chunks_mut(per * n)
        .enumerate()
        .try_for_each(|(c, o)| {
            for (r, row) in o.chunks_exact_mut(n).enumerate() {
                let j = c * per + r;
                for (i, y) in row.iter_mut().enumerate() {
                    *y = dot(j, i)?;
                }
            }
            Ok(())
        })
        .map_err(err)?;
    let t = &ws.transposed[..m * n];
    out[..n * m]
        .par_chunks_mut(m)
        .enumerate()
        .for_each(|(i, o)| {
            for (j, y) in o.iter_mut().enumerate() {
                *y = t[j * n + i];
            }
        });
    Ok(())
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

/// Eight independent accumulators so the compiler keeps a vector register per lane group.
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}
