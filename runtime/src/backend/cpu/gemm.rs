//! Float matrix-matrix product for many activation rows (prefill, the vision tower): weight rows
//! are decoded to f32 once per panel, whatever their ggml type, packed k-major, and multiplied by
//! a register-blocked outer-product kernel.
//!
//! Each weight is reused by hundreds of activation rows there, so decoding it once costs nothing
//! next to the products (the one-row path in `matmul` stays on the quantized dot products, where
//! the weight stream is the bound). The kernel holds a 12 activation rows x 32 weight rows tile of
//! the output in registers for the whole of `k`: per step it loads 32 packed weights and
//! broadcasts 12 activations for 24 (AVX-512) FMAs, so the FMA units, not the caches, set the
//! pace, and no horizontal sums are needed. AVX2 runs the same tile in four slices of 3 rows.

use std::cell::RefCell;

use rayon::prelude::*;

/// Weight rows per packed group: two AVX-512 vectors.
pub(super) const NW: usize = 32;
/// Activation rows per kernel call.
const NX: usize = 12;

thread_local! {
    /// A worker's decoded rows and its packed panel, reused across calls so a matmul allocates
    /// nothing once warm.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// `v` at least `len` long: scratch sized on the first product that needs it, then reused.
pub(super) fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Values [`pack_activations`] writes for `n` rows of `k`.
pub(super) fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(NX) * NX * k
}

/// The `n` activation rows of `x` in tiles of 12 rows packed p-major (12 activations of a step
/// side by side, missing rows zero), so the kernel's broadcasts come from one moving pointer.
/// Done once per product: every panel task reads the same tiles.
pub(super) fn pack_activations(x: &[f32], n: usize, k: usize, xp: &mut [f32]) {
    xp[..packed_len(n, k)]
        .par_chunks_mut(NX * k)
        .enumerate()
        .for_each(|(tn, tile)| {
            let live = (n - tn * NX).min(NX);
            if live < NX {
                tile.fill(0.0);
            }
            for b in 0..live {
                let row = &x[(tn * NX + b) * k..(tn * NX + b + 1) * k];
                for (p, &v) in row.iter().enumerate() {
                    tile[p * NX + b] = v;
                }
            }
        });
}

/// `t` as one `n x pr` block per panel of `pr` weight rows (the last panel may be narrower):
/// `t[j0 * n + i * rows + r] = w_{j0 + r} · x_i`, with row `j` decoded into a `k`-slice by
/// `decode(j, dst)` and the `n` activation rows packed by [`pack_activations`] in `xp`.
/// [`scatter`] puts it in activation-row order.
pub(super) fn gemm_panels<E: Send>(
    m: usize,
    k: usize,
    n: usize,
    xp: &[f32],
    t: &mut [f32],
    decode: impl Fn(usize, &mut [f32]) -> Result<(), E> + Sync,
) -> Result<usize, E> {
    let pr = panel_rows(m);
    let xp = &xp[..packed_len(n, k)];
    for_each_panel(t, m, n, pr, |j0, rows, out| {
        let groups = rows.div_ceil(NW);
        SCRATCH.with(|s| {
            let (dec, packed) = &mut *s.borrow_mut();
            grow(dec, NW * k);
            grow(packed, groups * NW * k);
            // Decode 32 rows at a time and transpose them k-major; missing rows stay zero.
            for g in 0..groups {
                let dec = &mut dec[..NW * k];
                dec.fill(0.0);
                let live = (rows - g * NW).min(NW);
                for (r, dst) in dec.chunks_exact_mut(k).take(live).enumerate() {
                    decode(j0 + g * NW + r, dst)?;
                }
                let pk = &mut packed[g * NW * k..(g + 1) * NW * k];
                for (p, col) in pk.chunks_exact_mut(NW).enumerate() {
                    for (r, v) in col.iter_mut().enumerate() {
                        *v = dec[r * k + p];
                    }
                }
            }
            let mut acc = [[0f32; NW]; NX];
            for (tn, xs) in xp.chunks_exact(NX * k).enumerate() {
                let i = tn * NX;
                let live = (n - i).min(NX);
                for g in 0..groups {
                    kernel(&packed[g * NW * k..(g + 1) * NW * k], xs, k, &mut acc);
                    store_tile(out, &acc, i, live, rows, g * NW);
                }
            }
            Ok(())
        })
    })?;
    Ok(pr)
}

/// Runs `f(j0, rows, block)` in parallel over the panels of `pr` weight rows from row `j0`:
/// `block` is the panel's `n x rows` part of `t`, the layout [`scatter`] reads.
pub(super) fn for_each_panel<E: Send>(
    t: &mut [f32],
    m: usize,
    n: usize,
    pr: usize,
    f: impl Fn(usize, usize, &mut [f32]) -> Result<(), E> + Sync + Send,
) -> Result<(), E> {
    t[..m * n]
        .par_chunks_mut(pr * n)
        .enumerate()
        .try_for_each(|(c, out)| f(c * pr, out.len() / n, out))
}

/// Puts a kernel's output tile into a panel block of `rows` weight rows: `acc[b]` (the products
/// of activation row `i + b` with weight rows `c0..c0 + 32`) for the first `live` rows, clipped
/// to the block's columns.
pub(super) fn store_tile(
    out: &mut [f32],
    acc: &[[f32; NW]],
    i: usize,
    live: usize,
    rows: usize,
    c0: usize,
) {
    let cols = (rows - c0).min(NW);
    for (b, a) in acc.iter().enumerate().take(live) {
        let o = (i + b) * rows + c0;
        out[o..o + cols].copy_from_slice(&a[..cols]);
    }
}

/// Weight rows per task: a multiple of [`NW`], small enough that every worker gets several tasks.
pub(super) fn panel_rows(m: usize) -> usize {
    let tasks = rayon::current_num_threads() * 4;
    (m.div_ceil(tasks).div_ceil(NW) * NW).clamp(NW, 4 * NW)
}

/// `out[i * m + j] = w_j · x_i` from the panel blocks [`gemm_panels`] wrote with `pr` rows each.
pub(super) fn scatter(t: &[f32], m: usize, n: usize, pr: usize, out: &mut [f32]) {
    out[..n * m]
        .par_chunks_mut(m)
        .enumerate()
        .for_each(|(i, o)| {
            for (c, dst) in o.chunks_mut(pr).enumerate() {
                let rows = dst.len();
                let src = c * pr * n + i * rows;
                dst.copy_from_slice(&t[src..src + rows]);
            }
        });
}

/// `acc[b][r] = Σ_p packed[p * NW + r] · x[p * NX + b]`: 12 activation rows packed p-major.
fn kernel(packed: &[f32], x: &[f32], k: usize, acc: &mut [[f32; NW]; NX]) {
    debug_assert!(packed.len() == NW * k && x.len() == NX * k);
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F was detected just above; the slice lengths were checked by the
            // caller's construction (asserted in debug builds) and the kernel reads within them.
            unsafe { x86::avx512(packed, x, k, acc) };
            return;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: as above, for AVX2 and FMA.
            unsafe { x86::avx2(packed, x, k, acc) };
            return;
        }
    }
    scalar(packed, x, acc);
}

fn scalar(packed: &[f32], x: &[f32], acc: &mut [[f32; NW]; NX]) {
    for (b, a) in acc.iter_mut().enumerate() {
        *a = [0.0; NW];
        for (p, col) in packed.chunks_exact(NW).enumerate() {
            let v = x[p * NX + b];
            for (o, w) in a.iter_mut().zip(col) {
                *o += w * v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{NW, NX};

    /// `packed` holds `NW * k` values and `x` holds `NX * k`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512(packed: &[f32], x: &[f32], k: usize, acc: &mut [[f32; NW]; NX]) {
        let (w, xp) = (packed.as_ptr(), x.as_ptr());
        let mut c = [[_mm512_setzero_ps(); 2]; NX];
        for p in 0..k {
            // SAFETY: p < k, so `p * NW + 32 <= NW * k` and `p * NX + b < NX * k`.
            unsafe {
                let w0 = _mm512_loadu_ps(w.add(p * NW));
                let w1 = _mm512_loadu_ps(w.add(p * NW + 16));
                for (b, cb) in c.iter_mut().enumerate() {
                    let v = _mm512_set1_ps(*xp.add(p * NX + b));
                    cb[0] = _mm512_fmadd_ps(w0, v, cb[0]);
                    cb[1] = _mm512_fmadd_ps(w1, v, cb[1]);
                }
            }
        }
        for (a, cb) in acc.iter_mut().zip(&c) {
            // SAFETY: each row of `acc` holds 32 f32s, two unaligned 16-lane stores.
            unsafe {
                _mm512_storeu_ps(a.as_mut_ptr(), cb[0]);
                _mm512_storeu_ps(a.as_mut_ptr().add(16), cb[1]);
            }
        }
    }

    /// `packed` holds `NW * k` values and `x` holds `NX * k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2(packed: &[f32], x: &[f32], k: usize, acc: &mut [[f32; NW]; NX]) {
        let (w, xp) = (packed.as_ptr(), x.as_ptr());
        // Four slices of 3 activation rows: 12 accumulators, 4 weight vectors, 1 broadcast.
        for s in 0..NX / 3 {
            let mut c = [[_mm256_setzero_ps(); 4]; 3];
            for p in 0..k {
                // SAFETY: p < k bounds every read as in `avx512`.
                unsafe {
                    let wv = [0, 1, 2, 3].map(|q| _mm256_loadu_ps(w.add(p * NW + 8 * q)));
                    for (b, cb) in c.iter_mut().enumerate() {
                        let v = _mm256_set1_ps(*xp.add(p * NX + 3 * s + b));
                        for q in 0..4 {
                            cb[q] = _mm256_fmadd_ps(wv[q], v, cb[q]);
                        }
                    }
                }
            }
            for (b, cb) in c.iter().enumerate() {
                for (q, v) in cb.iter().enumerate() {
                    // SAFETY: lanes 8q..8q+8 of a 32-f32 row.
                    unsafe { _mm256_storeu_ps(acc[3 * s + b].as_mut_ptr().add(8 * q), *v) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(w: &[f32], x: &[f32], k: usize) -> Vec<f32> {
        let (m, n) = (w.len() / k, x.len() / k);
        let mut t = vec![0f32; m * n];
        for j in 0..m {
            for i in 0..n {
                t[j * n + i] = (0..k)
                    .map(|p| w[j * k + p] as f64 * x[i * k + p] as f64)
                    .sum::<f64>() as f32;
            }
        }
        t
    }

    /// Shapes that exercise every edge: rows and columns not multiples of 4, `k` not a multiple
    /// of 16 or 8, panels smaller than the pool, and several activation blocks.
    #[test]
    fn matches_the_naive_product_on_every_edge() {
        for &(m, n, k) in &[
            (4, 4, 16),
            (7, 5, 19),
            (13, 33, 80),
            (64, 9, 1280),
            (6, 300, 300),
            (200, 25, 64),
        ] {
            let w: Vec<f32> = (0..m * k)
                .map(|v| ((v * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let x: Vec<f32> = (0..n * k)
                .map(|v| ((v * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let mut t = vec![f32::NAN; m * n];
            let mut xp = vec![f32::NAN; packed_len(n, k)];
            pack_activations(&x, n, k, &mut xp);
            let pr = gemm_panels::<()>(m, k, n, &xp, &mut t, |j, dst| {
                dst.copy_from_slice(&w[j * k..(j + 1) * k]);
                Ok(())
            })
            .unwrap();
            let mut got = vec![f32::NAN; m * n];
            scatter(&t, m, n, pr, &mut got);
            // `naive` is weight-row major; `got` is activation-row major.
            let want = naive(&w, &x, k);
            let t: Vec<f32> = (0..m * n).map(|q| got[(q % n) * m + q / n]).collect();
            for (i, (g, e)) in t.iter().zip(&want).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                    "{m}x{n}x{k} [{i}]: {g} vs {e}"
                );
            }
        }
    }

    #[test]
    fn the_decoder_error_comes_back() {
        let mut t = vec![0.0; 8 * 8];
        let r = gemm_panels(8, 16, 8, &vec![1.0; packed_len(8, 16)], &mut t, |j, _| {
            if j == 5 {
                Err(j)
            } else {
                Ok(())
            }
        });
        assert_eq!(r, Err(5));
    }

    /// Every kernel this CPU can run gives the scalar kernel's tile.
    #[test]
    fn simd_kernels_match_the_scalar_one() {
        for k in [1, 7, 80, 333] {
            let packed: Vec<f32> = (0..NW * k)
                .map(|v| ((v * 29 % 83) as f32 - 41.0) / 41.0)
                .collect();
            let x: Vec<f32> = (0..NX * k)
                .map(|v| ((v * 31 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let mut want = [[0f32; NW]; NX];
            scalar(&packed, &x, &mut want);
            #[cfg(target_arch = "x86_64")]
            {
                let close = |got: &[[f32; NW]; NX], what: &str| {
                    for (g, e) in got.iter().flatten().zip(want.iter().flatten()) {
                        assert!(
                            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{what} k={k}: {g} vs {e}"
                        );
                    }
                };
                let mut got = [[f32::NAN; NW]; NX];
                if is_x86_feature_detected!("avx512f") {
                    // SAFETY: feature detected; lengths NW * k and NX * k.
                    unsafe { x86::avx512(&packed, &x, k, &mut got) };
                    close(&got, "avx512");
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: feature detected; lengths NW * k and NX * k.
                    unsafe { x86::avx2(&packed, &x, k, &mut got) };
                    close(&got, "avx2");
                }
            }
        }
    }
}
