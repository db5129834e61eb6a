//! Each fused op against its composed form: values, and the gradients backward gives, in f32 and
//! f64, with broadcast operands laid out as the model passes them.

use candle_core::{DType, Device, Tensor, Var, D};

use super::{rms_norm, rotary, scaled_masked_softmax};
use crate::qwen2_5_vl::candle::ops::rotate_half;

fn randn(shape: &[usize], dtype: DType, seed: u64) -> Tensor {
    // A fixed sequence, so a failure reproduces.
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Values and input gradients of `fused` and `composed` on the same inputs, under a loss that
/// weighs every output element differently (so a wrong gradient cannot cancel out).
fn compare(
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    composed: impl Fn(&[Tensor]) -> Tensor,
    tol: f64,
) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let (yf, yc) = (fused(&ts), composed(&ts));
    assert!(
        max_diff(&yf, &yc) < tol,
        "values differ by {}",
        max_diff(&yf, &yc)
    );
    let w = randn(yf.dims(), yf.dtype(), 99);
    let loss = |y: &Tensor| (y * &w).unwrap().sum_all().unwrap();
    let (gf, gc) = (loss(&yf).backward().unwrap(), loss(&yc).backward().unwrap());
    for (i, t) in ts.iter().enumerate() {
        match (gf.get(t), gc.get(t)) {
            (Some(a), Some(b)) => {
                assert!(
                    max_diff(a, b) < tol,
                    "gradient {i} differs by {}",
                    max_diff(a, b)
                )
            }
            (None, None) => {}
            (a, b) => panic!(
                "gradient {i}: fused {:?}, composed {:?}",
                a.is_some(),
                b.is_some()
            ),
        }
    }
}

#[test]
fn softmax_matches_composed_with_causal_mask() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        let scores = randn(&[2, 4, 5, 7], dtype, 1);
        // [lq, lk] with two cached positions, broadcast over batch and heads as the model does.
        let mask: Vec<f64> = (0..5)
            .flat_map(|i| (0..7).map(move |j| if j > 2 + i { f64::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (5, 7), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        compare(
            &[scores],
            |t| scaled_masked_softmax(&t[0], Some(&mask), 0.35).unwrap(),
            |t| {
                let s = (&t[0] * 0.35).unwrap().broadcast_add(&mask).unwrap();
                candle_nn::ops::softmax(&s, D::Minus1).unwrap()
            },
            tol,
        );
    }
}

#[test]
fn softmax_without_mask_matches_composed() {
    let scores = randn(&[3, 2, 6, 6], DType::F64, 2);
    compare(
        &[scores],
        |t| scaled_masked_softmax(&t[0], None, 1.7).unwrap(),
        |t| candle_nn::ops::softmax(&(&t[0] * 1.7).unwrap(), D::Minus1).unwrap(),
        1e-12,
    );
}

#[test]
fn masked_entries_get_zero_probability() {
    let scores = randn(&[1, 1, 3, 3], DType::F32, 3);
    let mask = Tensor::new(
        &[
            [0f32, f32::NEG_INFINITY, f32::NEG_INFINITY],
            [0., 0., f32::NEG_INFINITY],
            [0., 0., 0.],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let p: Vec<Vec<f32>> = scaled_masked_softmax(&scores, Some(&mask), 1.0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    assert_eq!(p[0], vec![1.0, 0.0, 0.0]);
    assert_eq!(p[1][2], 0.0);
    for row in &p {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}

#[test]
fn rotary_matches_composed_on_transposed_input() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        // q as the language model has it: [b, l, heads, d] transposed to [b, heads, l, d], with
        // cos/sin [b, 1, l, d] broadcast over the heads.
        let x = randn(&[2, 5, 3, 8], dtype, 4);
        let cos = randn(&[2, 1, 5, 8], dtype, 5);
        let sin = randn(&[2, 1, 5, 8], dtype, 6);
        compare(
            &[x],
            |t| rotary(&t[0].transpose(1, 2).unwrap(), &cos, &sin).unwrap(),
            |t| {
                let x = t[0].transpose(1, 2).unwrap();
                (x.broadcast_mul(&cos).unwrap()
                    + rotate_half(&x).unwrap().broadcast_mul(&sin).unwrap())
                .unwrap()
            },
            tol,
        );
    }
}

#[test]
fn rms_norm_matches_composed_in_both_gradients() {
    for (dtype, tol) in [(DType::F64, 1e-11), (DType::F32, 1e-4)] {
        let x = randn(&[3, 4, 16], dtype, 7);
        let w = randn(&[16], dtype, 8);
        compare(
            &[x, w],
            |t| rms_norm(&t[0], &t[1], 1e-6).unwrap(),
            |t| {
                let mean_sq = t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                let inv = (mean_sq + 1e-6).unwrap().sqrt().unwrap().recip().unwrap();
                t[0].broadcast_mul(&inv)
                    .unwrap()
                    .broadcast_mul(&t[1])
                    .unwrap()
            },
            tol,
        );
    }
}

#[test]
fn rms_norm_weight_gradient_sums_rows_across_tasks() {
    // More rows than one task takes, so the per-task partial sums are combined.
    let x = randn(&[70, 8], DType::F64, 9);
    let w = randn(&[8], DType::F64, 10);
    compare(
        &[x, w],
        |t| rms_norm(&t[0], &t[1], 1e-5).unwrap(),
        |t| {
            let mean_sq = t[0].sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let inv = (mean_sq + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
            t[0].broadcast_mul(&inv)
                .unwrap()
                .broadcast_mul(&t[1])
                .unwrap()
        },
        1e-11,
    );
}

#[test]
fn mismatched_weight_is_an_error() {
    let x = randn(&[2, 6], DType::F32, 11);
    let w = randn(&[5], DType::F32, 12);
    assert!(rms_norm(&x, &w, 1e-6).is_err());
}
