//! The CPU kernels against direct f32 formulas: quantized matmul (one row and many rows agree
//! with each other and with dequantized weights), attention masks, rotary, RMSNorm, GELU.

use std::sync::Arc;

use super::*;
use crate::backend::{AttnShape, CacheType, Mask};
use crate::gguf::{GgufFile, GgufWriter, OwnedValue, PendingTensor};
use crate::quant::quantize::quantize_to_vec;

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    keys: impl Fn(usize) -> std::ops::Range<usize>,
) -> Vec<f32> {
    let d = s.head_dim;
    let mut out = vec![0.0; s.n_q * s.heads * d];
    for i in 0..s.n_q {
        for h in 0..s.heads {
            let g = h / (s.heads / s.kv_heads);
            let qr = &q[i * s.heads * d + h * d..][..d];
            let r = keys(i);
            let sc: Vec<f32> = r
                .clone()
                .map(|j| {
                    let kr = &k[j * s.kv_heads * d + g * d..][..d];
                    qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt()
                })
                .collect();
            let m = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = sc.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for (p, j) in e.iter().zip(r) {
                for t in 0..d {
                    out[i * s.heads * d + h * d + t] += p / z * v[j * s.kv_heads * d + g * d + t];
                }
            }
        }
    }
    out
}

/// The backend's attention of `(q, k, v)` and its largest difference from [`naive_attention`]
/// with key ranges `keys`.
fn attention_error(
    b: &CpuBackend,
    (q, k, v): (&[f32], &[f32], &[f32]),
    s: AttnShape,
    mask: &Mask<'_>,
    keys: impl Fn(usize) -> std::ops::Range<usize>,
) -> f32 {
    let mut ws = b.workspace(WorkspaceSpec {
        rows: s.n_q,
        cols: s.heads * s.head_dim,
        keys: s.n_kv,
        heads: s.heads,
    });
    let mut out = b.alloc(s.n_q * s.heads * s.head_dim);
    let buf = |x: &[f32]| CpuBuffer(x.to_vec());
    b.attention(&mut ws, &buf(q), &buf(k), &buf(v), &mut out, s, mask);
    let want = naive_attention(q, k, v, s, keys);
    out.0
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn attention_masks_match_the_naive_formula() {
    let b = CpuBackend::new(Some(2)).unwrap();
    let s = AttnShape {
        n_q: 5,
        n_kv: 45,
        heads: 4,
        kv_heads: 2,
        head_dim: 8,
    };
    let q = rand_vec(5 * 32, 1);
    let k = rand_vec(45 * 16, 2);
    let v = rand_vec(45 * 16, 3);
    let mut out = b.alloc(5 * 32);
    let mut ws = b.workspace(WorkspaceSpec {
        rows: 5,
        cols: 32,
        keys: 45,
        heads: 4,
    });
    b.attention(
        &mut ws,
        &CpuBuffer(q.clone()),
        &CpuBuffer(k.clone()),
        &CpuBuffer(v.clone()),
        &mut out,
        s,
        &Mask::Causal { past: 40 },
    );
    let want = naive_attention(&q, &k, &v, s, |i| 0..41 + i);
    assert!(out.0.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));

    let s = AttnShape {
        n_q: 7,
        n_kv: 7,
        heads: 2,
        kv_heads: 2,
        head_dim: 8,
    };
    let segs = [(0, 3), (3, 4)];
    let q = rand_vec(7 * 16, 4);
    let k = rand_vec(7 * 16, 5);
    let v = rand_vec(7 * 16, 6);
    let mut out = b.alloc(7 * 16);
    b.attention(
        &mut ws,
        &CpuBuffer(q.clone()),
        &CpuBuffer(k.clone()),
        &CpuBuffer(v.clone()),
        &mut out,
        s,
        &Mask::Segments(&segs),
    );
    let want = naive_attention(&q, &k, &v, s, |i| if i < 3 { 0..3 } else { 3..7 });
    assert!(out.0.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
}

/// The shapes of the real models: 3B's 8 heads per KV head (one block holds 16 query vectors),
/// a group of 3 (a block of 5 rows, 15 vectors), and the vision tower's 80-wide heads over
/// windows that blocks straddle; then decoding's one row (and two rows of a group wider than a
/// block), which split by KV head instead of by rows.
#[test]
fn attention_blocks_of_rows_and_heads_match_the_naive_formula() {
    let b = CpuBackend::new(Some(2)).unwrap();
    let segs = [(0, 13), (13, 20), (33, 7)];
    let windows = |i: usize| match i {
        0..13 => 0..13,
        13..33 => 13..33,
        _ => 33..40,
    };
    let cases: [(usize, usize, usize, usize, bool); 5] = [
        (21, 16, 2, 128, true),
        (9, 6, 2, 16, true),
        (40, 4, 4, 80, false),
        (1, 16, 2, 128, true),
        (2, 40, 2, 16, true),
    ];
    for (n, heads, kv_heads, d, causal) in cases {
        let s = AttnShape {
            n_q: n,
            n_kv: n + 3,
            heads,
            kv_heads,
            head_dim: d,
        };
        let q = rand_vec(n * heads * d, 7);
        let k = rand_vec((n + 3) * kv_heads * d, 8);
        let v = rand_vec((n + 3) * kv_heads * d, 9);
        let qkv = (&q[..], &k[..], &v[..]);
        let err = if causal {
            attention_error(&b, qkv, s, &Mask::Causal { past: 3 }, |i| 0..4 + i)
        } else {
            let s = AttnShape { n_kv: n, ..s };
            attention_error(&b, qkv, s, &Mask::Segments(&segs), windows)
        };
        assert!(
            err < 1e-5,
            "{n} rows, {heads}/{kv_heads} heads of {d}: off by {err}"
        );
    }
}

/// Decoding after a long prompt: one query row over hundreds of cached keys (many 16-key steps
/// and a partial last one), with queries scaled up so the softmax is sharp and its running max
/// moves from step to step; head sizes of 3B (128), the vision tower (80) and the demo model (32).
#[test]
fn attention_over_a_long_cache_matches_the_naive_formula() {
    let b = CpuBackend::new(Some(2)).unwrap();
    for (n, past, heads, kv_heads, d) in [
        (1, 600, 16, 2, 128),
        (3, 203, 16, 2, 128),
        (1, 77, 4, 2, 80),
        (2, 45, 4, 2, 32),
    ] {
        let s = AttnShape {
            n_q: n,
            n_kv: past + n,
            heads,
            kv_heads,
            head_dim: d,
        };
        let q: Vec<f32> = rand_vec(n * heads * d, 11)
            .iter()
            .map(|x| x * 6.0)
            .collect();
        let k = rand_vec((past + n) * kv_heads * d, 12);
        let v = rand_vec((past + n) * kv_heads * d, 13);
        let mask = Mask::Causal { past };
        let err = attention_error(&b, (&q, &k, &v), s, &mask, |i| 0..past + i + 1);
        assert!(
            err < 2e-5,
            "{n} rows after {past}, {heads}/{kv_heads} heads of {d}: off by {err}"
        );
    }
}

/// Values past f16's range are stored as its largest finite value with their sign (an infinite key
/// would make the softmax NaN); the rest round to nearest even.
#[test]
fn an_f16_cache_saturates_instead_of_overflowing() {
    let b = CpuBackend::new(Some(1)).unwrap();
    let mut c = b.alloc_cache(2, 3, CacheType::F16);
    let src = CpuBuffer(vec![1e6, -7e4, 65519.0, 1.0 + 1.0 / 4096.0, -0.5, 3.0e-8]);
    b.store_rows(&src, &mut c, 0, 2, 3);
    let CpuCache::F16(v) = c else {
        panic!("an f16 cache holds f16");
    };
    let got: Vec<f32> = v.iter().map(|h| h.to_f32()).collect();
    // 1 + 2^-12 is a quarter of f16's step above 1: it rounds to 1.
    let want = [
        65504.0,
        -65504.0,
        65504.0,
        1.0,
        -0.5,
        half::f16::from_f32(3.0e-8).to_f32(),
    ];
    assert_eq!(got, want);
}

/// An f16 cache is read as the f32 cache of its rounded values would be, bit for bit: in the
/// AVX-512 loop (head sizes 128 and 80) and in the portable one (24, not a multiple of 16). Rows
/// are stored in two calls, so the second lands at its offset. The rounding moves the result
/// (it is not an f32 cache under another name), by about f16's precision.
#[test]
fn an_f16_cache_attends_as_an_f32_cache_of_its_rounded_values() {
    let b = CpuBackend::new(Some(2)).unwrap();
    for (n, past, heads, kv_heads, d) in [
        (1, 600, 16, 2, 128),
        (3, 203, 16, 2, 128),
        (1, 77, 4, 2, 80),
        (2, 45, 4, 2, 24),
    ] {
        let (rows, kv) = (past + n, kv_heads * d);
        let s = AttnShape {
            n_q: n,
            n_kv: rows,
            heads,
            kv_heads,
            head_dim: d,
        };
        let q: Vec<f32> = rand_vec(n * heads * d, 21)
            .iter()
            .map(|x| x * 4.0)
            .collect();
        let k = rand_vec(rows * kv, 22);
        let v = rand_vec(rows * kv, 23);
        let round = |x: &[f32]| -> Vec<f32> {
            x.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
        };
        let cache = |x: &[f32], ty: CacheType| {
            let mut c = b.alloc_cache(rows + 5, kv, ty);
            let split = rows / 3;
            b.store_rows(&CpuBuffer(x[..split * kv].to_vec()), &mut c, 0, split, kv);
            let rest = CpuBuffer(x[split * kv..].to_vec());
            b.store_rows(&rest, &mut c, split, rows - split, kv);
            c
        };
        let mut ws = b.workspace(WorkspaceSpec {
            rows: n,
            cols: heads * d,
            keys: rows,
            heads,
        });
        let mask = Mask::Causal { past };
        let mut attend = |k: &CpuCache, v: &CpuCache| {
            let mut out = b.alloc(n * heads * d);
            b.cached_attention(&mut ws, &CpuBuffer(q.clone()), k, v, &mut out, s, &mask);
            out.0
        };
        let half = attend(&cache(&k, CacheType::F16), &cache(&v, CacheType::F16));
        let rounded = attend(
            &cache(&round(&k), CacheType::F32),
            &cache(&round(&v), CacheType::F32),
        );
        let exact = attend(&cache(&k, CacheType::F32), &cache(&v, CacheType::F32));
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&half), bits(&rounded), "{n} rows after {past}, d {d}");
        let moved = half
            .iter()
            .zip(&exact)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(
            moved > 0.0 && moved < 2e-3,
            "{n} rows after {past}, d {d}: f16 moved the result by {moved}"
        );
    }
}

/// Writes one `[rows, cols]` tensor per type into a GGUF file and maps it.
fn matrix_file(
    dir: &std::path::Path,
    w: &[f32],
    rows: usize,
    cols: usize,
    types: &[GgmlType],
) -> Arc<GgufFile> {
    let path = dir.join("m.gguf");
    let meta = vec![(
        "general.architecture".to_string(),
        OwnedValue::String("test".into()),
    )];
    let data: Vec<Vec<u8>> = types
        .iter()
        .map(|&t| {
            w.chunks(cols)
                .flat_map(|r| quantize_to_vec(t, r).unwrap())
                .collect()
        })
        .collect();
    let pending = types
        .iter()
        .map(|&t| PendingTensor {
            name: format!("w.{t}"),
            shape: vec![cols as u64, rows as u64],
            ty: t,
        })
        .collect();
    let mut wr = GgufWriter::create(&path, &meta, pending, 32).unwrap();
    for (t, d) in types.iter().zip(&data) {
        wr.write_tensor(&format!("w.{t}"), d).unwrap();
    }
    wr.finish().unwrap();
    Arc::new(GgufFile::open(&path).unwrap())
}

#[test]
fn matmul_one_and_many_rows_agree_with_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, cols) = (24, 512);
    let w = rand_vec(rows * cols, 7);
    let types = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];
    let f = matrix_file(dir.path(), &w, rows, cols, &types);
    let b = CpuBackend::new(Some(2)).unwrap();
    // Five rows, and the most that still take the quantized dot for the type and this CPU's
    // many-row kernel (each row laid out once; 44 for Q4_K on AVX-512).
    for t in types {
        for n in [5, super::matmul::gemm_min_rows(t, b.many_rows(t)) - 1] {
            let x = rand_vec(n * cols, 8);
            let mut ws = b.workspace(WorkspaceSpec {
                rows: n,
                cols,
                keys: 1,
                heads: 1,
            });
            let m = b.matrix(&f, &format!("w.{t}")).unwrap();
            let wd = f.tensor(&format!("w.{t}")).unwrap().dequantize().unwrap();
            let mut many = b.alloc(n * rows);
            b.matmul(&mut ws, &m, &CpuBuffer(x.clone()), n, &mut many)
                .unwrap();
            for i in 0..n {
                let mut one = b.alloc(rows);
                b.matmul(
                    &mut ws,
                    &m,
                    &CpuBuffer(x[i * cols..(i + 1) * cols].to_vec()),
                    1,
                    &mut one,
                )
                .unwrap();
                for j in 0..rows {
                    let exact: f32 = wd[j * cols..(j + 1) * cols]
                        .iter()
                        .zip(&x[i * cols..])
                        .map(|(a, b)| a * b)
                        .sum();
                    let got = many.0[i * rows + j];
                    assert_eq!(
                        got, one.0[j],
                        "{t}, {n} rows: many-row and one-row products differ"
                    );
                    // Activation quantization (Q8) is the only error beyond the weights' own.
                    let tol = if matches!(t, GgmlType::F32 | GgmlType::F16) {
                        1e-3
                    } else {
                        0.15
                    };
                    assert!((got - exact).abs() < tol, "{t} [{i},{j}]: {got} vs {exact}");
                }
            }
        }
    }
}

/// `matmuls` of one row (one fused pass where the types allow) and of several rows (one product
/// each) against one `matmul` per matrix: equal bit for bit, whatever the matrices' row counts.
#[test]
fn fused_products_equal_one_product_per_matrix() {
    let dir = tempfile::tempdir().unwrap();
    let cols = 512;
    let types = [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0];
    // Row counts that do not divide into equal tasks, so tasks end inside and between matrices.
    let files: Vec<_> = [24usize, 72, 7]
        .iter()
        .enumerate()
        .map(|(i, &rows)| {
            let sub = dir.path().join(i.to_string());
            std::fs::create_dir(&sub).unwrap();
            let w = rand_vec(rows * cols, 20 + i as u64);
            matrix_file(&sub, &w, rows, cols, &types)
        })
        .collect();
    let b = CpuBackend::new(Some(2)).unwrap();
    let m = |f: usize, t: GgmlType| b.matrix(&files[f], &format!("w.{t}")).unwrap();
    let (q4, q6, q8) = (GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0);
    let sets = [
        (vec![m(0, q4), m(1, q6), m(2, q4)], true),
        (vec![m(1, q4), m(0, q4)], true),
        (vec![m(0, q8), m(1, q8), m(2, q8)], true),
        // Q8_0 rows meet Q8_0 activations, Q4_K rows Q8_K: one product each.
        (vec![m(0, q4), m(1, q8)], false),
    ];
    for n in [1usize, 3] {
        let x = CpuBuffer(rand_vec(n * cols, 9));
        let mut ws = b.workspace(WorkspaceSpec {
            rows: n,
            cols,
            keys: 1,
            heads: 1,
        });
        for (set, fused) in &sets {
            let w: Vec<&CpuMatrix> = set.iter().collect();
            assert_eq!(super::matmul::fusable(&w), *fused);
            let mut got: Vec<CpuBuffer> = w.iter().map(|m| b.alloc(n * m.rows)).collect();
            let mut outs: Vec<&mut CpuBuffer> = got.iter_mut().collect();
            b.matmuls(&mut ws, &w, &x, n, &mut outs).unwrap();
            for (m, g) in w.iter().zip(&got) {
                let mut want = b.alloc(n * m.rows);
                b.matmul(&mut ws, m, &x, n, &mut want).unwrap();
                assert_eq!(g.0, want.0, "{n} rows, {}x{} {}", m.rows, m.cols, m.ty);
            }
        }
    }
}

#[test]
fn norms_rotary_and_activations() {
    let b = CpuBackend::new(Some(1)).unwrap();
    let mut out = b.alloc(4);
    b.rms_norm(
        &CpuBuffer(vec![1.0, -1.0, 1.0, -1.0]),
        &CpuBuffer(vec![2.0; 4]),
        &mut out,
        1,
        0.0,
    );
    assert!(out.0.iter().all(|v| (v.abs() - 2.0).abs() < 1e-6));
    // A quarter turn maps (1, 0) to (0, 1) in the rotate-half pairing.
    let mut x = CpuBuffer(vec![1.0, 0.0]);
    b.rope(&mut x, &CpuBuffer(vec![0.0, 1.0]), 1, 1, 2);
    assert!((x.0[0]).abs() < 1e-7 && (x.0[1] - 1.0).abs() < 1e-7);
    let mut g = CpuBuffer(vec![1.0, -3.0]);
    b.gelu(&mut g, 2);
    // torch.nn.functional.gelu(tensor([1., -3.])) = [0.8413447, -0.0040497]
    assert!((g.0[0] - 0.841_344_7).abs() < 1e-6 && (g.0[1] + 0.004_049_7).abs() < 1e-6);
    let mut s = CpuBuffer(vec![2.0, 1.0]);
    b.swiglu(&mut s, &CpuBuffer(vec![1.0, 2.0]), 2);
    assert!((s.0[0] - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
    assert_eq!(b.argmax(&CpuBuffer(vec![1.0, 3.0, 3.0]), 0, 3), 1);
}

/// A prompt-lookup pass (`TextModel::forward_all`, at most `ALL_LOGITS_ROWS` rows) must run every
/// row on the kernels of a one-token step, so every type's switch to the many-row kernels lies
/// above it, on every kernel.
#[test]
fn every_switch_to_the_many_row_kernels_is_above_a_lookup_pass() {
    use super::matmul::gemm_min_rows;
    let rows = crate::model::text::ALL_LOGITS_ROWS;
    let kernels = [ManyRows::F32, ManyRows::Int8]
        .into_iter()
        .chain(amx::avx512_bf16_kernel().map(ManyRows::Bf16));
    for kernel in kernels {
        for t in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            assert!(gemm_min_rows(t, kernel) > rows, "{t}");
        }
    }
}
