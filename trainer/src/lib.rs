//! anatomy-trainer: the parts of Anatomy-R1 (arXiv 2512.19512) that GRPO training stands on.
//!
//! - [`data`]: loaders for the Anatomy-R1, OmniMedVQA and our own JSONL question files, and the
//!   prompt rebuilt from the parsed parts so that augmentation can change each part.
//! - [`reward`]: the accuracy and format rewards, pure functions of a completion.
//! - [`ascl`]: the anatomical similarity curriculum (S(q), stages, pacing, distractor rebuild).
//! - [`gdqa`]: group diversity question augmentation (variants, hardness, invalid-gradient ratio).
//! - [`metrics`]: the per-step record a run logs so that the paper's two figures can be redrawn.
//!
//! - [`grpo`]: rollouts, advantages and the GRPO / DAPO / GPG / Dr. GRPO losses.
//! - [`lora`] and [`optim`]: LoRA adapters, AdamW, schedule, clipping, accumulation.
//! - [`weights`]: a checkpoint's chain of `init`s merged into a model, and the `VarMap` model that
//!   full fine-tuning trains.
//! - [`run`]: training runs from a `run.toml`, metrics, checkpoints and resume.
//! - [`eval`]: greedy accuracy per answer class and the confusion matrix of a model or checkpoint.
//! - [`export`]: LoRA adapters folded into the base's HF safetensors, for `anatomy export`.

pub mod ascl;
pub mod base;
pub mod data;
pub mod eval;
pub mod export;
pub mod gdqa;
pub mod grpo;
pub mod lora;
pub mod metrics;
pub mod optim;
pub mod reward;
pub mod rng;
pub mod run;
pub mod synth;
pub mod weights;
