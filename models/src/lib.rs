//! anatomy-models: what an architecture *is*, shared by the trainer and the runtime.
//!
//! Each architecture lives in one folder with its config beside it (`qwen2_5_vl/`). Everything here
//! except the `candle` submodule is plain Rust, so the lean runtime can use configs, preprocessing,
//! the chat template and M-RoPE positions without pulling candle in.

pub mod qwen2_5_vl;
