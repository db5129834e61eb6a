//! The candle implementation of Qwen2.5-VL (feature `candle`): training and numerical reference,
//! written to match HF transformers number for number.
//!
//! - `model`: [`Qwen25VL`] — loading, vision forward, prompt embedding, prefill, cached decoding.
//! - `text`: the Qwen2 language model with M-RoPE ([`TextModel`], [`Positions`], [`LogitsMode`]).
//! - `vision`: the window-attention vision tower and patch merger ([`VisionTower`]).
//! - `rotary`: M-RoPE and vision rotary cos/sin tables.
//! - `ops`: RMSNorm, rotate-half rotary, softmax attention with grouped KV heads.
//! - `fused`: attention's softmax, the rotary and RMSNorm as CPU custom ops with their own
//!   backward passes (the trainer's step time).
//! - `adapter`: LoRA adapters on the language model's linear layers, switchable as a whole.
//! - `kv_cache`: the append-only per-layer KV [`Cache`].
//! - `weights`: safetensors checkpoints (single or sharded, hub or transformers-5 key layout).
//! - `error`: [`ModelError`].
//!
//! The language-model path uses only candle ops that have backward passes, so gradients flow from
//! the logits into every weight and into the input embeddings.

// Re-exported so dependents (and the workspace's integration tests) build VarMaps, VarBuilders
// and tensors with exactly the candle versions this crate was compiled against.
pub use candle_core;
pub use candle_nn;

pub mod adapter;
pub mod error;
pub mod fused;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod rotary;
pub mod text;
pub mod vision;
pub mod weights;

pub use adapter::{AdapterControl, LowRank};
pub use error::ModelError;
pub use kv_cache::Cache;
pub use model::{argmax, Qwen25VL};
pub use text::{LogitsMode, Positions, TextModel};
pub use vision::VisionTower;
pub use weights::{KeyLayout, SafetensorsIndex};
