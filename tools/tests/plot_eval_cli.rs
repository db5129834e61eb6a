//! `anatomy plot` and `anatomy eval` end to end through the binary: the files and the JSON shape
//! the issue names, and errors that point at the bad input.

use std::path::{Path, PathBuf};

mod cli;
use cli::{anatomy, ok};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write_metrics(dir: &Path, invalid: f32) {
    std::fs::create_dir_all(dir).unwrap();
    let lines: Vec<String> = (1..=5)
        .map(|step| {
            serde_json::json!({
                "step": step, "reward": 0.1 * step as f32, "accuracy": 0.5, "format_reward": 1.0,
                "sq": 0.3, "invalid_ratio": invalid, "invalid_per_class": {"Liver": invalid},
                "kl": null, "loss": 0.0, "completion_len": 10.0, "lr": 1e-5, "stage": 0,
                "grad_norm": 1.0, "clip_ratio": 0.0,
            })
            .to_string()
        })
        .collect();
    std::fs::write(dir.join("metrics.jsonl"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn plot_overlays_two_runs_into_two_pngs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        tmp.path().join("grpo"),
        tmp.path().join("gdqa"),
        tmp.path().join("out"),
    );
    write_metrics(&a, 0.5);
    write_metrics(&b, 0.2);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let stdout = ok(anatomy(&["plot", &s(&a), &s(&b), "--out", &s(&out)]));
    for name in ["reward-and-sq.png", "invalid-gradient-ratio.png"] {
        let bytes = std::fs::read(out.join(name)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "{name}");
        assert!(stdout.contains(name));
    }

    std::fs::write(b.join("metrics.jsonl"), "{\"step\": 1}\n").unwrap();
    let err = anatomy(&["plot", &s(&a), &s(&b)]);
    assert!(!err.status.success());
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(msg.contains("metrics.jsonl:1:"), "{msg}");
}

#[test]
fn eval_json_has_the_documented_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let data =
        anatomy_trainer::run::synthetic::write_colour_task(tmp.path(), 4, 2, false, 3).unwrap();
    let model = root().join("tests/fixtures/qwen2_5_vl/square/model");
    let args = [
        "eval",
        "--hf",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--image-root",
        tmp.path().to_str().unwrap(),
        "--limit",
        "3",
        "--max-new-tokens",
        "8",
        "--json",
    ];
    let v: serde_json::Value = serde_json::from_str(&ok(anatomy(&args))).unwrap();
    assert_eq!(v["count"], 3);
    assert!(v["accuracy"].as_f64().unwrap() <= 1.0);
    let labels = v["confusion"]["labels"].as_array().unwrap();
    assert_eq!(labels.last().unwrap(), "invalid");
    let matrix = v["confusion"]["matrix"].as_array().unwrap();
    assert_eq!(matrix.len(), labels.len());
    let total: u64 = matrix
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(total, 3);
    let per_class: u64 = v["per_class"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(per_class, 3);
    // The plain output must work too.
    let plain = ok(anatomy(&args[..args.len() - 1]));
    assert!(plain.starts_with("accuracy "), "{plain}");
}
