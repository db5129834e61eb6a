//! `x * cos + rotate_half(x) * sin` over the last axis (GPT-NeoX pairing: dim `i` rotates with
//! `i + d/2`), for the language model's M-RoPE and the vision tower's 2D rotary. The backward
//! applies the transposed rotation: `dx = dy * cos + rotate_half^T(dy * sin)`.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous, fusable, last_dim, run, Kernel, Real, Rows, ROWS_PER_TASK};
use crate::qwen2_5_vl::candle::ops::rotate_half;

/// `x * cos + rotate_half(x) * sin`, with `cos`/`sin` broadcast from the right.
pub fn rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !fusable(x) || cos.dtype() != x.dtype() || sin.dtype() != x.dtype() {
        return x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?;
    }
    let x = x.contiguous()?;
    let cos = cos.broadcast_as(x.shape())?;
    let sin = sin.broadcast_as(x.shape())?;
    x.apply_op3_arc(
        &cos,
        &sin,
        std::sync::Arc::new(Box::new(Rotary { transpose: false })),
    )
}

/// The rotation, or (for the backward) its transpose.
struct Rotary {
    transpose: bool,
}

fn apply<T: Real>(
    x: &[T],
    n: usize,
    (cos, lc): (&[T], &Layout),
    (sin, ls): (&[T], &Layout),
    transpose: bool,
) -> Vec<T> {
    let mut out = vec![T::ZERO; x.len()];
    let (rc, rs) = (Rows::new(lc), Rows::new(ls));
    let half = n / 2;
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(task, (dst, src))| {
            for (i, (d, x)) in dst.chunks_mut(n).zip(src.chunks(n)).enumerate() {
                let row = task * ROWS_PER_TASK + i;
                let (c0, s0) = (rc.start(row), rs.start(row));
                let c = |j: usize| cos[c0 + j * rc.col_stride];
                let s = |j: usize| sin[s0 + j * rs.col_stride];
                for j in 0..half {
                    let (a, b) = (x[j], x[j + half]);
                    if transpose {
                        d[j] = a * c(j) + b * s(j + half);
                        d[j + half] = b * c(j + half) + -(a * s(j));
                    } else {
                        d[j] = a * c(j) + -b * s(j);
                        d[j + half] = b * c(j + half) + a * s(j + half);
                    }
                }
            }
        });
    out
}

impl Kernel for Rotary {
    const NAME: &'static str = "rotary";

    fn compute<T: Real>(&self, inputs: &[(&[T], &Layout)]) -> Result<Vec<T>> {
        let [(x, lx), cos, sin] = inputs else {
            candle_core::bail!("{}: three operands expected", Self::NAME);
        };
        let n = last_dim(lx);
        if !n.is_multiple_of(2) {
            candle_core::bail!("{}: the last axis ({n}) must be even", Self::NAME);
        }
        let x = contiguous(x, lx, Self::NAME)?;
        Ok(apply(x, n, *cos, *sin, self.transpose))
    }
}

impl CustomOp3 for Rotary {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = run(self, &[(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // cos and sin are tables of the positions, constants of the graph.
        let op = Rotary {
            transpose: !self.transpose,
        };
        let dx = grad_res.contiguous()?.apply_op3_no_bwd(cos, sin, &op)?;
        Ok((Some(dx), None, None))
    }
}
