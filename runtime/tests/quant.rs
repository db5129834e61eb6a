//! Block formats: quantize/dequantize error per type, dot products against dequantized references,
//! and the AVX2 kernels against the scalar ones.

use anatomy_runtime::quant::dequant::dequantize_to_vec;
use anatomy_runtime::quant::quantize::quantize_to_vec;
use anatomy_runtime::quant::{vec_dot, vec_dot_scalar, GgmlType, QuantError};

/// Deterministic, roughly Gaussian weights with occasional outliers, like trained matrices.
fn weights(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    (0..n)
        .map(|i| {
            let g: f32 = (0..4).map(|_| next()).sum::<f32>() * 0.05;
            if i % 97 == 0 {
                g * 6.0
            } else {
                g
            }
        })
        .collect()
}

fn rel_rms(a: &[f32], b: &[f32]) -> f32 {
    let err: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
    let norm: f32 = b.iter().map(|y| y * y).sum::<f32>();
    (err / norm).sqrt()
}

/// Relative RMS error bounds per format on the weights above, a little above what llama.cpp's
/// encoders reach on such data (bits per weight: Q8_0 8.5, Q6_K 6.56, Q5 ~5.5-6, Q4 ~4.5-5).
const BOUNDS: [(GgmlType, f32); 10] = [
    (GgmlType::F16, 1e-3),
    (GgmlType::BF16, 5e-3),
    (GgmlType::Q8_0, 0.01),
    (GgmlType::Q6_K, 0.03),
    (GgmlType::Q5_K, 0.05),
    (GgmlType::Q5_0, 0.07),
    (GgmlType::Q5_1, 0.06),
    (GgmlType::Q4_K, 0.10),
    (GgmlType::Q4_0, 0.14),
    (GgmlType::Q4_1, 0.12),
];

#[test]
fn round_trip_error_within_format_bounds() {
    let x = weights(4096, 1);
    let f32_bytes = quantize_to_vec(GgmlType::F32, &x).unwrap();
    assert_eq!(
        dequantize_to_vec(GgmlType::F32, &f32_bytes, x.len()).unwrap(),
        x
    );
    for (ty, bound) in BOUNDS {
        let q = quantize_to_vec(ty, &x).unwrap();
        assert_eq!(q.len(), x.len() / ty.block_size() * ty.type_size());
        let y = dequantize_to_vec(ty, &q, x.len()).unwrap();
        let e = rel_rms(&y, &x);
        println!("{ty:>5}: relative RMS error {e:.5} (bound {bound})");
        assert!(e < bound, "{ty}: relative RMS error {e} exceeds {bound}");
    }
}

#[test]
fn k_quants_beat_the_plain_formats_of_the_same_width() {
    // The scale search is what makes Q4_K/Q5_K better than Q4_0/Q5_0 at similar size; if it
    // silently degraded to a plain min/max fit this would fail.
    let x = weights(8192, 7);
    let err = |ty| {
        rel_rms(
            &dequantize_to_vec(ty, &quantize_to_vec(ty, &x).unwrap(), x.len()).unwrap(),
            &x,
        )
    };
    assert!(err(GgmlType::Q4_K) < err(GgmlType::Q4_0));
    assert!(err(GgmlType::Q5_K) < err(GgmlType::Q5_0));
    assert!(err(GgmlType::Q6_K) < err(GgmlType::Q5_K));
}

#[test]
fn zero_and_constant_blocks_survive() {
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ] {
        for c in [0.0f32, 0.25, -1.5] {
            let x = vec![c; 256];
            let y = dequantize_to_vec(ty, &quantize_to_vec(ty, &x).unwrap(), 256).unwrap();
            for v in y {
                assert!(
                    v.is_finite() && (v - c).abs() <= c.abs() * 0.01 + 1e-6,
                    "{ty} constant {c} decoded {v}"
                );
            }
        }
    }
}

/// Valid blocks of `ty` from random bytes with sane f16 scales, for formats without an encoder.
fn random_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let mut b: Vec<u8> = (0..n / ty.block_size() * ty.type_size())
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 56) as u8
        })
        .collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for blk in b.chunks_exact_mut(ty.type_size()) {
        let at: &[usize] = match ty {
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            _ => &[],
        };
        for &o in at {
            blk[o..o + 2].copy_from_slice(&scale);
        }
    }
    b
}

fn weight_row(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => random_blocks(ty, x.len(), 99),
        _ => quantize_to_vec(ty, x).unwrap(),
    }
}

#[test]
fn dot_products_equal_the_dequantized_sum() {
    for n in [256usize, 2048] {
        let x = weights(n, 3);
        let a = weights(n, 5);
        for ty in GgmlType::ALL {
            let w = weight_row(ty, &x);
            let act_ty = ty.vec_dot_type();
            let act = quantize_to_vec(act_ty, &a).unwrap();
            let wd = dequantize_to_vec(ty, &w, n).unwrap();
            let ad = dequantize_to_vec(act_ty, &act, n).unwrap();
            let reference: f64 = wd.iter().zip(&ad).map(|(&p, &q)| p as f64 * q as f64).sum();
            let scale: f64 = wd
                .iter()
                .zip(&ad)
                .map(|(&p, &q)| (p as f64 * q as f64).abs())
                .sum();
            let scalar = vec_dot_scalar(ty, n, &w, act_ty, &act).unwrap() as f64;
            let fast = vec_dot(ty, n, &w, act_ty, &act).unwrap() as f64;
            assert!(
                (scalar - reference).abs() <= 1e-4 * scale,
                "{ty} n={n}: scalar {scalar} vs dequantized {reference}"
            );
            assert!(
                (fast - scalar).abs() <= 1e-5 * scale,
                "{ty} n={n}: dispatched {fast} vs scalar {scalar}"
            );
        }
    }
}

#[test]
fn simd_kernels_match_scalar_on_many_rows() {
    // Separate from the test above so the three AVX2 kernels get many random rows, including
    // the extreme levels (-128 activations, the top Q6_K levels) that saturate `maddubs` if wrong.
    for seed in 0..50u64 {
        let n = 11008 / 256 * 256;
        let mut x = weights(n, seed * 2 + 11);
        let mut a = weights(n, seed * 2 + 12);
        x[(seed as usize * 37) % n] = 3.0;
        a[(seed as usize * 53) % n] = -4.0;
        for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
            let w = quantize_to_vec(ty, &x).unwrap();
            let act_ty = ty.vec_dot_type();
            let act = quantize_to_vec(act_ty, &a).unwrap();
            let s = vec_dot_scalar(ty, n, &w, act_ty, &act).unwrap();
            let f = vec_dot(ty, n, &w, act_ty, &act).unwrap();
            assert!(
                (s - f).abs() <= 1e-5 * s.abs().max(1.0),
                "{ty} seed {seed}: {f} vs {s}"
            );
        }
    }
}

#[test]
fn misuse_is_a_typed_error() {
    assert!(matches!(
        quantize_to_vec(GgmlType::Q4_K, &[0.0; 100]),
        Err(QuantError::PartialBlock { .. })
    ));
    assert!(matches!(
        dequantize_to_vec(GgmlType::Q8_0, &[0; 33], 32),
        Err(QuantError::ByteLength { .. })
    ));
    assert!(matches!(
        quantize_to_vec(GgmlType::Q3_K, &[0.0; 256]),
        Err(QuantError::Unsupported { .. })
    ));
    let w = quantize_to_vec(GgmlType::Q4_K, &[0.5; 256]).unwrap();
    let act = quantize_to_vec(GgmlType::Q8_0, &[0.5; 256]).unwrap();
    assert!(matches!(
        vec_dot(GgmlType::Q4_K, 256, &w, GgmlType::Q8_0, &act),
        Err(QuantError::ActivationType { .. })
    ));
}

/// `dequantize_row` (the decoders built for AVX2 where the CPU has it) gives exactly the scalar
/// build's values for every type, on rows with a partial vector at the end (F16: 8 + 5 halves).
#[test]
fn vector_build_of_the_decoders_is_bit_exact() {
    use anatomy_runtime::quant::{dequantize_row, dequantize_row_scalar};
    let all = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
    ];
    for ty in all {
        let n = if ty.block_size() == 1 {
            13
        } else {
            3 * ty.block_size()
        };
        let row = random_blocks(ty, n, 5 + ty as u64);
        let (mut fast, mut plain) = (vec![f32::NAN; n], vec![0f32; n]);
        dequantize_row(ty, &row, &mut fast).unwrap();
        dequantize_row_scalar(ty, &row, &mut plain).unwrap();
        for (i, (f, p)) in fast.iter().zip(&plain).enumerate() {
            assert!(
                f.to_bits() == p.to_bits() || (f.is_nan() && p.is_nan()),
                "{ty} [{i}]: {f} vs {p}"
            );
        }
    }
}

/// `vec_dot_rows` gives each row's `vec_dot`, and refuses a buffer that is not whole rows.
#[test]
fn row_loop_equals_one_dot_per_row() {
    use anatomy_runtime::quant::vec_dot_rows;
    // Seven k-quant blocks: the AVX-512 kernels take four per step, then the other three.
    let n = 1792;
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q4_0,
        GgmlType::F16,
    ] {
        let rows: Vec<Vec<u8>> = (0..5)
            .map(|r| weight_row(ty, &weights(n, 40 + r)))
            .collect();
        let act_ty = ty.vec_dot_type();
        let act = quantize_to_vec(act_ty, &weights(n, 77)).unwrap();
        let all: Vec<u8> = rows.concat();
        let mut out = vec![f32::NAN; rows.len()];
        vec_dot_rows(ty, n, &all, act_ty, &act, &mut out).unwrap();
        for (r, (row, got)) in rows.iter().zip(&out).enumerate() {
            let want = vec_dot(ty, n, row, act_ty, &act).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{ty} row {r}");
        }
        let short = &all[..all.len() - 1];
        assert!(matches!(
            vec_dot_rows(ty, n, short, act_ty, &act, &mut out),
            Err(QuantError::ByteLength { .. })
        ));
        assert!(vec_dot_rows(ty, n, &all, GgmlType::BF16, &act, &mut out).is_err());
    }
}

/// `RowDots::rows_pair` gives each activation row's `rows`, bit for bit: through the two-row
/// kernel where the CPU and type have one (AVX-512 Q4_K and Q6_K), else one row after the other; and it
/// refuses a buffer that is not whole rows.
#[test]
fn pair_of_activation_rows_equals_one_row_at_a_time() {
    use anatomy_runtime::quant::RowDots;
    for blocks in [1usize, 4, 7] {
        for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0] {
            let n = blocks * 256;
            let all: Vec<u8> = (0..5)
                .flat_map(|r| weight_row(ty, &weights(n, 40 + r)))
                .collect();
            let act_ty = ty.vec_dot_type();
            let acts: Vec<Vec<u8>> = [77, 78]
                .iter()
                .map(|&s| quantize_to_vec(act_ty, &weights(n, s)).unwrap())
                .collect();
            let (mut b0, mut b1) = (Vec::new(), Vec::new());
            let d0 = RowDots::new(ty, n, act_ty, &acts[0], &mut b0).unwrap();
            let d1 = RowDots::new(ty, n, act_ty, &acts[1], &mut b1).unwrap();
            let (mut p0, mut p1) = (vec![f32::NAN; 5], vec![f32::NAN; 5]);
            d0.rows_pair(&d1, &all, [&mut p0, &mut p1]).unwrap();
            for (d, got) in [(d0, &p0), (d1, &p1)] {
                let mut want = vec![f32::NAN; 5];
                d.rows(&all, &mut want).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&want), "{ty}, {blocks} blocks");
            }
            assert!(matches!(
                d0.rows_pair(&d1, &all[..all.len() - 1], [&mut p0, &mut p1]),
                Err(QuantError::ByteLength { .. })
            ));
        }
    }
}
