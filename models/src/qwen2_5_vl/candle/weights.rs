//! HF safetensors checkpoints: one `model.safetensors` or shards listed by
//! `model.safetensors.index.json`.
//!
//! Headers are parsed up front so a missing tensor, a wrong shape or a truncated file is reported
//! with the tensor and file names before any data is read. Tensor bytes are then read one tensor
//! at a time with plain file reads rather than a memory map: it needs no `unsafe`, keeps peak
//! memory at the loaded tensors plus one tensor's bytes, and a file changed under us cannot fault.
//!
//! [`CheckpointBackend`] plugs the index into `candle_nn::VarBuilder`, so the model constructors
//! are the same for a checkpoint and for a `VarMap` of fresh trainable variables. Because candle
//! errors cannot carry our typed error, the backend keeps the first failure aside for
//! [`CheckpointBackend::take_failure`].

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use serde_json::Value;

use super::error::{ModelError, Result};

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub file: PathBuf,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte range in `file`.
    pub start: u64,
    pub end: u64,
}

/// How tensor names are spelled in a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// Hub checkpoints and transformers 4.x saves: `visual.*`, `model.*`, `lm_head.weight`.
    Hub,
    /// transformers 5 in-memory names: `model.visual.*`, `model.language_model.*`, `lm_head.weight`.
    Transformers5,
}

impl KeyLayout {
    /// Transformers-5 names are recognised by their distinctive prefixes; anything else is hub.
    pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let v5 = names
            .into_iter()
            .any(|n| n.starts_with("model.language_model.") || n.starts_with("model.visual."));
        if v5 {
            KeyLayout::Transformers5
        } else {
            KeyLayout::Hub
        }
    }
    pub fn text_prefix(self) -> &'static str {
        match self {
            KeyLayout::Hub => "model",
            KeyLayout::Transformers5 => "model.language_model",
        }
    }
    pub fn vision_prefix(self) -> &'static str {
        match self {
            KeyLayout::Hub => "visual",
            KeyLayout::Transformers5 => "model.visual",
        }
    }
}

/// All tensors of a checkpoint directory, by name.
#[derive(Debug, Clone)]
pub struct SafetensorsIndex {
    dir: PathBuf,
    tensors: HashMap<String, TensorInfo>,
    /// The shard the index file assigns to each name, to say where a missing tensor should be.
    assigned: HashMap<String, PathBuf>,
}

impl SafetensorsIndex {
    /// Reads the headers of the checkpoint in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut assigned = HashMap::new();
        let files: Vec<PathBuf> = if index_path.is_file() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| ModelError::Io {
                path: index_path.clone(),
                source,
            })?;
            let bad = |problem: String| ModelError::BadIndex {
                path: index_path.clone(),
                problem,
            };
            let root: Value =
                serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
            let map = root
                .get("weight_map")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("no `weight_map` object".into()))?;
            let mut shards = BTreeSet::new();
            for (name, file) in map {
                let file = file
                    .as_str()
                    .ok_or_else(|| bad(format!("`weight_map.{name}` is not a file name")))?;
                shards.insert(file.to_string());
                assigned.insert(name.clone(), dir.join(file));
            }
            shards.into_iter().map(|f| dir.join(f)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(ModelError::NoWeights {
                dir: dir.to_path_buf(),
            });
        };
        let mut tensors = HashMap::new();
        for file in files {
            for (name, info) in read_header(&file)? {
                tensors.insert(name, info);
            }
        }
        Ok(SafetensorsIndex {
            dir: dir.to_path_buf(),
            tensors,
            assigned,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn layout(&self) -> KeyLayout {
        KeyLayout::detect(self.names())
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor {
            name: name.to_string(),
            location: self
                .assigned
                .get(name)
                .cloned()
                .unwrap_or_else(|| self.dir.clone()),
        }
    }

    /// Reads one tensor, checking its shape when `expected` is given, and converts it to `dtype`.
    pub fn load(
        &self,
        name: &str,
        expected: Option<&[usize]>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| self.missing(name))?;
        if let Some(expected) = expected {
            if expected != info.shape.as_slice() {
                return Err(ModelError::ShapeMismatch {
                    name: name.to_string(),
                    file: info.file.clone(),
                    expected: expected.to_vec(),
                    found: info.shape.clone(),
                });
            }
        }
        let io = |source| ModelError::Io {
            path: info.file.clone(),
            source,
        };
        let len =
            usize::try_from(info.end - info.start).map_err(|_| ModelError::BadSafetensors {
                path: info.file.clone(),
                problem: format!("tensor `{name}` is too large for this platform"),
            })?;
        let mut bytes = vec![0u8; len];
        let mut f = File::open(&info.file).map_err(io)?;
        f.seek(SeekFrom::Start(info.start)).map_err(io)?;
        f.read_exact(&mut bytes).map_err(io)?;
        let wrap = |source| ModelError::TensorLoad {
            name: name.to_string(),
            file: info.file.clone(),
            source: Box::new(source),
        };
        // safetensors stores little-endian data and `from_raw_buffer` reads native order.
        if cfg!(target_endian = "big") {
            return Err(wrap(candle_core::Error::Msg(
                "big-endian hosts are not supported".into(),
            )));
        }
        let t = Tensor::from_raw_buffer(&bytes, info.dtype, &info.shape, device).map_err(wrap)?;
        t.to_dtype(dtype).map_err(wrap)
    }
}

fn safetensors_dtype(s: &str) -> Option<DType> {
    Some(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I16" => DType::I16,
        "U32" => DType::U32,
        "U8" => DType::U8,
        _ => return None,
    })
}

/// Parses the JSON header of one safetensors file and checks every byte range against the file.
pub fn read_header(path: &Path) -> Result<Vec<(String, TensorInfo)>> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bad = |problem: String| ModelError::BadSafetensors {
        path: path.to_path_buf(),
        problem,
    };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut len_bytes = [0u8; 8];
    f.read_exact(&mut len_bytes)
        .map_err(|e| bad(format!("cannot read the header length: {e}")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    // The format caps headers at 100 MB; checking before allocating guards against garbage.
    if header_len > 100_000_000 || header_len.saturating_add(8) > file_len {
        return Err(bad(format!(
            "header length {header_len} does not fit the file ({file_len} bytes)"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    let root: Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let obj = root
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let data_start = 8 + header_len;
    let mut out = Vec::with_capacity(obj.len());
    for (name, entry) in obj {
        if name == "__metadata__" {
            continue;
        }
        let field = |key: &str| {
            entry
                .get(key)
                .ok_or_else(|| bad(format!("tensor `{name}` has no `{key}`")))
        };
        let dtype_name = field("dtype")?
            .as_str()
            .ok_or_else(|| bad(format!("tensor `{name}`: `dtype` is not a string")))?;
        let dtype = safetensors_dtype(dtype_name).ok_or_else(|| ModelError::UnsupportedDtype {
            name: name.clone(),
            file: path.to_path_buf(),
            dtype: dtype_name.to_string(),
        })?;
        let uints = |key: &str| -> Result<Vec<u64>> {
            field(key)?
                .as_array()
                .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<_>>>())
                .ok_or_else(|| {
                    bad(format!(
                        "tensor `{name}`: `{key}` is not a list of integers"
                    ))
                })
        };
        let shape = uints("shape")?
            .into_iter()
            .map(|d| usize::try_from(d).map_err(|_| bad(format!("tensor `{name}`: dim too large"))))
            .collect::<Result<Vec<usize>>>()?;
        let offsets = uints("data_offsets")?;
        let [begin, end] = offsets[..] else {
            return Err(bad(format!(
                "tensor `{name}`: `data_offsets` needs 2 entries"
            )));
        };
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        let expected_bytes = numel * dtype.size_in_bytes() as u64;
        if end < begin || end - begin != expected_bytes {
            return Err(bad(format!(
                "tensor `{name}`: byte range {begin}..{end} does not hold {numel} {dtype_name} values"
            )));
        }
        if data_start + end > file_len {
            return Err(bad(format!(
                "tensor `{name}`: data ends at byte {} but the file has {file_len} (truncated?)",
                data_start + end
            )));
        }
        out.push((
            name.clone(),
            TensorInfo {
                file: path.to_path_buf(),
                dtype,
                shape,
                start: data_start + begin,
                end: data_start + end,
            },
        ));
    }
    Ok(out)
}

/// A `VarBuilder` backend over a [`SafetensorsIndex`] that remembers the first typed failure.
pub struct CheckpointBackend {
    index: Arc<SafetensorsIndex>,
    failure: Arc<Mutex<Option<ModelError>>>,
}

impl CheckpointBackend {
    pub fn new(index: Arc<SafetensorsIndex>) -> Self {
        CheckpointBackend {
            index,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// A handle to the failure slot, to read after the backend has moved into a `VarBuilder`.
    pub fn failure_slot(&self) -> Arc<Mutex<Option<ModelError>>> {
        self.failure.clone()
    }

    /// The first typed error recorded in `slot`, if any.
    pub fn take_failure(slot: &Mutex<Option<ModelError>>) -> Option<ModelError> {
        match slot.lock() {
            Ok(mut g) => g.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    fn record(&self, e: ModelError) -> candle_core::Error {
        let msg = e.to_string();
        let mut slot = match self.failure.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if slot.is_none() {
            *slot = Some(e);
        }
        candle_core::Error::Msg(msg)
    }
}

impl SimpleBackend for CheckpointBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.index
            .load(name, Some(s.dims()), dtype, dev)
            .map_err(|e| self.record(e))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.index
            .load(name, None, dtype, dev)
            .map_err(|e| self.record(e))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_checkpoint(dir: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("anatomy-weights-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn reads_back_and_reports_problems() {
        let dir = temp_dir("rw");
        let dev = Device::Cpu;
        let a = Tensor::arange(0f32, 6., &dev)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let b = Tensor::new(&[1i64, 2, 3], &dev).unwrap();
        write_checkpoint(&dir, &[("model.a", a.clone()), ("visual.b", b)]);
        let idx = SafetensorsIndex::open(&dir).unwrap();
        assert_eq!(idx.layout(), KeyLayout::Hub);
        let got = idx
            .load("model.a", Some(&[2, 3]), DType::F32, &dev)
            .unwrap();
        assert_eq!(got.to_vec2::<f32>().unwrap(), a.to_vec2::<f32>().unwrap());
        let bf = idx.load("model.a", None, DType::BF16, &dev).unwrap();
        assert_eq!(bf.dtype(), DType::BF16);

        let e = idx.load("model.zzz", None, DType::F32, &dev).unwrap_err();
        assert!(matches!(e, ModelError::MissingTensor { ref name, .. } if name == "model.zzz"));
        let e = idx
            .load("model.a", Some(&[3, 2]), DType::F32, &dev)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("model.a") && msg.contains("model.safetensors"),
            "{msg}"
        );

        // Truncation is caught when the header is read.
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let msg = SafetensorsIndex::open(&dir).unwrap_err().to_string();
        assert!(
            msg.contains("truncated") && msg.contains("model.safetensors"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layout_detection() {
        assert_eq!(
            KeyLayout::detect(["model.language_model.norm.weight", "lm_head.weight"]),
            KeyLayout::Transformers5
        );
        assert_eq!(
            KeyLayout::detect(["model.norm.weight", "visual.merger.ln_q.weight"]),
            KeyLayout::Hub
        );
    }
}
