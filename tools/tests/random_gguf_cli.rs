//! `anatomy random-gguf` end to end at the tiny shape: both files appear (and no temporary file),
//! `inspect --json` reads the converter's architecture keys, tensor names and recipe types, the
//! runtime loads the pair and answers a question about an image with the copied Qwen2 vocabulary,
//! the same seed gives the same bytes, and bad arguments fail with an error, not a panic.

use std::path::{Path, PathBuf};

use serde_json::Value;

mod cli;
use cli::{anatomy, ok, s};

fn image() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/qwen2_5_vl/square/image.png"
    ))
}

fn inspect(path: &Path) -> Value {
    serde_json::from_str(&ok(anatomy(&["inspect", "--json", s(path)]))).unwrap()
}

/// The `(type, shape)` of tensor `name` in an `inspect --json` object.
fn tensor(v: &Value, name: &str) -> (String, Vec<u64>) {
    let t = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tensor {name}"));
    (
        t["type"].as_str().unwrap().to_string(),
        serde_json::from_value(t["shape"].clone()).unwrap(),
    )
}

fn random(prefix: &Path, seed: &str) {
    ok(anatomy(&[
        "random-gguf",
        "--shape",
        "tiny",
        "--quant",
        "q8_0",
        "--seed",
        seed,
        "--out",
        s(prefix),
        "--quiet",
    ]));
}

fn fails_cleanly(args: &[&str], needle: &str) {
    let out = anatomy(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn tiny_pair_inspects_and_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("tiny");
    random(&prefix, "1");
    let (lm, mm) = (
        tmp.path().join("tiny.gguf"),
        tmp.path().join("tiny-mmproj.gguf"),
    );
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["tiny-mmproj.gguf", "tiny.gguf"]);

    let l = inspect(&lm);
    let meta = &l["metadata"];
    assert_eq!(meta["general.architecture"], "qwen2vl");
    assert_eq!(meta["general.file_type"], 7);
    assert_eq!(meta["qwen2vl.block_count"], 4);
    assert_eq!(meta["qwen2vl.embedding_length"], 128);
    assert_eq!(meta["tokenizer.ggml.model"], "gpt2");
    assert_eq!(meta["tokenizer.ggml.pre"], "qwen2");
    let vocab = meta["tokenizer.ggml.tokens"]["len"].as_u64().unwrap();
    assert_eq!(
        tensor(&l, "token_embd.weight"),
        ("q8_0".into(), vec![128, vocab])
    );
    assert_eq!(
        tensor(&l, "blk.3.ffn_down.weight"),
        ("q8_0".into(), vec![256, 128])
    );
    assert_eq!(tensor(&l, "blk.0.attn_k.bias"), ("f32".into(), vec![64]));
    assert_eq!(tensor(&l, "output_norm.weight"), ("f32".into(), vec![128]));
    // Tied, like the 3B: the embedding doubles as the head.
    assert!(l["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["name"] != "output.weight"));
    assert_eq!(l["totals"]["tensors"], 4 * 12 + 2);

    let m = inspect(&mm);
    let meta = &m["metadata"];
    assert_eq!(meta["general.architecture"], "clip");
    assert_eq!(meta["clip.projector_type"], "qwen2.5vl_merger");
    assert_eq!(meta["clip.vision.block_count"], 2);
    assert_eq!(meta["clip.vision.projection_dim"], 128);
    assert_eq!(meta["clip.vision.n_wa_pattern"], 2);
    assert_eq!(meta["general.file_type"], 7);
    // The converter's Q8_0 rules: patch kernels stay F32, matrices go to Q8_0.
    assert_eq!(
        tensor(&m, "v.patch_embd.weight.1"),
        ("f32".into(), vec![14, 14, 3, 64])
    );
    assert_eq!(
        tensor(&m, "v.blk.1.attn_q.weight"),
        ("q8_0".into(), vec![64, 64])
    );
    assert_eq!(tensor(&m, "mm.2.weight"), ("q8_0".into(), vec![256, 128]));

    let out = ok(anatomy(&[
        "ask",
        "--model",
        s(&lm),
        "--mmproj",
        s(&mm),
        "--image",
        s(&image()),
        "--max-tokens",
        "2",
        "--threads",
        "2",
        "--json",
        "hi",
    ]));
    let a: Value = serde_json::from_str(&out).unwrap();
    assert!(a["image_tokens"].as_u64().unwrap() > 0, "{a}");
    assert!(a["prompt_tokens"].as_u64().unwrap() > a["image_tokens"].as_u64().unwrap());
    let generated = a["token_ids"].as_array().unwrap();
    assert!(!generated.is_empty() && generated.len() <= 2, "{a}");

    let again = tmp.path().join("again");
    random(&again, "1");
    assert!(std::fs::read(&lm).unwrap() == std::fs::read(tmp.path().join("again.gguf")).unwrap());
    assert!(
        std::fs::read(&mm).unwrap() == std::fs::read(tmp.path().join("again-mmproj.gguf")).unwrap()
    );
}

#[test]
fn bad_arguments_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x");
    fails_cleanly(
        &["random-gguf", "--shape", "13b", "--out", s(&out)],
        "invalid value '13b'",
    );
    fails_cleanly(
        &[
            "random-gguf",
            "--shape",
            "tiny",
            "--quant",
            "q3_k",
            "--out",
            s(&out),
        ],
        "unknown --quant",
    );
    fails_cleanly(
        &[
            "random-gguf",
            "--shape",
            "tiny",
            "--vocab",
            s(&tmp.path().join("missing.gguf")),
            "--out",
            s(&out),
        ],
        "--vocab",
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
