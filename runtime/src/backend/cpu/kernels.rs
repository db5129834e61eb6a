//! Row kernels of the CPU backend: RMSNorm, rotary, attention, activations, softmax, argmax.
//!
//! Attention uses an online softmax over blocks of keys (running max and sum, as flash attention
//! does), so it needs no scores buffer and allocates nothing per call. A task takes a few
//! neighbouring query rows and, per KV head, scores all their heads of that KV head against each
//! key row as it passes, so keys and values are read once per block instead of once per head and
//! row. Head sizes that are multiples of 16 run the AVX-512 loop of `attend512` where the CPU has
//! it; the loop here is the portable path. Keys and values are read as stored ([`Kv`]): f32, or
//! the f16 of a half-size KV cache, widened to f32 as they are read.

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use super::simd::{self, axpy, dot as dot_f32};
use crate::backend::{AttnShape, Mask};

/// Largest head size the stack accumulator of [`attention`] holds (Qwen2.5-VL: 128 and 80).
pub const MAX_HEAD_DIM: usize = 256;
/// Keys scored per online-softmax step.
const KEY_BLOCK: usize = 32;
/// Below this many elements a parallel split costs more than it saves.
const PAR_MIN: usize = 1 << 15;

pub(super) fn add_bias(x: &mut [f32], bias: &[f32], rows: usize) {
    let d = bias.len();
    for row in x[..rows * d].chunks_exact_mut(d) {
        add(row, bias);
    }
}

pub(super) fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// HF's RMSNorm: normalise in f32, then scale by the weight (no `1 + w` offset).
pub(super) fn rms_norm(x: &[f32], w: &[f32], out: &mut [f32], rows: usize, eps: f32) {
    let d = w.len();
    out[..rows * d]
        .par_chunks_mut(d)
        .zip(x[..rows * d].par_chunks(d))
        .for_each(|(o, xr)| {
            let ms = dot_f32(xr, xr) / d as f32;
            let s = 1.0 / (ms + eps).sqrt();
            for ((y, &v), &g) in o.iter_mut().zip(xr).zip(w) {
                *y = v * s * g;
            }
        });
}

/// Rotate-half rotary: dims `j` and `j + head_dim/2` rotate by the row's angle `j`.
pub(super) fn rope(x: &mut [f32], table: &[f32], rows: usize, heads: usize, head_dim: usize) {
    let half = head_dim / 2;
    let width = heads * head_dim;
    x[..rows * width]
        .par_chunks_mut(width)
        .zip(table[..rows * head_dim].par_chunks(head_dim))
        .for_each(|(row, t)| {
            let (cos, sin) = t.split_at(half);
            for head in row.chunks_exact_mut(head_dim) {
                let (a, b) = head.split_at_mut(half);
                for j in 0..half {
                    let (x0, x1) = (a[j], b[j]);
                    a[j] = x0 * cos[j] - x1 * sin[j];
                    b[j] = x1 * cos[j] + x0 * sin[j];
                }
            }
        });
}

/// The key rows query row `i` may read.
fn key_range(mask: &Mask<'_>, i: usize) -> std::ops::Range<usize> {
    match mask {
        Mask::Causal { past } => 0..past + i + 1,
        Mask::Segments(segs) => {
            // Segments are sorted and cover the rows; the one holding `i` is the last starting at
            // or before it.
            let at = segs.partition_point(|&(s, _)| s <= i);
            match at.checked_sub(1).map(|k| segs[k]) {
                Some((s, l)) if i < s + l => s..s + l,
                _ => i..i + 1,
            }
        }
    }
}

/// Query vectors (query rows x the heads of one KV head) scored together against each key.
pub(super) const MAX_Q: usize = 16;

/// Key or value rows as stored: f32 activations or cache, or an f16 cache.
#[derive(Clone, Copy)]
pub(super) enum Kv<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Kv<'_> {
    #[cfg(target_arch = "x86_64")]
    pub(super) fn len(&self) -> usize {
        match self {
            Kv::F32(x) => x.len(),
            Kv::F16(x) => x.len(),
        }
    }

    /// The `d` values from element `at` as f32: in place, or widened into `buf`.
    fn row<'b>(&'b self, at: usize, d: usize, buf: &'b mut [f32; MAX_HEAD_DIM]) -> &'b [f32] {
        match self {
            Kv::F32(x) => &x[at..at + d],
            Kv::F16(x) => {
                x[at..at + d].convert_to_f32_slice(&mut buf[..d]);
                &buf[..d]
            }
        }
    }
}

pub(super) fn attention(
    q: &[f32],
    k: Kv<'_>,
    v: Kv<'_>,
    out: &mut [f32],
    shape: AttnShape,
    mask: &Mask<'_>,
) {
    let AttnShape {
        n_q,
        heads,
        kv_heads,
        head_dim: d,
        ..
    } = shape;
    let group = heads / kv_heads;
    let qw = heads * d;
    // Rows per task: the heads sharing a KV head and a few neighbouring query rows read each key
    // and value row once for all of them, instead of once per (row, head).
    let rows = (MAX_Q / group.max(1)).clamp(1, 8);
    if n_q.div_ceil(rows) < rayon::current_num_threads() && kv_heads > 1 {
        // Too few row tasks to occupy the pool (decoding: one row): one task per row and KV
        // head instead, whose heads are a contiguous slice of the output row.
        let gw = group * d;
        out[..n_q * qw]
            .par_chunks_mut(gw)
            .enumerate()
            .for_each(|(c, o)| {
                let (i, g) = (c / kv_heads, c % kv_heads);
                let mut start = 0;
                while start < group {
                    let end = (start + MAX_Q).min(group);
                    let vecs = |x: usize| (i, g * group + start + x);
                    attend(
                        q,
                        k,
                        v,
                        o,
                        i * qw + g * gw + start * d,
                        shape,
                        mask,
                        g,
                        end - start,
                        &vecs,
                    );
                    start = end;
                }
            });
        return;
    }
    out[..n_q * qw]
        .par_chunks_mut(rows * qw)
        .enumerate()
        .for_each(|(task, o)| {
            let i0 = task * rows;
            let r = o.len() / qw;
            for g in 0..kv_heads {
                let total = r * group;
                let mut start = 0;
                while start < total {
                    let end = (start + MAX_Q).min(total);
                    let vecs =
                        |x: usize| (i0 + (start + x) / group, g * group + (start + x) % group);
                    attend(q, k, v, o, i0 * qw, shape, mask, g, end - start, &vecs);
                    start = end;
                }
            }
        });
}

/// Online-softmax attention of `nv <= MAX_Q` query vectors (`vecs(x)` = (row, head)) sharing KV
/// head `kv_head`, over the union of their key ranges; keys outside a vector's own range are skipped.
/// Vector (row `i`, head `h`) is written to `o[i·heads·d + h·d - base..][..d]`.
#[allow(clippy::too_many_arguments)]
fn attend(
    q: &[f32],
    k: Kv<'_>,
    v: Kv<'_>,
    o: &mut [f32],
    base: usize,
    shape: AttnShape,
    mask: &Mask<'_>,
    kv_head: usize,
    nv: usize,
    vecs: &dyn Fn(usize) -> (usize, usize),
) {
    let AttnShape {
        n_kv,
        heads,
        kv_heads,
        head_dim: d,
        ..
    } = shape;
    let (qw, kw) = (heads * d, kv_heads * d);
    let off = kv_head * d;
    let scale = 1.0 / (d as f32).sqrt();
    let mut acc = [[0f32; MAX_HEAD_DIM]; MAX_Q];
    let mut m = [f32::NEG_INFINITY; MAX_Q];
    let mut l = [0f32; MAX_Q];
    let mut ranges = [(0usize, 0usize); MAX_Q];
    let (mut lo, mut hi) = (usize::MAX, 0);
    for (x, rg) in ranges.iter_mut().enumerate().take(nv) {
        let kr = key_range(mask, vecs(x).0);
        *rg = (kr.start, kr.end.min(n_kv));
        lo = lo.min(rg.0);
        hi = hi.max(rg.1);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let query = |x: usize| {
            let (i, h) = vecs(x);
            &q[i * qw + h * d..i * qw + (h + 1) * d]
        };
        let keys = super::attend512::Keys {
            query: &query,
            scale,
            nv,
            d,
            k,
            v,
            kw,
            off,
            ranges: &ranges,
            lo,
            hi,
        };
        if super::attend512::attend(&keys, &mut acc, &mut l) {
            write_out(o, base, qw, d, nv, vecs, &acc, &l);
            return;
        }
    }
    let mut scores = [[f32::NEG_INFINITY; KEY_BLOCK]; MAX_Q];
    let mut row = [0f32; MAX_HEAD_DIM];
    let mut start = lo;
    while start < hi {
        let end = (start + KEY_BLOCK).min(hi);
        for t in start..end {
            let kr = k.row(t * kw + off, d, &mut row);
            for x in 0..nv {
                let (i, h) = vecs(x);
                scores[x][t - start] = if ranges[x].0 <= t && t < ranges[x].1 {
                    dot_f32(&q[i * qw + h * d..i * qw + (h + 1) * d], kr) * scale
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        for x in 0..nv {
            let s = &mut scores[x][..end - start];
            let bm = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if bm == f32::NEG_INFINITY {
                continue;
            }
            let nm = m[x].max(bm);
            let corr = (m[x] - nm).exp();
            if corr != 1.0 {
                l[x] *= corr;
                acc[x][..d].iter_mut().for_each(|a| *a *= corr);
            }
            for sc in s.iter_mut() {
                *sc = (*sc - nm).exp();
                l[x] += *sc;
            }
            m[x] = nm;
        }
        for t in start..end {
            let vr = v.row(t * kw + off, d, &mut row);
            for x in 0..nv {
                let p = scores[x][t - start];
                if p > 0.0 {
                    axpy(&mut acc[x][..d], p, vr);
                }
            }
        }
        start = end;
    }
    write_out(o, base, qw, d, nv, vecs, &acc, &l);
}

/// Vector `x`'s normalised result `acc[x] / l[x]` into its place in the output rows.
#[allow(clippy::too_many_arguments)]
fn write_out(
    o: &mut [f32],
    base: usize,
    qw: usize,
    d: usize,
    nv: usize,
    vecs: &dyn Fn(usize) -> (usize, usize),
    acc: &[[f32; MAX_HEAD_DIM]; MAX_Q],
    l: &[f32; MAX_Q],
) {
    for x in 0..nv {
        let (i, h) = vecs(x);
        let inv = if l[x] > 0.0 { 1.0 / l[x] } else { 0.0 };
        let at = i * qw + h * d - base;
        let dst = &mut o[at..at + d];
        for (y, a) in dst.iter_mut().zip(&acc[x][..d]) {
            *y = a * inv;
        }
    }
}

pub(super) fn swiglu(gate: &mut [f32], up: &[f32]) {
    if gate.len() < PAR_MIN {
        simd::swiglu(gate, up);
    } else {
        gate.par_chunks_mut(PAR_MIN / 4)
            .zip(up.par_chunks(PAR_MIN / 4))
            .for_each(|(g, u)| simd::swiglu(g, u));
    }
}

/// `0.5·x·(1 + erf(x/√2))`, with erf in f64 so the result is as exact as torch's.
pub(super) fn gelu(x: &mut [f32]) {
    let f = |v: &mut f32| {
        let a = *v as f64;
        *v = (0.5 * a * (1.0 + libm::erf(a * std::f64::consts::FRAC_1_SQRT_2))) as f32;
    };
    if x.len() < PAR_MIN {
        x.iter_mut().for_each(f);
    } else {
        x.par_iter_mut().for_each(f);
    }
}

pub(super) fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    if sum > 0.0 {
        row.iter_mut().for_each(|v| *v /= sum);
    }
}

pub(super) fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}
