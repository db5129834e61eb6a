//! A fresh random-weight Qwen2.5-VL checkpoint in the HF layout, for training a small model from
//! scratch (the shipped demo model): a byte-level BPE vocabulary trained on the question corpus
//! with the template's special tokens appended after it (as Qwen2 places them after its merges),
//! the template's tokenizer settings and chat template, the sizes of a [`BaseSpec`], and weights
//! drawn as transformers initialises them (normal with `initializer_range`, norms one, biases zero).
//!
//! The template is any Qwen2.5-VL HF directory in the transformers 4.x dialect (a real checkpoint
//! works; the demo uses the `square` test fixture): only its tokenizer settings, special tokens,
//! chat template and processor normalisation are kept.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::config::Config;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokenizers::models::bpe::BpeTrainerBuilder;
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::Tokenizer;

use crate::rng::SplitMix64;

#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("base spec: {0}")]
    Spec(String),
    #[error("tokenizer training: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> BaseError {
    BaseError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// The sizes of the model to create; the `[base]` table of a recipe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    /// Byte-level BPE size before the special tokens (256 byte symbols plus merges).
    pub bpe_vocab: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Sections of the rotary half-dimension for (t, h, w); they sum to head_dim / 2.
    pub mrope_section: [usize; 3],
    /// Base of the language model's rotary frequencies; the template's when absent. With a small
    /// head the default 1e6 leaves the width section (the slowest frequencies) turning by about
    /// 2e-4 rad per image column, too little for the model to tell columns apart.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    pub vision_depth: usize,
    pub vision_hidden_size: usize,
    pub vision_intermediate_size: usize,
    pub vision_num_heads: usize,
    /// Window of the windowed vision attention, in pixels.
    #[serde(default = "default_window")]
    pub vision_window_size: usize,
    /// Vision blocks with full attention.
    #[serde(default)]
    pub vision_fullatt_blocks: Vec<usize>,
    /// The processor's pixel budget: every image is resized to at most this many pixels.
    pub max_pixels: usize,
    #[serde(default = "default_min_pixels")]
    pub min_pixels: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// Standard deviation of the (tied) embedding table. LoRA leaves the table and the final norm
    /// frozen, so the logits can never exceed |norm(h)| * |e| = sqrt(hidden) * std * sqrt(hidden):
    /// at transformers' 0.02 a 128-wide model could not get below a loss of several nats.
    #[serde(default = "default_embedding_std")]
    pub embedding_std: f64,
    #[serde(default)]
    pub seed: u64,
}

fn default_window() -> usize {
    112
}
fn default_min_pixels() -> usize {
    3136
}
fn default_init_range() -> f64 {
    0.02
}
fn default_embedding_std() -> f64 {
    0.25
}

impl BaseSpec {
    fn check(&self) -> Result<(), BaseError> {
        let bad = |m: String| Err(BaseError::Spec(m));
        if self.bpe_vocab < 256 {
            return bad(format!(
                "bpe_vocab {} is below the 256 byte symbols",
                self.bpe_vocab
            ));
        }
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            return bad("hidden_size must be a positive multiple of num_attention_heads".into());
        }
        if self.num_key_value_heads == 0 || !heads.is_multiple_of(self.num_key_value_heads) {
            return bad("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        let head_dim = self.hidden_size / heads;
        if self.mrope_section.iter().sum::<usize>() * 2 != head_dim {
            return bad(format!(
                "mrope_section {:?} must sum to head_dim / 2 = {}",
                self.mrope_section,
                head_dim / 2
            ));
        }
        let vh = self.vision_num_heads;
        if vh == 0
            || !self.vision_hidden_size.is_multiple_of(vh)
            || !(self.vision_hidden_size / vh).is_multiple_of(4)
        {
            return bad("vision head size must be a positive multiple of 4".into());
        }
        if self.rope_theta.is_some_and(|t| !(t.is_finite() && t > 1.0)) {
            return bad("rope_theta must be a finite number above 1".into());
        }
        if self.min_pixels > self.max_pixels || self.max_pixels < 28 * 28 {
            return bad("need 28*28 <= min_pixels <= max_pixels".into());
        }
        if self
            .vision_fullatt_blocks
            .iter()
            .any(|&b| b >= self.vision_depth)
        {
            return bad("vision_fullatt_blocks names a block past vision_depth".into());
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> Result<Value, BaseError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_err(path, e))
}

fn write_json(path: &Path, v: &Value) -> Result<(), BaseError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| file_err(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| file_err(path, e))
}

/// Trains the BPE on `corpus` with the template's normaliser and pre-tokenizer and returns the
/// template's `tokenizer.json` with its vocabulary and merges replaced and its added tokens
/// renumbered to follow the new vocabulary; also the new id of every added token's content.
fn train_tokenizer(
    template: &Path,
    corpus: &[String],
    bpe_vocab: usize,
) -> Result<(Value, HashMap<String, u32>), BaseError> {
    let tpl_path = template.join("tokenizer.json");
    let mut tpl = read_json(&tpl_path)?;
    let mut tok = Tokenizer::from_file(&tpl_path).map_err(|e| file_err(&tpl_path, e))?;
    let trainer = BpeTrainerBuilder::new()
        .vocab_size(bpe_vocab)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    tok.train(&mut trainer, corpus.iter().map(String::as_str))
        .map_err(|e| BaseError::Tokenizer(e.to_string()))?;
    let trained: Value = serde_json::from_str(
        &tok.to_string(false)
            .map_err(|e| BaseError::Tokenizer(e.to_string()))?,
    )
    .map_err(|e| BaseError::Tokenizer(e.to_string()))?;
    let vocab = trained["model"]["vocab"].clone();
    let merges = trained["model"]["merges"].clone();
    let mut pieces: Vec<(String, u64)> = vocab
        .as_object()
        .ok_or_else(|| BaseError::Tokenizer("trained vocabulary is not a map".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(u64::MAX)))
        .collect();
    pieces.sort_by_key(|p| p.1);
    // The trainer leaves the template's added tokens in its vocabulary; drop them and close the
    // gaps so the BPE ids are 0..n and the special tokens come after, as in Qwen2.
    let added: Vec<Value> = tpl["added_tokens"].as_array().cloned().unwrap_or_default();
    let added_contents: Vec<String> = added
        .iter()
        .filter_map(|a| a["content"].as_str().map(str::to_string))
        .collect();
    let mut new_vocab = serde_json::Map::new();
    for (piece, _) in pieces {
        if added_contents.contains(&piece) {
            continue;
        }
        let id = new_vocab.len();
        new_vocab.insert(piece, json!(id));
    }
    let n = new_vocab.len() as u32;
    let mut ids = HashMap::new();
    let mut new_added = Vec::with_capacity(added.len());
    for (i, mut a) in added.into_iter().enumerate() {
        let id = n + i as u32;
        if let Some(c) = a["content"].as_str() {
            ids.insert(c.to_string(), id);
        }
        a["id"] = json!(id);
        new_added.push(a);
    }
    tpl["added_tokens"] = Value::Array(new_added);
    tpl["model"]["vocab"] = Value::Object(new_vocab);
    tpl["model"]["merges"] = merges;
    Ok((tpl, ids))
}

fn token_id(ids: &HashMap<String, u32>, content: &str) -> Result<u32, BaseError> {
    ids.get(content)
        .copied()
        .ok_or_else(|| BaseError::Spec(format!("the template's tokenizer has no {content} token")))
}

/// HF tensor names and shapes of a Qwen2.5-VL (hub key layout), in a stable order.
pub fn tensor_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let t = &cfg.text;
    let v = &cfg.vision;
    let mut out = Vec::new();
    let mut put = |name: String, shape: Vec<usize>| out.push((name, shape));
    let vh = v.hidden_size;
    put(
        "visual.patch_embed.proj.weight".into(),
        vec![
            vh,
            v.in_channels,
            v.temporal_patch_size,
            v.patch_size,
            v.patch_size,
        ],
    );
    for i in 0..v.depth {
        let p = format!("visual.blocks.{i}");
        put(format!("{p}.norm1.weight"), vec![vh]);
        put(format!("{p}.norm2.weight"), vec![vh]);
        put(format!("{p}.attn.qkv.weight"), vec![3 * vh, vh]);
        put(format!("{p}.attn.qkv.bias"), vec![3 * vh]);
        put(format!("{p}.attn.proj.weight"), vec![vh, vh]);
        put(format!("{p}.attn.proj.bias"), vec![vh]);
        for m in ["gate_proj", "up_proj"] {
            put(format!("{p}.mlp.{m}.weight"), vec![v.intermediate_size, vh]);
            put(format!("{p}.mlp.{m}.bias"), vec![v.intermediate_size]);
        }
        put(
            format!("{p}.mlp.down_proj.weight"),
            vec![vh, v.intermediate_size],
        );
        put(format!("{p}.mlp.down_proj.bias"), vec![vh]);
    }
    let merged = vh * v.spatial_merge_size * v.spatial_merge_size;
    put("visual.merger.ln_q.weight".into(), vec![vh]);
    put("visual.merger.mlp.0.weight".into(), vec![merged, merged]);
    put("visual.merger.mlp.0.bias".into(), vec![merged]);
    put(
        "visual.merger.mlp.2.weight".into(),
        vec![v.out_hidden_size, merged],
    );
    put("visual.merger.mlp.2.bias".into(), vec![v.out_hidden_size]);
    let h = t.hidden_size;
    let q = t.num_attention_heads * t.head_dim;
    let kv = t.num_key_value_heads * t.head_dim;
    put("model.embed_tokens.weight".into(), vec![t.vocab_size, h]);
    for i in 0..t.num_hidden_layers {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), vec![h]);
        put(format!("{p}.post_attention_layernorm.weight"), vec![h]);
        put(format!("{p}.self_attn.q_proj.weight"), vec![q, h]);
        put(format!("{p}.self_attn.q_proj.bias"), vec![q]);
        put(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]);
        put(format!("{p}.self_attn.k_proj.bias"), vec![kv]);
        put(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]);
        put(format!("{p}.self_attn.v_proj.bias"), vec![kv]);
        put(format!("{p}.self_attn.o_proj.weight"), vec![h, q]);
        put(
            format!("{p}.mlp.gate_proj.weight"),
            vec![t.intermediate_size, h],
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            vec![t.intermediate_size, h],
        );
        put(
            format!("{p}.mlp.down_proj.weight"),
            vec![h, t.intermediate_size],
        );
    }
    put("model.norm.weight".into(), vec![h]);
    if !t.tie_word_embeddings {
        put("lm_head.weight".into(), vec![t.vocab_size, h]);
    }
    out
}

/// A standard normal draw (Box-Muller on two uniforms).
fn normal(rng: &mut SplitMix64) -> f64 {
    let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Writes a new checkpoint into `out` (created): config, generation config, tokenizer files, chat
/// template, processor config and `model.safetensors`. The same template, corpus and spec give
/// byte-identical files.
pub fn init_base(
    template: &Path,
    corpus: &[String],
    spec: &BaseSpec,
    out: &Path,
) -> Result<(), BaseError> {
    spec.check()?;
    std::fs::create_dir_all(out).map_err(|e| file_err(out, e))?;
    let (tokenizer, ids) = train_tokenizer(template, corpus, spec.bpe_vocab)?;
    let n_tokens = ids.values().copied().max().map_or(0, |m| m as usize + 1);
    // Embedding rows padded to a multiple of 64, as Qwen's checkpoints pad theirs.
    let vocab_size = n_tokens.div_ceil(64) * 64;
    let endoftext = token_id(&ids, "<|endoftext|>")?;
    let im_end = token_id(&ids, "<|im_end|>")?;

    let mut config = read_json(&template.join("config.json"))?;
    let c = config
        .as_object_mut()
        .ok_or_else(|| file_err(&template.join("config.json"), "not a JSON object"))?;
    for (key, content) in [
        ("vision_start_token_id", "<|vision_start|>"),
        ("vision_end_token_id", "<|vision_end|>"),
        ("vision_token_id", "<|vision_pad|>"),
        ("image_token_id", "<|image_pad|>"),
        ("video_token_id", "<|video_pad|>"),
    ] {
        c.insert(key.into(), json!(token_id(&ids, content)?));
    }
    c.insert("bos_token_id".into(), json!(endoftext));
    c.insert("eos_token_id".into(), json!(im_end));
    c.insert("vocab_size".into(), json!(vocab_size));
    c.insert("hidden_size".into(), json!(spec.hidden_size));
    c.insert("intermediate_size".into(), json!(spec.intermediate_size));
    c.insert("num_hidden_layers".into(), json!(spec.num_hidden_layers));
    c.insert(
        "num_attention_heads".into(),
        json!(spec.num_attention_heads),
    );
    c.insert(
        "num_key_value_heads".into(),
        json!(spec.num_key_value_heads),
    );
    c.insert("initializer_range".into(), json!(spec.initializer_range));
    if let Some(theta) = spec.rope_theta {
        c.insert("rope_theta".into(), json!(theta));
    }
    c.insert("tie_word_embeddings".into(), json!(true));
    c.insert(
        "rope_scaling".into(),
        json!({"type": "mrope", "rope_type": "default", "mrope_section": spec.mrope_section}),
    );
    let vision = c
        .entry("vision_config")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| {
            file_err(
                &template.join("config.json"),
                "vision_config is not an object",
            )
        })?;
    vision.insert("depth".into(), json!(spec.vision_depth));
    vision.insert("hidden_size".into(), json!(spec.vision_hidden_size));
    vision.insert(
        "intermediate_size".into(),
        json!(spec.vision_intermediate_size),
    );
    vision.insert("num_heads".into(), json!(spec.vision_num_heads));
    vision.insert("out_hidden_size".into(), json!(spec.hidden_size));
    vision.insert("window_size".into(), json!(spec.vision_window_size));
    vision.insert(
        "fullatt_block_indexes".into(),
        json!(spec.vision_fullatt_blocks),
    );
    write_json(&out.join("config.json"), &config)?;
    write_json(
        &out.join("generation_config.json"),
        &json!({
            "bos_token_id": endoftext,
            "do_sample": false,
            "eos_token_id": [im_end, endoftext],
            "pad_token_id": endoftext,
        }),
    )?;
    write_json(&out.join("tokenizer.json"), &tokenizer)?;

    let tc_path = template.join("tokenizer_config.json");
    let mut tc = read_json(&tc_path)?;
    if let Some(dec) = tc["added_tokens_decoder"].as_object() {
        let mut renum = serde_json::Map::new();
        for entry in dec.values() {
            let content = entry["content"].as_str().unwrap_or_default();
            renum.insert(token_id(&ids, content)?.to_string(), entry.clone());
        }
        tc["added_tokens_decoder"] = Value::Object(renum);
    }
    write_json(&out.join("tokenizer_config.json"), &tc)?;
    let chat = template.join("chat_template.json");
    if chat.exists() {
        std::fs::copy(&chat, out.join("chat_template.json")).map_err(|e| file_err(&chat, e))?;
    }
    let pp_path = template.join("preprocessor_config.json");
    let mut pp = read_json(&pp_path)?;
    pp["max_pixels"] = json!(spec.max_pixels);
    pp["min_pixels"] = json!(spec.min_pixels);
    pp["size"] = json!({"longest_edge": spec.max_pixels, "shortest_edge": spec.min_pixels});
    write_json(&out.join("preprocessor_config.json"), &pp)?;

    let cfg = Config::from_file(out.join("config.json")).map_err(|e| file_err(out, e))?;
    let mut rng = SplitMix64::new(spec.seed ^ 0xba5e);
    let mut tensors = Vec::new();
    for (name, shape) in tensor_shapes(&cfg) {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm1.weight")
            || name.ends_with("norm2.weight")
            || name.ends_with("layernorm.weight")
            || name.ends_with("ln_q.weight")
            || name == "model.norm.weight"
        {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let std = if name == "model.embed_tokens.weight" {
                spec.embedding_std
            } else {
                spec.initializer_range
            };
            (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
        };
        tensors.push((name, Tensor::from_vec(data, shape, &Device::Cpu)?));
    }
    let path = out.join("model.safetensors");
    let tmp = out.join("model.safetensors.tmp");
    candle_core::safetensors::save(&tensors.into_iter().collect::<HashMap<_, _>>(), &tmp)
        .map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| file_err(&path, e))?;
    Ok(())
}
