//! Building blocks shared by the vision tower and the language model: RMSNorm, rotate-half
//! rotary application, softmax attention.
//!
//! Everything has a backward pass (the trainer differentiates through this code): candle's
//! elementary ops, and on the CPU the custom ops of `fused` for the norm, the rotary and
//! attention's softmax. Half-precision activations are widened to f32 for norms and softmax, as
//! HF does; f32/f64 stay as they are so a f64 model can be checked against finite differences.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use super::fused::{rms_norm, rotary, scaled_masked_softmax};

/// The dtype norms, softmax and rotary products are computed in for activations of `dtype`.
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// HF `Qwen2RMSNorm`: normalise in (at least) f32, cast back, then scale by the weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        Ok(RmsNorm { weight, eps })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.weight, self.eps)
    }
}

/// `[a; b] -> [-b; a]` over the last axis (GPT-NeoX pairing: dim `d` rotates with `d + half`).
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let a = x.narrow(D::Minus1, 0, half)?;
    let b = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&b.neg()?, &a], D::Minus1)
}

/// `x * cos + rotate_half(x) * sin`, with `cos`/`sin` broadcast from the right.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rotary(x, cos, sin)
}

/// Softmax over the last axis in the compute dtype, returned in the input dtype (HF eager).
pub fn softmax_last(scores: &Tensor) -> Result<Tensor> {
    let dtype = scores.dtype();
    let s = scores.to_dtype(compute_dtype(dtype))?;
    candle_nn::ops::softmax(&s, D::Minus1)?.to_dtype(dtype)
}

/// Scaled dot-product attention with grouped KV heads.
///
/// `q`: `[b, heads, lq, d]`, `k`/`v`: `[b, kv_heads, lk, d]`, `mask`: additive, broadcastable to
/// `[b, heads, lq, lk]` (in the compute dtype). Query head `j` reads KV head `j / group`: viewing
/// the queries as `[b, kv_heads, group * lq, d]` lets every group share one KV matmul without
/// copying the keys and values `group` times.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, heads, lq, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    let lk = k.dim(2)?;
    let group = heads / kv_heads;
    let qg = q.contiguous()?.reshape((b, kv_heads, group * lq, d))?;
    let scores = qg.matmul(&k.t()?)?.reshape((b, heads, lq, lk))?;
    let probs =
        scaled_masked_softmax(&scores, mask, scale)?.reshape((b, kv_heads, group * lq, lk))?;
    probs.matmul(&v.contiguous()?)?.reshape((b, heads, lq, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rms_norm_matches_formula() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1f32, 2., 3., 4.]], &dev).unwrap();
        let norm = RmsNorm {
            weight: Tensor::new(&[1f32, 1., 2., 0.5], &dev).unwrap(),
            eps: 1e-6,
        };
        let y = norm.forward(&x).unwrap().to_vec2::<f32>().unwrap();
        let rms = ((1. + 4. + 9. + 16.) / 4f32 + 1e-6).sqrt();
        let want = [1. / rms, 2. / rms, 6. / rms, 2. / rms];
        for (a, b) in y[0].iter().zip(want) {
            assert!((a - b).abs() < 1e-6);
        }
    }

    #[test]
    fn grouped_attention_equals_repeated_kv() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 4, 3, 8), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (1, 2, 5, 8), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (1, 2, 5, 8), &dev).unwrap();
        let got = attention(&q, &k, &v, None, 0.3).unwrap();
        for h in 0..4 {
            let qh = q.narrow(1, h, 1).unwrap();
            let kh = k.narrow(1, h / 2, 1).unwrap();
            let vh = v.narrow(1, h / 2, 1).unwrap();
            let s = (qh.matmul(&kh.t().unwrap()).unwrap() * 0.3).unwrap();
            let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
            let want = p.matmul(&vh).unwrap();
            let diff = (got.narrow(1, h, 1).unwrap() - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-6, "head {h}: {diff}");
        }
    }
}
