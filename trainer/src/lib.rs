//! anatomy-trainer: the parts of Anatomy-R1 (arXiv 2512.19512) that GRPO training stands on.
//!
//! - [`data`]: loaders for the Anatomy-R1, OmniMedVQA and our own JSONL question files, and the
//!   prompt rebuilt from the parsed parts so that augmentation can change each part.
//! - [`reward`]: the accuracy and format rewards, pure functions of a completion.
//! - [`ascl`]: the anatomical similarity curriculum (S(q), stages, pacing, distractor rebuild).
//! - [`gdqa`]: group diversity question augmentation (variants, hardness, invalid-gradient ratio).
//! - [`metrics`]: the per-step record a run logs so that the paper's two figures can be redrawn.
//!
//! The GRPO engine that drives these arrives with its own issue.

pub mod ascl;
pub mod data;
pub mod gdqa;
pub mod metrics;
pub mod reward;
pub mod rng;
