//! The published Qwen2.5-VL 3B and 7B configs (transformers 4.x layout, as on the Hub) parse into the
//! shapes of the real checkpoints, so a real checkpoint directory loads through the same code as the
//! tiny fixtures.

use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_models::qwen2_5_vl::Config;
use anatomy_r1::fixtures_dir;

fn configs() -> std::path::PathBuf {
    fixtures_dir().join("qwen2_5_vl").join("configs")
}

#[test]
fn qwen2_5_vl_3b_instruct() {
    let c = Config::from_file(configs().join("qwen2_5_vl_3b_config.json")).unwrap();
    let t = &c.text;
    assert_eq!(
        (t.hidden_size, t.intermediate_size, t.num_hidden_layers),
        (2048, 11008, 36)
    );
    assert_eq!(
        (t.num_attention_heads, t.num_key_value_heads, t.head_dim),
        (16, 2, 128)
    );
    assert_eq!(t.vocab_size, 151936);
    assert!(t.tie_word_embeddings);
    assert_eq!(t.mrope_section, vec![16, 24, 24]);
    assert_eq!(t.rope_theta, 1e6);
    assert_eq!(c.vision.out_hidden_size, 2048);
    check_vision(&c);
}

#[test]
fn qwen2_5_vl_7b_instruct() {
    let c = Config::from_file(configs().join("qwen2_5_vl_7b_config.json")).unwrap();
    let t = &c.text;
    assert_eq!(
        (t.hidden_size, t.intermediate_size, t.num_hidden_layers),
        (3584, 18944, 28)
    );
    assert_eq!(
        (t.num_attention_heads, t.num_key_value_heads, t.head_dim),
        (28, 4, 128)
    );
    assert_eq!(t.vocab_size, 152064);
    assert!(!t.tie_word_embeddings);
    assert_eq!(c.vision.out_hidden_size, 3584);
    check_vision(&c);
}

fn check_vision(c: &Config) {
    let v = &c.vision;
    assert_eq!(
        (v.depth, v.hidden_size, v.num_heads, v.head_dim()),
        (32, 1280, 16, 80)
    );
    assert_eq!(v.intermediate_size, 3420);
    assert_eq!(v.fullatt_block_indexes, vec![7, 15, 23, 31]);
    assert_eq!((v.window_size, v.window_merged_cells()), (112, 4));
    assert_eq!(v.patch_dim(), 1176);
    assert_eq!(c.tokens.image_token_id, 151655);
    assert_eq!(c.tokens.vision_start_token_id, 151652);
    assert_eq!(c.tokens.vision_end_token_id, 151653);
    assert_eq!(c.tokens.eos_token_ids, vec![151645]);
}

#[test]
fn hub_preprocessor_config() {
    let dir = tempdir_with(
        "preprocessor_config.json",
        &configs().join("qwen2_5_vl_preprocessor_config.json"),
    );
    let p = load_preprocess_params(&dir).unwrap();
    assert_eq!((p.min_pixels, p.max_pixels), (3136, 12_845_056));
    assert_eq!(
        (p.patch_size, p.merge_size, p.temporal_patch_size),
        (14, 2, 2)
    );
    std::fs::remove_dir_all(dir).ok();
}

fn tempdir_with(name: &str, from: &std::path::Path) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("anatomy-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(from, dir.join(name)).unwrap();
    dir
}
