//! Which questions are hard enough to get GDQA variants: those whose last group had zero reward
//! variance, or whose rolling accuracy is under a threshold, or all of them (configurable).

use std::collections::{HashMap, VecDeque};

use super::metrics::{has_zero_variance, DEFAULT_TOLERANCE};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HardnessConfig {
    /// Hard when the last group's rewards all agreed (all wrong or all right).
    pub zero_variance: bool,
    /// Hard when the mean accuracy over the last `window` groups is below this.
    pub accuracy_below: Option<f32>,
    pub window: usize,
    /// Every question is hard (augment always).
    pub always: bool,
    /// Tolerance of the zero-variance test.
    pub tolerance: f32,
}

impl Default for HardnessConfig {
    fn default() -> Self {
        Self {
            zero_variance: true,
            accuracy_below: None,
            window: 4,
            always: false,
            tolerance: DEFAULT_TOLERANCE,
        }
    }
}

#[derive(Debug, Default)]
struct History {
    last_zero_variance: bool,
    accuracy: VecDeque<f32>,
}

/// Remembers each question's recent groups. A question never seen is not hard (there is no
/// evidence yet) unless `always` is set.
#[derive(Debug)]
pub struct HardnessTracker {
    config: HardnessConfig,
    history: HashMap<String, History>,
}

impl HardnessTracker {
    pub fn new(config: HardnessConfig) -> Self {
        Self {
            config,
            history: HashMap::new(),
        }
    }

    /// Records a finished group of question `id`: its total rewards and its accuracy rewards.
    pub fn record(&mut self, id: &str, rewards: &[f32], accuracies: &[f32]) {
        let window = self.config.window.max(1);
        let h = self.history.entry(id.to_string()).or_default();
        h.last_zero_variance = has_zero_variance(rewards, self.config.tolerance);
        if !accuracies.is_empty() {
            h.accuracy
                .push_back(accuracies.iter().sum::<f32>() / accuracies.len() as f32);
            while h.accuracy.len() > window {
                h.accuracy.pop_front();
            }
        }
    }

    pub fn is_hard(&self, id: &str) -> bool {
        if self.config.always {
            return true;
        }
        let Some(h) = self.history.get(id) else {
            return false;
        };
        let by_variance = self.config.zero_variance && h.last_zero_variance;
        let by_accuracy = match self.config.accuracy_below {
            Some(t) if !h.accuracy.is_empty() => {
                h.accuracy.iter().sum::<f32>() / (h.accuracy.len() as f32) < t
            }
            _ => false,
        };
        by_variance || by_accuracy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_variance_rule() {
        let mut t = HardnessTracker::new(HardnessConfig::default());
        assert!(!t.is_hard("q"));
        t.record("q", &[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0]);
        assert!(t.is_hard("q"), "all wrong");
        t.record("q", &[2.0, 0.0, 1.0], &[1.0, 0.0, 0.0]);
        assert!(!t.is_hard("q"), "mixed");
        t.record("q", &[2.0, 2.0, 2.0], &[1.0, 1.0, 1.0]);
        assert!(t.is_hard("q"), "all right");
        assert!(!t.is_hard("other"));
    }

    #[test]
    fn rolling_accuracy_rule() {
        let mut t = HardnessTracker::new(HardnessConfig {
            zero_variance: false,
            accuracy_below: Some(0.5),
            window: 2,
            ..Default::default()
        });
        t.record("q", &[1.0, 0.0], &[1.0, 0.0]);
        assert!(!t.is_hard("q"), "0.5 is not under 0.5");
        t.record("q", &[0.0, 0.0], &[0.0, 0.0]);
        assert!(t.is_hard("q"), "mean of 0.5 and 0 is 0.25");
        t.record("q", &[1.0, 1.0], &[1.0, 1.0]);
        assert!(!t.is_hard("q"), "the window now holds 0 and 1: 0.5 again");
    }

    #[test]
    fn always_rule() {
        let t = HardnessTracker::new(HardnessConfig {
            always: true,
            ..Default::default()
        });
        assert!(t.is_hard("never seen"));
    }
}
