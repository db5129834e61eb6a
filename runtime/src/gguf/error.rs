//! Errors of reading and writing GGUF. Every variant names the file, and the key or tensor where
//! there is one, so a broken deployment points at its cause.

use crate::quant::GgmlType;

/// A GGUF file could not be read, validated or written.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic {found:02x?})")]
    BadMagic { path: String, found: Vec<u8> },
    #[error("{path}: GGUF version {version} is not supported (2 and 3 are)")]
    UnsupportedVersion { path: String, version: u32 },
    #[error("{path}: GGUF version field {version:#010x} looks byte-swapped: big-endian files are not supported")]
    BigEndian { path: String, version: u32 },
    #[error("{path}: truncated: {what} needs {needed} bytes at offset {offset}, file has {len}")]
    Truncated {
        path: String,
        what: String,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("{path}: {what}: count {count} cannot fit in the {remaining} bytes left")]
    AbsurdCount {
        path: String,
        what: String,
        count: u64,
        remaining: u64,
    },
    #[error("{path}: {what}: string length {len} exceeds the {remaining} bytes left")]
    AbsurdString {
        path: String,
        what: String,
        len: u64,
        remaining: u64,
    },
    #[error("{path}: {what}: not valid UTF-8")]
    InvalidUtf8 { path: String, what: String },
    #[error("{path}: key {key}: unknown value type {ty}")]
    UnknownValueType { path: String, key: String, ty: u32 },
    #[error("{path}: key {key}: arrays nested deeper than {max}")]
    TooDeep {
        path: String,
        key: String,
        max: usize,
    },
    #[error("{path}: key {key} appears twice")]
    DuplicateKey { path: String, key: String },
    #[error("{path}: key {key}: expected {expected}, found {found}")]
    KeyType {
        path: String,
        key: String,
        expected: String,
        found: String,
    },
    #[error("{path}: required key {key} is missing")]
    MissingKey { path: String, key: String },
    #[error("{path}: key {key}: value {value} is invalid: {reason}")]
    BadValue {
        path: String,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{path}: general.alignment {value} is not a power of two")]
    BadAlignment { path: String, value: u64 },
    #[error("{path}: tensor {tensor}: {n_dims} dimensions (at most {max})")]
    TooManyDims {
        path: String,
        tensor: String,
        n_dims: u32,
        max: usize,
    },
    #[error("{path}: tensor {tensor}: unknown or unsupported ggml type {ty}")]
    UnknownType {
        path: String,
        tensor: String,
        ty: u32,
    },
    #[error("{path}: tensor {tensor}: shape {shape:?} is invalid for {ty}: {reason}")]
    BadShape {
        path: String,
        tensor: String,
        shape: Vec<u64>,
        ty: GgmlType,
        reason: String,
    },
    #[error(
        "{path}: tensor {tensor}: offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        path: String,
        tensor: String,
        offset: u64,
        alignment: u64,
    },
    #[error(
        "{path}: tensor {tensor}: data [{start}, {end}) lies outside the {len}-byte data section"
    )]
    OutOfRange {
        path: String,
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },
    #[error("{path}: tensors {first} and {second} overlap")]
    Overlap {
        path: String,
        first: String,
        second: String,
    },
    #[error("{path}: tensor {tensor} appears twice")]
    DuplicateTensor { path: String, tensor: String },
    #[error("{path}: required tensor {tensor} is missing")]
    MissingTensor { path: String, tensor: String },
    #[error("{path}: tensor {tensor}: shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: String,
        tensor: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("{path}: tensor {tensor}: {reason}")]
    TensorData {
        path: String,
        tensor: String,
        reason: String,
    },
    #[error("{path}: writer: {reason}")]
    Writer { path: String, reason: String },
}
