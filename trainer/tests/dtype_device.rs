//! Half-precision base weights with f32 adapters (`dtype = "bf16"`, the setting of a CUDA
//! workstation) and the `device` key. A CPU build cannot run CUDA; it checks the same bf16 graph
//! on the CPU and that asking for a GPU it lacks is a clear error, not a silent CPU run.

mod common;

use std::path::Path;

use anatomy_trainer::run::synthetic::write_colour_task;
use anatomy_trainer::run::{RunConfig, Trainer};

fn config(data: &Path, out: &Path, extra: &str, sets: &[&str]) -> RunConfig {
    try_config(data, out, extra, sets).unwrap()
}

fn try_config(
    data: &Path,
    out: &Path,
    extra: &str,
    sets: &[&str],
) -> Result<RunConfig, anatomy_trainer::run::RunError> {
    let text = format!(
        r#"
base = "{}"
data = "{}"
image_root = "{}"
output_dir = "{}"
seed = 2
steps = 2
batch_size = 2
group_size = 3
max_new_tokens = 6
checkpoint_every = 2
[lora]
rank = 4
[optim]
lr = 0.01
warmup_steps = 1
{extra}
"#,
        common::fixture_model("square").display(),
        data.join("questions.jsonl").display(),
        data.display(),
        out.display(),
    );
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    RunConfig::parse(&text, &sets)
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run(cfg: RunConfig) {
    let mut t = Trainer::new(cfg).unwrap();
    while !t.is_done() {
        t.step().unwrap();
    }
}

/// SFT's loss on the same batches with bf16 base weights stays within bf16 rounding of the f32
/// run's, and the checkpoint's adapters are f32.
#[test]
fn bf16_base_with_f32_adapters_trains_like_f32() {
    let dir = tempfile::tempdir().unwrap();
    write_colour_task(dir.path(), 8, 2, true, 2).unwrap();
    let mut losses = Vec::new();
    for dtype in ["f32", "bf16"] {
        let out = dir.path().join(dtype);
        let dt = format!("dtype={dtype}");
        run(config(dir.path(), &out, "", &["method=sft", &dt]));
        let m = metrics(&out);
        assert_eq!(m.len(), 2, "{dtype}: one metrics line per step");
        let l: Vec<f64> = m.iter().map(|v| v["loss"].as_f64().unwrap()).collect();
        assert!(
            l.iter().all(|v| v.is_finite() && *v > 0.0),
            "{dtype}: {l:?}"
        );
        losses.push(l);
        let ck = out.join(std::fs::read_to_string(out.join("latest")).unwrap().trim());
        let st = candle_core::safetensors::load(
            ck.join("adapter.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert!(!st.is_empty());
        for (name, t) in &st {
            assert_eq!(
                t.dtype(),
                candle_core::DType::F32,
                "{dtype}: adapter {name}"
            );
        }
    }
    let (a, b) = (losses[0][0], losses[1][0]);
    eprintln!("first-step SFT loss: f32 {a:.5}, bf16 {b:.5}");
    assert!(
        (a - b).abs() <= 0.02 * a,
        "bf16 loss {b} strays from f32 loss {a}"
    );
}

/// A GRPO step runs end to end on bf16 base weights (sampling, reference log-probs with the
/// adapters off, the clipped loss).
#[test]
fn grpo_runs_on_bf16_base_weights() {
    let dir = tempfile::tempdir().unwrap();
    write_colour_task(dir.path(), 8, 2, true, 2).unwrap();
    let out = dir.path().join("grpo");
    run(config(
        dir.path(),
        &out,
        "[loss]\nbeta = 0.04",
        &["dtype=bf16"],
    ));
    let m = metrics(&out);
    assert_eq!(m.len(), 2);
    for v in &m {
        assert!(v["loss"].as_f64().unwrap().is_finite(), "{v}");
        assert!(v["kl"].as_f64().unwrap().is_finite(), "{v}");
    }
}

/// Not compiled with `--features cuda`, where the same config would start on the GPU.
#[cfg(not(feature = "cuda"))]
/// `device = "cuda"` in a build without CUDA stops with an error that says how to get one;
/// a malformed device is a config error.
#[test]
fn cuda_device_without_a_cuda_build_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write_colour_task(dir.path(), 8, 2, true, 2).unwrap();
    let out = dir.path().join("gpu");
    let cfg = config(dir.path(), &out, "", &["device=cuda:0"]);
    let err = Trainer::new(cfg)
        .err()
        .expect("this test binary is built without CUDA")
        .to_string();
    assert!(
        err.contains("cuda:0") && err.contains("--features cuda"),
        "{err}"
    );
    let err = try_config(dir.path(), &out, "", &["device=gpu"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("device must be cpu, cuda or cuda:N"), "{err}");
}
