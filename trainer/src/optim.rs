//! AdamW with decoupled weight decay, a warmup-then-cosine or constant learning-rate schedule,
//! gradient clipping by global norm and gradient accumulation over micro-batches.
//!
//! Our own rather than candle-nn's AdamW because a checkpoint must carry the moment estimates and
//! the step count for a resume to continue exactly, and candle-nn keeps those private.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Largest global gradient norm; 0 turns clipping off.
    pub max_grad_norm: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            warmup_steps: 0,
            schedule: Schedule::Cosine,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// Linear warmup, then cosine decay to 0 at the last step.
    Cosine,
    /// Linear warmup, then constant.
    Constant,
}

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn learning_rate(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup_steps {
        return cfg.lr * (step + 1) as f64 / cfg.warmup_steps as f64;
    }
    match cfg.schedule {
        Schedule::Constant => cfg.lr,
        Schedule::Cosine => {
            let span = total.saturating_sub(cfg.warmup_steps).max(1) as f64;
            let progress = ((step - cfg.warmup_steps) as f64 / span).min(1.0);
            cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// Sums the gradients of `vars` over the micro-batches of one optimizer step.
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
}

impl GradAccumulator {
    pub fn new(vars: Vec<Var>) -> Self {
        let sums = vec![None; vars.len()];
        GradAccumulator { vars, sums }
    }

    pub fn vars(&self) -> &[Var] {
        &self.vars
    }

    /// Adds one micro-batch's gradients (a variable the loss did not reach gets none).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (var, sum) in self.vars.iter().zip(&mut self.sums) {
            if let Some(g) = grads.get(var.as_tensor()) {
                let g = g.detach();
                *sum = Some(match sum.take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The summed gradients (zeros where none arrived), leaving the accumulator empty.
    pub fn take(&mut self) -> Result<Vec<Tensor>> {
        self.vars
            .iter()
            .zip(&mut self.sums)
            .map(|(v, s)| match s.take() {
                Some(g) => Ok(g),
                None => v.as_tensor().zeros_like(),
            })
            .collect()
    }
}

/// Global L2 norm of `grads`.
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0;
    for g in grads {
        sq += g
            .to_dtype(DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// Scales `grads` so their global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let k = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * k)?;
        }
    }
    Ok(norm)
}

/// AdamW (Loshchilov and Hutter), as torch.optim.AdamW computes it.
pub struct AdamW {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    pub fn new(vars: Vec<Var>, cfg: &OptimConfig) -> Result<Self> {
        let m = vars
            .iter()
            .map(|v| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(AdamW {
            vars,
            m,
            v,
            step: 0,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            weight_decay: cfg.weight_decay,
        })
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One update with gradients `grads` (one per variable, in order) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.vars.len() {
            candle_core::bail!(
                "{} gradients for {} variables",
                grads.len(),
                self.vars.len()
            );
        }
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for (i, (var, g)) in self.vars.iter().zip(grads).enumerate() {
            let g = g.to_dtype(var.dtype())?;
            let m = ((&self.m[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&self.v[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m / bc1)? / denom)?;
            let decayed = (var.as_tensor() * (1.0 - lr * self.weight_decay))?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments and step count, for a checkpoint (`m.{i}`, `v.{i}`, `step`).
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.insert(format!("m.{i}"), m.clone());
            out.insert(format!("v.{i}"), v.clone());
        }
        let device = self.m.first().map(|t| t.device().clone());
        let device = device.unwrap_or(candle_core::Device::Cpu);
        out.insert("step".into(), Tensor::new(&[self.step as u32], &device)?);
        Ok(out)
    }

    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let get = |k: &str| {
            state
                .get(k)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state has no {k}")))
        };
        for i in 0..self.vars.len() {
            let like = self.vars[i].as_tensor();
            self.m[i] = get(&format!("m.{i}"))?
                .to_dtype(like.dtype())?
                .to_device(like.device())?;
            self.v[i] = get(&format!("v.{i}"))?
                .to_dtype(like.dtype())?
                .to_device(like.device())?;
        }
        self.step = get("step")?.to_vec1::<u32>()?[0] as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg = OptimConfig {
            lr: 1.0,
            warmup_steps: 2,
            ..OptimConfig::default()
        };
        let lr: Vec<f64> = (0..6).map(|s| learning_rate(&cfg, s, 6)).collect();
        assert_eq!(&lr[..3], &[0.5, 1.0, 1.0]);
        assert!((lr[4] - 0.5).abs() < 1e-12 && lr[5] < lr[4]);
        let constant = OptimConfig {
            schedule: Schedule::Constant,
            ..cfg
        };
        assert_eq!(learning_rate(&constant, 5, 6), 1.0);
    }

    #[test]
    fn adamw_follows_torch_update_rule_and_clipping_bounds_the_norm() {
        let x = Var::new(&[1f64, -2.0], &Device::Cpu).unwrap();
        let cfg = OptimConfig {
            weight_decay: 0.01,
            ..OptimConfig::default()
        };
        let mut opt = AdamW::new(vec![x.clone()], &cfg).unwrap();
        let g = [0.5f64, -0.25];
        let gt = Tensor::new(&g, &Device::Cpu).unwrap();
        opt.step(std::slice::from_ref(&gt), 0.1).unwrap();
        opt.step(&[gt], 0.1).unwrap();
        // A constant gradient has bias-corrected moments m = g and v = g^2 exactly, so torch's
        // AdamW moves each weight by lr * g / (|g| + eps) after decaying it by (1 - lr * wd).
        let mut want = [1f64, -2.0];
        for _ in 0..2 {
            for (w, g) in want.iter_mut().zip(g) {
                *w = *w * (1.0 - 0.1 * 0.01) - 0.1 * g / (g.abs() + 1e-8);
            }
        }
        let got = x.as_tensor().to_vec1::<f64>().unwrap();
        assert!(
            (got[0] - want[0]).abs() < 1e-9 && (got[1] - want[1]).abs() < 1e-9,
            "{got:?} {want:?}"
        );
        assert_eq!(opt.steps(), 2);

        let mut grads = vec![Tensor::new(&[3f64, 4.0], &Device::Cpu).unwrap()];
        assert_eq!(clip_grad_norm(&mut grads, 1.0).unwrap(), 5.0);
        assert!((global_norm(&grads).unwrap() - 1.0).abs() < 1e-5);
    }
}
