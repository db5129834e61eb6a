//! [`RuntimeError`]: every way loading a model or answering a question can fail on bad input.

use anatomy_models::qwen2_5_vl::positions::PositionError;
use anatomy_models::qwen2_5_vl::preprocess::PreprocessError;

use crate::backend::BackendError;
use crate::gguf::GgufError;
use crate::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Image(#[from] PreprocessError),
    #[error(transparent)]
    Positions(#[from] PositionError),
    #[error("the language model and the projector do not belong together: {0}")]
    Mismatch(String),
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
    #[error("the prompt needs {needed} tokens but the context holds {context}")]
    ContextOverflow { needed: usize, context: usize },
    #[error("an image was given but no vision projector (--mmproj) is loaded")]
    NoProjector,
    #[error("options: {0}")]
    Options(String),
    #[error("--max-image-tokens {0} is below the smallest image the processor makes (4 tokens)")]
    ImageTokens(usize),
}
