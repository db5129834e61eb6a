//! `anatomy curriculum` and `anatomy augment` end to end on the paper's real questions
//! (`../shared/data/anatomy-r1/`): the JSON interfaces the issue names, and their invariants.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn data(file: &str) -> PathBuf {
    let dir = std::env::var_os("ANATOMY_R1_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data/anatomy-r1"));
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "the paper's data is missing: {}",
        path.display()
    );
    path
}

fn run(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_anatomy"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn curriculum_json_lists_stages_easy_first() {
    let model = root().join("tests/fixtures/qwen2_5_vl/square/model");
    let embedder = format!("policy:{}", model.display());
    let data = data("GRPO-ASC-Learning.json");
    let out = run(&[
        "curriculum".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--embedder".as_ref(),
        embedder.as_ref(),
        "--stages".as_ref(),
        "3".as_ref(),
        "--json".as_ref(),
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stages = v["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    let mut total = 0;
    let mut last_max = f64::NEG_INFINITY;
    for (i, s) in stages.iter().enumerate() {
        assert_eq!(s["stage"].as_u64().unwrap(), i as u64);
        let (min, mean, max) = (
            s["sq_min"].as_f64().unwrap(),
            s["sq_mean"].as_f64().unwrap(),
            s["sq_max"].as_f64().unwrap(),
        );
        assert!(min <= mean && mean <= max, "{s}");
        // Training order is easy (dissimilar choices) to hard.
        assert!(min >= last_max - 1e-6, "stages overlap: {v}");
        last_max = max;
        total += s["count"].as_u64().unwrap();
    }
    assert_eq!(total, 1000);
}

#[test]
fn augment_json_keeps_every_answer() {
    let data = data("GRPO.json");
    let out = run(&[
        "augment".as_ref(),
        "--data".as_ref(),
        data.as_os_str(),
        "--variants".as_ref(),
        "4".as_ref(),
        "--limit".as_ref(),
        "50".as_ref(),
        "--json".as_ref(),
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    let mut answer_of = std::collections::HashMap::new();
    let mut questions: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for l in &lines {
        let options: Vec<&str> = l["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        let letter = l["answer"].as_str().unwrap();
        let idx = (letter.as_bytes()[0] - b'A') as usize;
        let text = options[idx];
        let id = l["id"]
            .as_str()
            .map(String::from)
            .unwrap_or(l["id"].to_string());
        let prev = answer_of.entry(id.clone()).or_insert(text.to_string());
        assert_eq!(prev, text, "variant {} changed the answer", l["variant"]);
        questions
            .entry(id)
            .or_default()
            .insert(l["question"].as_str().unwrap().to_string());
        assert!(l["variant"].is_u64());
    }
    assert_eq!(answer_of.len(), 50);
    // Variants really rephrase: each record's four variants ask it in at least three wordings.
    for (id, qs) in &questions {
        assert!(qs.len() >= 3, "record {id}: {qs:?}");
    }
}
