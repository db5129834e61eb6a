//! The line a run appends to `metrics.jsonl` after every optimizer step. The keys are the ones the
//! plots and the learning test read; `invalid_per_class` carries what the paper's second figure
//! draws.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: usize,
    /// Mean total reward over the step's completions.
    pub reward: f32,
    /// Mean accuracy reward.
    pub accuracy: f32,
    pub format_reward: f32,
    /// Mean S(q) of the step's questions (absent without a similarity source).
    pub sq: Option<f32>,
    /// Share of the step's groups with zero reward variance.
    pub invalid_ratio: f32,
    pub invalid_per_class: BTreeMap<String, f32>,
    /// Masked token mean of the KL estimate to the reference (absent when beta is 0).
    pub kl: Option<f64>,
    pub loss: f64,
    /// Mean completion length in tokens.
    pub completion_len: f32,
    pub lr: f64,
    pub stage: usize,
    pub grad_norm: f64,
    pub clip_ratio: f64,
}

/// Reads a `metrics.jsonl`.
pub fn read_metrics(path: &std::path::Path) -> Result<Vec<StepRecord>, super::RunError> {
    let text = std::fs::read_to_string(path).map_err(|e| super::RunError::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| super::RunError::Checkpoint {
                path: path.to_path_buf(),
                message: format!("bad metrics line: {e}"),
            })
        })
        .collect()
}
