//! [`ModelError`]: everything loading or running the candle model can report.
//!
//! Weight problems name the tensor and the file (or directory) they were looked up in, so a broken
//! checkpoint is diagnosable from the message alone.

use std::path::PathBuf;

use crate::qwen2_5_vl::config::ConfigError;
use crate::qwen2_5_vl::positions::PositionError;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: no weights (looked for model.safetensors.index.json and model.safetensors)")]
    NoWeights { dir: PathBuf },
    #[error("{path}: not a valid safetensors file: {problem}")]
    BadSafetensors { path: PathBuf, problem: String },
    #[error("{path}: not a valid safetensors index: {problem}")]
    BadIndex { path: PathBuf, problem: String },
    #[error("tensor `{name}` is missing from {location}")]
    MissingTensor { name: String, location: PathBuf },
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        file: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` in {file} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        name: String,
        file: PathBuf,
        dtype: String,
    },
    #[error("tensor `{name}` in {file}: {source}")]
    TensorLoad {
        name: String,
        file: PathBuf,
        // Boxed: candle's error is large and would bloat every `Result` of this crate.
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error(transparent)]
    Position(#[from] PositionError),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;
