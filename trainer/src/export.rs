//! Folding a run's LoRA adapters into its base model in tensor space, for export.
//!
//! The base is read one tensor at a time from its HF safetensors (hub `model.layers.*` or
//! transformers-5 `model.language_model.layers.*` keys, whichever the checkpoint uses); each
//! adapted linear weight becomes `W + scale * B @ A` computed in f32, exactly the delta the
//! candle model adds when [`crate::lora::Lora::merge`] folds the same adapters, and every other
//! tensor is copied byte for byte. The result is one `model.safetensors` plus the base's config,
//! tokenizer and processor files: an ordinary HF directory that `anatomy convert`, transformers
//! or vLLM read. Merged tensors stay f32 (not the base's bf16/f16) so that a small LoRA delta is
//! not rounded away before quantization.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::weights::TensorInfo;
use anatomy_models::qwen2_5_vl::candle::{ModelError, SafetensorsIndex};
use candle_core::{DType, Device, Tensor};

use crate::lora::{Lora, LoraConfig};
use crate::run::{checkpoint, RunError};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: adapter {key}: {problem}")]
    Adapter {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{path}: the adapter for {layer} targets {weight}, which the base model in {base} does not have")]
    NoBaseWeight {
        path: PathBuf,
        layer: String,
        weight: String,
        base: PathBuf,
    },
    #[error("{path}: adapter {layer}: {problem}")]
    Shape {
        path: PathBuf,
        layer: String,
        problem: String,
    },
    #[error("{path}: tensor {name}: {source}")]
    Tensor {
        path: PathBuf,
        name: String,
        source: Box<candle_core::Error>,
    },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Run(#[from] RunError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One layer's factors: `a` is `[rank, in]`, `b` is `[out, rank]`, row-major f32.
#[derive(Clone, Debug)]
struct Factors {
    a: (Vec<usize>, Vec<f32>),
    b: (Vec<usize>, Vec<f32>),
}

/// The adapters of one checkpoint with their scale, by language-model layer name
/// (`layers.{i}.self_attn.q_proj`, as [`Lora`] names them).
#[derive(Clone, Debug)]
pub struct AdapterSet {
    /// The checkpoint directory, for messages.
    pub source: PathBuf,
    pub scale: f64,
    layers: BTreeMap<String, Factors>,
}

impl AdapterSet {
    /// Reads `checkpoint-NNNNNN/adapter.safetensors` with the LoRA config its `state.json` records.
    pub fn from_checkpoint(dir: &Path) -> Result<Self, ExportError> {
        let ck = checkpoint::load(dir)?;
        Self::from_tensors(dir, &ck.state.lora, ck.weights.adapter(dir)?)
    }

    /// Groups PEFT-named tensors (`base_model.model.model.{layer}.lora_{A,B}.weight`) by layer.
    pub fn from_tensors(
        source: &Path,
        config: &LoraConfig,
        tensors: &HashMap<String, Tensor>,
    ) -> Result<Self, ExportError> {
        let path = source.join("adapter.safetensors");
        let bad = |key: &str, problem: String| ExportError::Adapter {
            path: path.clone(),
            key: key.to_string(),
            problem,
        };
        let mut layers: BTreeMap<String, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (key, t) in tensors {
            let rest = key
                .strip_prefix("base_model.model.model.")
                .ok_or_else(|| bad(key, "not a PEFT key of the language model".into()))?;
            let (layer, factor) = if let Some(l) = rest.strip_suffix(".lora_A.weight") {
                (l, 'A')
            } else if let Some(l) = rest.strip_suffix(".lora_B.weight") {
                (l, 'B')
            } else {
                return Err(bad(key, "neither lora_A nor lora_B".into()));
            };
            let e = layers.entry(layer.to_string()).or_default();
            if factor == 'A' {
                e.0 = Some(t.clone());
            } else {
                e.1 = Some(t.clone());
            }
        }
        let mut out = BTreeMap::new();
        for (layer, (a, b)) in layers {
            let (Some(a), Some(b)) = (a, b) else {
                let key = Lora::key(&layer, 'A');
                return Err(bad(&key, "lora_A and lora_B must both be present".into()));
            };
            let read = |t: &Tensor, f: char| -> Result<(Vec<usize>, Vec<f32>), ExportError> {
                let key = Lora::key(&layer, f);
                let dims = t.dims().to_vec();
                if dims.len() != 2 {
                    return Err(bad(&key, format!("shape {dims:?} is not a matrix")));
                }
                let v = t
                    .to_dtype(DType::F32)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|source| ExportError::Tensor {
                        path: path.clone(),
                        name: key.clone(),
                        source: Box::new(source),
                    })?;
                Ok((dims, v))
            };
            let factors = Factors {
                a: read(&a, 'A')?,
                b: read(&b, 'B')?,
            };
            if factors.a.0[0] != factors.b.0[1] {
                return Err(bad(
                    &Lora::key(&layer, 'B'),
                    format!(
                        "rank of B {:?} differs from A {:?}",
                        factors.b.0, factors.a.0
                    ),
                ));
            }
            out.insert(layer, factors);
        }
        Ok(AdapterSet {
            source: source.to_path_buf(),
            scale: config.scale(),
            layers: out,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Number of adapted layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }
}

/// Base files copied beside the merged weights (everything but the weights themselves).
fn is_weight_file(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name == "model.safetensors.index.json"
        || name.ends_with(".bin")
        || name.ends_with(".pt")
}

/// What [`merge_to_dir`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeSummary {
    pub tensors: usize,
    pub merged: usize,
}

/// Writes `base` with `stages` folded in (in order: an `init` checkpoint first, as the trainer
/// does) into `out`, which must exist: `model.safetensors` plus the base's other files.
/// `progress(done, total)` is called after each tensor.
pub fn merge_to_dir(
    base: &Path,
    stages: &[AdapterSet],
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<MergeSummary, ExportError> {
    let index = SafetensorsIndex::open(base)?;
    let prefix = index.layout().text_prefix();
    // Which base weight each adapted layer lands on; checked before anything is written.
    let mut targets: HashMap<String, Vec<(&AdapterSet, &Factors)>> = HashMap::new();
    for set in stages {
        let path = set.source.join("adapter.safetensors");
        for (layer, f) in &set.layers {
            let weight = format!("{prefix}.{layer}.weight");
            let Some(info) = index.info(&weight) else {
                return Err(ExportError::NoBaseWeight {
                    path,
                    layer: layer.clone(),
                    weight,
                    base: base.to_path_buf(),
                });
            };
            let (r, inp) = (f.a.0[0], f.a.0[1]);
            let out_dim = f.b.0[0];
            if info.shape != [out_dim, inp] || f.b.0[1] != r {
                return Err(ExportError::Shape {
                    path,
                    layer: layer.clone(),
                    problem: format!(
                        "B {:?} @ A {:?} does not fit the base weight {weight} {:?}",
                        f.b.0, f.a.0, info.shape
                    ),
                });
            }
            targets.entry(weight).or_default().push((set, f));
        }
    }

    for entry in std::fs::read_dir(base).map_err(io(base))? {
        let entry = entry.map_err(io(base))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let from = entry.path();
        // A full fine-tuning checkpoint's run state is not part of the model directory.
        if from.is_file()
            && !is_weight_file(&name)
            && !name.starts_with('.')
            && name != "state.json"
        {
            let to = out.join(&name);
            std::fs::copy(&from, &to).map_err(io(&to))?;
        }
    }

    // Sorted names give a deterministic file: the same inputs give the same bytes.
    let mut names: Vec<&str> = index.names().collect();
    names.sort_unstable();
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let mut offset = 0u64;
    let mut plan: Vec<(&str, &TensorInfo, bool)> = Vec::with_capacity(names.len());
    for name in &names {
        let info = index.info(name).ok_or_else(|| ModelError::MissingTensor {
            name: name.to_string(),
            location: base.to_path_buf(),
        })?;
        let merged = targets.contains_key(*name);
        let (dtype, bytes) = if merged {
            ("F32", info.shape.iter().product::<usize>() as u64 * 4)
        } else {
            (dtype_name(info.dtype), info.end - info.start)
        };
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"{dtype}\",\"shape\":{:?},\"data_offsets\":[{offset},{}]}}",
            serde_json::Value::String(name.to_string()),
            info.shape,
            offset + bytes
        ));
        offset += bytes;
        plan.push((name, info, merged));
    }
    header.push('}');
    // The format wants the data 8-byte aligned; spaces are its padding.
    while header.len() % 8 != 0 {
        header.push(' ');
    }

    let path = out.join("model.safetensors");
    let tmp = out.join("model.safetensors.tmp");
    let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes())
        .and_then(|_| w.write_all(header.as_bytes()))
        .map_err(io(&tmp))?;
    let total = plan.len();
    let mut merged_count = 0;
    for (i, (name, info, merged)) in plan.into_iter().enumerate() {
        if merged {
            let t = index.load(name, None, DType::F32, &Device::Cpu)?;
            let mut wv = t
                .flatten_all()
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|source| ExportError::Tensor {
                    path: info.file.clone(),
                    name: name.to_string(),
                    source: Box::new(source),
                })?;
            let cols = info.shape[1];
            for (set, f) in &targets[name] {
                add_low_rank(&mut wv, cols, f, set.scale as f32);
            }
            let mut bytes = Vec::with_capacity(wv.len() * 4);
            for x in wv {
                bytes.extend_from_slice(&x.to_le_bytes());
            }
            w.write_all(&bytes).map_err(io(&tmp))?;
            merged_count += 1;
        } else {
            copy_range(info, &mut w).map_err(io(&info.file))?;
        }
        progress(i + 1, total);
    }
    let file = w.into_inner().map_err(|e| ExportError::Io {
        path: tmp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(MergeSummary {
        tensors: total,
        merged: merged_count,
    })
}

/// `w += scale * (B @ A)`, with `B @ A` summed in f32 over the rank as candle's matmul does.
fn add_low_rank(w: &mut [f32], cols: usize, f: &Factors, scale: f32) {
    let r = f.a.0[0];
    let (a, b) = (&f.a.1, &f.b.1);
    let mut delta = vec![0f32; cols];
    for (o, row) in w.chunks_exact_mut(cols).enumerate() {
        delta.iter_mut().for_each(|d| *d = 0.0);
        for k in 0..r {
            let c = b[o * r + k];
            for (d, &x) in delta.iter_mut().zip(&a[k * cols..(k + 1) * cols]) {
                *d += c * x;
            }
        }
        for (x, d) in row.iter_mut().zip(&delta) {
            *x += d * scale;
        }
    }
}

fn copy_range(info: &TensorInfo, w: &mut impl Write) -> std::io::Result<()> {
    let mut f = std::fs::File::open(&info.file)?;
    f.seek(SeekFrom::Start(info.start))?;
    let n = std::io::copy(&mut f.take(info.end - info.start), w)?;
    if n != info.end - info.start {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "tensor data cut short",
        ));
    }
    Ok(())
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        DType::I64 => "I64",
        DType::I32 => "I32",
        DType::I16 => "I16",
        DType::U32 => "U32",
        DType::U8 => "U8",
        // The index refuses every other type when it reads the header.
        _ => "F32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_rank_delta_is_scaled_b_times_a() {
        // W 2x3 zeros, A 1x3 = [1 2 3], B 2x1 = [1; -1], scale 0.5.
        let f = Factors {
            a: (vec![1, 3], vec![1.0, 2.0, 3.0]),
            b: (vec![2, 1], vec![1.0, -1.0]),
        };
        let mut w = vec![0.0; 6];
        add_low_rank(&mut w, 3, &f, 0.5);
        assert_eq!(w, vec![0.5, 1.0, 1.5, -0.5, -1.0, -1.5]);
    }

    #[test]
    fn unpaired_factor_and_foreign_keys_are_named() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 4), DType::F32, &dev).unwrap();
        let mut m = HashMap::new();
        m.insert(Lora::key("layers.0.self_attn.q_proj", 'A'), a.clone());
        let e = AdapterSet::from_tensors(Path::new("ck"), &LoraConfig::default(), &m)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layers.0.self_attn.q_proj") && e.contains("both"),
            "{e}"
        );
        m.insert("something.else".into(), a);
        let e = AdapterSet::from_tensors(Path::new("ck"), &LoraConfig::default(), &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ck/adapter.safetensors"), "{e}");
    }
}
