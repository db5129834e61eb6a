//! The candle Qwen2.5-VL against HF transformers: the fixtures in `tests/fixtures/qwen2_5_vl/`
//! hold tiny random-weight checkpoints and what transformers (eager attention, f32) computed for
//! one image prompt each. The recorded `pixel_values` and `input_ids` are fed as they are, so
//! preprocessing and tokenization are tested elsewhere.
//!
//! - `square`: transformers-4 config dialect, tied embeddings, single `model.safetensors`, one
//!   attention window.
//! - `wide`: transformers-5 dialect, separate `lm_head`, sharded weights, four windows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::{argmax, ModelError, Qwen25VL};
use anatomy_models::qwen2_5_vl::positions::{rope_index, window_layout};
use candle_core::{DType, Device, Tensor};

/// Tolerance on `max|a - b| / max|b|`.
const REL_TOL: f64 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/qwen2_5_vl")
        .join(case)
}

fn reference(case: &str) -> HashMap<String, Tensor> {
    let path = case_dir(case).join("reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn ints(t: &Tensor) -> Vec<i64> {
    t.flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// `(max |a - b|, max |a - b| / max |b|)`.
fn errors(a: &Tensor, b: &Tensor) -> (f64, f64) {
    assert_eq!(a.dims(), b.dims());
    let to64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
    let (a, b) = (to64(a), to64(b));
    let abs = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (abs, abs / scale)
}

fn check_case(case: &str) {
    let dir = case_dir(case);
    let r = reference(case);
    let dev = Device::Cpu;
    let model = Qwen25VL::load(&dir.join("model"), DType::F32, &dev)
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let cfg = model.config().clone();

    let ids: Vec<u32> = ints(&r["input_ids"]).iter().map(|&t| t as u32).collect();
    let g = ints(&r["image_grid_thw"]);
    let grids = [[g[0] as usize, g[1] as usize, g[2] as usize]];
    let pixels = &r["pixel_values"];
    let merge = cfg.vision.spatial_merge_size;

    // Window layout and positions are exact.
    let layout = window_layout(&grids, merge, cfg.vision.window_merged_cells());
    let as_usize =
        |name: &str| -> Vec<usize> { ints(&r[name]).iter().map(|&x| x as usize).collect() };
    assert_eq!(
        layout.window_index,
        as_usize("vision_window_index"),
        "{case}"
    );
    assert_eq!(
        layout.cu_window_seqlens,
        as_usize("vision_cu_window_seqlens"),
        "{case}"
    );
    assert_eq!(layout.cu_seqlens, as_usize("vision_cu_seqlens"), "{case}");
    let rope = rope_index(&ids, &grids, cfg.tokens.image_token_id, merge).unwrap();
    assert_eq!(
        rope.component_major(),
        ints(&r["position_ids"]),
        "{case}: position_ids"
    );
    assert_eq!(
        rope.rope_delta,
        ints(&r["rope_deltas"])[0],
        "{case}: rope_deltas"
    );

    let vision = model.vision_forward(pixels, &grids).unwrap();
    let (v_abs, v_rel) = errors(&vision, &r["vision_output"]);
    eprintln!("{case}: vision_output max abs err {v_abs:.3e}, rel {v_rel:.3e}");
    assert!(v_rel < REL_TOL, "{case}: vision_output rel err {v_rel:.3e}");

    let mut cache = model.new_cache();
    let (logits, delta) = model
        .prefill(&ids, Some(pixels), &grids, &mut cache)
        .unwrap();
    assert_eq!(delta, rope.rope_delta);
    let (l_abs, l_rel) = errors(&logits, &r["logits_last"]);
    eprintln!("{case}: logits_last max abs err {l_abs:.3e}, rel {l_rel:.3e}");
    assert!(l_rel < REL_TOL, "{case}: logits_last rel err {l_rel:.3e}");

    // Greedy decoding through the KV cache, no EOS stop.
    let want = ints(&r["greedy_tokens"]);
    let margins = r["greedy_margins"].to_vec1::<f32>().unwrap();
    let mut logits = logits;
    let mut got = Vec::new();
    for step in 0..want.len() {
        let token = argmax(&logits).unwrap();
        got.push(token as i64);
        if step + 1 < want.len() {
            let position = cache.len() as i64 + delta;
            logits = model.decode_step(token, position, &mut cache).unwrap();
        }
    }
    assert_eq!(got, want, "{case}: greedy tokens (HF margins {margins:?})");
    let again = model
        .generate_greedy(&ids, Some(pixels), &grids, want.len(), &[])
        .unwrap();
    assert_eq!(again.iter().map(|&t| t as i64).collect::<Vec<_>>(), want);
}

#[test]
fn square_matches_transformers() {
    check_case("square");
}

#[test]
fn wide_matches_transformers() {
    check_case("wide");
}

#[test]
fn square_runs_in_bf16() {
    let r = reference("square");
    let dir = case_dir("square").join("model");
    let model = Qwen25VL::load(&dir, DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(model.dtype(), DType::BF16);
    let ids: Vec<u32> = ints(&r["input_ids"]).iter().map(|&t| t as u32).collect();
    let mut cache = model.new_cache();
    let (logits, delta) = model
        .prefill(&ids, Some(&r["pixel_values"]), &[[1, 8, 8]], &mut cache)
        .unwrap();
    assert_eq!(logits.dtype(), DType::BF16);
    let values = logits
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(values.len(), 512);
    assert!(values.iter().all(|v| v.is_finite()));
    let (abs, rel) = errors(&logits, &r["logits_last"]);
    let top = argmax(&logits).unwrap();
    eprintln!(
        "square bf16: logits_last max abs err {abs:.3e}, rel {rel:.3e}; argmax {top} (f32 reference {})",
        ints(&r["greedy_tokens"])[0]
    );
    let next = model
        .decode_step(top, cache.len() as i64 + delta, &mut cache)
        .unwrap();
    assert!(next
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_finite()));
}

/// A scratch copy of a fixture model directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn copy_of(case: &str, tag: &str) -> Self {
        let src = case_dir(case).join("model");
        let dst = std::env::temp_dir().join(format!(
            "anatomy-candle-{case}-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dst);
        std::fs::create_dir_all(&dst).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
        Scratch(dst)
    }

    fn rewrite(&self, file: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
        let path = self.0.join(file);
        let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        edit(&mut tensors);
        candle_core::safetensors::save(&tensors, &path).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn missing_tensor_is_a_typed_error() {
    let name = "model.layers.1.mlp.up_proj.weight";
    let s = Scratch::copy_of("square", "missing");
    s.rewrite("model.safetensors", |t| {
        t.remove(name);
    });
    let err = Qwen25VL::load(&s.0, DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    eprintln!("missing tensor: {msg}");
    assert!(
        matches!(&err, ModelError::MissingTensor { name: n, .. } if n == name),
        "{err:?}"
    );
    assert!(
        msg.contains(name) && msg.contains(&s.0.display().to_string()),
        "{msg}"
    );
}

#[test]
fn missing_tensor_in_a_shard_names_the_shard() {
    let s = Scratch::copy_of("wide", "shard");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.0.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let name = "visual.blocks.2.attn.qkv.bias";
    let shard = index["weight_map"][name].as_str().unwrap().to_string();
    s.rewrite(&shard, |t| {
        t.remove(name);
    });
    let err = Qwen25VL::load(&s.0, DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    eprintln!("missing tensor in shard: {msg}");
    assert!(matches!(err, ModelError::MissingTensor { .. }), "{err:?}");
    assert!(msg.contains(name) && msg.contains(&shard), "{msg}");
}

#[test]
fn wrong_shape_and_truncation_are_typed_errors() {
    let name = "visual.merger.mlp.2.bias";
    let s = Scratch::copy_of("square", "shape");
    s.rewrite("model.safetensors", |t| {
        t.insert(
            name.to_string(),
            Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = Qwen25VL::load(&s.0, DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    eprintln!("wrong shape: {msg}");
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err:?}");
    assert!(
        msg.contains(name) && msg.contains("model.safetensors"),
        "{msg}"
    );

    let s = Scratch::copy_of("square", "truncated");
    let path = s.0.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Qwen25VL::load(&s.0, DType::F32, &Device::Cpu).unwrap_err();
    let msg = err.to_string();
    eprintln!("truncated: {msg}");
    assert!(matches!(err, ModelError::BadSafetensors { .. }), "{err:?}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn transformers5_key_layout_loads_the_same_model() {
    let s = Scratch::copy_of("square", "tf5keys");
    s.rewrite("model.safetensors", |t| {
        let renamed: HashMap<String, Tensor> = t
            .drain()
            .map(|(k, v)| {
                let k = if let Some(rest) = k.strip_prefix("visual.") {
                    format!("model.visual.{rest}")
                } else if let Some(rest) = k.strip_prefix("model.") {
                    format!("model.language_model.{rest}")
                } else {
                    k
                };
                (k, v)
            })
            .collect();
        *t = renamed;
    });
    let r = reference("square");
    let ids: Vec<u32> = ints(&r["input_ids"]).iter().map(|&t| t as u32).collect();
    let run = |dir: &Path| {
        let model = Qwen25VL::load(dir, DType::F32, &Device::Cpu).unwrap();
        let mut cache = model.new_cache();
        model
            .prefill(&ids, Some(&r["pixel_values"]), &[[1, 8, 8]], &mut cache)
            .unwrap()
            .0
    };
    let a = run(&s.0);
    let b = run(&case_dir("square").join("model"));
    assert_eq!(errors(&a, &b).0, 0.0);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let r = reference("square");
    let model =
        Qwen25VL::load(&case_dir("square").join("model"), DType::F32, &Device::Cpu).unwrap();
    let ids: Vec<u32> = ints(&r["input_ids"]).iter().map(|&t| t as u32).collect();
    let pixels = &r["pixel_values"];
    // Grid disagreeing with the number of placeholders.
    let err = model
        .prefill(&ids, Some(pixels), &[[1, 8, 10]], &mut model.new_cache())
        .unwrap_err();
    assert!(matches!(err, ModelError::Position(_)), "{err:?}");
    // Grid without pixels.
    let err = model
        .prefill(&ids, None, &[[1, 8, 8]], &mut model.new_cache())
        .unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err:?}");
    // Pixels that do not match the grid.
    let err = model
        .vision_forward(&pixels.narrow(0, 0, 60).unwrap(), &[[1, 8, 8]])
        .unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err:?}");
    // Token outside the vocabulary.
    assert!(model
        .prefill(&[100_000], None, &[], &mut model.new_cache())
        .is_err());
}
