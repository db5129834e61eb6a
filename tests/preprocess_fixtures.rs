//! Image preprocessing against the HF reference fixtures: `tests/fixtures/qwen2_5_vl/{square,wide}`
//! hold the source PNG, the processor config (4.x and 5.x dialects) and the `pixel_values` /
//! `image_grid_thw` that transformers' PIL-backend `Qwen2VLImageProcessorPil` produced for it
//! (see `tools/reference/make_fixtures.py`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::preprocess::{preprocess_file, PreprocessParams};
use candle_core::{Device, Tensor};

/// The PIL path is reproduced operation for operation, so anything above float32 noise is a bug.
const TOLERANCE: f32 = 1e-5;

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2_5_vl")
        .join(case)
}

/// `(min_pixels, max_pixels)` from either processor-config dialect: 4.x `preprocessor_config.json`
/// (`min_pixels`/`max_pixels`), 5.x `processor_config.json` (`image_processor.size.shortest_edge`
/// / `longest_edge`).
fn pixel_bounds(model_dir: &Path) -> (usize, usize) {
    let read = |name: &str| -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(model_dir.join(name)).ok()?;
        Some(serde_json::from_str(&text).expect("processor config is valid JSON"))
    };
    let as_usize = |v: &serde_json::Value| {
        v.as_u64()
            .map(|x| x as usize)
            .expect("pixel bound is an integer")
    };
    if let Some(cfg) = read("preprocessor_config.json") {
        return (as_usize(&cfg["min_pixels"]), as_usize(&cfg["max_pixels"]));
    }
    let cfg = read("processor_config.json").expect("model dir has a processor config");
    let size = &cfg["image_processor"]["size"];
    (
        as_usize(&size["shortest_edge"]),
        as_usize(&size["longest_edge"]),
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_case(case: &str) {
    let dir = case_dir(case);
    let reference: HashMap<String, Tensor> =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
            .expect("reference.safetensors loads");
    let expected_pixels = reference["pixel_values"]
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("pixel_values is f32");
    let expected_grid = reference["image_grid_thw"]
        .to_vec2::<i64>()
        .expect("image_grid_thw is i64 [1, 3]");

    let (min_pixels, max_pixels) = pixel_bounds(&dir.join("model"));
    let params = PreprocessParams {
        min_pixels,
        max_pixels,
        ..PreprocessParams::default()
    };
    let out = preprocess_file(dir.join("image.png"), &params).expect("image preprocesses");

    let grid: Vec<i64> = out.grid_thw.iter().map(|&g| g as i64).collect();
    assert_eq!(grid, expected_grid[0], "{case}: image_grid_thw");
    assert_eq!(out.patch_dim, 1176, "{case}: patch_dim");
    assert_eq!(
        out.pixel_values.len(),
        expected_pixels.len(),
        "{case}: pixel_values size"
    );
    let diff = max_abs_diff(&out.pixel_values, &expected_pixels);
    println!(
        "{case}: grid {:?}, {} patches, max |pixel_values - HF PIL| = {diff:e}",
        out.grid_thw, out.n_patches
    );
    assert!(
        diff <= TOLERANCE,
        "{case}: pixel_values differ from HF by {diff}"
    );

    // The torchvision backend (transformers 5's default) resizes differently; report how far the
    // PIL-exact values are from it, for the record.
    if let Some(tv) = reference.get("pixel_values_torchvision") {
        let tv = tv
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("pixel_values_torchvision is f32");
        println!(
            "{case}: max |pixel_values - HF torchvision backend| = {:e} (informational)",
            max_abs_diff(&out.pixel_values, &tv)
        );
    }
}

#[test]
fn square_case_matches_hf_pil_processor() {
    // 120x100 -> 112x112 (rounding branch), transformers 4.x `preprocessor_config.json`.
    check_case("square");
}

#[test]
fn wide_case_matches_hf_pil_processor() {
    // 240x168 -> floor branch of smart_resize, transformers 5.x `processor_config.json`.
    check_case("wide");
}
