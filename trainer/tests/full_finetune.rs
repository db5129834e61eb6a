//! Full fine-tuning (`finetune = "full"`): every language-model weight trains (the vision tower
//! only with `train_vision`), the KL reference is a frozen copy, checkpoints are HF directories
//! that load as models, a resumed run reproduces the uninterrupted one, and a LoRA run can start
//! from a full checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_trainer::export::{merge_to_dir, AdapterSet};
use anatomy_trainer::run::synthetic::write_colour_task;
use anatomy_trainer::run::{RunConfig, Trainer};
use candle_core::{DType, Device, Tensor};

fn base() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/qwen2_5_vl/square/model"
    ))
}

fn config(data: &Path, out: &Path, extra: &str) -> RunConfig {
    config_on(&base(), &data.join("questions.jsonl"), data, out, extra)
}

fn config_on(base: &Path, questions: &Path, images: &Path, out: &Path, extra: &str) -> RunConfig {
    let text = format!(
        r#"
base = "{}"
data = "{}"
image_root = "{}"
output_dir = "{}"
seed = 3
checkpoint_every = 2
{extra}
"#,
        base.display(),
        questions.display(),
        images.display(),
        out.display(),
    );
    RunConfig::parse(&text, &[]).unwrap()
}

const GRPO_FULL: &str = r#"
method = "grpo"
steps = 4
batch_size = 4
group_size = 4
max_new_tokens = 14
finetune = "full"
[reward]
format = 0.0
[loss]
beta = 0.04
[optim]
lr = 0.01
warmup_steps = 1
[gdqa]
enabled = true
variants = 2
"#;

fn run(cfg: RunConfig) -> PathBuf {
    let dir = cfg.output_dir.clone();
    let mut t = Trainer::new(cfg).unwrap();
    while !t.is_done() {
        t.step().unwrap();
    }
    dir
}

fn latest(run: &Path) -> PathBuf {
    run.join(std::fs::read_to_string(run.join("latest")).unwrap().trim())
}

fn weights(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    let a: Vec<f32> = a
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = b
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    a == b
}

#[test]
fn full_grpo_run_trains_the_language_model_and_resumes_exactly() {
    // The colour task's warm start (it answers in the format, right about half the time, so
    // groups have reward spread), merged into its base as an HF directory to fine-tune in full.
    let dir = tempfile::tempdir().unwrap();
    let colour = base().join("../../../colour");
    let warm = dir.path().join("warm");
    std::fs::create_dir_all(&warm).unwrap();
    let adapters = AdapterSet::from_checkpoint(&colour.join("warm-start")).unwrap();
    merge_to_dir(&colour.join("base"), &[adapters], &warm, &mut |_, _| {}).unwrap();
    let cfg = |out: &Path| {
        config_on(
            &warm,
            &colour.join("data/questions.jsonl"),
            &colour.join("data"),
            out,
            GRPO_FULL,
        )
    };

    let whole = run(cfg(&dir.path().join("whole")));

    let split = dir.path().join("split");
    let mut t = Trainer::new(cfg(&split)).unwrap();
    for _ in 0..3 {
        t.step().unwrap();
    }
    drop(t);
    let mut t = Trainer::resume(&split).unwrap();
    assert_eq!(t.step_index(), 2);
    while !t.is_done() {
        t.step().unwrap();
    }
    drop(t);
    let a = std::fs::read_to_string(whole.join("metrics.jsonl")).unwrap();
    let b = std::fs::read_to_string(split.join("metrics.jsonl")).unwrap();
    assert_eq!(a.lines().count(), 4);
    assert_eq!(a, b, "the resumed full fine-tuning run diverged");

    // The frozen copy is the reference: the policy moves away from it after the first update.
    let kls: Vec<f64> = a
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kl"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert!(
        kls[0].abs() < 1e-6,
        "policy and reference differ at step 0: {kls:?}"
    );
    assert!(kls[1..].iter().any(|&k| k > 1e-6), "kl stayed 0: {kls:?}");

    // The checkpoint is an HF directory: weights under the base's names, config and tokenizer.
    let ck = latest(&whole);
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(ck.join(f).is_file(), "{} lacks {f}", ck.display());
    }
    assert!(!ck.join("adapter.safetensors").exists());
    Qwen25VL::load(&ck, DType::F32, &Device::Cpu).unwrap();
    let before = weights(&warm.join("model.safetensors"));
    let after = weights(&ck.join("model.safetensors"));
    let mut names: Vec<&String> = before.keys().collect();
    names.sort();
    assert_eq!(names, {
        let mut n: Vec<&String> = after.keys().collect();
        n.sort();
        n
    });
    let (mut lm_changed, mut vision_changed) = (0, 0);
    for name in names {
        if !same(&before[name], &after[name]) {
            match name.starts_with("visual.") {
                true => vision_changed += 1,
                false => lm_changed += 1,
            }
        }
    }
    assert_eq!(
        vision_changed, 0,
        "the vision tower trained without train_vision"
    );
    assert!(
        lm_changed > 10,
        "only {lm_changed} language-model tensors changed"
    );
}

#[test]
fn train_vision_updates_the_vision_tower_too() {
    let dir = tempfile::tempdir().unwrap();
    write_colour_task(dir.path(), 8, 3, true, 2).unwrap();
    let extra = r#"
method = "sft"
steps = 2
batch_size = 2
max_new_tokens = 6
finetune = "full"
train_vision = true
[optim]
lr = 0.01
"#;
    let out = run(config(dir.path(), &dir.path().join("run"), extra));
    let before = weights(&base().join("model.safetensors"));
    let after = weights(&latest(&out).join("model.safetensors"));
    let changed = |prefix: &str| {
        before
            .keys()
            .filter(|n| n.starts_with(prefix) && !same(&before[*n], &after[*n]))
            .count()
    };
    assert!(changed("visual.blocks.") > 0, "no vision block trained");
    assert!(
        changed("model.layers.") > 0,
        "no language-model layer trained"
    );
}

#[test]
fn lora_run_starts_from_a_full_checkpoint_and_full_rejects_a_lora_init() {
    let dir = tempfile::tempdir().unwrap();
    write_colour_task(dir.path(), 8, 3, true, 2).unwrap();
    let sft = r#"
method = "sft"
steps = 2
batch_size = 2
max_new_tokens = 6
finetune = "full"
[optim]
lr = 0.01
"#;
    let full = latest(&run(config(dir.path(), &dir.path().join("full"), sft)));
    let lora = format!(
        "method = \"sft\"\nsteps = 2\nbatch_size = 2\nmax_new_tokens = 6\ninit = \"{}\"\n[lora]\nrank = 2\n",
        full.display()
    );
    let lora_run = run(config(dir.path(), &dir.path().join("lora"), &lora));
    let lora_ck = latest(&lora_run);
    assert!(lora_ck.join("adapter.safetensors").is_file());

    // The chain: full checkpoint as the root, then the LoRA checkpoint on top of it.
    let (root, loras) = anatomy_trainer::weights::chain(&base(), Some(&lora_ck)).unwrap();
    assert_eq!(root, full);
    assert_eq!(loras, vec![lora_ck.clone()]);

    let bad = format!(
        "method = \"sft\"\nsteps = 1\nbatch_size = 2\nfinetune = \"full\"\ninit = \"{}\"\n",
        lora_ck.display()
    );
    let err = Trainer::new(config(dir.path(), &dir.path().join("bad"), &bad))
        .err()
        .expect("full fine-tuning from a LoRA checkpoint must be refused")
        .to_string();
    assert!(err.contains("export it"), "{err}");
}
