//! Chat template, tokenization and M-RoPE positions against what HF transformers recorded for the
//! fixture prompts (`tests/fixtures/qwen2_5_vl/<case>/reference.*`).

use anatomy_models::qwen2_5_vl::positions::rope_index;
use anatomy_models::qwen2_5_vl::template::{user_prompt, ChatTokenizer};
use anatomy_models::qwen2_5_vl::Config;
use anatomy_r1::qwen_case;
use candle_core::{Device, Tensor};

struct Reference {
    json: serde_json::Value,
    tensors: std::collections::HashMap<String, Tensor>,
}

fn reference(case: &str) -> Reference {
    let dir = qwen_case(case);
    let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
        .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    Reference { json, tensors }
}

fn i64s(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

fn check_prompt(case: &str) {
    let r = reference(case);
    let model_dir = qwen_case(case).join("model");
    let config = Config::from_file(model_dir.join("config.json")).unwrap();
    let tok = ChatTokenizer::from_dir(&model_dir).unwrap();

    let question = r.json["question"].as_str().unwrap();
    let prompt = user_prompt(question, true);
    assert_eq!(
        prompt,
        r.json["prompt"].as_str().unwrap(),
        "{case}: prompt text"
    );

    let grid = i64s(&r.tensors["image_grid_thw"]);
    let grid = [grid[0] as usize, grid[1] as usize, grid[2] as usize];
    let merge = config.vision.spatial_merge_size;
    let n_image = grid[0] * grid[1] * grid[2] / (merge * merge);
    let ids = tok.encode_prompt(&prompt, &[n_image]).unwrap();
    let expected: Vec<u32> = i64s(&r.tensors["input_ids"])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    assert_eq!(ids, expected, "{case}: prompt token ids");
    assert_eq!(tok.image_pad_id, config.tokens.image_token_id);

    let rope = rope_index(&ids, &[grid], config.tokens.image_token_id, merge).unwrap();
    assert_eq!(
        rope.component_major(),
        i64s(&r.tensors["position_ids"]),
        "{case}: M-RoPE position ids"
    );
    assert_eq!(
        rope.rope_delta,
        i64s(&r.tensors["rope_deltas"])[0],
        "{case}: rope delta"
    );
    // Decoding the recorded greedy tokens gives the text HF decoded.
    let greedy: Vec<u32> = i64s(&r.tensors["greedy_tokens"])
        .into_iter()
        .map(|x| x as u32)
        .collect();
    assert_eq!(
        tok.decode(&greedy, false).unwrap(),
        r.json["greedy_text"].as_str().unwrap(),
        "{case}: decoded greedy text"
    );
}

#[test]
fn square_prompt_tokens_and_positions() {
    check_prompt("square");
}

#[test]
fn wide_prompt_tokens_and_positions() {
    check_prompt("wide");
}

/// The vision tower's window order and segment boundaries, as HF computed them for the fixture images.
fn check_windows(case: &str) {
    use anatomy_models::qwen2_5_vl::positions::window_layout;
    let r = reference(case);
    let config = Config::from_file(qwen_case(case).join("model").join("config.json")).unwrap();
    let grid = i64s(&r.tensors["image_grid_thw"]);
    let grid = [grid[0] as usize, grid[1] as usize, grid[2] as usize];
    let layout = window_layout(
        &[grid],
        config.vision.spatial_merge_size,
        config.vision.window_merged_cells(),
    );
    let as_i64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
    assert_eq!(
        as_i64(&layout.window_index),
        i64s(&r.tensors["vision_window_index"]),
        "{case}: window index"
    );
    assert_eq!(
        as_i64(&layout.cu_window_seqlens),
        i64s(&r.tensors["vision_cu_window_seqlens"]),
        "{case}: window boundaries"
    );
    assert_eq!(
        as_i64(&layout.cu_seqlens),
        i64s(&r.tensors["vision_cu_seqlens"]),
        "{case}: full-attention boundaries"
    );
}

#[test]
fn square_vision_windows() {
    check_windows("square");
}

#[test]
fn wide_vision_windows() {
    check_windows("wide");
}
