//! `anatomy ask --model/--mmproj` and `anatomy tokenize` end to end on a converted fixture: the
//! greedy answer equals HF's tokens, `--json` has the documented keys, multiple-choice options give
//! a letter and normalised probabilities, and bad inputs fail with an error, not a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/qwen2_5_vl")
        .join(case)
}

fn anatomy(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anatomy"))
        .args(args)
        .output()
        .unwrap()
}

fn convert(dir: &Path) -> (PathBuf, PathBuf) {
    convert_case(dir, "square")
}

fn convert_case(dir: &Path, case: &str) -> (PathBuf, PathBuf) {
    let (lm, mm) = (dir.join("lm.gguf"), dir.join("mmproj.gguf"));
    let out = anatomy(&[
        "convert".as_ref(),
        case_dir(case).join("model").as_os_str(),
        "--out".as_ref(),
        lm.as_os_str(),
        "--mmproj".as_ref(),
        mm.as_os_str(),
        "--quant".as_ref(),
        "f32".as_ref(),
        "--quiet".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (lm, mm)
}

fn ask(lm: &Path, mm: &Path, image: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "ask".as_ref(),
        "--model".as_ref(),
        lm.as_os_str(),
        "--mmproj".as_ref(),
        mm.as_os_str(),
        "--image".as_ref(),
        image.as_os_str(),
        "--threads".as_ref(),
        "2".as_ref(),
        "--json".as_ref(),
    ];
    args.extend(extra.iter().map(|s| std::ffi::OsStr::new(*s)));
    anatomy(&args)
}

/// The 16 token ids `ask --json` gives the `square` fixture's question about its image, with
/// `extra` flags.
fn square_token_ids(lm: &Path, mm: &Path, extra: &[&str]) -> serde_json::Value {
    let dir = case_dir("square");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let mut args = vec!["--max-tokens", "16"];
    args.extend_from_slice(extra);
    args.push(reference["question"].as_str().unwrap());
    let out = ask(lm, mm, &dir.join("image.png"), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    got["token_ids"].clone()
}

/// `anatomy bench --json` of a 4-token prompt and 2 generated tokens, once, with `extra` flags.
fn short_bench(lm: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args: Vec<&std::ffi::OsStr> = vec!["bench".as_ref(), "--model".as_ref(), lm.as_ref()];
    for a in [
        "--prompt-tokens",
        "4",
        "--gen-tokens",
        "2",
        "--reps",
        "1",
        "--json",
    ]
    .iter()
    .chain(extra)
    {
        args.push(a.as_ref());
    }
    let out = anatomy(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn fails_cleanly(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected a failure mentioning {needle:?}"
    );
    assert!(err.contains("error:") && err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The `wide` fixture's processor caps images below the default budget: the converter stores its
/// min/max pixels in the projector file, so `ask` with no size flag uses HF's image token count.
#[test]
fn processor_pixel_budget_travels_in_the_projector_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = convert_case(tmp.path(), "wide");
    let dir = case_dir("wide");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let out = ask(
        &lm,
        &mm,
        &dir.join("image.png"),
        &["--max-tokens", "1", "What is this?"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["image_tokens"], reference["n_image_tokens"]);
}

#[test]
fn ask_gguf_answers_like_hf_and_reports_choices_and_timings() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = convert(tmp.path());
    let dir = case_dir("square");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let image = dir.join("image.png");
    let q = reference["question"].as_str().unwrap();
    let out = ask(&lm, &mm, &image, &["--max-tokens", "16", q]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = got["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let want: Vec<u64> = reference["greedy_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // HF's recording does not stop at end tokens; ours does, so compare what we generated.
    assert!(!ids.is_empty());
    assert_eq!(ids[..], want[..ids.len()]);
    assert_eq!(got["prompt_tokens"], reference["prompt_length"]);
    assert_eq!(got["image_tokens"], reference["n_image_tokens"]);
    for k in [
        "load_ms",
        "image_encode_ms",
        "prefill_ms",
        "prefill_tokens",
        "decode_ms",
        "decode_tokens",
        "peak_rss_bytes",
    ] {
        assert!(got["timings"][k].is_number(), "timings.{k} missing: {got}");
    }
    assert!(got["timings"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(got.get("choice").is_none());

    let out = ask(
        &lm,
        &mm,
        &image,
        &[
            "--max-tokens",
            "4",
            "--options",
            "Liver; Gallbladder ;Fat",
            q,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probs: Vec<f64> = got["option_probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), 3);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{probs:?}");
    let best = probs
        .iter()
        .enumerate()
        .fold(0, |b, (i, &p)| if p > probs[b] { i } else { b });
    assert_eq!(got["choice"].as_str().unwrap(), ["A", "B", "C"][best]);

    // Same seed, same sampled answer.
    let sampled = |seed: &str| {
        let o = ask(
            &lm,
            &mm,
            &image,
            &[
                "--max-tokens",
                "8",
                "--temp",
                "1.0",
                "--top-k",
                "40",
                "--seed",
                seed,
                q,
            ],
        );
        assert!(o.status.success());
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["token_ids"].clone()
    };
    assert_eq!(sampled("3"), sampled("3"));
}

#[test]
fn bad_inputs_fail_with_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = convert(tmp.path());
    let image = case_dir("square").join("image.png");
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"not an image at all").unwrap();
    fails_cleanly(&ask(&lm, &mm, &junk, &["q"]), "junk.png");
    // The projector given as the language model: another architecture.
    fails_cleanly(&ask(&mm, &mm, &image, &["q"]), "general.architecture");
    // The language model given as the projector.
    fails_cleanly(&ask(&lm, &lm, &image, &["q"]), "general.architecture");
    fails_cleanly(
        &ask(&lm, &mm, &image, &["--options", ";", "q"]),
        "option A is empty",
    );
    fails_cleanly(
        &ask(&lm, &mm, &image, &["--context", "8", "q"]),
        "context holds 8",
    );
    fails_cleanly(
        &ask(&lm, &mm, &image, &["--cache-type", "q4_0", "q"]),
        "unknown cache type \"q4_0\"",
    );
    let hf = case_dir("square").join("model");
    fails_cleanly(
        &anatomy(&[
            "ask".as_ref(),
            "--hf".as_ref(),
            hf.as_os_str(),
            "a".as_ref(),
            "b".as_ref(),
        ]),
        "one question at a time",
    );
}

/// Several questions about one image: one JSON line each, from one session that encodes the
/// image once and runs only what follows the prefix the prompts share; each answer is the one the
/// question gets alone.
#[test]
fn several_questions_share_the_image_and_the_prompt_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = convert(tmp.path());
    let image = case_dir("square").join("image.png");
    let questions = [
        "What is in the top-left corner?",
        "Which organ is at the center?",
    ];
    let lines = |qs: &[&str]| -> Vec<serde_json::Value> {
        let mut extra = vec!["--max-tokens", "8"];
        extra.extend(qs);
        let out = ask(&lm, &mm, &image, &extra);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let both = lines(&questions);
    assert_eq!(both.len(), 2);
    for (got, q) in both.iter().zip(questions) {
        assert_eq!(got["question"], q);
        let alone = &lines(&[q])[0];
        assert_eq!(got["token_ids"], alone["token_ids"], "{q}");
        assert_eq!(alone["timings"]["prefill_reused_tokens"], 0);
    }
    let (first, second) = (&both[0]["timings"], &both[1]["timings"]);
    assert_eq!(first["image_cached"], false);
    assert_eq!(second["image_cached"], true);
    assert_eq!(first["prefill_reused_tokens"], 0);
    let reused = second["prefill_reused_tokens"].as_u64().unwrap();
    assert!(
        reused > both[1]["image_tokens"].as_u64().unwrap(),
        "{second}"
    );
    assert_eq!(
        reused + second["prefill_tokens"].as_u64().unwrap(),
        both[1]["prompt_tokens"].as_u64().unwrap()
    );
}

#[test]
fn tokenize_prints_ids_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, _) = convert(tmp.path());
    let dir = case_dir("square");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
    let out = anatomy(&[
        "tokenize".as_ref(),
        "--model".as_ref(),
        lm.as_os_str(),
        "--json".as_ref(),
        "--".as_ref(),
        reference["prompt_expanded"].as_str().unwrap().as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        got["ids"].as_array().unwrap().len(),
        reference["prompt_length"].as_u64().unwrap() as usize
    );
}

/// `--cache-type f16` answers with HF's tokens (the runtime's tests bound how far it moves the
/// logits), and `bench --cache-type f16 --json` says so, with a KV cache half the f32 one's bytes.
#[test]
fn an_f16_cache_answers_the_same_and_bench_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = convert(tmp.path());
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(case_dir("square").join("reference.json")).unwrap())
            .unwrap();
    let got = square_token_ids(&lm, &mm, &["--cache-type", "f16"]);
    assert_eq!(got, reference["greedy_tokens"]);

    let (full, half) = (
        short_bench(&lm, &["--cache-type", "f32"]),
        short_bench(&lm, &["--cache-type", "f16"]),
    );
    assert_eq!(full["cache_type"], "f32");
    assert_eq!(half["cache_type"], "f16");
    let bytes = |v: &serde_json::Value| v["kv_cache_bytes"].as_u64().unwrap();
    assert!(bytes(&half) > 0, "{half}");
    assert_eq!(2 * bytes(&half), bytes(&full));
    assert!(
        half["decode_tok_s"].as_f64().is_some_and(|v| v > 0.0),
        "{half}"
    );
    // Linux says how much of the maps, and of the language model's, sits on huge pages (the
    // tiny files fit in none).
    if cfg!(target_os = "linux") {
        assert!(full["file_huge_page_bytes"].is_u64(), "{full}");
        let lm_bytes = full["lm_file_bytes"].as_u64().unwrap();
        assert!(
            full["lm_huge_page_bytes"]
                .as_u64()
                .is_some_and(|h| h <= lm_bytes),
            "{full}"
        );
    }
    // The cores' clock is probed with the bandwidth, where the probe is built.
    let clock = |k: &str| full[k].as_f64();
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        let (lo, mid, hi) = (
            clock("cpu_clock_min_ghz"),
            clock("cpu_clock_ghz"),
            clock("cpu_clock_max_ghz"),
        );
        assert!(
            matches!((lo, mid, hi), (Some(l), Some(m), Some(h)) if 0.0 < l && l <= m && m <= h),
            "{full}"
        );
    } else {
        assert!(full["cpu_clock_ghz"].is_null(), "{full}");
    }
}

/// `--no-mmap` reads the files into memory and answers with HF's tokens all the same; `bench
/// --no-mmap --json` says `"mmap": false` and measures every rate.
#[test]
fn no_mmap_answers_the_same_and_bench_reports_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (lm, mm) = convert(tmp.path());
    let ids = |extra: &[&str]| square_token_ids(&lm, &mm, extra);
    let mapped = ids(&[]);
    assert!(!mapped.as_array().unwrap().is_empty());
    assert_eq!(ids(&["--no-mmap"]), mapped);

    let got = short_bench(&lm, &["--threads", "2", "--no-mmap"]);
    assert_eq!(got["mmap"], false, "{got}");
    for k in [
        "decode_tok_s",
        "read_bandwidth_gb_s",
        "decode_fraction_of_bound",
    ] {
        assert!(got[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {got}");
    }
    let bw = |k: &str| got[k].as_f64().unwrap_or(f64::NAN);
    assert!(
        bw("read_bandwidth_min_gb_s") > 0.0
            && bw("read_bandwidth_min_gb_s") <= bw("read_bandwidth_gb_s")
            && bw("read_bandwidth_gb_s") <= bw("read_bandwidth_max_gb_s"),
        "{got}"
    );
    // No tokens to time is an error, not a rate of NaN.
    let out = anatomy(&[
        "bench".as_ref(),
        "--model".as_ref(),
        lm.as_os_str(),
        "--gen-tokens".as_ref(),
        "0".as_ref(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gen-tokens must be positive"), "{err}");
}
