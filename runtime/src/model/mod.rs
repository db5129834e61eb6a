//! The Qwen2.5-VL forward pass, written once against [`crate::backend::Backend`].
//!
//! - `weights`: the files' tensors as backend handles, by llama.cpp's names.
//! - `rope`: M-RoPE and vision rotary tables.
//! - `vision`: patch embedding, window/full-attention blocks, merger.
//! - `text`: the decoder with its KV cache.

pub mod rope;
pub mod text;
pub mod vision;
pub mod weights;

pub use text::{TextModel, TextState};
pub use vision::{VisionModel, VisionScratch};
