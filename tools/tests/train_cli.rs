//! `anatomy train` from the command line: `--threads` changes how fast a run goes, not what it
//! computes, and its bad value is a clear error; SFT micro-batches add up to their batch.

use std::path::{Path, PathBuf};

mod cli;
use cli::{anatomy, ok, s};

/// A two-step SFT run of the square fixture on six synthetic scenes.
fn run_toml(dir: &Path) -> PathBuf {
    let scenes = dir.join("scenes");
    cli::six_scenes(&scenes);
    let base =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen2_5_vl/square/model");
    let text = format!(
        "base = \"{}\"\ndata = \"{}\"\nimage_root = \"{}\"\noutput_dir = \"{}\"\nmethod = \"sft\"\n\
         seed = 1\nsteps = 2\nbatch_size = 2\nmax_new_tokens = 6\ncheckpoint_every = 2\n\
         finetune = \"full\"\n[optim]\nlr = 0.01\n",
        base.display(),
        scenes.join("train.json").display(),
        scenes.display(),
        dir.join("run").display(),
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `cfg` into `out` with `threads` candle threads and `more` arguments; the metrics and the
/// checkpoint's weights.
fn train(cfg: &Path, out: &Path, threads: &str, more: &[&str]) -> (String, Vec<u8>) {
    let output_dir = format!("output_dir={}", s(out));
    let mut args = vec![
        "train",
        "--config",
        s(cfg),
        "--set",
        &output_dir,
        "--threads",
        threads,
        "--quiet",
    ];
    args.extend_from_slice(more);
    ok(anatomy(&args));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();
    let weights = std::fs::read(out.join(latest.trim()).join("model.safetensors")).unwrap();
    (metrics, weights)
}

#[test]
fn the_thread_count_does_not_change_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_toml(dir.path());
    let (m1, w1) = train(&cfg, &dir.path().join("one"), "1", &[]);
    let (m2, w2) = train(&cfg, &dir.path().join("two"), "2", &[]);
    assert_eq!(m1.lines().count(), 2, "{m1}");
    // Same bytes: the recipe's `--threads 1` reproduces a model trained with more threads.
    assert_eq!(m1, m2);
    assert!(w1 == w2, "the checkpoints differ");
}

#[test]
fn zero_threads_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_toml(dir.path());
    let o = anatomy(&["train", "--config", s(&cfg), "--threads", "0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--threads must be at least 1"), "{err}");
    assert!(!dir.path().join("run").exists(), "a run started: {err}");
}

#[test]
fn micro_batches_add_up_to_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = run_toml(dir.path());
    let batch = ["--set", "batch_size=5"];
    let (whole, _) = train(&cfg, &dir.path().join("whole"), "1", &batch);
    let split = [&batch[..], &["--set", "sft.micro_batch=2"]].concat();
    let (parts, _) = train(&cfg, &dir.path().join("parts"), "1", &split);
    let column = |m: &str, key: &str| -> Vec<f64> {
        m.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    // Step 0's loss and gradient norm, then step 1's after the first update: three chunks of
    // 2 + 2 + 1 examples give the whole batch's values up to float rounding.
    for key in ["loss", "grad_norm", "accuracy"] {
        let (a, b) = (column(&whole, key), column(&parts, key));
        assert_eq!(a.len(), 2, "{whole}");
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(1e-3),
                "{key}: {a:?} vs {b:?}"
            );
        }
    }
}
