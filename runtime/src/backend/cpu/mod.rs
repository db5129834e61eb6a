//! The CPU backend: weights read in place from the memory map, activations in `Vec<f32>`s, work
//! split by rows over a rayon pool sized to the physical cores.
//!
//! rayon rather than a pool of our own: its workers park between jobs (no spin cost while the
//! model waits on the user), `par_chunks_mut` gives disjoint mutable rows without `unsafe`, and
//! it is already in the dependency tree through `tokenizers`. A dedicated pool (not the global
//! one) honours `--threads` and keeps the caller's other rayon work apart. Within a forward pass
//! (`Backend::scope`) the other workers spin instead of parking (`spin`).
//!
//! - `matmul`: quantized and float matrix products, one row and many.
//! - `gemm`: the blocked float kernel `matmul` uses for many rows, weights decoded once per panel.
//! - `amx`: the bf16 tile kernel that replaces it on CPUs with AMX, for all but F32 weights.
//! - `bf16`: the AMX path's product on AVX-512 BF16 vectors, for CPUs without AMX that have them.
//! - `int8`: without AMX, the integer kernel for Q4_K, Q6_K and Q8_0 weights on AVX-512 VNNI
//!   (activations quantized once, weights decoded to bytes once per panel).
//! - `simd`: run-time dispatched dot product and axpy under the row kernels.
//! - `kernels`: norms, rotary, attention, activations, row copies.
//! - `attend512`: attention's AVX-512 inner loop (16 keys per step, vector softmax).
//! - `bandwidth`: the memory-read probe decode speed is measured against.
//! - `clock`: the core-speed probe beside it (dependent adds per second).
//! - `spin`: the spinners that keep the other workers awake for the length of a forward pass.

mod amx;
#[cfg(target_arch = "x86_64")]
mod attend512;
pub mod bandwidth;
mod bf16;
pub mod clock;
mod gemm;
mod int8;
mod kernels;
pub use kernels::MAX_HEAD_DIM;
mod matmul;
mod pieces;
mod simd;
mod spin;

use std::sync::Arc;

use super::{AttnShape, Backend, BackendError, CacheType, Mask, WorkspaceSpec};
use crate::gguf::GgufFile;
use crate::quant::{dequantize_row, GgmlType};

/// Activations of the CPU backend.
#[derive(Debug, Clone, Default)]
pub struct CpuBuffer(pub(crate) Vec<f32>);

/// A KV cache of the CPU backend, in the element type it was allocated with.
#[derive(Debug, Clone)]
pub enum CpuCache {
    F32(Vec<f32>),
    F16(Vec<half::f16>),
}

impl CpuCache {
    fn view(&self) -> kernels::Kv<'_> {
        match self {
            CpuCache::F32(x) => kernels::Kv::F32(x),
            CpuCache::F16(x) => kernels::Kv::F16(x),
        }
    }
}

/// Where a matrix's encoded rows live.
enum MatrixData {
    /// In the model file's map, found again by name (the map outlives the matrix via the `Arc`).
    Mapped {
        file: Arc<GgufFile>,
        name: String,
    },
    Owned(Vec<f32>),
}

/// A weight matrix `[rows, cols]`, rows encoded in `ty`.
pub struct CpuMatrix {
    rows: usize,
    cols: usize,
    ty: GgmlType,
    row_bytes: usize,
    data: MatrixData,
}

impl CpuMatrix {
    fn bytes(&self) -> &[u8] {
        match &self.data {
            // Presence and extent were checked when the matrix was made; the file is immutable.
            MatrixData::Mapped { file, name } => file.tensor(name).map(|t| t.data).unwrap_or(&[]),
            MatrixData::Owned(v) => bytemuck::cast_slice(v),
        }
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Bytes read per full pass over the weights (for bandwidth figures).
    pub fn byte_len(&self) -> usize {
        self.rows * self.row_bytes
    }
}

/// Per-session scratch: quantized activation rows, the transposed product of a many-row matmul
/// and its packed activations (sized on the first many-row product, then reused).
pub struct CpuWorkspace {
    quantized: Vec<u8>,
    /// Quantized activation rows laid out for their row kernel (grown once): one per matrix of a
    /// fused one-row product, or one per activation row of a few-row product.
    laid: [Vec<u8>; matmul::LAID_ROWS],
    transposed: Vec<f32>,
    packed: Vec<f32>,
    packed_bf16: Vec<u16>,
    packed_int8: int8::PackedActs,
}

/// The kernel of a many-row matrix product (see [`CpuBackend::many_rows`]).
#[derive(Clone, Copy)]
enum ManyRows {
    /// The bf16 product, on AMX tiles or AVX-512 BF16 vectors.
    Bf16(amx::Bf16),
    /// Bytes against bytes on AVX-512 VNNI.
    Int8,
    /// The f32 kernel.
    F32,
}

/// The CPU backend.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    amx: Option<amx::Bf16>,
    avx512_bf16: Option<amx::Bf16>,
    int8: bool,
}

impl CpuBackend {
    /// A backend with `threads` workers, or one per physical core when `None`.
    pub fn new(threads: Option<usize>) -> Result<Self, BackendError> {
        let threads = threads.unwrap_or_else(physical_cores).max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("anatomy-cpu-{i}"))
            .build()
            .map_err(|e| BackendError::Threads(e.to_string()))?;
        Ok(Self {
            pool,
            threads,
            amx: amx::available(),
            avx512_bf16: amx::avx512_bf16(),
            int8: std::env::var("ANATOMY_INT8").map_or(true, |v| v.trim() != "0"),
        })
    }

    /// The same backend with the AMX tile kernels for many-row products on or off (on only where
    /// the CPU and OS allow them; `ANATOMY_AMX=0` turns the default off process-wide). Off, the
    /// products run the f32 kernel: a baseline for benchmarks in the same run.
    pub fn with_amx(mut self, on: bool) -> Self {
        self.amx = if on { amx::available() } else { None };
        self
    }

    /// Whether many-row products run on the AMX tile kernels.
    pub fn amx(&self) -> bool {
        self.amx.is_some()
    }

    /// The same backend with the int8 VNNI kernel for many-row products of Q4_K, Q6_K and Q8_0
    /// weights on or off (used without AMX, where the CPU has AVX-512 VNNI; `ANATOMY_INT8=0` turns
    /// the default off process-wide). Off, those products decode the weights and run the f32
    /// kernel: a baseline for benchmarks.
    pub fn with_int8(mut self, on: bool) -> Self {
        self.int8 = on;
        self
    }

    /// The same backend with the AVX-512 BF16 kernel for many-row products (used without AMX for
    /// every weight type but F32 that the int8 kernel does not take, where the CPU has it and it
    /// beats the f32 kernel, as on AMD; `ANATOMY_BF16=0` turns the default off process-wide, `1`
    /// on wherever the CPU has it). Off, they run the f32 kernel.
    pub fn with_avx512_bf16(mut self, on: bool) -> Self {
        self.avx512_bf16 = if on { amx::avx512_bf16() } else { None };
        self
    }

    /// The kernel many-row products of `ty` weights run on: the one place that choice is made.
    /// F32 rows stay in f32 (bf16 or bytes would cost them precision they carry); AMX takes every
    /// other type; without it the int8 kernel takes the types it decodes, then the AVX-512 BF16
    /// vectors the rest.
    fn many_rows(&self, ty: GgmlType) -> ManyRows {
        if ty == GgmlType::F32 {
            return ManyRows::F32;
        }
        if let Some(amx) = self.amx {
            return ManyRows::Bf16(amx);
        }
        if self.int8 && int8::supports(ty) {
            return ManyRows::Int8;
        }
        self.avx512_bf16.map_or(ManyRows::F32, ManyRows::Bf16)
    }

    /// The name of the kernel many-row products of `ty` run on (`amx_bf16`, `int8_vnni`,
    /// `avx512_bf16` or `f32`), for benchmarks and reports.
    pub fn many_rows_kernel(&self, ty: GgmlType) -> &'static str {
        match self.many_rows(ty) {
            ManyRows::Bf16(_) if self.amx.is_some() => "amx_bf16",
            ManyRows::Bf16(_) => "avx512_bf16",
            ManyRows::Int8 => "int8_vnni",
            ManyRows::F32 => "f32",
        }
    }

    pub(crate) fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

/// Physical cores from the kernel's topology (SMT siblings share a core's load/store units, which
/// is what quantized matmul is bound by); the logical count when the topology is unreadable.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut seen = std::collections::HashSet::new();
    for cpu in 0..logical {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let read = |f: &str| std::fs::read_to_string(format!("{base}/{f}")).ok();
        match (read("physical_package_id"), read("core_id")) {
            (Some(p), Some(c)) => {
                seen.insert((p.trim().to_string(), c.trim().to_string()));
            }
            _ => return logical,
        }
    }
    seen.len().clamp(1, logical)
}

impl Backend for CpuBackend {
    type Buffer = CpuBuffer;
    type Matrix = CpuMatrix;
    type Workspace = CpuWorkspace;
    type Cache = CpuCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.threads == 1 {
            return self.install(f);
        }
        self.install(|| spin::with_spinners(self.threads - 1, f))
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn alloc(&self, len: usize) -> CpuBuffer {
        CpuBuffer(vec![0.0; len])
    }

    fn len(&self, buf: &CpuBuffer) -> usize {
        buf.0.len()
    }

    fn write(&self, dst: &mut CpuBuffer, offset: usize, src: &[f32]) {
        dst.0[offset..offset + src.len()].copy_from_slice(src);
    }

    fn read(&self, src: &CpuBuffer, offset: usize, dst: &mut [f32]) {
        dst.copy_from_slice(&src.0[offset..offset + dst.len()]);
    }

    fn workspace(&self, spec: WorkspaceSpec) -> CpuWorkspace {
        // Q8_K, the widest activation format, takes 292 bytes per 256 values.
        CpuWorkspace {
            quantized: vec![0; spec.rows * (spec.cols / 256 + 1) * 292],
            laid: std::array::from_fn(|_| Vec::new()),
            transposed: vec![
                0.0;
                if spec.rows > 1 {
                    spec.rows * spec.cols
                } else {
                    0
                }
            ],
            packed: Vec::new(),
            packed_bf16: Vec::new(),
            packed_int8: int8::PackedActs::default(),
        }
    }

    fn matrix(&self, file: &Arc<GgufFile>, name: &str) -> Result<CpuMatrix, BackendError> {
        let t = file
            .tensor(name)
            .ok_or_else(|| BackendError::MissingTensor {
                path: file.path().into(),
                tensor: name.into(),
            })?;
        let (cols, rows) = match *t.shape() {
            [c, r] => (c as usize, r as usize),
            _ => {
                return Err(BackendError::NotAMatrix {
                    tensor: name.into(),
                    shape: t.shape().to_vec(),
                })
            }
        };
        let ty = t.ty();
        if matches!(ty, GgmlType::Q8_1 | GgmlType::Q8_K) {
            return Err(BackendError::UnsupportedType {
                tensor: name.into(),
                ty,
                backend: "cpu",
            });
        }
        Ok(CpuMatrix {
            rows,
            cols,
            ty,
            row_bytes: t.row_bytes(),
            data: MatrixData::Mapped {
                file: Arc::clone(file),
                name: name.into(),
            },
        })
    }

    fn matrix_from_f32(&self, rows: usize, cols: usize, data: Vec<f32>) -> CpuMatrix {
        CpuMatrix {
            rows,
            cols,
            ty: GgmlType::F32,
            row_bytes: cols * 4,
            data: MatrixData::Owned(data),
        }
    }

    fn matrix_shape(&self, m: &CpuMatrix) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn vector(&self, file: &GgufFile, name: &str) -> Result<CpuBuffer, BackendError> {
        let t = file
            .tensor(name)
            .ok_or_else(|| BackendError::MissingTensor {
                path: file.path().into(),
                tensor: name.into(),
            })?;
        t.dequantize()
            .map(CpuBuffer)
            .map_err(|source| BackendError::Quant {
                tensor: name.into(),
                source,
            })
    }

    fn matmul(
        &self,
        ws: &mut CpuWorkspace,
        w: &CpuMatrix,
        x: &CpuBuffer,
        rows: usize,
        out: &mut CpuBuffer,
    ) -> Result<(), BackendError> {
        let kernel = self.many_rows(w.ty);
        self.install(|| matmul::matmul(ws, w, &x.0, rows, &mut out.0, kernel))
    }

    fn matmuls(
        &self,
        ws: &mut CpuWorkspace,
        w: &[&CpuMatrix],
        x: &CpuBuffer,
        rows: usize,
        outs: &mut [&mut CpuBuffer],
    ) -> Result<(), BackendError> {
        if rows == 1 && matmul::fusable(w) && outs.len() == w.len() {
            let mut it = outs.iter_mut();
            let mut o: [&mut [f32]; matmul::MAX_FUSED] =
                std::array::from_fn(|_| it.next().map_or(&mut [][..], |b| &mut b.0[..]));
            return self.install(|| matmul::matvecs(ws, w, &x.0, &mut o[..w.len()]));
        }
        super::matmuls_one_by_one(self, ws, w, x, rows, outs)
    }

    fn embed(
        &self,
        table: &CpuMatrix,
        ids: &[u32],
        out: &mut CpuBuffer,
    ) -> Result<(), BackendError> {
        let bytes = table.bytes();
        for (i, &id) in ids.iter().enumerate() {
            let r = id as usize;
            if r >= table.rows {
                return Err(BackendError::TokenOutOfRange {
                    id,
                    rows: table.rows,
                });
            }
            let src = &bytes[r * table.row_bytes..(r + 1) * table.row_bytes];
            let dst = &mut out.0[i * table.cols..(i + 1) * table.cols];
            dequantize_row(table.ty, src, dst).map_err(|source| BackendError::Quant {
                tensor: "embedding".into(),
                source,
            })?;
        }
        Ok(())
    }

    fn add_bias(&self, x: &mut CpuBuffer, bias: &CpuBuffer, rows: usize) {
        kernels::add_bias(&mut x.0, &bias.0, rows);
    }

    fn add(&self, x: &mut CpuBuffer, y: &CpuBuffer, len: usize) {
        kernels::add(&mut x.0[..len], &y.0[..len]);
    }

    fn rms_norm(&self, x: &CpuBuffer, w: &CpuBuffer, out: &mut CpuBuffer, rows: usize, eps: f32) {
        self.install(|| kernels::rms_norm(&x.0, &w.0, &mut out.0, rows, eps));
    }

    fn rope(
        &self,
        x: &mut CpuBuffer,
        table: &CpuBuffer,
        rows: usize,
        heads: usize,
        head_dim: usize,
    ) {
        self.install(|| kernels::rope(&mut x.0, &table.0, rows, heads, head_dim));
    }

    fn attention(
        &self,
        _ws: &mut CpuWorkspace,
        q: &CpuBuffer,
        k: &CpuBuffer,
        v: &CpuBuffer,
        out: &mut CpuBuffer,
        shape: AttnShape,
        mask: &Mask<'_>,
    ) {
        self.install(|| {
            let (k, v) = (kernels::Kv::F32(&k.0), kernels::Kv::F32(&v.0));
            kernels::attention(&q.0, k, v, &mut out.0, shape, mask)
        });
    }

    fn alloc_cache(&self, rows: usize, dim: usize, ty: CacheType) -> CpuCache {
        match ty {
            CacheType::F32 => CpuCache::F32(vec![0.0; rows * dim]),
            CacheType::F16 => CpuCache::F16(vec![half::f16::ZERO; rows * dim]),
        }
    }

    fn store_rows(
        &self,
        src: &CpuBuffer,
        dst: &mut CpuCache,
        row: usize,
        count: usize,
        dim: usize,
    ) {
        let src = &src.0[..count * dim];
        let at = row * dim..(row + count) * dim;
        match dst {
            CpuCache::F32(d) => d[at].copy_from_slice(src),
            CpuCache::F16(d) => {
                // Round to nearest even, as llama.cpp's and torch's conversions do; a value past
                // f16's range keeps its sign at the largest finite one, since an infinite key
                // would turn the softmax into NaN.
                for (o, &x) in d[at].iter_mut().zip(src) {
                    *o = half::f16::from_f32(x.clamp(-65504.0, 65504.0));
                }
            }
        }
    }

    fn cached_attention(
        &self,
        _ws: &mut CpuWorkspace,
        q: &CpuBuffer,
        k: &CpuCache,
        v: &CpuCache,
        out: &mut CpuBuffer,
        shape: AttnShape,
        mask: &Mask<'_>,
    ) {
        self.install(|| kernels::attention(&q.0, k.view(), v.view(), &mut out.0, shape, mask));
    }

    fn swiglu(&self, gate: &mut CpuBuffer, up: &CpuBuffer, len: usize) {
        self.install(|| kernels::swiglu(&mut gate.0[..len], &up.0[..len]));
    }

    fn gelu(&self, x: &mut CpuBuffer, len: usize) {
        self.install(|| kernels::gelu(&mut x.0[..len]));
    }

    fn softmax(&self, x: &mut CpuBuffer, rows: usize, cols: usize) {
        for row in x.0[..rows * cols].chunks_exact_mut(cols) {
            kernels::softmax(row);
        }
    }

    fn copy_rows(
        &self,
        src: &CpuBuffer,
        src_row: usize,
        dst: &mut CpuBuffer,
        dst_row: usize,
        count: usize,
        dim: usize,
    ) {
        dst.0[dst_row * dim..(dst_row + count) * dim]
            .copy_from_slice(&src.0[src_row * dim..(src_row + count) * dim]);
    }

    fn gather_rows(&self, src: &CpuBuffer, index: &[usize], dst: &mut CpuBuffer, dim: usize) {
        for (d, &s) in dst.0.chunks_exact_mut(dim).zip(index) {
            d.copy_from_slice(&src.0[s * dim..(s + 1) * dim]);
        }
    }

    fn argmax(&self, x: &CpuBuffer, offset: usize, len: usize) -> u32 {
        kernels::argmax(&x.0[offset..offset + len])
    }
}

#[cfg(test)]
mod tests;
