//! Attention's `softmax(scale * scores + mask)` over the last axis; the backward is
//! `dx = scale * y * (dy - sum(dy * y))`. The scores are the largest tensors of a training step.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, fusable, last_dim, Real, Rows, ROWS_PER_TASK};
use crate::qwen2_5_vl::candle::ops::{compute_dtype, softmax_last};

/// `softmax(scale * scores + mask)` over the last axis; `mask` is additive and broadcastable to
/// the scores' shape (as in [`crate::qwen2_5_vl::candle::ops::attention`]).
pub fn scaled_masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    if !fusable(scores) {
        let s = (scores * scale)?;
        let s = match mask {
            Some(m) => {
                let dtype = s.dtype();
                s.to_dtype(compute_dtype(dtype))?
                    .broadcast_add(m)?
                    .to_dtype(dtype)?
            }
            None => s,
        };
        return softmax_last(&s);
    }
    let scores = scores.contiguous()?;
    let op = FusedSoftmax { scale };
    match mask {
        Some(m) => {
            let m = m.to_dtype(scores.dtype())?.broadcast_as(scores.shape())?;
            scores.apply_op2_arc(&m, std::sync::Arc::new(Box::new(op)))
        }
        None => scores.apply_op1_arc(std::sync::Arc::new(Box::new(op))),
    }
}

struct FusedSoftmax {
    scale: f64,
}

/// The forward pass over contiguous `scores` (rows of `n`); `mask` gives, for row `r`, the offset
/// of its first element and the stride between its elements.
fn forward<T: Real>(scores: &[T], n: usize, scale: f64, mask: Option<(&[T], &Layout)>) -> Vec<T> {
    let mut out = vec![T::ZERO; scores.len()];
    let scale = T::of(scale);
    let row_offsets = mask.map(|(_, l)| Rows::new(l));
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(scores.par_chunks(n * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (dst, src))| {
            for (i, (d, s)) in dst.chunks_mut(n).zip(src.chunks(n)).enumerate() {
                let row = task * ROWS_PER_TASK + i;
                match (mask, &row_offsets) {
                    (Some((m, _)), Some(rows)) => {
                        let base = rows.start(row);
                        let stride = rows.col_stride;
                        for (j, (dv, &sv)) in d.iter_mut().zip(s).enumerate() {
                            *dv = sv * scale + m[base + j * stride];
                        }
                    }
                    _ => {
                        for (dv, &sv) in d.iter_mut().zip(s) {
                            *dv = sv * scale;
                        }
                    }
                }
                let max = d
                    .iter()
                    .fold(T::NEG_INFINITY, |a, &v| if v > a { v } else { a });
                let mut sum = T::ZERO;
                for dv in d.iter_mut() {
                    *dv = (*dv - max).exp();
                    sum = sum + *dv;
                }
                for dv in d.iter_mut() {
                    *dv = *dv / sum;
                }
            }
        });
    out
}

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "scaled-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l);
        let name = "scaled-softmax";
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(forward(contiguous(v, l, name)?, n, self.scale, None))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(forward(contiguous(v, l, name)?, n, self.scale, None))
            }
            other => candle_core::bail!("{name}: unsupported dtype {:?}", other.dtype()),
        };
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        softmax_grad(res, grad_res, self.scale).map(Some)
    }
}

impl CustomOp2 for FusedSoftmax {
    fn name(&self) -> &'static str {
        "scaled-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1);
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(m)) => CpuStorage::F32(forward(
                contiguous(a, l1, "scaled-masked-softmax")?,
                n,
                self.scale,
                Some((m, l2)),
            )),
            (CpuStorage::F64(a), CpuStorage::F64(m)) => CpuStorage::F64(forward(
                contiguous(a, l1, "scaled-masked-softmax")?,
                n,
                self.scale,
                Some((m, l2)),
            )),
            (a, m) => candle_core::bail!(
                "scaled-masked-softmax: unsupported dtypes {:?} and {:?}",
                a.dtype(),
                m.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _scores: &Tensor,
        _mask: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The mask is a constant of the graph (causal structure), never a trained quantity.
        Ok((Some(softmax_grad(res, grad_res, self.scale)?), None))
    }
}

/// `scale * y * (dy - sum(dy * y))` row by row: the gradient with respect to the scores.
fn softmax_grad(y: &Tensor, dy: &Tensor, scale: f64) -> Result<Tensor> {
    let y = y.contiguous()?;
    let dy = dy.contiguous()?;
    y.apply_op2_no_bwd(&dy, &SoftmaxGrad { scale })
}

struct SoftmaxGrad {
    scale: f64,
}

fn backward<T: Real>(y: &[T], dy: &[T], n: usize, scale: f64) -> Vec<T> {
    let mut out = vec![T::ZERO; y.len()];
    let scale = T::of(scale);
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(
            y.par_chunks(n * ROWS_PER_TASK)
                .zip(dy.par_chunks(n * ROWS_PER_TASK)),
        )
        .for_each(|(dst, (ys, dys))| {
            for (d, (y, dy)) in dst.chunks_mut(n).zip(ys.chunks(n).zip(dys.chunks(n))) {
                let dot = y.iter().zip(dy).fold(T::ZERO, |acc, (&a, &b)| acc + a * b);
                for ((dv, &yv), &gv) in d.iter_mut().zip(y).zip(dy) {
                    *dv = scale * yv * (gv - dot);
                }
            }
        });
    out
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "scaled-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let n = last_dim(l1);
        let name = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(y), CpuStorage::F32(g)) => CpuStorage::F32(backward(
                contiguous(y, l1, name)?,
                contiguous(g, l2, name)?,
                n,
                self.scale,
            )),
            (CpuStorage::F64(y), CpuStorage::F64(g)) => CpuStorage::F64(backward(
                contiguous(y, l1, name)?,
                contiguous(g, l2, name)?,
                n,
                self.scale,
            )),
            (a, b) => {
                candle_core::bail!(
                    "{name}: unsupported dtypes {:?} and {:?}",
                    a.dtype(),
                    b.dtype()
                )
            }
        };
        Ok((out, l1.shape().clone()))
    }
}
