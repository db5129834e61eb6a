//! The training methods a run names, and the loss each one means by default. Every field stays
//! overridable from the run config; these are the published settings.

use serde::{Deserialize, Serialize};

use super::advantages::RewardScaling;
use super::loss::{Aggregation, LossConfig, Objective};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Cross-entropy on the target answer (the paper's SFT baseline and the format warm start).
    Sft,
    /// GRPO as in DeepSeekMath and ms-swift 3.x: symmetric clip 0.2, KL beta 0.04, sequence mean.
    #[default]
    Grpo,
    /// DAPO: clip-higher (0.2 / 0.28), no KL, token mean over the window, dynamic sampling.
    Dapo,
    /// GPG: no ratio or clip, no KL, token mean, advantages scaled by the share of valid groups.
    Gpg,
    /// Dr. GRPO: unscaled advantages, constant-length aggregation, no KL.
    DrGrpo,
}

impl Method {
    pub fn is_rl(self) -> bool {
        self != Method::Sft
    }

    /// The method's default loss. SFT has none of these terms; it gets GRPO's so that the value is
    /// always defined, and never reads it.
    pub fn loss_config(self, max_completion_length: usize) -> LossConfig {
        let base = LossConfig {
            objective: Objective::ClippedRatio,
            epsilon_low: 0.2,
            epsilon_high: 0.2,
            beta: 0.04,
            kl_ratio_correction: false,
            aggregation: Aggregation::SequenceMean,
            max_completion_length,
        };
        match self {
            Method::Sft | Method::Grpo => base,
            Method::Dapo => LossConfig {
                epsilon_high: 0.28,
                beta: 0.0,
                aggregation: Aggregation::WindowTokenMean,
                ..base
            },
            Method::Gpg => LossConfig {
                objective: Objective::PolicyGradient,
                beta: 0.0,
                aggregation: Aggregation::WindowTokenMean,
                ..base
            },
            Method::DrGrpo => LossConfig {
                beta: 0.0,
                aggregation: Aggregation::ConstantLength,
                ..base
            },
        }
    }

    pub fn reward_scaling(self) -> RewardScaling {
        match self {
            Method::DrGrpo => RewardScaling::None,
            _ => RewardScaling::Group,
        }
    }

    /// Whether zero-variance groups are replaced by fresh draws.
    pub fn dynamic_sampling(self) -> bool {
        self == Method::Dapo
    }
}
