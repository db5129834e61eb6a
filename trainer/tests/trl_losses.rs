//! The GRPO advantages and losses against TRL 1.16's GRPOTrainer, recorded by
//! tools/reference/make_trl_loss_fixture.py into tests/fixtures/grpo/trl_losses.json: advantages
//! for each reward scaling, per-token losses, aggregated losses for `grpo`, `bnpo`, `dr_grpo` and
//! `dapo`, and the aggregated loss's gradient with respect to the per-token log-probs.

use anatomy_trainer::grpo::{
    advantages, aggregate, loss, per_token_loss, Aggregation, LossConfig, LossInputs, Objective,
    RewardScaling, Window,
};
use candle_core::{Device, Tensor, Var};
use serde_json::Value;

const TOL: f64 = 1e-6;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/grpo/trl_losses.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn tensor(rows: &[Vec<f64>]) -> Tensor {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_vec(rows.concat(), (b, t), &Device::Cpu).unwrap()
}

fn max_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn advantages_match_trl_for_every_scaling() {
    let f = fixture();
    let mut worst: f64 = 0.0;
    for case in f["cases"].as_array().unwrap() {
        let rewards: Vec<f32> = serde_json::from_value(case["rewards"].clone()).unwrap();
        let g = case["group_size"].as_u64().unwrap() as usize;
        for (name, scaling) in [
            ("group", RewardScaling::Group),
            ("batch", RewardScaling::Batch),
            ("none", RewardScaling::None),
        ] {
            let want: Vec<f64> = serde_json::from_value(case["advantages"][name].clone()).unwrap();
            let got = advantages(&rewards, g, scaling).unwrap();
            for (a, b) in got.iter().zip(&want) {
                worst = worst.max((*a as f64 - b).abs());
            }
        }
    }
    eprintln!("advantages: max |rust - trl| = {worst:.2e}");
    assert!(worst < TOL, "{worst}");
}

#[test]
fn losses_and_gradients_match_trl() {
    let f = fixture();
    assert_eq!(f["kl_bias_correction"], true);
    let mut checked = 0;
    let (mut worst_loss, mut worst_tok, mut worst_grad): (f64, f64, f64) = (0.0, 0.0, 0.0);
    for case in f["cases"].as_array().unwrap() {
        let logps = matrix(&case["logps"]);
        let old = tensor(&matrix(&case["old_logps"]));
        let reference = tensor(&matrix(&case["ref_logps"]));
        let mask = tensor(&matrix(&case["mask"]));
        let adv: Vec<f64> = serde_json::from_value(case["advantages"]["group"].clone()).unwrap();
        let adv = Tensor::new(adv, &Device::Cpu).unwrap();
        let tokens = mask.sum_all().unwrap().to_scalar::<f64>().unwrap() as usize;
        for l in case["losses"].as_array().unwrap() {
            let aggregation = match l["loss_type"].as_str().unwrap() {
                "grpo" => Aggregation::SequenceMean,
                "bnpo" => Aggregation::BatchTokenMean,
                "dr_grpo" => Aggregation::ConstantLength,
                "dapo" => Aggregation::WindowTokenMean,
                other => panic!("unexpected loss type {other}"),
            };
            let cfg = LossConfig {
                objective: Objective::ClippedRatio,
                epsilon_low: l["epsilon_low"].as_f64().unwrap(),
                epsilon_high: l["epsilon_high"].as_f64().unwrap(),
                beta: l["beta"].as_f64().unwrap(),
                kl_ratio_correction: true,
                aggregation,
                max_completion_length: l["max_completion_length"].as_u64().unwrap() as usize,
            };
            let var = Var::from_tensor(&tensor(&logps)).unwrap();
            let inputs = LossInputs {
                logps: var.as_tensor(),
                old_logps: Some(&old),
                ref_logps: Some(&reference),
                advantages: &adv,
                mask: &mask,
            };
            let window = Window {
                accumulation_steps: 1,
                tokens,
            };
            let out = loss(&cfg, &inputs, window).unwrap();
            let value = out.loss.to_scalar::<f64>().unwrap();
            worst_loss = worst_loss.max((value - l["loss"].as_f64().unwrap()).abs());

            let per_token = per_token_loss(&cfg, &inputs)
                .unwrap()
                .loss
                .to_vec2::<f64>()
                .unwrap();
            worst_tok = worst_tok.max(max_diff(&per_token, &matrix(&l["per_token_loss"])));

            let grads = out.loss.backward().unwrap();
            let grad = grads
                .get(var.as_tensor())
                .unwrap()
                .to_vec2::<f64>()
                .unwrap();
            worst_grad = worst_grad.max(max_diff(&grad, &matrix(&l["grad_logps"])));
            checked += 1;
        }
    }
    eprintln!(
        "{checked} loss configurations: max |rust - trl| loss {worst_loss:.2e}, per-token {worst_tok:.2e}, d loss / d logp {worst_grad:.2e}"
    );
    assert_eq!(checked, 32);
    assert!(worst_loss < TOL && worst_tok < TOL && worst_grad < TOL);
}

#[test]
fn accumulation_divides_and_window_mean_spans_micro_batches() {
    let dev = Device::Cpu;
    let per_token = Tensor::new(&[[1.0f64, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev).unwrap();
    let mask = Tensor::new(&[[1.0f64, 1.0, 0.0], [1.0, 0.0, 0.0]], &dev).unwrap();
    let one = |agg, steps, tokens| {
        let w = Window {
            accumulation_steps: steps,
            tokens,
        };
        aggregate(&per_token, &mask, agg, 4, w)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    assert!((one(Aggregation::SequenceMean, 1, 0) - (1.5 + 4.0) / 2.0).abs() < 1e-12);
    assert!((one(Aggregation::SequenceMean, 2, 0) - (1.5 + 4.0) / 4.0).abs() < 1e-12);
    assert!((one(Aggregation::BatchTokenMean, 1, 0) - 7.0 / 3.0).abs() < 1e-12);
    assert!((one(Aggregation::ConstantLength, 1, 0) - 7.0 / 8.0).abs() < 1e-12);
    // Ten tokens in the whole window, three of them here.
    assert!((one(Aggregation::WindowTokenMean, 2, 10) - 0.7).abs() < 1e-12);
}
