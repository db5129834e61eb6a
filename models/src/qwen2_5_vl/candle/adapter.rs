//! Low-rank adapters (LoRA) on linear layers: `y = W x + b + s * B (A dropout(x))`, switched on and
//! off as a whole, so that the base weights with adapters off serve as the frozen reference policy
//! without a second copy of the model.
//!
//! The adapter matrices live in whatever dtype they were created in (f32 for training under a bf16
//! base): the input is widened to it and the low-rank product narrowed back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::Linear;

/// The two factors of one adapter: `a` is `[rank, in]`, `b` is `[out, rank]`; `scale` is
/// `alpha / rank`.
#[derive(Debug, Clone)]
pub struct LowRank {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// State shared by every adapter of a model: on/off, and the dropout applied to adapter inputs
/// while training. Dropout masks come from a counter-based generator so that a run (and its resume)
/// draws the same masks from the same seed.
#[derive(Debug)]
pub struct AdapterControl {
    enabled: AtomicBool,
    training: AtomicBool,
    /// Dropout probability as f32 bits.
    dropout: AtomicU64,
    seed: AtomicU64,
}

impl Default for AdapterControl {
    fn default() -> Self {
        AdapterControl {
            enabled: AtomicBool::new(true),
            training: AtomicBool::new(false),
            dropout: AtomicU64::new(0f64.to_bits()),
            seed: AtomicU64::new(0),
        }
    }
}

impl AdapterControl {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Adapters off gives the base model (the reference policy).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Dropout is applied only in training mode.
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed);
    }

    pub fn set_dropout(&self, p: f64) {
        self.dropout.store(p.to_bits(), Ordering::Relaxed);
    }

    pub fn dropout(&self) -> f64 {
        f64::from_bits(self.dropout.load(Ordering::Relaxed))
    }

    /// Where the dropout mask stream is; saved with a checkpoint so a resume draws the same masks.
    pub fn dropout_seed(&self) -> u64 {
        self.seed.load(Ordering::Relaxed)
    }

    pub fn set_dropout_seed(&self, seed: u64) {
        self.seed.store(seed, Ordering::Relaxed);
    }

    fn dropout_mask(&self, like: &Tensor) -> Result<Option<Tensor>> {
        let p = self.dropout();
        if !self.training.load(Ordering::Relaxed) || p <= 0.0 {
            return Ok(None);
        }
        let mut state = self
            .seed
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let keep = 1.0 / (1.0 - p);
        let data: Vec<f32> = (0..like.elem_count())
            .map(|_| {
                state = splitmix(state);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                if u < p {
                    0.0
                } else {
                    keep as f32
                }
            })
            .collect();
        Ok(Some(
            Tensor::from_vec(data, like.shape(), like.device())?.to_dtype(like.dtype())?,
        ))
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A linear layer that may carry an adapter.
#[derive(Debug, Clone)]
pub struct AdaptedLinear {
    base: Linear,
    adapter: Option<(LowRank, Arc<AdapterControl>)>,
}

impl AdaptedLinear {
    pub fn new(base: Linear) -> Self {
        AdaptedLinear {
            base,
            adapter: None,
        }
    }

    pub fn base(&self) -> &Linear {
        &self.base
    }

    pub fn adapter(&self) -> Option<&LowRank> {
        self.adapter.as_ref().map(|(l, _)| l)
    }

    /// `(in, out)` features.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (out, inp) = self.base.weight().dims2()?;
        Ok((inp, out))
    }

    pub fn set_adapter(&mut self, lora: LowRank, control: Arc<AdapterControl>) -> Result<()> {
        let (inp, out) = self.dims()?;
        let (r, a_in) = lora.a.dims2()?;
        let (b_out, b_r) = lora.b.dims2()?;
        if a_in != inp || b_out != out || b_r != r {
            candle_core::bail!(
                "adapter A {:?} / B {:?} does not fit a {inp} -> {out} layer",
                lora.a.dims(),
                lora.b.dims()
            );
        }
        self.adapter = Some((lora, control));
        Ok(())
    }

    /// Folds the adapter into the base weight (`W + s B A`) and drops it.
    pub fn merge(&mut self) -> Result<()> {
        if let Some((lora, _)) = self.adapter.take() {
            let w = self.base.weight();
            let delta = (lora.b.matmul(&lora.a)? * lora.scale)?.to_dtype(w.dtype())?;
            self.base = Linear::new((w + delta)?, self.base.bias().cloned());
        }
        Ok(())
    }
}

impl Module for AdaptedLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.base.forward(x)?;
        let Some((lora, control)) = &self.adapter else {
            return Ok(y);
        };
        if !control.enabled() {
            return Ok(y);
        }
        let xa = x.to_dtype(lora.a.dtype())?;
        let xa = match control.dropout_mask(&xa)? {
            Some(mask) => xa.mul(&mask)?,
            None => xa,
        };
        let down = Linear::new(lora.a.clone(), None).forward(&xa)?;
        let up = Linear::new(lora.b.clone(), None).forward(&down)?;
        let dtype = y.dtype();
        y + (up * lora.scale)?.to_dtype(dtype)?
    }
}

/// The dtype adapters should be kept in for a base of `dtype`: half-precision bases train f32
/// adapters, as mixed-precision LoRA does.
pub fn adapter_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adapter_adds_scaled_low_rank_product_and_merges() {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &dev).unwrap();
        let mut l = AdaptedLinear::new(Linear::new(w, None));
        let x = Tensor::new(&[[[2f32, 3.]]], &dev).unwrap();
        let base = l
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(base, vec![2., 3., 5.]);
        let control = Arc::new(AdapterControl::default());
        let lora = LowRank {
            a: Tensor::new(&[[1f32, 1.]], &dev).unwrap(),
            b: Tensor::new(&[[1f32], [0.], [2.]], &dev).unwrap(),
            scale: 0.5,
        };
        l.set_adapter(lora, control.clone()).unwrap();
        let on = l
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        // A x = 5; B (A x) = [5, 0, 10]; times 0.5.
        assert_eq!(on, vec![4.5, 3., 10.]);
        control.set_enabled(false);
        let off = l
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(off, base);
        control.set_enabled(true);
        l.merge().unwrap();
        assert!(l.adapter().is_none());
        let merged = l
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(merged, on);
    }

    #[test]
    fn dropout_only_in_training_and_reproducible_from_the_seed() {
        let c = AdapterControl::default();
        let x = Tensor::ones((4, 64), DType::F32, &Device::Cpu).unwrap();
        c.set_dropout(0.5);
        assert!(c.dropout_mask(&x).unwrap().is_none());
        c.set_training(true);
        c.set_dropout_seed(9);
        let a = c
            .dropout_mask(&x)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        c.set_dropout_seed(9);
        let b = c
            .dropout_mask(&x)
            .unwrap()
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(a, b);
        let zeros = a.iter().flatten().filter(|&&v| v == 0.0).count();
        assert!((64..192).contains(&zeros), "{zeros}");
        assert!(a.iter().flatten().all(|&v| v == 0.0 || v == 2.0));
    }
}
