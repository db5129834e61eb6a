//! The tensors of an HF checkpoint directory (one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`), memory-mapped and read one tensor at a time as f32.

use std::collections::BTreeMap;
use std::path::Path;

use anatomy_models::qwen2_5_vl::names::Slice;
use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

pub struct HfWeights {
    shards: Vec<(String, Mmap)>,
    /// Tensor name -> shard index.
    index: BTreeMap<String, usize>,
}

impl HfWeights {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index_path.exists() {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)
                .with_context(|| index_path.display().to_string())?;
            let map = v["weight_map"]
                .as_object()
                .with_context(|| format!("{}: no weight_map", index_path.display()))?;
            let mut f: Vec<String> = map
                .values()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            f.sort();
            f.dedup();
            f
        } else {
            vec!["model.safetensors".into()]
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for f in files {
            let path = dir.join(&f);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let map = anatomy_runtime::gguf::map_readonly(&file)
                .with_context(|| format!("mapping {}", path.display()))?;
            let st = SafeTensors::deserialize(&map)
                .with_context(|| format!("reading {}", path.display()))?;
            for name in st.names() {
                index.insert(name.to_string(), shards.len());
            }
            drop(st);
            shards.push((path.display().to_string(), map));
        }
        Ok(Self { shards, index })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// HF shape of `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let (path, map) = &self.shards[*self
            .index
            .get(name)
            .with_context(|| format!("no tensor {name}"))?];
        let st = SafeTensors::deserialize(map).with_context(|| path.clone())?;
        Ok(st
            .tensor(name)
            .with_context(|| format!("{path}: {name}"))?
            .shape()
            .to_vec())
    }

    /// The f32 values of `name` cut by `slice`, and their HF shape.
    pub fn read(&self, name: &str, slice: Slice) -> Result<(Vec<usize>, Vec<f32>)> {
        let (path, map) = &self.shards[*self
            .index
            .get(name)
            .with_context(|| format!("no tensor {name}"))?];
        let st = SafeTensors::deserialize(map).with_context(|| path.clone())?;
        let t = st.tensor(name).with_context(|| format!("{path}: {name}"))?;
        let b = t.data();
        let data: Vec<f32> = match t.dtype() {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => bail!("{path}: {name}: unsupported dtype {other:?}"),
        };
        cut(name, t.shape(), data, slice)
    }
}

fn cut(
    name: &str,
    shape: &[usize],
    data: Vec<f32>,
    slice: Slice,
) -> Result<(Vec<usize>, Vec<f32>)> {
    match slice {
        Slice::Whole => Ok((shape.to_vec(), data)),
        Slice::QkvPart(i) => {
            if shape.is_empty() || !shape[0].is_multiple_of(3) {
                bail!("{name}: shape {shape:?} is not a fused q/k/v");
            }
            let rows = shape[0] / 3;
            let per_row: usize = shape[1..].iter().product();
            let mut s = shape.to_vec();
            s[0] = rows;
            Ok((
                s,
                data[i * rows * per_row..(i + 1) * rows * per_row].to_vec(),
            ))
        }
        Slice::TemporalKernel(k) => {
            let &[out, inc, t, h, w] = shape else {
                bail!("{name}: shape {shape:?} is not a Conv3d kernel")
            };
            if k >= t {
                bail!("{name}: temporal kernel {k} of {t}");
            }
            let mut v = Vec::with_capacity(out * inc * h * w);
            for oc in 0..out * inc {
                let base = (oc * t + k) * h * w;
                v.extend_from_slice(&data[base..base + h * w]);
            }
            Ok((vec![out, inc, h, w], v))
        }
    }
}
