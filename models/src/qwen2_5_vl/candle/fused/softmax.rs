//! Attention's `softmax(scale * scores + mask)` over the last axis; the backward is
//! `dx = scale * y * (dy - sum(dy * y))`. The scores are the largest tensors of a training step.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, fusable, last_dim, run, Kernel, Real, Rows, ROWS_PER_TASK};
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
    let mask = mask.map(|(m, l)| (m, Rows::new(l)));
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(scores.par_chunks(n * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (dst, src))| {
            for (i, (d, s)) in dst.chunks_mut(n).zip(src.chunks(n)).enumerate() {
                let row = task * ROWS_PER_TASK + i;
                match &mask {
                    Some((m, rows)) => {
                        let base = rows.start(row);
                        let stride = rows.col_stride;
                        for (j, (dv, &sv)) in d.iter_mut().zip(s).enumerate() {
                            *dv = sv * scale + m[base + j * stride];
                        }
                    }
                    None => {
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

impl Kernel for FusedSoftmax {
    const NAME: &'static str = "scaled-masked-softmax";

    fn compute<T: Real>(&self, inputs: &[(&[T], &Layout)]) -> Result<Vec<T>> {
        let (s, l) = inputs[0];
        let scores = contiguous(s, l, Self::NAME)?;
        Ok(forward(
            scores,
            last_dim(l),
            self.scale,
            inputs.get(1).copied(),
        ))
    }
}

impl CustomOp1 for FusedSoftmax {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((run(self, &[(s, l)])?, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        softmax_grad(res, grad_res, self.scale).map(Some)
    }
}

impl CustomOp2 for FusedSoftmax {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((run(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
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

impl Kernel for SoftmaxGrad {
    const NAME: &'static str = "scaled-softmax-grad";

    fn compute<T: Real>(&self, inputs: &[(&[T], &Layout)]) -> Result<Vec<T>> {
        let [(y, ly), (g, lg)] = inputs else {
            candle_core::bail!("{}: two operands expected", Self::NAME);
        };
        let (y, g) = (
            contiguous(y, ly, Self::NAME)?,
            contiguous(g, lg, Self::NAME)?,
        );
        Ok(backward(y, g, last_dim(ly), self.scale))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Ok((run(self, &[(s1, l1), (s2, l2)])?, l1.shape().clone()))
    }
}
