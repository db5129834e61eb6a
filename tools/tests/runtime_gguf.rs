//! The lean runtime against HF transformers on the committed fixtures: each checkpoint is
//! converted with `anatomy convert` (into a temp dir), loaded with `anatomy_runtime`, and its
//! prompt ids, vision output, last logits and 16 greedy tokens are compared with the recorded
//! `reference.safetensors`. F32: logits within 1e-3 and identical tokens; Q8_0: identical tokens.
//! Q4_K_M: bounded mean KL of the next-token distributions against the F32 file. The files that
//! llama.cpp's own converter wrote for `square` (tests/fixtures/gguf/llamacpp/) give HF's tokens.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_runtime::backend::CacheType;
use anatomy_runtime::generate::ImageInput;
use anatomy_runtime::{Model, ModelOptions};
use safetensors::SafeTensors;

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/qwen2_5_vl")
        .join(case)
}

fn convert(case: &str, quant: &str, out: &Path) -> (PathBuf, PathBuf) {
    let (lm, mm) = (
        out.join(format!("{case}-{quant}.gguf")),
        out.join(format!("{case}-{quant}-mmproj.gguf")),
    );
    let st = Command::new(env!("CARGO_BIN_EXE_anatomy"))
        .arg("convert")
        .arg(case_dir(case).join("model"))
        .arg("--out")
        .arg(&lm)
        .arg("--mmproj")
        .arg(&mm)
        .args(["--quant", quant, "--quiet"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    (lm, mm)
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(st: &SafeTensors, name: &str) -> Vec<i64> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs one case; returns (vision max error, logits max error, greedy tokens).
fn run(case: &str, quant: &str) -> (f32, f32, Vec<u32>, Vec<u32>) {
    run_with(case, quant, CacheType::F32)
}

fn run_with(case: &str, quant: &str, cache_type: CacheType) -> (f32, f32, Vec<u32>, Vec<u32>) {
    let dir = case_dir(case);
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = convert(case, quant, tmp.path());
    let pre = load_preprocess_params(dir.join("model")).unwrap();
    let opts = ModelOptions {
        threads: Some(2),
        min_pixels: Some(pre.min_pixels),
        max_pixels: Some(pre.max_pixels),
        cache_type,
        ..Default::default()
    };
    let model = Model::load(&lm, Some(&mm), &opts).unwrap();
    assert_eq!(model.cache_type(), cache_type);
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();

    let mut s = model.session();
    let img = s
        .preprocess(&ImageInput::Path(dir.join("image.png")))
        .unwrap();
    let h = s.encode_image(&img).unwrap();
    assert!(!h.cached);
    let vision = s.image_embeddings(&h).unwrap();
    let verr = max_abs(&vision, &f32s(&st, "vision_output"));
    // The second encoding of the same frame comes from the session's cache.
    assert!(s.encode_image(&img).unwrap().cached);

    let ids = s
        .prompt_ids(reference["question"].as_str().unwrap(), Some(h.tokens))
        .unwrap();
    let want: Vec<u32> = i64s(&st, "input_ids").iter().map(|&v| v as u32).collect();
    assert_eq!(ids, want, "{case}: prompt ids differ from HF's");
    s.prefill(&ids, Some(&h)).unwrap();
    let lerr = max_abs(s.logits(), &f32s(&st, "logits_last"));
    let mut greedy = Vec::new();
    for _ in 0..16 {
        let next = anatomy_runtime::sampling::argmax(s.logits());
        greedy.push(next);
        s.append(&[next]).unwrap();
    }
    let expected = i64s(&st, "greedy_tokens")
        .iter()
        .map(|&v| v as u32)
        .collect();
    (verr, lerr, greedy, expected)
}

#[test]
fn f32_gguf_matches_hf_transformers() {
    for case in ["square", "wide"] {
        let (verr, lerr, got, want) = run(case, "f32");
        eprintln!("{case} f32: vision max|err| {verr:.2e}, logits max|err| {lerr:.2e}");
        assert!(verr < 1e-4, "{case}: vision output off by {verr}");
        assert!(lerr < 1e-3, "{case}: last logits off by {lerr}");
        assert_eq!(got, want, "{case}: greedy tokens");
    }
}

/// The F32 file with an f16 KV cache (`--cache-type f16`): every cached key and value rounded to
/// f16 moves the last logits from HF's by 2.1e-3 (square) and 2.7e-3 (wide), where the f32 cache
/// stays within 1e-3; bound 1e-2. That is far below HF's smallest greedy margin (0.095), so the
/// 16 greedy tokens stay HF's.
#[test]
fn f32_gguf_with_an_f16_cache_keeps_hf_tokens() {
    for case in ["square", "wide"] {
        let (_, lerr, got, want) = run_with(case, "f32", CacheType::F16);
        eprintln!("{case} f32, f16 cache: logits max|err| {lerr:.2e}");
        assert!(
            lerr > 0.0 && lerr < 1e-2,
            "{case}: last logits off by {lerr}"
        );
        assert_eq!(got, want, "{case}: greedy tokens");
    }
}

/// Q8_0 rounds every weight by up to half a step: on these random-weight fixtures that moves the
/// logits by 0.2-0.45 (measured even with exact f32 activations), while HF's greedy margins go
/// down to 0.095, so a late token may flip. The test therefore feeds HF's tokens (teacher forcing)
/// and requires, at every step, HF's token whenever its recorded margin exceeds twice that step's
/// measured logit error against the F32 file, and the error itself below 0.6. It peaks at 0.43
/// with the prompt's products in f32, 0.46 where the CPU runs them on the int8 kernel (AVX-512
/// VNNI without AMX: activations rounded to bytes per 32 values, as ggml pairs Q8_0), which
/// matches 14 of 16 tokens per case where f32 products match 15-16.
#[test]
fn q8_0_gguf_keeps_every_token_its_error_cannot_explain() {
    for case in ["square", "wide"] {
        let dir = case_dir(case);
        let tmp = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let want: Vec<u32> = i64s(&st, "greedy_tokens")
            .iter()
            .map(|&v| v as u32)
            .collect();
        let margins = f32s(&st, "greedy_margins");
        let pre = load_preprocess_params(dir.join("model")).unwrap();
        let opts = ModelOptions {
            threads: Some(2),
            min_pixels: Some(pre.min_pixels),
            max_pixels: Some(pre.max_pixels),
            ..Default::default()
        };
        let mut logits_per_quant = Vec::new();
        for quant in ["f32", "q8_0"] {
            let (lm, mm) = convert(case, quant, tmp.path());
            let model = Model::load(&lm, Some(&mm), &opts).unwrap();
            let mut s = model.session();
            let img = s
                .preprocess(&ImageInput::Path(dir.join("image.png")))
                .unwrap();
            let h = s.encode_image(&img).unwrap();
            let ids: Vec<u32> = i64s(&st, "input_ids").iter().map(|&v| v as u32).collect();
            s.prefill(&ids, Some(&h)).unwrap();
            let mut steps = Vec::new();
            for &t in &want {
                steps.push(s.logits().to_vec());
                s.append(&[t]).unwrap();
            }
            logits_per_quant.push(steps);
        }
        let mut matched = 0;
        for (i, (f, q)) in logits_per_quant[0]
            .iter()
            .zip(&logits_per_quant[1])
            .enumerate()
        {
            let err = max_abs(f, q);
            assert!(err < 0.6, "{case} step {i}: Q8_0 logits off by {err}");
            let got = anatomy_runtime::sampling::argmax(q);
            if got == want[i] {
                matched += 1;
            } else {
                assert!(
                    margins[i] <= 2.0 * err,
                    "{case} step {i}: token {got} != {} with margin {} > 2 x error {err}",
                    want[i],
                    margins[i]
                );
            }
        }
        eprintln!("{case} q8_0: {matched}/16 teacher-forced greedy tokens equal HF's");
        assert!(matched >= 14, "{case}: only {matched}/16");
    }
}

/// Q4_K_M against F32, teacher-forced on HF's greedy tokens (both files see the same context at
/// every step). The fixtures' rows (64, 128, ...) are not multiples of 256, so the recipe's K-quant
/// tensors fall back to Q5_0/Q5_1 (llama.cpp's rule), which is what is measured here; the 256-row
/// case is `kquant_q4_k_m_kl` in gguf_crosscheck.rs. Measured mean KL(p_f32 || p_q4km) over the 16
/// steps: square 0.0856 nats (max per step 0.34), wide 0.179 (max 0.59); bound 0.35, about 2x
/// the larger (the computation is deterministic; the margin is for legitimate kernel changes).
#[test]
fn q4_k_m_gguf_mean_kl_to_f32_is_small() {
    for case in ["square", "wide"] {
        let dir = case_dir(case);
        let tmp = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let want: Vec<u32> = i64s(&st, "greedy_tokens")
            .iter()
            .map(|&v| v as u32)
            .collect();
        let ids: Vec<u32> = i64s(&st, "input_ids").iter().map(|&v| v as u32).collect();
        let pre = load_preprocess_params(dir.join("model")).unwrap();
        let opts = ModelOptions {
            threads: Some(2),
            min_pixels: Some(pre.min_pixels),
            max_pixels: Some(pre.max_pixels),
            ..Default::default()
        };
        let logits: Vec<Vec<Vec<f32>>> = ["f32", "q4_k_m"]
            .iter()
            .map(|quant| {
                let (lm, mm) = convert(case, quant, tmp.path());
                let image = dir.join("image.png");
                common::step_logits(&lm, &mm, &opts, &image, &ids, Some(&want), want.len()).0
            })
            .collect();
        let (mean, max) = common::mean_max_kl(&logits[0], &logits[1]);
        eprintln!("{case} q4_k_m: mean KL(f32 || q4_k_m) {mean:.5} nats, max {max:.5}");
        assert!(mean.is_finite() && mean < 0.35, "{case}: mean KL {mean}");
    }
}

/// llama.cpp's `convert_hf_to_gguf.py` output for `square` at f32 (made by
/// `tools/reference/gguf_crosscheck.py files`): a file we did not write loads, its prompt ids are
/// HF's, and it decodes HF's 16 greedy tokens.
#[test]
fn llamacpp_files_run() {
    let dir = case_dir("square");
    let files = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/llamacpp");
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let pre = load_preprocess_params(dir.join("model")).unwrap();
    let opts = ModelOptions {
        threads: Some(2),
        min_pixels: Some(pre.min_pixels),
        max_pixels: Some(pre.max_pixels),
        ..Default::default()
    };
    let model = Model::load(
        files.join("square-f32.gguf"),
        Some(&files.join("square-f32-mmproj.gguf")),
        &opts,
    )
    .unwrap();
    let mut s = model.session();
    let img = s
        .preprocess(&ImageInput::Path(dir.join("image.png")))
        .unwrap();
    let h = s.encode_image(&img).unwrap();
    let verr = max_abs(
        &s.image_embeddings(&h).unwrap(),
        &f32s(&st, "vision_output"),
    );
    let ids = s
        .prompt_ids(reference["question"].as_str().unwrap(), Some(h.tokens))
        .unwrap();
    let want_ids: Vec<u32> = i64s(&st, "input_ids").iter().map(|&v| v as u32).collect();
    assert_eq!(ids, want_ids, "prompt ids from llama.cpp's tokenizer keys");
    s.prefill(&ids, Some(&h)).unwrap();
    let lerr = max_abs(s.logits(), &f32s(&st, "logits_last"));
    let mut greedy = Vec::new();
    for _ in 0..16 {
        let next = anatomy_runtime::sampling::argmax(s.logits());
        greedy.push(next);
        s.append(&[next]).unwrap();
    }
    let want: Vec<u32> = i64s(&st, "greedy_tokens")
        .iter()
        .map(|&v| v as u32)
        .collect();
    eprintln!("llama.cpp square f32: vision max|err| {verr:.2e}, logits max|err| {lerr:.2e}");
    assert!(verr < 1e-4, "vision output off by {verr}");
    assert!(lerr < 1e-3, "last logits off by {lerr}");
    assert_eq!(greedy, want, "greedy tokens");
}

/// A session keeps the longest prefix its context shares with the next prompt: a second question
/// about the same frame runs only the tokens after the frame, and its logits equal a fresh
/// session's (F32 weights: only the order of float sums differs). Another frame of the same size
/// keeps only the text before the image; `reset` keeps nothing.
#[test]
fn a_follow_up_question_runs_only_its_new_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = case_dir("square");
    let (lm, mm) = convert("square", "f32", tmp.path());
    let opts = ModelOptions {
        threads: Some(2),
        ..Default::default()
    };
    let model = Model::load(&lm, Some(&mm), &opts).unwrap();
    use anatomy_models::qwen2_5_vl::preprocess::{decode_image, DecodeLimits};
    let png = std::fs::read(dir.join("image.png")).unwrap();
    let (mut other, width, height) = decode_image(&png, &DecodeLimits::default()).unwrap();
    other[0] ^= 0x80;
    let inputs = [
        ImageInput::Path(dir.join("image.png")),
        ImageInput::Rgb8 {
            data: other,
            width,
            height,
        },
    ];
    let mut s = model.session();
    let handles: Vec<_> = inputs
        .iter()
        .map(|i| {
            let p = s.preprocess(i).unwrap();
            s.encode_image(&p).unwrap()
        })
        .collect();
    let (h, h_other) = (handles[0], handles[1]);
    assert_eq!(h.grid, h_other.grid);
    let first = s
        .prompt_ids("What is in the top-left corner?", Some(h.tokens))
        .unwrap();
    let follow = s
        .prompt_ids("Which organ is at the center?", Some(h.tokens))
        .unwrap();
    let common = first
        .iter()
        .zip(&follow)
        .take_while(|(a, b)| a == b)
        .count();
    let before_image = first
        .iter()
        .position(|&t| t == model.special_tokens().image_pad)
        .unwrap();
    assert!(
        common > before_image + h.tokens,
        "the prompts share the frame"
    );

    // What a fresh session gives for a prompt.
    let fresh = |ids: &[u32], h| {
        let mut f = model.session();
        let p = f.preprocess(&inputs[0]).unwrap();
        let _ = f.encode_image(&p).unwrap();
        let p = f.preprocess(&inputs[1]).unwrap();
        let _ = f.encode_image(&p).unwrap();
        assert_eq!(f.prefill(ids, Some(h)).unwrap(), 0);
        f.logits().to_vec()
    };
    let close = |got: &[f32], want: &[f32], what: &str| {
        let err = max_abs(got, want);
        assert!(err < 1e-4, "{what}: logits off a fresh session's by {err}");
        assert_eq!(
            anatomy_runtime::sampling::argmax(got),
            anatomy_runtime::sampling::argmax(want),
            "{what}"
        );
    };

    assert_eq!(s.prefill(&first, Some(&h)).unwrap(), 0);
    for _ in 0..3 {
        let next = anatomy_runtime::sampling::argmax(s.logits());
        s.append(&[next]).unwrap();
    }
    assert_eq!(s.prefill(&follow, Some(&h)).unwrap(), common);
    close(s.logits(), &fresh(&follow, &h), "follow-up");
    // The same prompt again runs its last token only.
    assert_eq!(s.prefill(&follow, Some(&h)).unwrap(), follow.len() - 1);
    close(s.logits(), &fresh(&follow, &h), "the same prompt");
    // Another frame: the image's positions hold other values.
    assert_eq!(s.prefill(&follow, Some(&h_other)).unwrap(), before_image);
    close(s.logits(), &fresh(&follow, &h_other), "another frame");
    s.reset();
    assert_eq!(s.prefill(&follow, Some(&h_other)).unwrap(), 0);
}
