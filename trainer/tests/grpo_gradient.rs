//! The GRPO loss differentiated through the tiny fixture Qwen2.5-VL (image prompt, LoRA on every
//! linear layer of the language model) agrees with central finite differences on LoRA parameters;
//! rollouts that share the prompt's KV cache decode what an uncached model would; and the SFT loss
//! of a padded batch equals its examples' losses taken one at a time, gradients included.

use std::path::PathBuf;

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_models::qwen2_5_vl::preprocess::preprocess_file;
use anatomy_models::qwen2_5_vl::sampling::{Sampler, SamplingParams};
use anatomy_models::qwen2_5_vl::template::{user_prompt, ChatTokenizer};
use anatomy_trainer::grpo::{
    completion_logps, loss, rollout, sft_loss, Aggregation, LossConfig, LossInputs, Objective,
    Prompt, RolloutConfig, Window,
};
use anatomy_trainer::lora::{Lora, LoraConfig};
use anatomy_trainer::rng::SplitMix64;
use candle_core::{DType, Device, Tensor, Var};

fn fixture_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/qwen2_5_vl/square"
    ))
}

struct Setup {
    model: Qwen25VL,
    prompt: Prompt,
    tok: ChatTokenizer,
    pixels: Tensor,
    grid: [usize; 3],
}

fn setup(dtype: DType) -> Setup {
    let dir = fixture_dir().join("model");
    let model = Qwen25VL::load(&dir, dtype, &Device::Cpu).unwrap();
    let tok = ChatTokenizer::from_dir(&dir).unwrap();
    let img = preprocess_file(
        fixture_dir().join("image.png"),
        &load_preprocess_params(&dir).unwrap(),
    )
    .unwrap();
    let pixels = Tensor::from_slice(
        &img.pixel_values,
        (img.n_patches, img.patch_dim),
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(dtype)
    .unwrap();
    let merge = model.config().vision.spatial_merge_size;
    let text = user_prompt("Which organ is at the top-left?", true);
    let ids = tok
        .encode_prompt(&text, &[img.image_tokens(merge)])
        .unwrap();
    let prompt = Prompt::encode(&model, &ids, Some(&pixels), &[img.grid_thw]).unwrap();
    Setup {
        model,
        prompt,
        tok,
        pixels,
        grid: img.grid_thw,
    }
}

#[test]
fn grpo_loss_gradient_matches_finite_differences() {
    let Setup {
        mut model, prompt, ..
    } = setup(DType::F64);
    let lora = Lora::attach(
        &mut model,
        &LoraConfig {
            rank: 2,
            alpha: 4.0,
            ..LoraConfig::default()
        },
        7,
    )
    .unwrap();
    // B starts at zero, which would leave A without gradient: give every factor random values.
    let mut rng = SplitMix64::new(11);
    for v in lora.vars() {
        let r: Vec<f64> = (0..v.elem_count()).map(|_| rng.unit() - 0.5).collect();
        v.set(&Tensor::from_vec(r, v.shape(), v.device()).unwrap())
            .unwrap();
    }
    let completions: [&[u32]; 3] = [&[40, 41, 42, 43], &[50, 51], &[60, 61, 62]];
    let dev = Device::Cpu;

    model.text().adapters().set_enabled(false);
    let (reference, mask) = completion_logps(&model, &prompt, &completions, 1.0).unwrap();
    model.text().adapters().set_enabled(true);
    let (current, _) = completion_logps(&model, &prompt, &completions, 1.0).unwrap();
    // Old policy a little away from the current one, so ratios sit on both sides of 1.
    let noise = Tensor::new(
        &[
            [0.1f64, -0.15, 0.05, 0.3],
            [-0.05, 0.12, 0.0, 0.0],
            [0.08, -0.02, 0.25, 0.0],
        ],
        &dev,
    )
    .unwrap();
    let old = (current.detach().to_dtype(DType::F64).unwrap() + noise).unwrap();
    let reference = reference.detach().to_dtype(DType::F64).unwrap();
    let adv = Tensor::new(&[1.0f64, -0.5, -0.5], &dev).unwrap();
    let cfg = LossConfig {
        objective: Objective::ClippedRatio,
        epsilon_low: 0.2,
        epsilon_high: 0.28,
        beta: 0.04,
        kl_ratio_correction: false,
        aggregation: Aggregation::SequenceMean,
        max_completion_length: 4,
    };
    let eval = |model: &Qwen25VL| -> Tensor {
        let (logps, _) = completion_logps(model, &prompt, &completions, 1.0).unwrap();
        let logps = logps.to_dtype(DType::F64).unwrap();
        let inputs = LossInputs {
            logps: &logps,
            old_logps: Some(&old),
            ref_logps: Some(&reference),
            advantages: &adv,
            mask: &mask,
        };
        let w = Window {
            accumulation_steps: 1,
            tokens: 9,
        };
        loss(&cfg, &inputs, w).unwrap().loss
    };
    let l = eval(&model);
    let grads = l.backward().unwrap();
    let vars = lora.vars();
    // A and B of the first layer's q_proj, the last layer's down_proj, and a middle one.
    let picks: Vec<(&Var, usize)> = vec![
        (&vars[0], 3),
        (&vars[1], 5),
        (&vars[vars.len() / 2], 1),
        (&vars[vars.len() - 2], 7),
        (&vars[vars.len() - 1], 0),
    ];
    let h = 1e-6;
    let mut worst: f64 = 0.0;
    for (var, idx) in picks {
        let analytic = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()[idx];
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let at = |delta: f64| {
            let mut v = base.clone();
            v[idx] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                .unwrap();
            eval(&model).to_scalar::<f64>().unwrap()
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        var.set(&Tensor::from_vec(base, var.shape(), &dev).unwrap())
            .unwrap();
        let rel = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(1e-8);
        eprintln!("analytic {analytic:+.9e} numeric {numeric:+.9e} rel {rel:.1e}");
        assert!(analytic.abs() > 1e-8, "parameter without gradient");
        worst = worst.max(rel);
    }
    eprintln!("GRPO loss through the fixture model: worst relative error {worst:.2e}");
    assert!(worst < 1e-6, "{worst}");
}

#[test]
fn shared_cache_rollouts_equal_uncached_generation() {
    let Setup {
        model,
        prompt,
        tok,
        pixels,
        grid,
    } = setup(DType::F32);
    let stop = tok.stop_tokens(&model.config().tokens.eos_token_ids);
    let cfg = RolloutConfig {
        temperature: 0.0,
        top_p: 1.0,
        max_new_tokens: 6,
        stop: stop.clone(),
    };
    let mut greedy = Sampler::new(SamplingParams::default());
    let outs = rollout(&model, &prompt, 2, &cfg, &mut greedy).unwrap();
    let images = model.vision_forward(&pixels, &[grid]).unwrap();
    let reused = Prompt::with_image_embeds(&model, &prompt.ids, Some(&images), &[grid]).unwrap();
    let diff = (&reused.embeds - &prompt.embeds).unwrap().abs().unwrap();
    assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!(
        (reused.positions.clone(), reused.rope_delta),
        (prompt.positions.clone(), prompt.rope_delta)
    );
    let want = model
        .generate_greedy(&prompt.ids, Some(&pixels), &[grid], 6, &stop)
        .unwrap();
    assert_eq!(outs[0].tokens, want);
    assert_eq!(outs[1].tokens, want);

    let sampled = |seed| {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed,
        });
        let cfg = RolloutConfig {
            temperature: 1.0,
            ..cfg.clone()
        };
        rollout(&model, &prompt, 3, &cfg, &mut s).unwrap()
    };
    let a = sampled(3);
    assert_eq!(a, sampled(3));
    assert_ne!(a[0].tokens, a[1].tokens);
    // Every sampled token is a finite-probability token under the recomputed distribution.
    let refs: Vec<&[u32]> = a.iter().map(|c| c.tokens.as_slice()).collect();
    let (lp, mask) = completion_logps(&model, &prompt, &refs, 1.0).unwrap();
    let lp = (lp * mask)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(lp.iter().all(|v| v.is_finite() && *v <= 0.0));
}

#[test]
fn batched_sft_loss_equals_one_example_at_a_time() {
    let Setup {
        mut model,
        prompt,
        tok,
        pixels,
        grid,
    } = setup(DType::F64);
    let lora = Lora::attach(&mut model, &LoraConfig::default(), 3).unwrap();
    let mut rng = SplitMix64::new(5);
    for v in lora.vars() {
        let r: Vec<f64> = (0..v.elem_count()).map(|_| rng.unit() - 0.5).collect();
        v.set(&Tensor::from_vec(r, v.shape(), v.device()).unwrap())
            .unwrap();
    }
    // A second, longer prompt about the same image, so the rows differ in length and position.
    let text = user_prompt(
        "Which organ is at the top-left of this frame, and why?",
        true,
    );
    let merge = model.config().vision.spatial_merge_size;
    let ids = tok
        .encode_prompt(&text, &[grid[0] * grid[1] * grid[2] / (merge * merge)])
        .unwrap();
    let longer = Prompt::encode(&model, &ids, Some(&pixels), &[grid]).unwrap();
    assert!(longer.len() > prompt.len());
    let prompts = [&prompt, &longer, &prompt];
    let targets: [&[u32]; 3] = [&[40, 41, 42, 43, 44], &[50, 51], &[60]];

    let batched = sft_loss(&model, &prompts, &targets).unwrap();
    // One at a time: each example's mean NLL from the per-token log-probabilities, averaged.
    let mut alone = Tensor::zeros((), DType::F64, &Device::Cpu).unwrap();
    for (p, t) in prompts.iter().zip(&targets) {
        let (logps, _) = completion_logps(&model, p, &[t], 1.0).unwrap();
        let nll = (logps.mean_all().unwrap().neg().unwrap() / 3.0).unwrap();
        alone = (alone + nll).unwrap();
    }
    let (b, a) = (
        batched.to_scalar::<f64>().unwrap(),
        alone.to_scalar::<f64>().unwrap(),
    );
    assert!(
        (b - a).abs() < 1e-10 * a.abs(),
        "batched {b} vs one at a time {a}"
    );
    let (gb, ga) = (batched.backward().unwrap(), alone.backward().unwrap());
    let max_abs = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f64>();
    let mut worst = 0f64;
    for v in lora.vars() {
        let (x, y) = (gb.get(&v).unwrap(), ga.get(&v).unwrap());
        let m = max_abs(y.clone()).unwrap();
        assert!(m > 0.0, "a LoRA factor got no gradient");
        worst = worst.max(max_abs((x - y).unwrap()).unwrap() / m);
    }
    assert!(worst < 1e-9, "gradients differ by {worst:.2e}");

    let short: [&[u32]; 2] = [&[1], &[]];
    let err = sft_loss(&model, &prompts[..2], &short).unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
    assert!(sft_loss(&model, &prompts, &short).is_err());
}
