//! `anatomy convert` on the committed tiny checkpoints at every recipe, read back with the runtime:
//! F32 is bit-exact with the safetensors, every other tensor's relative RMS error is within what
//! its storage type allows, each tensor has the type the recipe prescribes, and both files pass
//! the runtime's Qwen2.5-VL key and shape checks. `anatomy inspect` must read every file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anatomy_models::qwen2_5_vl::names::{gguf_to_hf, GgufFileKind, Slice};
use anatomy_models::qwen2_5_vl::recipe::Recipe;
use anatomy_runtime::gguf::qwen2vl::{LmParams, MmprojParams};
use anatomy_runtime::gguf::GgufFile;
use anatomy_runtime::quant::GgmlType;
use safetensors::SafeTensors;

fn model_dir(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/qwen2_5_vl")
        .join(case)
        .join("model")
}

/// All HF tensors of a checkpoint as (shape, f32 values); the fixtures are stored in f32.
fn hf_tensors(dir: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            for (name, t) in st.tensors() {
                assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
                let v = t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                out.insert(name, (t.shape().to_vec(), v));
            }
        }
    }
    out
}

/// The HF values a GGUF tensor should hold, cut independently of the converter's code.
fn expected(hf: &BTreeMap<String, (Vec<usize>, Vec<f32>)>, name: &str, slice: Slice) -> Vec<f32> {
    let (shape, v) = &hf[name];
    match slice {
        Slice::Whole => v.clone(),
        Slice::QkvPart(i) => {
            let n = v.len() / 3;
            v[i * n..(i + 1) * n].to_vec()
        }
        Slice::TemporalKernel(k) => {
            let hw = shape[3] * shape[4];
            (0..shape[0] * shape[1])
                .flat_map(|oc| v[(oc * 2 + k) * hw..(oc * 2 + k + 1) * hw].iter().copied())
                .collect()
        }
    }
}

fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let e: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (e / n.max(1e-30)).sqrt()
}

/// Relative RMS bound per storage type: about 1.5x the quantization step's RMS for
/// near-uniform random weights (step/√12 relative to the weights' RMS).
fn bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1e-3,
        GgmlType::Q8_0 => 0.012,
        GgmlType::Q6_K => 0.035,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.07,
        GgmlType::Q4_K => 0.12,
        other => panic!("recipes do not use {other}"),
    }
}

#[test]
fn convert_read_back_and_dequantize_every_recipe() {
    let bin = env!("CARGO_BIN_EXE_anatomy");
    let tmp = tempfile::tempdir().unwrap();
    let mut worst: BTreeMap<String, f64> = BTreeMap::new();
    for case in ["square", "wide"] {
        let dir = model_dir(case);
        let hf = hf_tensors(&dir);
        for recipe in ["f32", "f16", "q8_0", "q4_k_m", "q5_k_m"] {
            let (lm, mm) = (
                tmp.path().join(format!("{case}-{recipe}.gguf")),
                tmp.path().join(format!("{case}-{recipe}-mmproj.gguf")),
            );
            let st = Command::new(bin)
                .arg("convert")
                .arg(&dir)
                .arg("--out")
                .arg(&lm)
                .arg("--mmproj")
                .arg(&mm)
                .args(["--quant", recipe, "--quiet"])
                .status()
                .unwrap();
            assert!(st.success(), "convert {case} {recipe}");
            for path in [&lm, &mm] {
                let out = Command::new(bin)
                    .arg("inspect")
                    .arg("--json")
                    .arg(path)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                assert!(j["totals"]["tensors"].as_u64().unwrap() > 0);
            }
            let r = Recipe::parse(recipe).unwrap();
            for (path, kind) in [(&lm, GgufFileKind::Language), (&mm, GgufFileKind::Mmproj)] {
                let f = GgufFile::open(path).unwrap();
                let n_layers = match kind {
                    GgufFileKind::Language => LmParams::from_gguf(&f).unwrap().block_count,
                    GgufFileKind::Mmproj => {
                        MmprojParams::from_gguf(&f).unwrap();
                        GgufFile::open(&lm)
                            .unwrap()
                            .get("qwen2vl.block_count")
                            .unwrap()
                            .as_u64()
                            .unwrap() as usize
                    }
                };
                let tied = GgufFile::open(&lm)
                    .unwrap()
                    .tensor("output.weight")
                    .is_none();
                let mut covered = 0;
                for t in f.tensors() {
                    let (hf_name, slice) = gguf_to_hf(kind, t.name())
                        .unwrap_or_else(|| panic!("{} has no HF source", t.name()));
                    let want_ty = r.tensor_type(kind, t.name(), t.shape(), n_layers, tied);
                    assert_eq!(
                        t.ty().name(),
                        want_ty.ggml_name(),
                        "{case} {recipe} {}",
                        t.name()
                    );
                    let want = expected(&hf, &hf_name, slice);
                    let got = t.dequantize().unwrap();
                    if t.ty() == GgmlType::F32 {
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{} not bit-exact",
                            t.name()
                        );
                    } else {
                        let e = rel_rms(&got, &want);
                        assert!(
                            e <= bound(t.ty()),
                            "{case} {recipe} {}: {} error {e}",
                            t.name(),
                            t.ty()
                        );
                        let w = worst.entry(t.ty().name().to_string()).or_default();
                        *w = w.max(e);
                    }
                    covered += want.len();
                }
                assert!(covered > 0);
            }
        }
        // Every HF tensor the two files need is in one of them.
        let lm = GgufFile::open(tmp.path().join(format!("{case}-f32.gguf"))).unwrap();
        let mm = GgufFile::open(tmp.path().join(format!("{case}-f32-mmproj.gguf"))).unwrap();
        let mut used: Vec<String> = lm
            .tensors()
            .map(|t| gguf_to_hf(GgufFileKind::Language, t.name()).unwrap().0)
            .collect();
        used.extend(
            mm.tensors()
                .map(|t| gguf_to_hf(GgufFileKind::Mmproj, t.name()).unwrap().0),
        );
        for name in hf.keys() {
            assert!(used.contains(name), "{case}: {name} not converted");
        }
    }
    for (ty, e) in &worst {
        println!("worst relative RMS error {ty:>5}: {e:.5}");
    }
    assert!(worst.contains_key("q8_0") && worst.contains_key("f16") && worst.contains_key("q5_0"));
}
