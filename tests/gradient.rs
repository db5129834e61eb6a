//! Autograd through the candle language model agrees with central finite differences.
//!
//! A tiny text model with random f64 weights (GQA, M-RoPE with image-like positions) is run as a
//! prefill of four tokens followed by a three-token chunk through the KV cache, so the causal
//! mask with a cached prefix and the cache concatenation are differentiated too. The loss is the
//! mean cross-entropy of all seven positions' logits against fixed targets. In f64 with step 1e-5
//! the central difference is accurate to roughly 1e-10, so relative errors must stay below 1e-7.

use anatomy_models::qwen2_5_vl::candle::candle_nn::{self, VarBuilder, VarMap};
use anatomy_models::qwen2_5_vl::candle::{LogitsMode, TextModel};
use anatomy_models::qwen2_5_vl::config::TextConfig;
use candle_core::{DType, Device, Tensor};

const IDS: [u32; 7] = [3, 17, 8, 8, 41, 22, 5];
const TARGETS: [u32; 7] = [17, 8, 8, 41, 22, 5, 30];
const POSITIONS: [[i64; 3]; 7] = [
    [0, 0, 0],
    [1, 1, 1],
    [2, 2, 2],
    [2, 2, 3],
    [2, 3, 2],
    [2, 3, 3],
    [4, 4, 4],
];

fn config(tie: bool) -> TextConfig {
    TextConfig {
        vocab_size: 48,
        hidden_size: 32,
        intermediate_size: 40,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        mrope_section: vec![2, 1, 1],
        max_position_embeddings: 512,
        tie_word_embeddings: tie,
    }
}

fn loss(model: &TextModel) -> Tensor {
    let embeds = model.embed_tokens(&IDS).unwrap();
    let mut cache = model.new_cache();
    let a = model
        .forward(
            &embeds.narrow(1, 0, 4).unwrap(),
            &POSITIONS[..4],
            &mut cache,
            LogitsMode::All,
        )
        .unwrap();
    let b = model
        .forward(
            &embeds.narrow(1, 4, 3).unwrap(),
            &POSITIONS[4..],
            &mut cache,
            LogitsMode::All,
        )
        .unwrap();
    let logits = Tensor::cat(&[&a, &b], 1).unwrap().squeeze(0).unwrap();
    let targets = Tensor::new(&TARGETS, &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
}

/// Deterministic normal samples (xorshift64* + Box-Muller): candle's CPU RNG cannot be seeded, and
/// the probes below should see the same gradients on every run.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (bits as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    fn tensor(&mut self, shape: &candle_core::Shape, mean: f64, std: f64) -> Tensor {
        let v: Vec<f64> = (0..shape.elem_count())
            .map(|_| mean + std * self.sample())
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

fn set_element(var: &candle_core::Var, index: usize, value: f64) {
    let mut v = var.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    v[index] = value;
    let t = Tensor::from_vec(v, var.shape(), var.device()).unwrap();
    var.set(&t).unwrap();
}

fn check(tie: bool) -> f64 {
    let dev = Device::Cpu;
    let cfg = config(tie);
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &dev);
    let model = TextModel::new(&cfg, vb.pp("model"), vb.pp("lm_head")).unwrap();
    {
        let vars = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        let mut rng = Normal(0x9e37_79b9_7f4a_7c15);
        for name in names {
            let var = &vars[name];
            // Norm weights around 1, as in a trained model.
            let mean = if name.ends_with("norm.weight") {
                1.0
            } else {
                0.0
            };
            var.set(&rng.tensor(var.shape(), mean, 0.3)).unwrap();
        }
    }
    let grads = loss(&model).backward().unwrap();

    let mut probes = vec![
        ("model.layers.0.self_attn.q_proj.weight", 2 * 32 + 5),
        ("model.layers.1.self_attn.k_proj.weight", 9 * 32 + 30),
        ("model.layers.1.self_attn.q_proj.bias", 14),
        // Key biases barely matter (a shared key offset cancels in the softmax up to the rotary),
        // so this gradient is ~1e-5 and only the absolute floor below applies.
        ("model.layers.1.self_attn.k_proj.bias", 3),
        ("model.layers.0.self_attn.v_proj.bias", 11),
        ("model.layers.0.self_attn.o_proj.weight", 7 * 32 + 1),
        ("model.layers.0.input_layernorm.weight", 4),
        ("model.layers.1.post_attention_layernorm.weight", 20),
        ("model.norm.weight", 13),
        ("model.layers.1.mlp.down_proj.weight", 5 * 40 + 7),
        ("model.layers.0.mlp.gate_proj.weight", 3 * 32 + 2),
        // A row of a token that occurs twice, and (when tied) also feeds the LM head.
        ("model.embed_tokens.weight", 8 * 32 + 3),
    ];
    if !tie {
        probes.push(("lm_head.weight", 30 * 32 + 6));
    }
    let vars = varmap.data().lock().unwrap().clone();
    assert_eq!(vars.contains_key("lm_head.weight"), !tie);
    let eps = 1e-5;
    let mut worst = 0f64;
    for (name, index) in probes {
        let var = &vars[name];
        let analytic = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[index];
        let x = var.flatten_all().unwrap().to_vec1::<f64>().unwrap()[index];
        set_element(var, index, x + eps);
        let plus = scalar(&loss(&model));
        set_element(var, index, x - eps);
        let minus = scalar(&loss(&model));
        set_element(var, index, x);
        let numeric = (plus - minus) / (2.0 * eps);
        let abs = (analytic - numeric).abs();
        let rel = abs / numeric.abs().max(analytic.abs()).max(1e-8);
        eprintln!(
            "tie={tie} {name}[{index}]: autograd {analytic:+.10e}, finite diff {numeric:+.10e}, abs err {abs:.1e}, rel err {rel:.2e}"
        );
        assert!(
            analytic.abs() > 1e-7,
            "{name}: gradient vanishes, probe is useless"
        );
        // Rounding in the loss (~1e-16 * |loss| / eps) limits the difference quotient to about
        // 1e-10 absolute, which dominates the relative error of gradients below ~1e-3.
        if numeric.abs() > 1e-3 {
            assert!(rel < 1e-6, "{name}[{index}]: rel err {rel:.2e}");
            worst = worst.max(rel);
        } else {
            assert!(abs < 1e-9, "{name}[{index}]: abs err {abs:.1e}");
        }
    }
    worst
}

#[test]
fn gradients_match_finite_differences_untied() {
    let worst = check(false);
    eprintln!("untied: worst relative error of gradients above 1e-3: {worst:.2e}");
}

#[test]
fn gradients_match_finite_differences_tied() {
    let worst = check(true);
    eprintln!("tied: worst relative error of gradients above 1e-3: {worst:.2e}");
}
