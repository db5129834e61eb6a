//! Training runs: a `run.toml` resolved into a [`Trainer`] that loads the base model, the data,
//! LoRA adapters and the optimizer, then steps SFT or a GRPO-family method with the ASCL curriculum
//! and GDQA augmentation, logging one `metrics.jsonl` line per step and writing checkpoints that a
//! resume continues from exactly.
//!
//! - [`config`]: [`RunConfig`] and `--set` overrides.
//! - [`trainer`]: [`Trainer`], one step at a time.
//! - [`sampling`]: which questions a step draws (curriculum or shuffled epochs), replayable.
//! - [`checkpoint`]: adapters, optimizer moments and run state, written to a temporary directory
//!   and renamed into place.
//! - [`image_cache`]: per image, the vision output or pixels kept between steps, within a budget.
//! - [`record`]: the per-step metrics line.
//! - [`plot`]: PNG figures of one or more runs' metrics (reward with S(q), invalid-gradient ratio).
//! - [`sft_target`]: the text an SFT step trains the model to write.
//! - [`synthetic`]: a small image multiple-choice task whose answer is the image's colour, for the
//!   learning test and `configs/tiny-cpu.toml`.

pub mod checkpoint;
pub mod config;
pub mod image_cache;
pub mod plot;
pub mod record;
pub mod sampling;
pub mod sft_target;
pub mod synthetic;
pub mod trainer;

use std::path::{Path, PathBuf};

pub use config::RunConfig;
pub use record::StepRecord;
pub use trainer::Trainer;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    Ascl(#[from] crate::ascl::AsclError),
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    #[error(transparent)]
    Grpo(#[from] crate::grpo::GrpoError),
    #[error(transparent)]
    Model(#[from] anatomy_models::qwen2_5_vl::candle::ModelError),
    #[error(transparent)]
    Template(#[from] anatomy_models::qwen2_5_vl::template::TemplateError),
    #[error(transparent)]
    Preprocess(#[from] anatomy_models::qwen2_5_vl::preprocess::PreprocessError),
    #[error(transparent)]
    ModelConfig(#[from] anatomy_models::qwen2_5_vl::config::ConfigError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl RunError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
