//! The kernel set the Qwen2.5-VL forward pass needs, as a trait a compute device implements.
//!
//! Memory is owned by the backend: activations live in opaque [`Backend::Buffer`]s, weights in
//! opaque [`Backend::Matrix`]es, per-session scratch in a [`Backend::Workspace`]. The model code
//! never touches element storage except through `write`/`read` (host <-> device copies), so a CUDA
//! or Metal backend only has to provide these types and kernels; the graph in `model/` stays as it
//! is. Buffers are plain f32 row-major arrays; shapes travel as arguments (rows x columns).
//!
//! - `cpu`: the first backend, a thread pool over memory-mapped weights.

pub mod cpu;

use std::sync::Arc;

use crate::gguf::{GgufError, GgufFile};
use crate::quant::{GgmlType, QuantError};

pub use cpu::CpuBackend;

/// Why a backend could not provide a weight or run a kernel.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{tensor}: {source}")]
    Quant {
        tensor: String,
        #[source]
        source: QuantError,
    },
    #[error("{path}: tensor {tensor} is missing")]
    MissingTensor { path: String, tensor: String },
    #[error("{tensor}: {ty} weights are not supported by the {backend} backend")]
    UnsupportedType {
        tensor: String,
        ty: GgmlType,
        backend: &'static str,
    },
    #[error("{tensor}: shape {shape:?} is not a matrix")]
    NotAMatrix { tensor: String, shape: Vec<u64> },
    #[error("token id {id} is outside the embedding table of {rows} rows")]
    TokenOutOfRange { id: u32, rows: usize },
    #[error("could not start the thread pool: {0}")]
    Threads(String),
}

/// Which keys each query row may attend to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask<'a> {
    /// Query row `i` sees keys `0..=past + i` (decoder self-attention with a KV cache holding
    /// `past` earlier tokens; keys/values hold `past + n_q` rows).
    Causal { past: usize },
    /// Bidirectional attention inside each `(start, len)` run of rows (the vision windows, or
    /// one run per image for the full-attention blocks). Queries and keys are the same rows.
    Segments(&'a [(usize, usize)]),
}

/// Geometry of one attention call: `q` is `[n_q, heads * head_dim]`, `k`/`v` are
/// `[n_kv, kv_heads * head_dim]` (only the first `n_kv` rows are read), `out` like `q`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    pub n_q: usize,
    pub n_kv: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// What a KV cache stores (llama.cpp's `--cache-type-k` / `--cache-type-v`). `F32` keeps keys
/// and values as computed, so the attention matches HF transformers' f32 run; `F16` halves the
/// cache's memory and the bytes each decoded token reads from it, rounding each value to f16
/// (11 significant bits) as llama.cpp's default cache does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum CacheType {
    #[default]
    F32,
    F16,
}

impl CacheType {
    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            CacheType::F32 => 4,
            CacheType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CacheType::F32 => "f32",
            CacheType::F16 => "f16",
        }
    }
}

impl std::str::FromStr for CacheType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(CacheType::F32),
            "f16" => Ok(CacheType::F16),
            _ => Err(format!("unknown cache type {s:?} (f32 or f16)")),
        }
    }
}

/// Sizes a session's scratch must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceSpec {
    /// Most activation rows passed to one `matmul`.
    pub rows: usize,
    /// Widest matmul input (columns) and widest output.
    pub cols: usize,
    /// Most keys one query attends to, and the query heads (one scores row per head).
    pub keys: usize,
    pub heads: usize,
}

/// A compute device. `Send + Sync` so one loaded model is shared by sessions on many threads.
pub trait Backend: Send + Sync + 'static {
    /// f32 activations on the device.
    type Buffer: Send + Sync;
    /// A weight matrix `[rows = outputs, cols = inputs]` in its storage type.
    type Matrix: Send + Sync;
    /// Per-session scratch: quantized activations, attention scores, transposes.
    type Workspace: Send;
    /// A KV cache's rows, in the element type of a [`CacheType`].
    type Cache: Send + Sync;

    fn name(&self) -> &'static str;
    /// Runs `f`, a whole forward pass of kernel calls, where the kernels will run: the CPU
    /// backend enters its thread pool once, so each kernel's parallel loop starts from a worker
    /// instead of waking the pool from outside and sleeping until it finishes (two thread
    /// hand-offs per kernel, some 500 kernels per decoded token of a 3B model), and keeps its
    /// other workers spinning until `f` returns, so none parks between two kernels.
    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }
    /// Worker threads (CPU) or a comparable degree of parallelism.
    fn threads(&self) -> usize;

    /// A zeroed buffer of `len` f32s.
    fn alloc(&self, len: usize) -> Self::Buffer;
    fn len(&self, buf: &Self::Buffer) -> usize;
    /// Host -> device copy into `dst[offset..offset + src.len()]`.
    fn write(&self, dst: &mut Self::Buffer, offset: usize, src: &[f32]);
    /// Device -> host copy of `src[offset..offset + dst.len()]`.
    fn read(&self, src: &Self::Buffer, offset: usize, dst: &mut [f32]);
    fn workspace(&self, spec: WorkspaceSpec) -> Self::Workspace;

    /// The 2-D tensor `name` of `file` as a matrix (zero-copy where the device can read the map).
    fn matrix(&self, file: &Arc<GgufFile>, name: &str) -> Result<Self::Matrix, BackendError>;
    /// A matrix from host f32 values (weights the loader had to rearrange).
    fn matrix_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> Self::Matrix;
    /// `(rows, cols)` of a matrix.
    fn matrix_shape(&self, m: &Self::Matrix) -> (usize, usize);
    /// A 1-D tensor (norm weight, bias) decoded to f32.
    fn vector(&self, file: &GgufFile, name: &str) -> Result<Self::Buffer, BackendError>;

    /// `out[i, :] = x[i, :] · wᵀ` for `rows` rows: the one-row path for decoding, matrix-matrix for
    /// prefill and the vision tower (activations quantized once, each weight row read once).
    fn matmul(
        &self,
        ws: &mut Self::Workspace,
        w: &Self::Matrix,
        x: &Self::Buffer,
        rows: usize,
        out: &mut Self::Buffer,
    ) -> Result<(), BackendError>;
    /// Products of one input with several matrices of the same width (q/k/v, gate/up):
    /// `outs[j] = matmul(w[j], x)`, bit for bit. A backend may run them as one pass, the input
    /// prepared once and the pool woken once; the default runs them one by one.
    fn matmuls(
        &self,
        ws: &mut Self::Workspace,
        w: &[&Self::Matrix],
        x: &Self::Buffer,
        rows: usize,
        outs: &mut [&mut Self::Buffer],
    ) -> Result<(), BackendError> {
        matmuls_one_by_one(self, ws, w, x, rows, outs)
    }
    /// Rows `ids` of a (possibly quantized) embedding table, decoded into `out[i, :]`.
    fn embed(
        &self,
        table: &Self::Matrix,
        ids: &[u32],
        out: &mut Self::Buffer,
    ) -> Result<(), BackendError>;
    /// `x[i, :] += bias` for `rows` rows of `bias.len()` columns.
    fn add_bias(&self, x: &mut Self::Buffer, bias: &Self::Buffer, rows: usize);
    /// `x[..len] += y[..len]`.
    fn add(&self, x: &mut Self::Buffer, y: &Self::Buffer, len: usize);
    /// `out[i, :] = x[i, :] / rms(x[i, :]) * w` for `rows` rows of `w.len()` columns.
    fn rms_norm(
        &self,
        x: &Self::Buffer,
        w: &Self::Buffer,
        out: &mut Self::Buffer,
        rows: usize,
        eps: f32,
    );
    /// Rotate-half (NeoX) rotary on `rows` rows of `heads` heads: `table` holds per row
    /// `head_dim / 2` cosines then `head_dim / 2` sines. M-RoPE and the vision 2-D rotary differ
    /// only in how the angles are chosen (`model::rope` builds the tables).
    fn rope(
        &self,
        x: &mut Self::Buffer,
        table: &Self::Buffer,
        rows: usize,
        heads: usize,
        head_dim: usize,
    );
    /// Scaled dot-product attention (scale `1/sqrt(head_dim)`, softmax in f32); query head `j`
    /// reads KV head `j / (heads / kv_heads)`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        ws: &mut Self::Workspace,
        q: &Self::Buffer,
        k: &Self::Buffer,
        v: &Self::Buffer,
        out: &mut Self::Buffer,
        shape: AttnShape,
        mask: &Mask<'_>,
    );
    /// A KV cache of `rows` rows of `dim` values, zeroed.
    fn alloc_cache(&self, rows: usize, dim: usize, ty: CacheType) -> Self::Cache;
    /// Stores rows `0..count` of `src` (`dim` values each) as cache rows `row..row + count`.
    fn store_rows(
        &self,
        src: &Self::Buffer,
        dst: &mut Self::Cache,
        row: usize,
        count: usize,
        dim: usize,
    );
    /// [`Self::attention`] with keys and values read from two caches.
    #[allow(clippy::too_many_arguments)]
    fn cached_attention(
        &self,
        ws: &mut Self::Workspace,
        q: &Self::Buffer,
        k: &Self::Cache,
        v: &Self::Cache,
        out: &mut Self::Buffer,
        shape: AttnShape,
        mask: &Mask<'_>,
    );
    /// `gate[..len] = silu(gate) * up`.
    fn swiglu(&self, gate: &mut Self::Buffer, up: &Self::Buffer, len: usize);
    /// Exact (erf) GELU in place, as HF's `nn.GELU()`.
    fn gelu(&self, x: &mut Self::Buffer, len: usize);
    /// Softmax over each of `rows` rows of `cols` columns.
    fn softmax(&self, x: &mut Self::Buffer, rows: usize, cols: usize);
    /// Copies `count` rows of `dim` columns from `src` row `src_row` to `dst` row `dst_row`.
    #[allow(clippy::too_many_arguments)]
    fn copy_rows(
        &self,
        src: &Self::Buffer,
        src_row: usize,
        dst: &mut Self::Buffer,
        dst_row: usize,
        count: usize,
        dim: usize,
    );
    /// `dst[i, :] = src[index[i], :]` (the vision window permutation and its inverse).
    fn gather_rows(&self, src: &Self::Buffer, index: &[usize], dst: &mut Self::Buffer, dim: usize);
    /// Index of the largest of `x[offset..offset + len]` (lowest index on ties).
    fn argmax(&self, x: &Self::Buffer, offset: usize, len: usize) -> u32;
}

/// [`Backend::matmuls`] as one `matmul` per matrix: the default, and a backend's way out where
/// its one-pass form does not apply.
pub fn matmuls_one_by_one<B: Backend + ?Sized>(
    b: &B,
    ws: &mut B::Workspace,
    w: &[&B::Matrix],
    x: &B::Buffer,
    rows: usize,
    outs: &mut [&mut B::Buffer],
) -> Result<(), BackendError> {
    for (w, out) in w.iter().zip(outs.iter_mut()) {
        b.matmul(ws, w, x, rows, out)?;
    }
    Ok(())
}
