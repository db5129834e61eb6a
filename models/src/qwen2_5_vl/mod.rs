//! Qwen2.5-VL, the vision-language model of the Anatomy-R1 paper.
//!
//! - `config`: HF `config.json` and processor configs (transformers 4.x and 5.x dialects) -> [`Config`].
//! - `preprocess`: image loading, `smart_resize`, PIL-exact bicubic resampling, normalisation, patches.
//! - `template`: the Instruct chat template, `<|image_pad|>` expansion, stop tokens, tokenization.
//! - `sampling`: greedy and seeded temperature / top-p choice of the next token.
//! - `positions`: M-RoPE position ids (`get_rope_index`), vision rotary coordinates, window order.
//! - `candle` (feature `candle`): the differentiable reference implementation used for training.

pub mod config;
pub mod names;
pub mod positions;
pub mod preprocess;
pub mod recipe;
pub mod sampling;
pub mod template;

#[cfg(feature = "candle")]
pub mod candle;

pub use config::{Config, ConfigError, TextConfig, VisionConfig};
pub use preprocess::PreprocessParams;
