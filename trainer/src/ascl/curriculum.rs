//! Curriculum stages by S(q) quantile, and the pacing that moves training from one stage to the
//! next (a fixed number of steps, or when the stage's rolling reward passes a threshold), with an
//! optional replay of earlier stages so that easy questions are not forgotten.

use std::collections::VecDeque;

use serde::Serialize;

use super::AsclError;
use crate::rng::SplitMix64;

/// One stage: the questions (indices into the data set) and the range of their S(q).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stage {
    pub stage: usize,
    #[serde(skip)]
    pub members: Vec<usize>,
    pub count: usize,
    pub sq_min: f32,
    pub sq_mean: f32,
    pub sq_max: f32,
}

/// Orders questions by S(q) (easy, dissimilar choices first) and cuts them into `stages` groups of
/// about equal size, in training order.
///
/// Questions with the same S(q) always share a stage, so a cut moves forward past ties; when ties
/// swallow a whole quantile fewer stages come back than were asked for. NaN is an error.
pub fn split_stages(sq: &[f32], stages: usize) -> Result<Vec<Stage>, AsclError> {
    if stages == 0 {
        return Err(AsclError::Curriculum("at least one stage is needed".into()));
    }
    if let Some(i) = sq.iter().position(|s| !s.is_finite()) {
        return Err(AsclError::Curriculum(format!(
            "S(q) of question {i} is not finite"
        )));
    }
    let mut order: Vec<usize> = (0..sq.len()).collect();
    order.sort_by(|&a, &b| sq[a].total_cmp(&sq[b]).then(a.cmp(&b)));
    let n = order.len();
    let mut out = Vec::new();
    let mut start = 0;
    for k in 1..=stages {
        let mut end = (k * n).div_ceil(stages).max(start);
        while end < n && end > 0 && sq[order[end]] == sq[order[end - 1]] {
            end += 1;
        }
        if end > start {
            let members: Vec<usize> = order[start..end].to_vec();
            let vals: Vec<f32> = members.iter().map(|&i| sq[i]).collect();
            out.push(Stage {
                stage: out.len(),
                count: members.len(),
                sq_min: vals[0],
                sq_max: vals[vals.len() - 1],
                sq_mean: vals.iter().sum::<f32>() / vals.len() as f32,
                members,
            });
        }
        start = end;
    }
    Ok(out)
}

/// When to move to the next stage.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// After this many steps in each stage.
    Steps(usize),
    /// When the mean of the last `window` step rewards in the stage reaches `threshold`.
    Reward { threshold: f32, window: usize },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurriculumConfig {
    pub pacing: Pacing,
    /// Share of each batch drawn from earlier stages (0 for none).
    pub replay: f32,
    pub seed: u64,
}

impl Default for CurriculumConfig {
    fn default() -> Self {
        Self {
            pacing: Pacing::Steps(100),
            replay: 0.0,
            seed: 0,
        }
    }
}

/// Walks the stages: hands out batches from the current stage (plus replay) and advances per the
/// pacing. The last stage is never left.
#[derive(Debug)]
pub struct Curriculum {
    stages: Vec<Stage>,
    config: CurriculumConfig,
    current: usize,
    steps_in_stage: usize,
    rewards: VecDeque<f32>,
    rng: SplitMix64,
    /// Each stage's shuffled order and how far it has been drawn, so that a stage is seen whole
    /// before any question repeats.
    queues: Vec<(Vec<usize>, usize)>,
}

impl Curriculum {
    pub fn new(stages: Vec<Stage>, config: CurriculumConfig) -> Result<Self, AsclError> {
        if stages.is_empty() || stages.iter().any(|s| s.members.is_empty()) {
            return Err(AsclError::Curriculum("every stage needs questions".into()));
        }
        if !(0.0..1.0).contains(&config.replay) {
            return Err(AsclError::Curriculum(format!(
                "replay fraction {} is outside [0, 1)",
                config.replay
            )));
        }
        match config.pacing {
            Pacing::Steps(0) => {
                return Err(AsclError::Curriculum(
                    "steps per stage must be positive".into(),
                ))
            }
            Pacing::Reward { window: 0, .. } => {
                return Err(AsclError::Curriculum(
                    "reward window must be positive".into(),
                ))
            }
            Pacing::Reward { threshold, .. } if !threshold.is_finite() => {
                return Err(AsclError::Curriculum(
                    "reward threshold must be finite".into(),
                ))
            }
            _ => {}
        }
        let queues = stages
            .iter()
            .map(|s| (s.members.clone(), usize::MAX))
            .collect();
        Ok(Self {
            stages,
            rng: SplitMix64::new(config.seed),
            config,
            current: 0,
            steps_in_stage: 0,
            rewards: VecDeque::new(),
            queues,
        })
    }

    pub fn stage(&self) -> usize {
        self.current
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    fn draw(&mut self, stage: usize) -> usize {
        let (order, pos) = &mut self.queues[stage];
        if *pos >= order.len() {
            self.rng.shuffle(order);
            *pos = 0;
        }
        *pos += 1;
        order[*pos - 1]
    }

    /// The next batch of question indices: `round(replay * size)` from earlier stages (none in the
    /// first), the rest from the current one.
    pub fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let replay = if self.current == 0 {
            0
        } else {
            (self.config.replay as f64 * size as f64).round() as usize
        };
        let mut batch = Vec::with_capacity(size);
        for _ in 0..replay {
            let stage = self.rng.below(self.current);
            batch.push(self.draw(stage));
        }
        for _ in replay..size {
            batch.push(self.draw(self.current));
        }
        batch
    }

    /// Records one step's mean reward; returns true when this moved training to the next stage.
    pub fn record(&mut self, mean_reward: f32) -> bool {
        self.steps_in_stage += 1;
        let advance = match self.config.pacing {
            Pacing::Steps(n) => self.steps_in_stage >= n,
            Pacing::Reward { threshold, window } => {
                self.rewards.push_back(mean_reward);
                if self.rewards.len() > window {
                    self.rewards.pop_front();
                }
                self.rewards.len() == window
                    && self.rewards.iter().sum::<f32>() / window as f32 >= threshold
            }
        };
        if advance && self.current + 1 < self.stages.len() {
            self.current += 1;
            self.steps_in_stage = 0;
            self.rewards.clear();
            true
        } else {
            false
        }
    }
}

/// Mean S(q) of a batch, the quantity the paper plots next to reward.
pub fn mean_sq(batch: &[usize], sq: &[f32]) -> Option<f32> {
    let vals: Vec<f32> = batch.iter().filter_map(|&i| sq.get(i).copied()).collect();
    (!vals.is_empty() && vals.len() == batch.len())
        .then(|| vals.iter().sum::<f32>() / vals.len() as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_follow_sq_and_keep_ties_together() {
        let sq = [0.9, 0.1, 0.5, 0.5, 0.5, 0.2, 0.8, 0.3, 0.7];
        let stages = split_stages(&sq, 3).unwrap();
        let counts: Vec<usize> = stages.iter().map(|s| s.count).collect();
        assert_eq!(counts.iter().sum::<usize>(), sq.len());
        for w in stages.windows(2) {
            assert!(w[0].sq_max < w[1].sq_min, "{stages:?}");
        }
        assert_eq!(stages[0].members, vec![1, 5, 7]);
        // The three 0.5 share the middle stage.
        assert_eq!(stages[1].members, vec![2, 3, 4]);
        assert_eq!(stages[2].members, vec![8, 6, 0]);
        assert!((stages[2].sq_mean - 0.8).abs() < 1e-6);
        // All equal: one stage however many are asked for.
        assert_eq!(split_stages(&[0.4; 5], 3).unwrap().len(), 1);
        assert!(split_stages(&[0.1, f32::NAN], 2).is_err());
        assert!(split_stages(&[0.1], 0).is_err());
    }

    fn curriculum(pacing: Pacing, replay: f32) -> Curriculum {
        let sq: Vec<f32> = (0..30).map(|i| i as f32 / 30.0).collect();
        let stages = split_stages(&sq, 3).unwrap();
        Curriculum::new(
            stages,
            CurriculumConfig {
                pacing,
                replay,
                seed: 1,
            },
        )
        .unwrap()
    }

    #[test]
    fn step_pacing_advances_and_stops_at_the_last_stage() {
        let mut c = curriculum(Pacing::Steps(2), 0.0);
        let mut seen = Vec::new();
        for _ in 0..8 {
            let b = c.next_batch(4);
            let stage = c.stage();
            assert!(b.iter().all(|&i| i / 10 == stage), "{b:?} in stage {stage}");
            seen.push(stage);
            c.record(0.0);
        }
        assert_eq!(seen, vec![0, 0, 1, 1, 2, 2, 2, 2]);
    }

    #[test]
    fn a_stage_is_drawn_whole_before_repeating() {
        let mut c = curriculum(Pacing::Steps(100), 0.0);
        let mut b = c.next_batch(10);
        b.sort();
        assert_eq!(b, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn reward_pacing_waits_for_a_full_window_over_threshold() {
        let mut c = curriculum(
            Pacing::Reward {
                threshold: 0.5,
                window: 3,
            },
            0.0,
        );
        assert!(!c.record(0.9));
        assert!(!c.record(0.9));
        // The window is full only now: 0.9, 0.9, 0.0 averages 0.6, over 0.5.
        assert!(c.record(0.0));
        assert_eq!(c.stage(), 1);
        assert!(!c.record(0.2));
        assert!(!c.record(0.2));
        assert!(!c.record(0.2));
        assert_eq!(c.stage(), 1);
        assert!(!c.record(0.9));
        assert!(c.record(0.9));
        assert_eq!(c.stage(), 2);
    }

    #[test]
    fn replay_draws_from_earlier_stages_only() {
        let mut c = curriculum(Pacing::Steps(1), 0.25);
        assert!(
            c.next_batch(8).iter().all(|&i| i < 10),
            "no replay in stage 0"
        );
        c.record(0.0);
        c.record(0.0);
        assert_eq!(c.stage(), 2);
        let b = c.next_batch(8);
        assert_eq!(b.iter().filter(|&&i| i < 20).count(), 2);
        assert_eq!(b.iter().filter(|&&i| i >= 20).count(), 6);
        assert!(Curriculum::new(
            split_stages(&[0.1], 1).unwrap(),
            CurriculumConfig {
                replay: 1.0,
                ..Default::default()
            }
        )
        .is_err());
    }

    #[test]
    fn mean_sq_of_a_batch() {
        assert_eq!(mean_sq(&[0, 2], &[0.2, 0.9, 0.4]), Some(0.3));
        assert_eq!(mean_sq(&[], &[0.2]), None);
        assert_eq!(mean_sq(&[5], &[0.2]), None);
    }
}
