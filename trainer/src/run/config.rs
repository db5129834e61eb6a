//! The run configuration (`run.toml`), with `--set key=value` overrides applied to the TOML before
//! it is read, so an override is checked exactly like the file (unknown keys are errors).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RunError;
use crate::grpo::{Aggregation, Method, RewardScaling};
use crate::lora::LoraConfig;
use crate::optim::OptimConfig;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// HF checkpoint directory of the base model.
    pub base: PathBuf,
    /// Question file (Anatomy-R1 JSON, OmniMedVQA JSON or JSONL).
    pub data: PathBuf,
    #[serde(default)]
    pub image_root: Option<PathBuf>,
    pub output_dir: PathBuf,
    #[serde(default)]
    pub method: Method,
    /// A checkpoint directory (e.g. an SFT run's `checkpoint`) whose adapters start this run.
    #[serde(default)]
    pub init: Option<PathBuf>,
    #[serde(default)]
    pub seed: u64,
    pub steps: usize,
    /// Questions per optimizer step (each one a group of `group_size` rollouts).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "default_group")]
    pub group_size: usize,
    #[serde(default = "default_max_new")]
    pub max_new_tokens: usize,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    /// `f32`, `bf16` or `f16` for the base weights (adapters stay f32).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Where the model runs: `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`.
    #[serde(default = "default_device")]
    pub device: String,
    /// Write a checkpoint every this many steps (and at the end); 0 only at the end.
    #[serde(default)]
    pub checkpoint_every: usize,
    /// What trains: LoRA adapters on the frozen base, or every weight of the language model.
    #[serde(default)]
    pub finetune: Finetune,
    /// Full fine-tuning only: train the vision tower too (frozen by default, as in the paper).
    #[serde(default)]
    pub train_vision: bool,
    /// Full fine-tuning only: resize images to at most this many pixels instead of the
    /// processor's `max_pixels`, and record the new bound in the checkpoints' processor file.
    /// Progressive resizing: a warm start on small images (few image tokens, fast steps)
    /// continued on larger ones, where a 3x3 grid cell spans whole merged patches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pixels: Option<usize>,
    /// The KL reference policy.
    #[serde(default)]
    pub reference: Reference,
    #[serde(default)]
    pub lora: LoraConfig,
    #[serde(default)]
    pub optim: OptimConfig,
    #[serde(default)]
    pub loss: LossOverrides,
    #[serde(default)]
    pub reward: RewardConfig,
    #[serde(default)]
    pub sft: SftConfig,
    #[serde(default)]
    pub ascl: AsclConfig,
    #[serde(default)]
    pub gdqa: GdqaConfig,
}

fn default_batch() -> usize {
    4
}
fn default_group() -> usize {
    8
}
fn default_max_new() -> usize {
    256
}
fn one() -> f64 {
    1.0
}
fn default_device() -> String {
    "cpu".into()
}

fn default_dtype() -> String {
    "f32".into()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Finetune {
    #[default]
    Lora,
    Full,
}

/// Where the reference log-probabilities of the KL term come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// `adapters_off` under LoRA, `frozen_copy` under full fine-tuning.
    #[default]
    Auto,
    /// The policy with its adapters switched off: the starting weights, with no second copy.
    AdaptersOff,
    /// A second, frozen model loaded from the starting weights.
    FrozenCopy,
}

impl RunConfig {
    /// The reference actually used: `auto` resolved by the fine-tuning mode.
    pub fn reference_model(&self) -> Reference {
        match (self.reference, self.finetune) {
            (Reference::Auto, Finetune::Lora) => Reference::AdaptersOff,
            (Reference::Auto, Finetune::Full) => Reference::FrozenCopy,
            (r, _) => r,
        }
    }
}

/// Changes to the method's default loss.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossOverrides {
    pub epsilon_low: Option<f64>,
    pub epsilon_high: Option<f64>,
    pub beta: Option<f64>,
    pub kl_ratio_correction: Option<bool>,
    pub aggregation: Option<Aggregation>,
    pub scale_rewards: Option<RewardScaling>,
    /// DAPO dynamic sampling: extra rounds of drawing when groups have no reward spread.
    pub max_resamples: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    pub accuracy: f32,
    pub format: f32,
}

impl Default for RewardConfig {
    fn default() -> Self {
        RewardConfig {
            accuracy: 1.0,
            format: 1.0,
        }
    }
}

/// What SFT trains the model to say.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// The reasoning text put between the think tags of the target; `{answer}` stands for the
    /// text of the option the target answers (the model names what it sees, then picks the
    /// letter of that option); `{options}` for the lettered option lines as the prompt lists
    /// them (restating them gives a small model many copy examples per answer, which is how it
    /// learns to find an option's letter by its text); `{caption}` for the question's caption
    /// (`anatomy synth` writes the structure of each grid cell: nine localisation examples per
    /// frame where the question asks one; a question without a caption is an error); `{cell}`
    /// for the caption's cell the question names, and a space (empty when it names none).
    pub think: String,
    /// `correct` (the SFT baseline) or `random` (a letter drawn at random: teaches the answer
    /// format and nothing about the answers, a warm start for GRPO).
    pub answer: SftAnswer,
    /// How many of each step's questions are also answered greedily for the `reward` and
    /// `accuracy` columns (0: all of the batch). Decoding costs more than the training step
    /// itself, so a long run measures a few questions per step; the columns then average those.
    pub greedy_samples: usize,
    /// Examples per forward and backward (0: the whole batch in one). The gradients of a step's
    /// micro-batches add up to the batch's, so this bounds activation memory on a large model
    /// without changing what is learned; one forward is fastest where memory allows.
    pub micro_batch: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            think: "Looking at the image.".into(),
            answer: SftAnswer::Correct,
            greedy_samples: 0,
            micro_batch: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SftAnswer {
    Correct,
    Random,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AsclConfig {
    pub enabled: bool,
    /// `policy`, `policy:<dir>`, `bert:<dir>` or `matrix:<file>`.
    pub embedder: String,
    pub stages: usize,
    /// Steps per stage.
    pub stage_steps: usize,
    pub replay: f32,
}

impl Default for AsclConfig {
    fn default() -> Self {
        AsclConfig {
            enabled: false,
            embedder: "policy".into(),
            stages: 3,
            stage_steps: 100,
            replay: 0.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GdqaConfig {
    pub enabled: bool,
    /// Variants a hard question's group is spread over.
    pub variants: usize,
    /// Augment every question, not only hard ones.
    pub always: bool,
    /// Also hard when the rolling accuracy is below this.
    pub accuracy_below: Option<f32>,
}

impl Default for GdqaConfig {
    fn default() -> Self {
        GdqaConfig {
            enabled: false,
            variants: 4,
            always: false,
            accuracy_below: None,
        }
    }
}

impl RunConfig {
    /// Reads `path` and applies `overrides` (`key.path=value`, the value a TOML literal or else a
    /// bare string).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, RunError> {
        let text = std::fs::read_to_string(path).map_err(|e| RunError::io(path, e))?;
        Self::parse(&text, overrides).map_err(|e| match e {
            RunError::Config(m) => RunError::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn parse(text: &str, overrides: &[String]) -> Result<Self, RunError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| RunError::Config(e.to_string()))?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: RunConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| RunError::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), RunError> {
        let bad = |m: &str| Err(RunError::Config(m.to_string()));
        if self.steps == 0 || self.batch_size == 0 {
            return bad("steps and batch_size must be positive");
        }
        if self.method.is_rl() && self.group_size < 2 {
            return bad("group_size must be at least 2 for a group-relative method");
        }
        if self.max_new_tokens == 0 {
            return bad("max_new_tokens must be positive");
        }
        if !["f32", "bf16", "f16"].contains(&self.dtype.as_str()) {
            return bad("dtype must be f32, bf16 or f16");
        }
        self.cuda_ordinal()?;
        if self.train_vision && self.finetune != Finetune::Full {
            return bad(
                "train_vision needs finetune = \"full\" (LoRA adapts the language model only)",
            );
        }
        if self.max_pixels.is_some() && self.finetune != Finetune::Full {
            return bad("max_pixels needs finetune = \"full\": a LoRA run's export takes the processor of its base");
        }
        if self.max_pixels.is_some_and(|m| m < 28 * 28) {
            return bad("max_pixels must be at least 784 (one merged 28x28 patch)");
        }
        if self.finetune == Finetune::Full && self.reference == Reference::AdaptersOff {
            return bad("reference = \"adapters_off\" needs finetune = \"lora\": full fine-tuning has no adapters to switch off; use frozen_copy");
        }
        Ok(())
    }

    /// `None` for the CPU, the GPU's ordinal for `cuda` / `cuda:N`.
    pub fn cuda_ordinal(&self) -> Result<Option<usize>, RunError> {
        match self.device.as_str() {
            "cpu" => Ok(None),
            "cuda" => Ok(Some(0)),
            d => d
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Some)
                .ok_or_else(|| RunError::Config("device must be cpu, cuda or cuda:N".into())),
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn apply_override(table: &mut toml::Table, spec: &str) -> Result<(), RunError> {
    let (key, raw) = spec
        .split_once('=')
        .ok_or_else(|| RunError::Config(format!("--set {spec}: expected key=value")))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut t = table;
    for p in &parts[..parts.len() - 1] {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| RunError::Config(format!("--set {key}: {p} is not a section")))?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
base = "m"
data = "d.jsonl"
output_dir = "out"
steps = 10
method = "dapo"
[lora]
rank = 4
"#;

    #[test]
    fn overrides_apply_before_checking() {
        let c = RunConfig::parse(
            BASE,
            &[
                "lora.rank=2".into(),
                "output_dir=/tmp/x".into(),
                "gdqa.enabled=true".into(),
                "optim.lr=0.001".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.lora.rank, 2);
        assert_eq!(c.output_dir, PathBuf::from("/tmp/x"));
        assert!(c.gdqa.enabled);
        assert_eq!(c.optim.lr, 1e-3);
        assert_eq!(c.method, Method::Dapo);
        assert!(RunConfig::parse(BASE, &["lora.rnak=2".into()]).is_err());
        assert!(RunConfig::parse(BASE, &["group_size=1".into()]).is_err());
        assert_eq!(c.reference_model(), Reference::AdaptersOff);
        let full = RunConfig::parse(BASE, &["finetune=\"full\"".into()]).unwrap();
        assert_eq!(full.reference_model(), Reference::FrozenCopy);
        assert!(RunConfig::parse(BASE, &["train_vision=true".into()]).is_err());
        assert!(RunConfig::parse(BASE, &["max_pixels=28224".into()]).is_err());
        assert!(
            RunConfig::parse(BASE, &["finetune=\"full\"".into(), "max_pixels=100".into()]).is_err()
        );
        let c = RunConfig::parse(
            BASE,
            &["finetune=\"full\"".into(), "max_pixels=28224".into()],
        )
        .unwrap();
        assert_eq!(c.max_pixels, Some(28224));
        assert!(RunConfig::parse(
            BASE,
            &[
                "finetune=\"full\"".into(),
                "reference=\"adapters_off\"".into()
            ]
        )
        .is_err());
        let again = RunConfig::parse(&c.to_toml(), &[]).unwrap();
        assert_eq!(again, c);
    }
}
