//! `anatomy export` end to end: two tiny LoRA runs on the `square` fixture (an SFT warm start and
//! a run initialised from it) exported at F32 give the runtime the logits and greedy tokens of
//! the candle model with both adapters merged; the provenance keys are in the file and `inspect
//! --json` parses them; the same run exports to the same bytes; bad sources get clear errors.
//! Also the cross-crate check that the runtime's multiple-choice prompt is the trainer's.

use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_runtime::generate::{question_text, question_text_in, ImageInput, PromptFormat};
use anatomy_runtime::{Model, ModelOptions};
use anatomy_trainer::data::{self, prompt, LoadOptions};
use anatomy_trainer::lora::Lora;
use anatomy_trainer::run::{checkpoint, RunConfig, Trainer};
use candle_core::{DType, Device, Tensor};

mod cli;
use cli::{anatomy, ok, s};

fn base() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/qwen2_5_vl/square/model"
    ))
}

/// Synthetic scenes in the Anatomy-R1 layout (its own instruction and `Anatomy Options`
/// heading, unlike the runtime's default, so the test sees which prompt the runtime uses).
fn synth(dir: &Path) -> PathBuf {
    cli::six_scenes(dir)
}

fn train(data: &Path, image_root: &Path, out: &Path, init: Option<&Path>, targets: &str) {
    let tuning = format!("[lora]\nrank = 2\nalpha = 8.0\ntarget_modules = [{targets}]\n");
    train_with(data, image_root, out, init, &tuning);
}

/// One SFT step; `tuning` is the config's fine-tuning part (`[lora]` or `finetune = "full"`).
fn train_with(data: &Path, image_root: &Path, out: &Path, init: Option<&Path>, tuning: &str) {
    let init = init
        .map(|p| format!("init = \"{}\"\n", p.display()))
        .unwrap_or_default();
    let text = format!(
        r#"
base = "{}"
data = "{}"
image_root = "{}"
output_dir = "{}"
method = "sft"
{init}seed = 1
steps = 1
batch_size = 2
max_new_tokens = 6
{tuning}
[optim]
lr = 0.05
"#,
        base().display(),
        data.display(),
        image_root.display(),
        out.display(),
    );
    let mut t = Trainer::new(RunConfig::parse(&text, &[]).unwrap()).unwrap();
    while !t.is_done() {
        t.step().unwrap();
    }
}

/// Two runs: `warm` (all linear layers) and `run` (q/v only) started from `warm`'s checkpoint.
fn two_runs(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let scenes = tmp.join("scenes");
    let data = synth(&scenes);
    let warm = tmp.join("warm");
    train(&data, &scenes, &warm, None, "\"all-linear\"");
    let warm_ck = checkpoint::latest(&warm).unwrap();
    let run = tmp.join("run");
    train(
        &data,
        &scenes,
        &run,
        Some(&warm_ck),
        "\"q_proj\", \"v_proj\"",
    );
    (data, warm_ck, run)
}

fn merged_candle(warm_ck: &Path, run: &Path) -> Qwen25VL {
    let mut model = Qwen25VL::load(&base(), DType::F32, &Device::Cpu).unwrap();
    for ck_dir in [warm_ck.to_path_buf(), checkpoint::latest(run).unwrap()] {
        let ck = checkpoint::load(&ck_dir).unwrap();
        let lora = Lora::attach(&mut model, &ck.state.lora, 0).unwrap();
        lora.load_tensors(ck.weights.adapter(&ck_dir).unwrap(), &ck_dir)
            .unwrap();
        lora.merge(&mut model).unwrap();
    }
    model
}

#[test]
fn export_round_trip_provenance_and_reproducibility() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, warm_ck, run) = two_runs(tmp.path());
    let out = tmp.path().join("a/m");
    ok(anatomy(&[
        "export",
        s(&run),
        "--out",
        s(&out),
        "--quant",
        "f32",
        "--quiet",
    ]));
    let (lm, mm) = (
        tmp.path().join("a/m.gguf"),
        tmp.path().join("a/m-mmproj.gguf"),
    );
    assert!(lm.is_file() && mm.is_file());
    // No temporary merge directory is left behind.
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");

    // Runtime on the exported files against candle with both adapters merged.
    let question = "What anatomy is at the top-left of the frame?";
    let options: Vec<String> = ["Liver", "Gut", "Omentum"].map(String::from).to_vec();
    let image = data.parent().unwrap().join("images/000000.png");
    let model = Model::load(&lm, Some(&mm), &ModelOptions::default()).unwrap();
    let qdata = data::load(&data, &LoadOptions::default())
        .unwrap()
        .questions;
    let trained = PromptFormat {
        instruction: qdata[0].instruction.clone(),
        options_heading: qdata[0].options_heading.clone(),
    };
    assert_eq!(model.prompt_format(), &trained);
    assert_eq!(trained.options_heading, "Anatomy Options");
    let text = question_text_in(model.prompt_format(), question, &options).unwrap();
    let mut sess = model.session();
    let img = sess.preprocess(&ImageInput::Path(image.clone())).unwrap();
    let h = sess.encode_image(&img).unwrap();
    let ids = sess.prompt_ids(&text, Some(h.tokens)).unwrap();
    sess.prefill(&ids, Some(&h)).unwrap();

    let cm = merged_candle(&warm_ck, &run);
    let pixels = Tensor::from_slice(
        &img.pixel_values,
        (img.n_patches, img.patch_dim),
        &Device::Cpu,
    )
    .unwrap();
    let mut cache = cm.new_cache();
    let (mut logits, delta) = cm
        .prefill(&ids, Some(&pixels), &[img.grid_thw], &mut cache)
        .unwrap();
    let (mut rt_tokens, mut c_tokens) = (Vec::new(), Vec::new());
    for step in 0..8 {
        let row: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let diff = row
            .iter()
            .zip(sess.logits())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-3, "step {step}: logits differ by {diff}");
        let (c, r) = (
            anatomy_runtime::sampling::argmax(&row),
            anatomy_runtime::sampling::argmax(sess.logits()),
        );
        c_tokens.push(c);
        rt_tokens.push(r);
        sess.append(&[r]).unwrap();
        let pos = (ids.len() + c_tokens.len() - 1) as i64 + delta;
        logits = cm.decode_step(c, pos, &mut cache).unwrap();
    }
    assert_eq!(rt_tokens, c_tokens);
    // The merge changed the model: the base alone gives other logits.
    let base_model = Qwen25VL::load(&base(), DType::F32, &Device::Cpu).unwrap();
    let mut bc = base_model.new_cache();
    let (bl, _) = base_model
        .prefill(&ids, Some(&pixels), &[img.grid_thw], &mut bc)
        .unwrap();
    let bl: Vec<f32> = bl.flatten_all().unwrap().to_vec1().unwrap();
    let mut s2 = model.session();
    let h2 = s2.encode_image(&img).unwrap();
    s2.prefill(&ids, Some(&h2)).unwrap();
    let moved = bl
        .iter()
        .zip(s2.logits())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-3, "the adapters changed nothing ({moved})");

    // Provenance, parsed by inspect --json.
    let j: serde_json::Value =
        serde_json::from_str(&ok(anatomy(&["inspect", s(&lm), "--json"]))).unwrap();
    let p = &j["provenance"];
    assert_eq!(p["base_model"], "model", "{p}");
    assert_eq!(p["method"], "sft");
    assert!(p["settings"].as_str().unwrap().contains("[lora]"));
    let settings = RunConfig::parse(p["settings"].as_str().unwrap(), &[]).unwrap();
    assert_eq!(settings.init.as_deref(), Some(warm_ck.as_path()));
    assert!(p["init"].as_str().unwrap().starts_with(s(&warm_ck)), "{p}");
    let sha = p["data_sha256"].as_str().unwrap();
    assert!(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(p["steps"], 1);
    assert!(p["final_metrics"]["loss"].is_number(), "{p}");
    assert!(p["code_version"]
        .as_str()
        .unwrap()
        .starts_with("anatomy-cli "));
    assert_eq!(p["prompt.instruction"], trained.instruction.as_str());
    assert_eq!(p["prompt.options_heading"], "Anatomy Options");
    assert_eq!(p["checkpoint"], "checkpoint-000001");
    assert!(j["metadata"].get("anatomy.exported_at").is_none());
    let human = ok(anatomy(&["inspect", s(&lm)]));
    assert!(human.contains("provenance (anatomy.*)") && human.contains("data_sha256"));

    // Reproducible: the same run exported elsewhere under the same name gives the same bytes;
    // --hf-out keeps the merged directory.
    let out2 = tmp.path().join("b/m");
    let hf = tmp.path().join("merged-hf");
    ok(anatomy(&[
        "export",
        s(&run),
        "--out",
        s(&out2),
        "--quant",
        "f32",
        "--quiet",
        "--hf-out",
        s(&hf),
    ]));
    for f in ["m.gguf", "m-mmproj.gguf"] {
        let (a, b) = (
            std::fs::read(tmp.path().join("a").join(f)).unwrap(),
            std::fs::read(tmp.path().join("b").join(f)).unwrap(),
        );
        assert!(a == b, "{f} differs between two exports");
    }
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(hf.join(f).is_file(), "{f}");
    }
    // The kept HF directory is itself a model the candle reference loads.
    Qwen25VL::load(&hf, DType::F32, &Device::Cpu).unwrap();
    let again = anatomy(&[
        "export",
        s(&run),
        "--out",
        s(&out2),
        "--hf-out",
        s(&hf),
        "--quiet",
    ]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // A checkpoint directory exports too, with q8_0.
    let ck_out = tmp.path().join("c/");
    std::fs::create_dir_all(&ck_out).unwrap();
    ok(anatomy(&[
        "export",
        s(&checkpoint::latest(&run).unwrap()),
        "--out",
        s(&ck_out),
        "--quiet",
    ]));
    assert!(ck_out.join("model.gguf").is_file() && ck_out.join("mmproj.gguf").is_file());
}

/// Greedy tokens and largest logit difference of the runtime on `lm`/`mm` against a candle model.
fn runtime_against(lm: &Path, mm: &Path, cm: &Qwen25VL, data: &Path) -> f32 {
    let model = Model::load(lm, Some(mm), &ModelOptions::default()).unwrap();
    let image = data.parent().unwrap().join("images/000000.png");
    let options: Vec<String> = ["Liver", "Gut", "Omentum"].map(String::from).to_vec();
    let text = question_text_in(model.prompt_format(), "What is at the top?", &options).unwrap();
    let mut sess = model.session();
    let img = sess.preprocess(&ImageInput::Path(image)).unwrap();
    let h = sess.encode_image(&img).unwrap();
    let ids = sess.prompt_ids(&text, Some(h.tokens)).unwrap();
    sess.prefill(&ids, Some(&h)).unwrap();
    let pixels = Tensor::from_slice(
        &img.pixel_values,
        (img.n_patches, img.patch_dim),
        &Device::Cpu,
    )
    .unwrap();
    let mut cache = cm.new_cache();
    let (logits, _) = cm
        .prefill(&ids, Some(&pixels), &[img.grid_thw], &mut cache)
        .unwrap();
    let row: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
    row.iter()
        .zip(sess.logits())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn full_fine_tuning_runs_export_and_lora_on_top_of_them_too() {
    let tmp = tempfile::tempdir().unwrap();
    let scenes = tmp.path().join("scenes");
    let data = synth(&scenes);
    let full = tmp.path().join("full");
    train_with(&data, &scenes, &full, None, "finetune = \"full\"");
    let full_ck = checkpoint::latest(&full).unwrap();
    let out = tmp.path().join("f/m");
    ok(anatomy(&[
        "export",
        s(&full),
        "--out",
        s(&out),
        "--quant",
        "f32",
        "--quiet",
    ]));
    let (lm, mm) = (
        tmp.path().join("f/m.gguf"),
        tmp.path().join("f/m-mmproj.gguf"),
    );
    let trained = Qwen25VL::load(&full_ck, DType::F32, &Device::Cpu).unwrap();
    let diff = runtime_against(&lm, &mm, &trained, &data);
    assert!(diff < 1e-3, "full export: logits differ by {diff}");
    let base_model = Qwen25VL::load(&base(), DType::F32, &Device::Cpu).unwrap();
    let moved = runtime_against(&lm, &mm, &base_model, &data);
    assert!(moved > 1e-3, "full fine-tuning changed nothing ({moved})");

    // A LoRA run started from the full checkpoint exports both: the full weights, its adapters.
    let lora = tmp.path().join("lora");
    train(&data, &scenes, &lora, Some(&full_ck), "\"all-linear\"");
    let out = tmp.path().join("l/m");
    ok(anatomy(&[
        "export",
        s(&lora),
        "--out",
        s(&out),
        "--quant",
        "f32",
        "--quiet",
    ]));
    let lora_ck = checkpoint::latest(&lora).unwrap();
    let mut chained = Qwen25VL::load(&full_ck, DType::F32, &Device::Cpu).unwrap();
    let ck = checkpoint::load(&lora_ck).unwrap();
    let l = Lora::attach(&mut chained, &ck.state.lora, 0).unwrap();
    l.load_tensors(ck.weights.adapter(&lora_ck).unwrap(), &lora_ck)
        .unwrap();
    l.merge(&mut chained).unwrap();
    let (lm, mm) = (
        tmp.path().join("l/m.gguf"),
        tmp.path().join("l/m-mmproj.gguf"),
    );
    let diff = runtime_against(&lm, &mm, &chained, &data);
    assert!(diff < 1e-3, "LoRA on full: logits differ by {diff}");
    assert!(runtime_against(&lm, &mm, &trained, &data) > 1e-3);
}

#[test]
fn bad_sources_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = anatomy(&["export", s(&missing), "--out", s(&tmp.path().join("o"))]);
    assert!(!e.status.success());
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(
        msg.contains("nope") && msg.contains("does not exist"),
        "{msg}"
    );

    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.toml"),
        format!(
            "base = \"{}\"\ndata = \"d.jsonl\"\noutput_dir = \"{}\"\nsteps = 1\n",
            base().display(),
            run.display()
        ),
    )
    .unwrap();
    let e = anatomy(&["export", s(&run), "--out", s(&tmp.path().join("o"))]);
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success());
    assert!(
        msg.contains("without checkpoints") && msg.contains("run"),
        "{msg}"
    );

    let e = anatomy(&["export", s(tmp.path()), "--out", s(&tmp.path().join("o"))]);
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("neither a run directory"), "{msg}");

    // `latest` naming a checkpoint that is gone.
    std::fs::write(run.join("latest"), "checkpoint-000009").unwrap();
    let e = anatomy(&["export", s(&run), "--out", s(&tmp.path().join("o"))]);
    let msg = String::from_utf8_lossy(&e.stderr);
    assert!(msg.contains("checkpoint-000009"), "{msg}");
}

#[test]
fn runtime_prompt_equals_the_trainers_render() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    let qs = data::load(&data, &LoadOptions::default())
        .unwrap()
        .questions;
    assert!(!qs.is_empty());
    for q in &qs {
        let f = PromptFormat {
            instruction: q.instruction.clone(),
            options_heading: q.options_heading.clone(),
        };
        assert_eq!(
            question_text_in(&f, &q.question, &q.options).unwrap(),
            prompt::render(q)
        );
    }
    // The runtime's default is the trainer's layout for sources without an instruction.
    let mut q = qs[0].clone();
    q.instruction = prompt::DEFAULT_INSTRUCTION.into();
    q.options_heading = "Options".into();
    assert_eq!(
        question_text(&q.question, &q.options).unwrap(),
        prompt::render(&q)
    );
}
