//! anatomy-runtime: the lean inference runtime of anatomy-r1.
//!
//! It memory-maps GGUF files (`gguf`) and runs its own block-quantized kernels (`quant`); it never
//! depends on candle. The CPU engine and the C ABI arrive with their issues.

pub mod gguf;
pub mod quant;
