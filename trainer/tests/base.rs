//! `init_base`: a fresh checkpoint loads in the candle model and tokenizes with the real special
//! tokens after its trained vocabulary; the same inputs give the same bytes; bad specs are errors.

mod common;

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_models::qwen2_5_vl::config::Config;
use anatomy_models::qwen2_5_vl::template::ChatTokenizer;
use anatomy_trainer::base::{init_base, tensor_shapes, BaseSpec};
use candle_core::{DType, Device};

fn spec() -> BaseSpec {
    toml::from_str(
        r#"
bpe_vocab = 300
hidden_size = 32
intermediate_size = 48
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
mrope_section = [2, 3, 3]
vision_depth = 1
vision_hidden_size = 16
vision_intermediate_size = 24
vision_num_heads = 2
max_pixels = 12544
seed = 3
"#,
    )
    .unwrap()
}

fn corpus() -> Vec<String> {
    let mut c = Vec::new();
    for _ in 0..20 {
        c.push("What anatomy is at the top-left of the frame ? A. Liver B. Gut".to_string());
        c.push("<think> </think> <answer>B</answer>".to_string());
    }
    c
}

#[test]
fn a_new_base_loads_and_keeps_the_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let template = common::fixture_model("square");
    init_base(&template, &corpus(), &spec(), dir.path()).unwrap();
    let cfg = Config::from_file(dir.path().join("config.json")).unwrap();
    assert_eq!(cfg.text.hidden_size, 32);
    // Without `rope_theta` in the spec the template's base stays.
    assert_eq!(cfg.text.rope_theta, 1_000_000.0);
    assert_eq!(cfg.vision.depth, 1);
    assert_eq!(cfg.text.vocab_size % 64, 0);
    let tok = ChatTokenizer::from_dir(dir.path()).unwrap();
    // The BPE ids come first, then the template's 22 added tokens in their order.
    let bpe = tok.inner().get_vocab_size(false);
    assert!(bpe > 256 && bpe <= 300, "bpe vocabulary of {bpe}");
    assert_eq!(tok.end_of_text_id as usize, bpe);
    assert_eq!(cfg.tokens.image_token_id, tok.image_pad_id);
    assert!(cfg.tokens.eos_token_ids.contains(&tok.im_end_id));
    // The merges were learned from the corpus: its lines take far fewer tokens than bytes.
    let line = &corpus()[0];
    let n = tok.encode(line).unwrap().len();
    assert!(n * 2 < line.len(), "{n} tokens for {} bytes", line.len());
    let model = Qwen25VL::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.config().text.hidden_size, 32);
    assert_eq!(tensor_shapes(&cfg).len(), 1 + 12 + 5 + 1 + 12 + 1);

    let again = tempfile::tempdir().unwrap();
    init_base(&template, &corpus(), &spec(), again.path()).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "config.json"] {
        assert_eq!(
            std::fs::read(dir.path().join(f)).unwrap(),
            std::fs::read(again.path().join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
}

#[test]
fn bad_specs_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let template = common::fixture_model("square");
    let mut s = spec();
    s.mrope_section = [2, 2, 2];
    let e = init_base(&template, &corpus(), &s, dir.path()).unwrap_err();
    assert!(e.to_string().contains("mrope_section"), "{e}");
    let mut s = spec();
    s.bpe_vocab = 100;
    assert!(init_base(&template, &corpus(), &s, dir.path()).is_err());
    for theta in [0.5, f64::NAN, f64::INFINITY] {
        let mut s = spec();
        s.rope_theta = Some(theta);
        let e = init_base(&template, &corpus(), &s, dir.path()).unwrap_err();
        assert!(e.to_string().contains("rope_theta"), "{theta}: {e}");
    }
    let e = init_base(&dir.path().join("nope"), &corpus(), &spec(), dir.path()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn the_spec_sets_the_rotary_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec();
    s.rope_theta = Some(10.0);
    init_base(&common::fixture_model("square"), &corpus(), &s, dir.path()).unwrap();
    let cfg = Config::from_file(dir.path().join("config.json")).unwrap();
    assert_eq!(cfg.text.rope_theta, 10.0);
    // The vision tower's rotary base is its own and does not follow.
    assert_eq!(cfg.vision.rope_theta, 10_000.0);
}
