//! anatomy-runtime: the lean inference runtime of anatomy-r1. It never depends on candle.
//!
//! - `gguf`, `quant`: memory-mapped GGUF files and ggml block formats with their dot products.
//! - `backend`: the kernel set as a trait, and the CPU backend.
//! - `model`: the Qwen2.5-VL forward pass (vision tower, merger, decoder) written against it.
//! - `tokenizer`: byte-level BPE from the file's `tokenizer.ggml.*` metadata.
//! - `lookup`: drafted tokens for prompt-lookup decoding.
//! - `sampling`: next-token choice; `generate`: prompts, the decode loop, option scoring.
//! - `session`: [`Model`] (shared, read-only) and [`Session`] (one conversation).

pub mod backend;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod lookup;
pub mod model;
pub mod quant;
pub mod sampling;
pub mod session;
pub mod tokenizer;

pub use error::RuntimeError;
pub use generate::{Answer, AskRequest, FinishReason, Flow, ImageInput, Timings};
pub use sampling::SamplingParams;
pub use session::{ImageHandle, Model, ModelOptions, Session};
pub use tokenizer::Tokenizer;
