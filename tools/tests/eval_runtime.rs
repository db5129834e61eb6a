//! `anatomy eval` through the lean runtime: the JSON report's keys (accuracy, per_class, ece, n,
//! latency percentiles), image paths taken from the question file's directory by default, the
//! demo model used when no model is named, and a clear error when the demo files are missing.

use std::path::{Path, PathBuf};

mod cli;
use cli::{anatomy_with_demo as anatomy, ok, s};

/// The `square` fixture converted into demo-named files in `dir`.
fn demo_files(dir: &Path) -> (PathBuf, PathBuf) {
    let model = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/qwen2_5_vl/square/model"
    ));
    let (lm, mm) = (
        dir.join("anatomy-demo.gguf"),
        dir.join("anatomy-demo-mmproj.gguf"),
    );
    ok(anatomy(
        &[
            "convert",
            s(&model),
            "--out",
            s(&lm),
            "--mmproj",
            s(&mm),
            "--quant",
            "f32",
            "--quiet",
        ],
        None,
    ));
    (lm, mm)
}

#[test]
fn eval_json_through_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = demo_files(tmp.path());
    let scenes = tmp.path().join("scenes");
    ok(anatomy(
        &[
            "synth",
            "--out",
            s(&scenes),
            "--count",
            "5",
            "--size",
            "112",
            "--quiet",
        ],
        None,
    ));
    let data = scenes.join("questions.json");
    let lines = tmp.path().join("predictions.jsonl");
    // No --image-root: `images/...` paths resolve against the question file's directory.
    let out = ok(anatomy(
        &[
            "eval",
            "--model",
            s(&lm),
            "--mmproj",
            s(&mm),
            "--data",
            s(&data),
            "--json",
            "--predictions",
            s(&lines),
            "--limit",
            "4",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
        ],
        None,
    ));
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["n"], 4, "{j}");
    let acc = j["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    let ece = j["ece"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&ece), "{ece}");
    let total: u64 = j["per_class"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4);
    let (p50, p95) = (
        j["latency_ms"]["p50"].as_f64().unwrap(),
        j["latency_ms"]["p95"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p95 >= p50, "{j}");
    let m = j["confusion"]["matrix"].as_array().unwrap();
    let cells: u64 = m
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(cells, 4);
    // One line per question, agreeing with the report's count of correct answers.
    let preds: Vec<serde_json::Value> = std::fs::read_to_string(&lines)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(preds.len(), 4);
    let right = preds.iter().filter(|p| p["correct"] == true).count();
    assert!((right as f64 / 4.0 - acc).abs() < 1e-9, "{preds:?}");
    for p in &preds {
        let probs = p["option_probs"].as_array().unwrap();
        let sum: f64 = probs.iter().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3, "{p}");
        assert!(p["completion"].is_string() && p["id"].is_string(), "{p}");
    }

    // The demo model when no model is named; the tables in text mode.
    let text = ok(anatomy(
        &[
            "eval",
            "--data",
            s(&data),
            "--limit",
            "2",
            "--max-new-tokens",
            "2",
        ],
        Some(tmp.path()),
    ));
    assert!(
        text.contains("accuracy") && text.contains("expected calibration error"),
        "{text}"
    );

    // Missing demo files: the error names the path.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = anatomy(&["eval", "--data", s(&data)], Some(&empty));
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        msg.contains("anatomy-demo.gguf") && msg.contains("empty"),
        "{msg}"
    );
    let e = anatomy(&["ask", "--image", "x.png", "q"], Some(&empty));
    assert!(String::from_utf8_lossy(&e.stderr).contains("anatomy-demo.gguf"));
}
