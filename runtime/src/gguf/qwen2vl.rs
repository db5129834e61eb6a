//! Typed views of the two files of a Qwen2.5-VL deployment as llama.cpp lays them out: the language
//! model (`general.architecture = qwen2vl`) and the vision projector (`general.architecture = clip`,
//! `clip.projector_type = qwen2.5vl_merger`). Reading them checks every key the runtime needs and
//! every tensor's presence and shape, so a bad file fails at open with the key or tensor named.

use super::error::GgufError;
use super::reader::GgufFile;
use super::value::Value;

/// `general.architecture` of the language-model file.
pub const LM_ARCH: &str = "qwen2vl";
/// `clip.projector_type` of the Qwen2.5-VL vision projector.
pub const PROJECTOR_TYPE: &str = "qwen2.5vl_merger";

fn missing(f: &GgufFile, key: &str) -> GgufError {
    GgufError::MissingKey {
        path: f.path().into(),
        key: key.into(),
    }
}

fn wrong(f: &GgufFile, key: &str, expected: &str, v: &Value<'_>) -> GgufError {
    GgufError::KeyType {
        path: f.path().into(),
        key: key.into(),
        expected: expected.into(),
        found: v.value_type().to_string(),
    }
}

fn req<'a>(f: &'a GgufFile, key: &str) -> Result<Value<'a>, GgufError> {
    f.get(key).ok_or_else(|| missing(f, key))
}

/// A required non-negative integer that fits `usize`.
pub fn req_usize(f: &GgufFile, key: &str) -> Result<usize, GgufError> {
    let v = req(f, key)?;
    v.as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| wrong(f, key, "unsigned integer", &v))
}

pub fn req_f32(f: &GgufFile, key: &str) -> Result<f32, GgufError> {
    let v = req(f, key)?;
    v.as_f32().ok_or_else(|| wrong(f, key, "float", &v))
}

pub fn req_str<'a>(f: &'a GgufFile, key: &str) -> Result<&'a str, GgufError> {
    let v = req(f, key)?;
    v.as_str().ok_or_else(|| wrong(f, key, "string", &v))
}

fn opt_usize(f: &GgufFile, key: &str, default: usize) -> Result<usize, GgufError> {
    match f.get(key) {
        None => Ok(default),
        Some(_) => req_usize(f, key),
    }
}

fn expect_str(f: &GgufFile, key: &str, want: &str) -> Result<(), GgufError> {
    let got = req_str(f, key)?;
    if got != want {
        return Err(GgufError::BadValue {
            path: f.path().into(),
            key: key.into(),
            value: got.into(),
            reason: format!("expected {want:?}"),
        });
    }
    Ok(())
}

fn nonzero(f: &GgufFile, key: &str) -> Result<usize, GgufError> {
    let v = req_usize(f, key)?;
    if v == 0 {
        return Err(GgufError::BadValue {
            path: f.path().into(),
            key: key.into(),
            value: "0".into(),
            reason: "must be positive".into(),
        });
    }
    Ok(v)
}

/// Checks that tensor `name` exists with exactly `shape` (ggml order).
pub fn require_tensor(f: &GgufFile, name: &str, shape: &[u64]) -> Result<(), GgufError> {
    let t = f.tensor(name).ok_or_else(|| GgufError::MissingTensor {
        path: f.path().into(),
        tensor: name.into(),
    })?;
    if t.shape() != shape {
        return Err(GgufError::ShapeMismatch {
            path: f.path().into(),
            tensor: name.into(),
            found: t.shape().to_vec(),
            expected: shape.to_vec(),
        });
    }
    Ok(())
}

/// Hyperparameters of the language-model file.
#[derive(Clone, Debug, PartialEq)]
pub struct LmParams {
    pub block_count: usize,
    pub context_length: usize,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    /// M-RoPE sections in frequency pairs (t, h, w, unused).
    pub rope_sections: Vec<i64>,
    pub rope_freq_base: f32,
    pub rms_norm_eps: f32,
    /// Rows of `token_embd.weight` (the token list may be shorter in hand-made files).
    pub vocab_size: usize,
    /// Whether the file has its own `output.weight` (untied head).
    pub has_output: bool,
}

impl LmParams {
    /// Reads and checks the keys and every tensor's shape.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, GgufError> {
        expect_str(f, "general.architecture", LM_ARCH)?;
        let k = |s: &str| format!("{LM_ARCH}.{s}");
        let key = k("rope.dimension_sections");
        let v = req(f, &key)?;
        let rope_sections = v
            .as_array()
            .and_then(|a| a.ints())
            .ok_or_else(|| wrong(f, &key, "integer array", &v))?;
        let embedding_length = nonzero(f, &k("embedding_length"))?;
        let head_count = nonzero(f, &k("attention.head_count"))?;
        let head_count_kv = nonzero(f, &k("attention.head_count_kv"))?;
        if embedding_length % head_count != 0 || head_count % head_count_kv != 0 {
            return Err(GgufError::BadValue {
                path: f.path().into(),
                key: k("attention.head_count"),
                value: format!("{head_count} (kv {head_count_kv}, embedding {embedding_length})"),
                reason: "heads must divide the embedding and kv heads must divide heads".into(),
            });
        }
        let emb = f
            .tensor("token_embd.weight")
            .ok_or_else(|| GgufError::MissingTensor {
                path: f.path().into(),
                tensor: "token_embd.weight".into(),
            })?;
        let vocab_size = emb.shape().get(1).copied().unwrap_or(0) as usize;
        let p = Self {
            block_count: req_usize(f, &k("block_count"))?,
            context_length: req_usize(f, &k("context_length"))?,
            embedding_length,
            feed_forward_length: nonzero(f, &k("feed_forward_length"))?,
            head_count,
            head_count_kv,
            rope_sections,
            rope_freq_base: req_f32(f, &k("rope.freq_base"))?,
            rms_norm_eps: req_f32(f, &k("attention.layer_norm_rms_epsilon"))?,
            vocab_size,
            has_output: f.tensor("output.weight").is_some(),
        };
        p.check_tensors(f)?;
        Ok(p)
    }

    fn check_tensors(&self, f: &GgufFile) -> Result<(), GgufError> {
        let (e, ff) = (
            self.embedding_length as u64,
            self.feed_forward_length as u64,
        );
        let kv = e / self.head_count as u64 * self.head_count_kv as u64;
        let v = self.vocab_size as u64;
        require_tensor(f, "token_embd.weight", &[e, v])?;
        require_tensor(f, "output_norm.weight", &[e])?;
        if self.has_output {
            require_tensor(f, "output.weight", &[e, v])?;
        }
        for i in 0..self.block_count {
            let t = |s: &str| format!("blk.{i}.{s}");
            require_tensor(f, &t("attn_norm.weight"), &[e])?;
            require_tensor(f, &t("attn_q.weight"), &[e, e])?;
            require_tensor(f, &t("attn_q.bias"), &[e])?;
            require_tensor(f, &t("attn_k.weight"), &[e, kv])?;
            require_tensor(f, &t("attn_k.bias"), &[kv])?;
            require_tensor(f, &t("attn_v.weight"), &[e, kv])?;
            require_tensor(f, &t("attn_v.bias"), &[kv])?;
            require_tensor(f, &t("attn_output.weight"), &[e, e])?;
            require_tensor(f, &t("ffn_norm.weight"), &[e])?;
            require_tensor(f, &t("ffn_gate.weight"), &[e, ff])?;
            require_tensor(f, &t("ffn_up.weight"), &[e, ff])?;
            require_tensor(f, &t("ffn_down.weight"), &[ff, e])?;
        }
        Ok(())
    }
}

/// Hyperparameters of the vision-projector file.
#[derive(Clone, Debug, PartialEq)]
pub struct MmprojParams {
    pub projection_dim: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    pub block_count: usize,
    pub head_count: usize,
    pub layer_norm_epsilon: f32,
    pub image_mean: Vec<f32>,
    pub image_std: Vec<f32>,
    /// Every `n_wa_pattern`-th block (1-based) attends over the full image; the others by window.
    pub n_wa_pattern: usize,
    pub spatial_merge_size: usize,
    pub window_size: usize,
}

impl MmprojParams {
    pub fn from_gguf(f: &GgufFile) -> Result<Self, GgufError> {
        expect_str(f, "general.architecture", "clip")?;
        expect_str(f, "clip.projector_type", PROJECTOR_TYPE)?;
        let floats = |key: &str| -> Result<Vec<f32>, GgufError> {
            let v = req(f, key)?;
            let xs = v
                .as_array()
                .and_then(|a| a.floats())
                .ok_or_else(|| wrong(f, key, "float array", &v))?;
            if xs.len() != 3 {
                return Err(GgufError::BadValue {
                    path: f.path().into(),
                    key: key.into(),
                    value: format!("{xs:?}"),
                    reason: "expected 3 channels".into(),
                });
            }
            Ok(xs)
        };
        let p = Self {
            projection_dim: nonzero(f, "clip.vision.projection_dim")?,
            image_size: req_usize(f, "clip.vision.image_size")?,
            patch_size: nonzero(f, "clip.vision.patch_size")?,
            embedding_length: nonzero(f, "clip.vision.embedding_length")?,
            feed_forward_length: nonzero(f, "clip.vision.feed_forward_length")?,
            block_count: req_usize(f, "clip.vision.block_count")?,
            head_count: nonzero(f, "clip.vision.attention.head_count")?,
            layer_norm_epsilon: req_f32(f, "clip.vision.attention.layer_norm_epsilon")?,
            image_mean: floats("clip.vision.image_mean")?,
            image_std: floats("clip.vision.image_std")?,
            n_wa_pattern: req_usize(f, "clip.vision.n_wa_pattern")?,
            spatial_merge_size: opt_usize(f, "clip.vision.spatial_merge_size", 2)?,
            window_size: opt_usize(f, "clip.vision.window_size", 112)?,
        };
        p.check_tensors(f)?;
        Ok(p)
    }

    fn check_tensors(&self, f: &GgufFile) -> Result<(), GgufError> {
        let (h, ff, ps) = (
            self.embedding_length as u64,
            self.feed_forward_length as u64,
            self.patch_size as u64,
        );
        let merged = h * (self.spatial_merge_size * self.spatial_merge_size) as u64;
        require_tensor(f, "v.patch_embd.weight", &[ps, ps, 3, h])?;
        require_tensor(f, "v.patch_embd.weight.1", &[ps, ps, 3, h])?;
        require_tensor(f, "v.post_ln.weight", &[h])?;
        require_tensor(f, "mm.0.weight", &[merged, merged])?;
        require_tensor(f, "mm.0.bias", &[merged])?;
        require_tensor(f, "mm.2.weight", &[merged, self.projection_dim as u64])?;
        require_tensor(f, "mm.2.bias", &[self.projection_dim as u64])?;
        for i in 0..self.block_count {
            let t = |s: &str| format!("v.blk.{i}.{s}");
            for n in ["attn_q", "attn_k", "attn_v", "attn_out"] {
                require_tensor(f, &t(&format!("{n}.weight")), &[h, h])?;
                require_tensor(f, &t(&format!("{n}.bias")), &[h])?;
            }
            require_tensor(f, &t("ln1.weight"), &[h])?;
            require_tensor(f, &t("ln2.weight"), &[h])?;
            for n in ["ffn_gate", "ffn_up"] {
                require_tensor(f, &t(&format!("{n}.weight")), &[h, ff])?;
                require_tensor(f, &t(&format!("{n}.bias")), &[ff])?;
            }
            require_tensor(f, &t("ffn_down.weight"), &[ff, h])?;
            require_tensor(f, &t("ffn_down.bias"), &[h])?;
        }
        Ok(())
    }
}
