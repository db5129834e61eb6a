//! The invalid-gradient ratio: the share of rollout groups whose rewards all agree (zero variance,
//! so zero advantage and no gradient), overall and per answer class, as the paper plots it.

use std::collections::BTreeMap;

use serde::Serialize;

/// The default tolerance on a group's reward spread: rewards are sums of 0/1 terms times weights,
/// so anything below this is rounding, not disagreement.
pub const DEFAULT_TOLERANCE: f32 = 1e-6;

/// True when the group's rewards span no more than `tol` (max minus min), i.e. its variance is zero
/// up to rounding. A group of fewer than two rollouts cannot disagree and counts as zero variance.
pub fn has_zero_variance(rewards: &[f32], tol: f32) -> bool {
    let (lo, hi) = rewards
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &r| {
            (lo.min(r), hi.max(r))
        });
    rewards.len() < 2 || hi - lo <= tol
}

/// One rollout group of a step: the answer class of its question and its rewards.
#[derive(Clone, Copy, Debug)]
pub struct GroupOutcome<'a> {
    pub class: &'a str,
    pub rewards: &'a [f32],
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClassRatio {
    pub groups: usize,
    pub invalid: usize,
    pub ratio: f32,
}

/// The invalid-gradient ratio of one step.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InvalidGradientRatio {
    pub groups: usize,
    pub invalid: usize,
    pub ratio: f32,
    pub per_class: BTreeMap<String, ClassRatio>,
}

pub fn invalid_gradient_ratio(groups: &[GroupOutcome<'_>], tol: f32) -> InvalidGradientRatio {
    let mut out = InvalidGradientRatio::default();
    for g in groups {
        let invalid = has_zero_variance(g.rewards, tol);
        let c = out.per_class.entry(g.class.to_string()).or_default();
        c.groups += 1;
        out.groups += 1;
        if invalid {
            c.invalid += 1;
            out.invalid += 1;
        }
    }
    let ratio = |i: usize, n: usize| if n == 0 { 0.0 } else { i as f32 / n as f32 };
    out.ratio = ratio(out.invalid, out.groups);
    for c in out.per_class.values_mut() {
        c.ratio = ratio(c.invalid, c.groups);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_variance_uses_a_tolerance() {
        assert!(has_zero_variance(&[1.0, 1.0, 1.0], 1e-6));
        assert!(has_zero_variance(&[0.0, 0.0], 1e-6));
        // 0.1 + 0.2 vs 0.3 differ in the last bit: equal for training purposes.
        assert!(has_zero_variance(&[0.1 + 0.2, 0.3, 0.3], 1e-6));
        assert!(!has_zero_variance(&[1.0, 0.0, 1.0], 1e-6));
        assert!(!has_zero_variance(&[0.3, 0.3001], 1e-6));
        assert!(has_zero_variance(&[0.3, 0.3001], 1e-3));
        assert!(has_zero_variance(&[0.5], 1e-6));
    }

    #[test]
    fn ratio_overall_and_per_class() {
        let all_right = [2.0, 2.0, 2.0, 2.0];
        let mixed = [2.0, 1.0, 0.0, 1.0];
        let all_wrong = [0.0; 4];
        let g = [
            GroupOutcome {
                class: "Liver",
                rewards: &all_right,
            },
            GroupOutcome {
                class: "Liver",
                rewards: &mixed,
            },
            GroupOutcome {
                class: "Gut",
                rewards: &all_wrong,
            },
            GroupOutcome {
                class: "Omentum",
                rewards: &mixed,
            },
        ];
        let r = invalid_gradient_ratio(&g, DEFAULT_TOLERANCE);
        assert_eq!((r.groups, r.invalid), (4, 2));
        assert!((r.ratio - 0.5).abs() < 1e-6);
        assert_eq!(
            r.per_class["Liver"],
            ClassRatio {
                groups: 2,
                invalid: 1,
                ratio: 0.5
            }
        );
        assert_eq!(r.per_class["Gut"].ratio, 1.0);
        assert_eq!(r.per_class["Omentum"].ratio, 0.0);
        assert_eq!(invalid_gradient_ratio(&[], DEFAULT_TOLERANCE).ratio, 0.0);
    }
}
