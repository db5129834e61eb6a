//! Helpers shared by the integration tests that compare two GGUF files of the same checkpoint by
//! their next-token distributions (`runtime_gguf.rs` on the committed fixtures,
//! `gguf_crosscheck.rs` on the synthetic 256-row checkpoint).

use std::path::Path;

use anatomy_runtime::generate::ImageInput;
use anatomy_runtime::{Model, ModelOptions};

/// Logits before each of `steps` decoding steps after prefilling `ids` with `image`. The token
/// appended after each step is `forced[i]` when given (teacher forcing, so both files see the same
/// context and a single flipped token cannot derail the rest), else the greedy choice; returns the
/// per-step logits and the appended tokens.
pub fn step_logits(
    lm: &Path,
    mm: &Path,
    opts: &ModelOptions,
    image: &Path,
    ids: &[u32],
    forced: Option<&[u32]>,
    steps: usize,
) -> (Vec<Vec<f32>>, Vec<u32>) {
    let model = Model::load(lm, Some(mm), opts).unwrap();
    let mut s = model.session();
    let img = s
        .preprocess(&ImageInput::Path(image.to_path_buf()))
        .unwrap();
    let h = s.encode_image(&img).unwrap();
    s.prefill(ids, Some(&h)).unwrap();
    let (mut all, mut toks) = (Vec::new(), Vec::new());
    for i in 0..steps {
        all.push(s.logits().to_vec());
        let t = match forced {
            Some(f) => f[i],
            None => anatomy_runtime::sampling::argmax(s.logits()),
        };
        toks.push(t);
        s.append(&[t]).unwrap();
    }
    (all, toks)
}

/// KL(softmax(p) || softmax(q)) in nats, in f64 so that the tiny values of close distributions
/// are not lost to f32 cancellation.
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    fn log_softmax(x: &[f32]) -> Vec<f64> {
        let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = m + x.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
        x.iter().map(|&v| v as f64 - lse).collect()
    }
    assert_eq!(p.len(), q.len());
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}

/// Mean and maximum of the per-step KL(p_a || p_b).
pub fn mean_max_kl(a: &[Vec<f32>], b: &[Vec<f32>]) -> (f64, f64) {
    let kls: Vec<f64> = a.iter().zip(b).map(|(x, y)| kl_divergence(x, y)).collect();
    let max = kls.iter().copied().fold(0.0, f64::max);
    (kls.iter().sum::<f64>() / kls.len() as f64, max)
}
