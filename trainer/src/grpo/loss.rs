//! The policy losses as functions of per-token log-probabilities: GRPO's clipped ratio with separate
//! low and high epsilons (DAPO's clip-higher when they differ) and the k3 KL estimate to the
//! reference; GPG's plain policy gradient; and the aggregations over tokens that distinguish GRPO,
//! BNPO, Dr. GRPO and DAPO.
//!
//! Where these overlap with TRL's GRPOTrainer (`_compute_loss`, TRL 1.16) they give its numbers; the
//! test `trl_agreement` checks that against `tests/fixtures/grpo/trl_losses.json`.

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// How the per-token losses of a micro-batch become one number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Mean over completions of each completion's token mean (TRL `grpo`): short completions weigh
    /// more per token.
    SequenceMean,
    /// Token mean over the micro-batch (TRL `bnpo`).
    BatchTokenMean,
    /// Token sum over `completions x max_completion_length` (Dr. GRPO, TRL `dr_grpo`): no length bias.
    ConstantLength,
    /// Token sum over the number of completion tokens in the whole accumulation window (DAPO's
    /// token-level mean, TRL `dapo`).
    WindowTokenMean,
}

/// What multiplies the advantage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// `-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)` with `rho = pi / pi_old` per token.
    ClippedRatio,
    /// GPG: `-A log pi`, no ratio and no clipping.
    PolicyGradient,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub objective: Objective,
    pub epsilon_low: f64,
    pub epsilon_high: f64,
    /// Weight of the KL penalty to the reference policy; 0 skips the reference pass.
    pub beta: f64,
    /// Multiply the per-token KL by the importance ratio, as TRL 1.16 does by default
    /// (`use_bias_correction_kl`); ms-swift 3.x does not.
    pub kl_ratio_correction: bool,
    pub aggregation: Aggregation,
    /// Denominator length of [`Aggregation::ConstantLength`].
    pub max_completion_length: usize,
}

/// How many micro-batches one optimizer step sums, and how many completion tokens they hold in all
/// (the normaliser of [`Aggregation::WindowTokenMean`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub accumulation_steps: usize,
    pub tokens: usize,
}

/// One micro-batch: `[B, T]` log-probs of the sampled tokens (with gradients), optionally the
/// sampling policy's and the reference policy's, per-completion advantages `[B]` and the `[B, T]`
/// completion mask (1 on real tokens, 0 on padding).
pub struct LossInputs<'a> {
    pub logps: &'a Tensor,
    /// `None` means the rollouts came from the current weights: the ratio is 1 with gradient
    /// `grad log pi` (TRL's `per_token_logps.detach()`).
    pub old_logps: Option<&'a Tensor>,
    pub ref_logps: Option<&'a Tensor>,
    pub advantages: &'a Tensor,
    pub mask: &'a Tensor,
}

pub struct PerToken {
    /// `[B, T]` loss per token, before masking.
    pub loss: Tensor,
    /// `[B, T]` k3 KL estimate per token (with the ratio correction if configured), when `beta != 0`.
    pub kl: Option<Tensor>,
    /// `[B, T]` importance ratio.
    pub ratio: Tensor,
}

pub struct LossOutput {
    pub loss: Tensor,
    /// Masked token mean of the KL estimate.
    pub kl: Option<f64>,
    /// Share of real tokens whose ratio was clipped (the clip region that zeroes the gradient).
    pub clip_ratio: f64,
}

/// The per-token loss terms.
pub fn per_token_loss(cfg: &LossConfig, x: &LossInputs) -> Result<PerToken> {
    let logps = x.logps;
    let (b, t) = logps.dims2()?;
    let adv = x.advantages.to_dtype(logps.dtype())?.reshape((b, 1))?;
    let adv = adv.broadcast_as((b, t))?;
    let old = match x.old_logps {
        Some(old) => old.to_dtype(logps.dtype())?,
        None => logps.detach(),
    };
    let ratio = (logps - old)?.exp()?;
    let mut loss = match cfg.objective {
        Objective::ClippedRatio => {
            let clipped = ratio.clamp(1.0 - cfg.epsilon_low, 1.0 + cfg.epsilon_high)?;
            (ratio.mul(&adv)?.minimum(&clipped.mul(&adv)?)?).neg()?
        }
        Objective::PolicyGradient => logps.mul(&adv)?.neg()?,
    };
    let kl = if cfg.beta != 0.0 {
        let Some(reference) = x.ref_logps else {
            candle_core::bail!("beta = {} needs reference log-probs", cfg.beta);
        };
        let d = (reference.to_dtype(logps.dtype())? - logps)?;
        let mut kl = ((d.exp()? - &d)? - 1.0)?;
        if cfg.kl_ratio_correction {
            kl = kl.mul(&ratio)?;
        }
        loss = (loss + (&kl * cfg.beta)?)?;
        Some(kl)
    } else {
        None
    };
    Ok(PerToken { loss, kl, ratio })
}

/// One micro-batch's share of the step's loss.
pub fn aggregate(
    per_token: &Tensor,
    mask: &Tensor,
    aggregation: Aggregation,
    max_completion_length: usize,
    window: Window,
) -> Result<Tensor> {
    let mask = mask.to_dtype(per_token.dtype())?;
    let masked = per_token.mul(&mask)?;
    let steps = window.accumulation_steps.max(1) as f64;
    match aggregation {
        Aggregation::SequenceMean => {
            let lens = mask.sum(1)?.clamp(1.0, f64::INFINITY)?;
            masked.sum(1)?.div(&lens)?.mean_all()? / steps
        }
        Aggregation::BatchTokenMean => {
            let n = mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            masked.sum_all()? / (n.max(1.0) * steps)
        }
        Aggregation::ConstantLength => {
            let b = per_token.dim(0)?;
            masked.sum_all()? / ((b * max_completion_length.max(1)) as f64 * steps)
        }
        Aggregation::WindowTokenMean => masked.sum_all()? / window.tokens.max(1) as f64,
    }
}

/// The micro-batch's loss, with the KL and clipping statistics a run logs.
pub fn loss(cfg: &LossConfig, x: &LossInputs, window: Window) -> Result<LossOutput> {
    let terms = per_token_loss(cfg, x)?;
    let loss = aggregate(
        &terms.loss,
        x.mask,
        cfg.aggregation,
        cfg.max_completion_length,
        window,
    )?;
    let mask = x.mask.to_dtype(DType::F64)?;
    let n = mask.sum_all()?.to_scalar::<f64>()?.max(1.0);
    let masked_mean = |v: &Tensor| -> Result<f64> {
        Ok(v.to_dtype(DType::F64)?
            .mul(&mask)?
            .sum_all()?
            .to_scalar::<f64>()?
            / n)
    };
    let kl = terms.kl.as_ref().map(masked_mean).transpose()?;
    let clip_ratio = match cfg.objective {
        Objective::ClippedRatio => {
            let ratio = terms.ratio.detach().to_dtype(DType::F64)?;
            let (b, t) = ratio.dims2()?;
            let adv = x
                .advantages
                .to_dtype(DType::F64)?
                .reshape((b, 1))?
                .broadcast_as((b, t))?;
            let zero = adv.zeros_like()?;
            let low = ratio.lt(1.0 - cfg.epsilon_low)?.mul(&adv.lt(&zero)?)?;
            let high = ratio.gt(1.0 + cfg.epsilon_high)?.mul(&adv.gt(&zero)?)?;
            masked_mean(&(low + high)?.to_dtype(DType::F64)?)?
        }
        Objective::PolicyGradient => 0.0,
    };
    Ok(LossOutput {
        loss,
        kl,
        clip_ratio,
    })
}

/// GPG's correction for groups that carry no gradient: the batch's advantages are multiplied by
/// `B / (B - M)`, `M` the completions in zero-variance groups, so that the valid groups' gradient is
/// not diluted by the invalid ones. 1 when every group is valid; 0 when none is (nothing to learn).
pub fn gpg_scale(rewards: &[f32], group_size: usize, tolerance: f32) -> f32 {
    let total = rewards.len();
    if group_size == 0 || total == 0 {
        return 0.0;
    }
    let invalid: usize = rewards
        .chunks(group_size)
        .filter(|g| crate::gdqa::metrics::has_zero_variance(g, tolerance))
        .map(|g| g.len())
        .sum();
    if invalid == total {
        0.0
    } else {
        total as f32 / (total - invalid) as f32
    }
}
