//! A run stopped after a checkpoint and resumed writes exactly the metrics of the same run left
//! uninterrupted (same seed): adapters, optimizer moments, the question sampler (here the ASCL
//! curriculum), DAPO's resampling draws and the GDQA hardness history all carry over.

use std::path::{Path, PathBuf};

use anatomy_trainer::run::synthetic::write_colour_task;
use anatomy_trainer::run::{RunConfig, Trainer};

fn config(data: &Path, out: &Path) -> RunConfig {
    let text = format!(
        r#"
base = "{}"
data = "{}"
image_root = "{}"
output_dir = "{}"
method = "dapo"
seed = 5
steps = 4
batch_size = 2
group_size = 3
max_new_tokens = 6
checkpoint_every = 2
[loss]
beta = 0.04
max_resamples = 1
[lora]
rank = 2
dropout = 0.1
[optim]
lr = 0.01
warmup_steps = 1
[ascl]
enabled = true
embedder = "policy"
stages = 2
stage_steps = 1
[gdqa]
enabled = true
variants = 2
"#,
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/qwen2_5_vl/square/model"
        ))
        .display(),
        data.join("questions.jsonl").display(),
        data.display(),
        out.display(),
    );
    RunConfig::parse(&text, &[]).unwrap()
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    write_colour_task(dir.path(), 8, 3, true, 2).unwrap();

    let whole = dir.path().join("whole");
    let mut t = Trainer::new(config(dir.path(), &whole)).unwrap();
    while !t.is_done() {
        t.step().unwrap();
    }
    drop(t);

    let split = dir.path().join("split");
    let mut t = Trainer::new(config(dir.path(), &split)).unwrap();
    t.step().unwrap();
    t.step().unwrap();
    // A step past the checkpoint that the resume must drop and redo.
    t.step().unwrap();
    drop(t);
    let mut t = Trainer::resume(&split).unwrap();
    assert_eq!(t.step_index(), 2);
    while !t.is_done() {
        t.step().unwrap();
    }

    let a = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let b = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(a.lines().count(), 4);
    assert_eq!(a, b);
    let first: serde_json::Value = serde_json::from_str(a.lines().next().unwrap()).unwrap();
    for key in [
        "step",
        "reward",
        "accuracy",
        "format_reward",
        "sq",
        "invalid_ratio",
        "kl",
        "loss",
        "completion_len",
        "lr",
        "stage",
    ] {
        assert!(
            first.get(key).is_some(),
            "metrics line lacks {key}: {first}"
        );
    }
    assert!(first["sq"].is_number() && first["kl"].is_number());
    // Checkpoints are complete directories named by `latest`; no temporary left behind.
    let latest = std::fs::read_to_string(split.join("latest")).unwrap();
    assert_eq!(latest, "checkpoint-000004");
    assert!(split.join(&latest).join("adapter.safetensors").exists());
    assert!(!std::fs::read_dir(&split).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}
