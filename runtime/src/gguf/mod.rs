//! GGUF files: a zero-copy reader over a memory map and a streaming writer.
//!
//! - `error`: [`GgufError`], every bad-input case named with the file and the key or tensor.
//! - `value`: metadata value types and borrowed views of values (arrays decoded lazily).
//! - `cursor`: bounds-checked little-endian reads, the only way the parser touches bytes.
//! - `reader`: [`GgufFile`], the parsed header over the map; tensors as [`TensorView`]s.
//! - `writer`: [`GgufWriter`], metadata and tensor infos up front, data streamed tensor by tensor
//!   into a temporary file renamed into place at the end.
//! - `chunks`: the writer's output buffer, which writes whole 4 MiB chunks (so the page cache
//!   holds a new file in folios a map can put on huge pages).
//! - `qwen2vl`: typed accessors for the two files of a Qwen2.5-VL deployment (`qwen2vl` language
//!   model and `clip` vision projector) with required-key and tensor-shape checks.
//!
//! We parse ourselves rather than use `gguf-rs`: that crate reads the header through `std::io` into
//! owned structures sized by the file's counts, while we need borrowed views into the map and a
//! bound on every allocation taken from the file.

mod chunks;
mod cursor;
pub mod error;
pub mod qwen2vl;
pub mod reader;
pub mod value;
pub mod writer;

pub use error::GgufError;
pub use reader::{huge_anon, map_readonly, GgufFile, Residence, TensorInfo, TensorView};
pub use value::{ArrayView, Value, ValueType};
pub use writer::{GgufWriter, OwnedValue, PendingTensor};

/// `GGUF` read as a little-endian u32.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Deepest nesting of arrays we accept; real files use one level (arrays of strings or numbers).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;
