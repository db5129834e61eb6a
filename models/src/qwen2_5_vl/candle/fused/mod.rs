//! Candle custom ops with their own backward passes, on the CPU in f32 and f64, for the parts of
//! the model whose composed form makes many tensors of the activations' size.
//!
//! Composed from elementary ops, each of these steps makes several full-size intermediates, and
//! candle's backward makes a gradient for each (plus a zeroed buffer to accumulate it in). For the
//! trainer's padded batches on a CPU that bookkeeping was most of a step's time outside the matrix
//! products. Each op computes the same function as its composed form, which other devices and
//! half-precision inputs still take; the tests check values and gradients against it.
//!
//! - `softmax`: attention's `softmax(scale * scores + mask)` over the last axis.
//! - `rotary`: `x * cos + rotate_half(x) * sin`.
//! - `rms_norm`: `x / rms(x) * weight`.

mod rms_norm;
mod rotary;
mod softmax;

pub use rms_norm::rms_norm;
pub use rotary::rotary;
pub use softmax::scaled_masked_softmax;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

/// Rows handed to one rayon task: enough work per task that scheduling stays negligible.
const ROWS_PER_TASK: usize = 16;

/// Whether `t` takes the fused path: CPU tensors in f32 or f64, unless `ANATOMY_FUSED=0` (the
/// composed ops, as a baseline for the speed-up and a check when a run looks wrong).
fn fusable(t: &Tensor) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("ANATOMY_FUSED").is_ok_and(|v| v == "0"));
    !off && t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::F64)
}

/// The element types the fused ops compute in.
trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn of(v: f64) -> Self;
    fn exp(self) -> Self;
    fn sqrt(self) -> Self;
    /// The elements of `s` when it holds this type.
    fn elements(s: &CpuStorage) -> Option<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn elements(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F32(v) => Some(v),
            _ => None,
        }
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F32(v)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn of(v: f64) -> Self {
        v
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn elements(s: &CpuStorage) -> Option<&[Self]> {
        match s {
            CpuStorage::F64(v) => Some(v),
            _ => None,
        }
    }
    fn storage(v: Vec<Self>) -> CpuStorage {
        CpuStorage::F64(v)
    }
}

/// The CPU computation of a fused op (or of its backward), written once for both element types.
trait Kernel {
    /// The op's name in candle's errors.
    const NAME: &'static str;
    /// `inputs`: each operand's elements and layout, all of one element type.
    fn compute<T: Real>(&self, inputs: &[(&[T], &Layout)]) -> Result<Vec<T>>;
}

/// Runs `k` on operands of one dtype, f32 or f64.
fn run<K: Kernel>(k: &K, inputs: &[(&CpuStorage, &Layout)]) -> Result<CpuStorage> {
    match inputs.first().map(|(s, _)| s.dtype()) {
        Some(DType::F32) => run_as::<f32, K>(k, inputs),
        Some(DType::F64) => run_as::<f64, K>(k, inputs),
        other => candle_core::bail!("{}: unsupported dtype {other:?}", K::NAME),
    }
}

fn run_as<T: Real, K: Kernel>(k: &K, inputs: &[(&CpuStorage, &Layout)]) -> Result<CpuStorage> {
    let xs = inputs
        .iter()
        .map(|&(s, l)| match T::elements(s) {
            Some(v) => Ok((v, l)),
            None => candle_core::bail!("{}: operands of different dtypes", K::NAME),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(T::storage(k.compute(&xs)?))
}

/// Where each row of a (possibly broadcast) operand lives in its storage, rows being all axes
/// but the last, in the order of a contiguous tensor of the same shape.
struct Rows {
    start: usize,
    /// Sizes and strides of the axes before the last, outermost first.
    outer: Vec<(usize, usize)>,
    col_stride: usize,
}

impl Rows {
    fn new(l: &Layout) -> Self {
        let dims = l.dims();
        let strides = l.stride();
        let last = dims.len().saturating_sub(1);
        Rows {
            start: l.start_offset(),
            outer: dims[..last]
                .iter()
                .copied()
                .zip(strides[..last].iter().copied())
                .collect(),
            col_stride: strides.get(last).copied().unwrap_or(1),
        }
    }

    /// Offset of element 0 of row `row`.
    fn start(&self, row: usize) -> usize {
        let mut rest = row;
        let mut off = self.start;
        for &(size, stride) in self.outer.iter().rev() {
            off += (rest % size) * stride;
            rest /= size;
        }
        off
    }
}

/// The elements of a contiguous operand, or an error naming the op.
fn contiguous<'a, T>(s: &'a [T], l: &Layout, name: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("{name}: input has to be contiguous"),
    }
}

/// Length of the last axis (rows are split along it).
fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

#[cfg(test)]
mod tests;
