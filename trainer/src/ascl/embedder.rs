//! Text embedders for S(q): the policy's own token embeddings (no extra model) and a BERT-family
//! sentence encoder (e.g. all-MiniLM-L6-v2 or a biomedical encoder) through candle-transformers.

use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::template::ChatTokenizer;
use candle_core::safetensors::SliceSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};

use super::AsclError;

/// Turns a text into a vector; only the direction matters (S(q) uses cosine similarity).
pub trait Embedder {
    fn embed(&self, text: &str) -> Result<Vec<f32>, AsclError>;
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AsclError + '_ {
    move |source| AsclError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn model_err(path: &Path) -> impl Fn(candle_core::Error) -> AsclError + '_ {
    move |e| AsclError::Model {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The policy's input embedding table, averaged over an option's tokens: the paper's notion of how
/// alike two anatomy names look *to the model being trained*, at no extra cost.
pub struct PolicyEmbedder {
    tokenizer: ChatTokenizer,
    /// `(vocab, hidden)` in f32 on the CPU.
    table: Tensor,
    dir: PathBuf,
}

const EMBED_NAMES: [&str; 2] = [
    "model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
];

impl PolicyEmbedder {
    /// Reads the token embedding matrix of an HF checkpoint directory (one `model.safetensors` or
    /// shards listed in `model.safetensors.index.json`; transformers 4.x or 5.x tensor names).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, AsclError> {
        let dir = dir.as_ref();
        let tokenizer = ChatTokenizer::from_dir(dir).map_err(|e| AsclError::Model {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let index = dir.join("model.safetensors.index.json");
        let (file, name) = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(io(&index))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| AsclError::Model {
                    path: index.clone(),
                    message: e.to_string(),
                })?;
            EMBED_NAMES
                .iter()
                .find_map(|n| {
                    let shard = v.get("weight_map")?.get(*n)?.as_str()?;
                    Some((dir.join(shard), *n))
                })
                .ok_or_else(|| AsclError::NoEmbeddings(index.clone()))?
        } else {
            (dir.join("model.safetensors"), EMBED_NAMES[0])
        };
        // Read into memory rather than mmap: mapping needs `unsafe`, and only one shard is read.
        let bytes = std::fs::read(&file).map_err(io(&file))?;
        let st = SliceSafetensors::new(&bytes).map_err(model_err(&file))?;
        let name = if st.get(name).is_ok() {
            name
        } else {
            EMBED_NAMES
                .iter()
                .copied()
                .find(|n| st.get(n).is_ok())
                .ok_or_else(|| AsclError::NoEmbeddings(file.clone()))?
        };
        let table = st
            .load(name, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(model_err(&file))?;
        if table.rank() != 2 {
            return Err(AsclError::NoEmbeddings(file));
        }
        Ok(Self {
            tokenizer,
            table,
            dir: dir.to_path_buf(),
        })
    }

    /// Width of the embedding table.
    pub fn hidden_size(&self) -> usize {
        self.table.dims()[1]
    }
}

impl Embedder for PolicyEmbedder {
    fn embed(&self, text: &str) -> Result<Vec<f32>, AsclError> {
        let ids = self.tokenizer.encode(text).map_err(|e| AsclError::Model {
            path: self.dir.clone(),
            message: e.to_string(),
        })?;
        if ids.is_empty() {
            return Err(AsclError::EmptyText(text.to_string()));
        }
        let vocab = self.table.dims()[0];
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(AsclError::Model {
                path: self.dir.clone(),
                message: format!("token id {bad} is outside the {vocab}-row embedding table"),
            });
        }
        let n = ids.len();
        let idx = Tensor::from_vec(ids, n, &Device::Cpu).map_err(model_err(&self.dir))?;
        self.table
            .index_select(&idx, 0)
            .and_then(|rows| rows.mean(0))
            .and_then(|m| m.to_vec1::<f32>())
            .map_err(model_err(&self.dir))
    }
}

/// A BERT sentence encoder: mean of the last hidden states over the real (unpadded) tokens, the
/// pooling sentence-transformers uses for all-MiniLM-L6-v2.
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: tokenizers::Tokenizer,
    dir: PathBuf,
}

impl BertEmbedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from a directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, AsclError> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| AsclError::Model {
            path: cfg_path.clone(),
            message: e.to_string(),
        })?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| AsclError::Model {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights).map_err(io(&weights))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu)
            .map_err(model_err(&weights))?;
        let model = BertModel::load(vb, &config).map_err(model_err(&weights))?;
        Ok(Self {
            model,
            tokenizer,
            dir: dir.to_path_buf(),
        })
    }
}

impl Embedder for BertEmbedder {
    fn embed(&self, text: &str) -> Result<Vec<f32>, AsclError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| AsclError::Model {
                path: self.dir.clone(),
                message: e.to_string(),
            })?;
        let ids = enc.get_ids().to_vec();
        // tokenizer.json files of sentence encoders often pad to a fixed length (MiniLM: 128);
        // the mask keeps the pads out of both the attention and the mean.
        let mask: Vec<f32> = enc.get_attention_mask().iter().map(|&m| m as f32).collect();
        let real = mask.iter().sum::<f32>();
        if ids.is_empty() || real == 0.0 {
            return Err(AsclError::EmptyText(text.to_string()));
        }
        let n = ids.len();
        let err = model_err(&self.dir);
        let run = || -> candle_core::Result<Vec<f32>> {
            let input = Tensor::from_vec(ids, (1, n), &Device::Cpu)?;
            let types = input.zeros_like()?;
            let mask = Tensor::from_vec(mask, (1, n), &Device::Cpu)?;
            let hidden = self.model.forward(&input, &types, Some(&mask))?;
            let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
            (summed / real as f64)?.squeeze(0)?.to_vec1::<f32>()
        };
        run().map_err(err)
    }
}
