//! anatomy-runtime: the lean inference runtime of anatomy-r1.
//!
//! It will memory-map GGUF files, run its own quantized kernels behind a backend interface and expose
//! a C ABI; it never depends on candle. The GGUF reader and the CPU engine arrive with their issues
//! (see the README's architecture section); until then this crate is intentionally empty.
