//! RMSNorm `y = x * r * w` with `r = 1 / sqrt(mean(x^2) + eps)` over the last axis. The backward
//! gives both gradients: `dx = r * g - x * r^3 * mean(g * x)` with `g = dy * w`, and
//! `dw = sum over rows of dy * x * r`.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{contiguous, fusable, last_dim, run, Kernel, Real, ROWS_PER_TASK};

/// `x / sqrt(mean(x^2, last axis) + eps) * weight`; `weight` has the size of the last axis.
/// Half-precision inputs take the composed path (HF's order: normalise in f32, cast back, scale).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if !fusable(x) || weight.dtype() != x.dtype() {
        let dtype = x.dtype();
        let xf = x.to_dtype(crate::qwen2_5_vl::candle::ops::compute_dtype(dtype))?;
        let mean_sq = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (mean_sq + eps)?.sqrt()?.recip()?;
        return xf
            .broadcast_mul(&inv_rms)?
            .to_dtype(dtype)?
            .broadcast_mul(weight);
    }
    x.contiguous()?.apply_op2_arc(
        &weight.contiguous()?,
        std::sync::Arc::new(Box::new(RmsNorm { eps })),
    )
}

struct RmsNorm {
    eps: f64,
}

fn inv_rms<T: Real>(x: &[T], eps: T) -> T {
    let sum = x.iter().fold(T::ZERO, |acc, &v| acc + v * v);
    T::of(1.0) / (sum / T::of(x.len() as f64) + eps).sqrt()
}

fn forward<T: Real>(x: &[T], w: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let eps = T::of(eps);
    let mut out = vec![T::ZERO; x.len()];
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .for_each(|(dst, src)| {
            for (d, x) in dst.chunks_mut(n).zip(src.chunks(n)) {
                let r = inv_rms(x, eps);
                for ((dv, &xv), &wv) in d.iter_mut().zip(x).zip(w) {
                    *dv = xv * r * wv;
                }
            }
        });
    out
}

/// `[dx rows..., dw]`: the input gradient row by row, then the weight gradient as a last row.
/// Each task sums its rows' share of `dw`, and the tasks' sums are added in task order, so the
/// result does not depend on the number of threads.
fn backward<T: Real>(x: &[T], w: &[T], dy: &[T], eps: f64) -> Vec<T> {
    let n = w.len();
    let eps = T::of(eps);
    let mut out = vec![T::ZERO; x.len() + n];
    let (dx, dw) = out.split_at_mut(x.len());
    let partial: Vec<Vec<T>> = dx
        .par_chunks_mut(n * ROWS_PER_TASK)
        .zip(x.par_chunks(n * ROWS_PER_TASK))
        .zip(dy.par_chunks(n * ROWS_PER_TASK))
        .map(|((dst, xs), dys)| {
            let mut dw = vec![T::ZERO; n];
            for ((d, x), dy) in dst.chunks_mut(n).zip(xs.chunks(n)).zip(dys.chunks(n)) {
                let r = inv_rms(x, eps);
                let gx = x
                    .iter()
                    .zip(dy)
                    .zip(w)
                    .fold(T::ZERO, |acc, ((&xv, &g), &wv)| acc + g * wv * xv);
                let k = r * r * r * gx / T::of(n as f64);
                for (((dv, &xv), &g), (&wv, acc)) in
                    d.iter_mut().zip(x).zip(dy).zip(w.iter().zip(dw.iter_mut()))
                {
                    *dv = r * g * wv - xv * k;
                    *acc = *acc + g * xv * r;
                }
            }
            dw
        })
        .collect();
    for p in partial {
        for (acc, v) in dw.iter_mut().zip(p) {
            *acc = *acc + v;
        }
    }
    out
}

impl Kernel for RmsNorm {
    const NAME: &'static str = "rms-norm";

    fn compute<T: Real>(&self, inputs: &[(&[T], &Layout)]) -> Result<Vec<T>> {
        let [(x, lx), (w, lw)] = inputs else {
            candle_core::bail!("{}: two operands expected", Self::NAME);
        };
        if last_dim(lx) != lw.shape().elem_count() {
            candle_core::bail!(
                "{}: weight {:?} for input {:?}",
                Self::NAME,
                lw.dims(),
                lx.dims()
            );
        }
        let (x, w) = (
            contiguous(x, lx, Self::NAME)?,
            contiguous(w, lw, Self::NAME)?,
        );
        Ok(forward(x, w, self.eps))
    }
}

impl CustomOp2 for RmsNorm {
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
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = w.elem_count();
        let rows = x.elem_count() / n.max(1);
        let both =
            x.apply_op3_no_bwd(w, &grad_res.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dw = both.narrow(0, rows, 1)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

struct RmsNormGrad {
    eps: f64,
}

impl Kernel for RmsNormGrad {
    const NAME: &'static str = "rms-norm-grad";

    fn compute<T: Real>(&self, inputs: &[(&[T], &Layout)]) -> Result<Vec<T>> {
        let [(x, lx), (w, lw), (g, lg)] = inputs else {
            candle_core::bail!("{}: three operands expected", Self::NAME);
        };
        let x = contiguous(x, lx, Self::NAME)?;
        let w = contiguous(w, lw, Self::NAME)?;
        Ok(backward(x, w, contiguous(g, lg, Self::NAME)?, self.eps))
    }
}

impl candle_core::CustomOp3 for RmsNormGrad {
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
        let n = l2.shape().elem_count();
        let rows = l1.shape().elem_count() / n.max(1);
        let out = run(self, &[(s1, l1), (s2, l2), (s3, l3)])?;
        Ok((out, Shape::from((rows + 1, n))))
    }
}
