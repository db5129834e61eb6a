//! The record a training run logs every step, one JSON line each, holding what the paper's two
//! figures plot: mean reward and mean S(q) (reward-and-sq.png), and the invalid-gradient ratio
//! overall and per answer class (invalid-gradient-ratio.png).

use std::io::Write;

use serde::Serialize;

use crate::gdqa::metrics::InvalidGradientRatio;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    /// The curriculum stage the batch came from (0 without a curriculum).
    pub stage: usize,
    pub mean_reward: f32,
    /// Mean S(q) of the batch's questions; absent when no similarity was computed.
    pub mean_sq: Option<f32>,
    pub invalid_gradient: InvalidGradientRatio,
}

/// Appends one step as a JSON line.
pub fn write_jsonl(out: &mut impl Write, m: &StepMetrics) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, m)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gdqa::metrics::{invalid_gradient_ratio, GroupOutcome, DEFAULT_TOLERANCE};

    #[test]
    fn a_step_is_one_json_line_with_the_plotted_keys() {
        let rewards = [1.0, 1.0];
        let groups = [GroupOutcome {
            class: "Liver",
            rewards: &rewards,
        }];
        let m = StepMetrics {
            step: 3,
            stage: 1,
            mean_reward: 0.5,
            mean_sq: Some(0.25),
            invalid_gradient: invalid_gradient_ratio(&groups, DEFAULT_TOLERANCE),
        };
        let mut buf = Vec::new();
        write_jsonl(&mut buf, &m).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["mean_sq"], 0.25);
        assert_eq!(v["invalid_gradient"]["ratio"], 1.0);
        assert_eq!(v["invalid_gradient"]["per_class"]["Liver"]["invalid"], 1);
    }
}
