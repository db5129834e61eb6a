//! Qwen2.5-VL configuration: one [`Config`] from an HF checkpoint directory in either dialect.
//!
//! transformers 4.x writes the text fields at the top level of `config.json` with
//! `rope_scaling.mrope_section`, and the image processor in `preprocessor_config.json`
//! (`min_pixels`/`max_pixels`). transformers 5.x nests them in `text_config` with
//! `rope_parameters`, and writes `processor_config.json` (`size.shortest_edge`/`size.longest_edge`)
//! and `chat_template.jinja`. Each field is looked up in the 5.x place first, then the 4.x one, so a
//! file mixing both (as late 4.x releases wrote) also loads.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::preprocess::PreprocessParams;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: missing field `{field}`")]
    Missing { path: PathBuf, field: String },
    #[error("{path}: field `{field}` {problem}")]
    Invalid {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{dir}: no image processor config (looked for processor_config.json and preprocessor_config.json)")]
    NoProcessorConfig { dir: PathBuf },
}

/// The Qwen2 language model.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Split of the `head_dim / 2` rotary frequencies between the t, h and w position components.
    pub mrope_section: Vec<usize>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
}

/// The vision tower and patch merger.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub in_channels: usize,
    pub spatial_merge_size: usize,
    /// Attention window side in pixels.
    pub window_size: usize,
    pub fullatt_block_indexes: Vec<usize>,
    pub out_hidden_size: usize,
    pub tokens_per_second: f64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
}

impl VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Elements of one flattened patch row of `pixel_values`.
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Window side in merged cells (4 for the published models).
    pub fn window_merged_cells(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }
}

/// Special token ids the model config names.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenIds {
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tokens: TokenIds,
}

impl Config {
    /// Parses an HF `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let root = read_json(path)?;
        Self::from_value(&root, path)
    }

    /// Parses the already-read contents of an HF `config.json`; `path` is only used in errors.
    pub fn from_value(root: &Value, path: &Path) -> Result<Self, ConfigError> {
        let f = Fields { path };
        let root = f.object(root, "")?;
        let text_obj = match root.get("text_config") {
            Some(v) => Some(f.object(v, "text_config")?),
            None => None,
        };
        // 5.x keeps text fields in `text_config`; 4.x at the top level.
        let text_get = |key: &str| -> Option<(&Value, String)> {
            if let Some(t) = text_obj {
                if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                    return Some((v, format!("text_config.{key}")));
                }
            }
            root.get(key)
                .filter(|v| !v.is_null())
                .map(|v| (v, key.to_string()))
        };
        let text_usize = |key: &str| -> Result<usize, ConfigError> {
            match text_get(key) {
                Some((v, name)) => f.usize(v, &name),
                None => Err(f.missing(key)),
            }
        };
        let text_f64 = |key: &str| -> Result<Option<f64>, ConfigError> {
            text_get(key).map(|(v, name)| f.f64(v, &name)).transpose()
        };

        let hidden_size = text_usize("hidden_size")?;
        let num_attention_heads = text_usize("num_attention_heads")?;
        if num_attention_heads == 0 || hidden_size % num_attention_heads != 0 {
            return Err(f.invalid(
                "num_attention_heads",
                format!("({num_attention_heads}) must divide hidden_size ({hidden_size})"),
            ));
        }
        let num_key_value_heads = match text_get("num_key_value_heads") {
            Some((v, name)) => f.usize(v, &name)?,
            None => num_attention_heads,
        };
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(f.invalid(
                "num_key_value_heads",
                format!("({num_key_value_heads}) must divide num_attention_heads ({num_attention_heads})"),
            ));
        }
        let head_dim = hidden_size / num_attention_heads;

        // Rope parameters: 5.x `rope_parameters`, 4.x `rope_scaling` (+ top-level `rope_theta`).
        let rope_obj = ["rope_parameters", "rope_scaling"]
            .iter()
            .find_map(|k| text_get(k))
            .map(|(v, name)| f.object(v, &name).map(|o| (o, name)))
            .transpose()?;
        let (mrope_section, rope_theta_nested) = match rope_obj {
            Some((o, name)) => {
                let section_name = format!("{name}.mrope_section");
                let section = match o.get("mrope_section") {
                    Some(v) => f.usize_list(v, &section_name)?,
                    None => return Err(f.missing(&section_name)),
                };
                let theta = o
                    .get("rope_theta")
                    .map(|v| f.f64(v, &format!("{name}.rope_theta")))
                    .transpose()?;
                (section, theta)
            }
            None => return Err(f.missing("rope_scaling.mrope_section")),
        };
        let rope_theta = match rope_theta_nested {
            Some(t) => t,
            None => text_f64("rope_theta")?.ok_or_else(|| f.missing("rope_theta"))?,
        };
        let rotary_pairs = head_dim / 2;
        if mrope_section.len() != 3 || mrope_section.iter().sum::<usize>() != rotary_pairs {
            return Err(f.invalid(
                "mrope_section",
                format!(
                    "{mrope_section:?} must have 3 entries summing to head_dim/2 = {rotary_pairs}"
                ),
            ));
        }

        // `tie_word_embeddings` sits at the top level in both dialects, but 5.x may also copy it.
        let tie_word_embeddings = match root
            .get("tie_word_embeddings")
            .or_else(|| text_obj.and_then(|t| t.get("tie_word_embeddings")))
        {
            Some(v) => f.bool(v, "tie_word_embeddings")?,
            None => false,
        };

        let text = TextConfig {
            vocab_size: text_usize("vocab_size")?,
            hidden_size,
            intermediate_size: text_usize("intermediate_size")?,
            num_hidden_layers: text_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: text_f64("rms_norm_eps")?.ok_or_else(|| f.missing("rms_norm_eps"))?,
            rope_theta,
            mrope_section,
            max_position_embeddings: match text_get("max_position_embeddings") {
                Some((v, name)) => f.usize(v, &name)?,
                None => 128_000,
            },
            tie_word_embeddings,
        };
        if let Some((v, name)) = text_get("hidden_act") {
            if v.as_str() != Some("silu") {
                return Err(f.invalid(&name, format!("is {v}, only \"silu\" is supported")));
            }
        }

        let vision = Self::vision(&f, root, hidden_size)?;

        let token = |key: &str| -> Result<Option<u32>, ConfigError> {
            match text_get(key) {
                Some((v, name)) => f.usize(v, &name).map(|n| Some(n as u32)),
                None => Ok(None),
            }
        };
        let eos_token_ids = match text_get("eos_token_id") {
            Some((Value::Array(a), name)) => a
                .iter()
                .map(|v| f.usize(v, &name).map(|n| n as u32))
                .collect::<Result<Vec<_>, _>>()?,
            Some((v, name)) => vec![f.usize(v, &name)? as u32],
            None => Vec::new(),
        };
        let required = |key: &str| token(key)?.ok_or_else(|| f.missing(key));
        let tokens = TokenIds {
            image_token_id: required("image_token_id")?,
            video_token_id: required("video_token_id")?,
            vision_start_token_id: required("vision_start_token_id")?,
            vision_end_token_id: token("vision_end_token_id")?
                .unwrap_or(required("vision_start_token_id")? + 1),
            bos_token_id: token("bos_token_id")?,
            eos_token_ids,
        };
        for (name, id) in [
            ("image_token_id", tokens.image_token_id),
            ("video_token_id", tokens.video_token_id),
            ("vision_start_token_id", tokens.vision_start_token_id),
            ("vision_end_token_id", tokens.vision_end_token_id),
        ] {
            if id as usize >= text.vocab_size {
                return Err(f.invalid(
                    name,
                    format!("({id}) is outside the vocabulary ({})", text.vocab_size),
                ));
            }
        }
        Ok(Config {
            text,
            vision,
            tokens,
        })
    }

    fn vision(
        f: &Fields,
        root: &Map<String, Value>,
        text_hidden: usize,
    ) -> Result<VisionConfig, ConfigError> {
        let v = match root.get("vision_config") {
            Some(v) => f.object(v, "vision_config")?,
            None => return Err(f.missing("vision_config")),
        };
        let get = |key: &str| v.get(key).filter(|x| !x.is_null());
        let name = |key: &str| format!("vision_config.{key}");
        let req = |key: &str| -> Result<usize, ConfigError> {
            match get(key) {
                Some(x) => f.usize(x, &name(key)),
                None => Err(f.missing(&name(key))),
            }
        };
        let opt = |key: &str, default: usize| -> Result<usize, ConfigError> {
            get(key).map_or(Ok(default), |x| f.usize(x, &name(key)))
        };
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_heads")?;
        if num_heads == 0 || hidden_size % num_heads != 0 || (hidden_size / num_heads) % 4 != 0 {
            return Err(f.invalid(
                &name("num_heads"),
                format!("({num_heads}) must divide hidden_size ({hidden_size}) into heads whose size is a multiple of 4"),
            ));
        }
        if let Some(act) = get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(f.invalid(
                    &name("hidden_act"),
                    format!("is {act}, only \"silu\" is supported"),
                ));
            }
        }
        let depth = req("depth")?;
        let fullatt_block_indexes = match get("fullatt_block_indexes") {
            Some(x) => f.usize_list(x, &name("fullatt_block_indexes"))?,
            None => Vec::new(),
        };
        if let Some(bad) = fullatt_block_indexes.iter().find(|&&i| i >= depth) {
            return Err(f.invalid(
                &name("fullatt_block_indexes"),
                format!("contains {bad}, but depth is {depth}"),
            ));
        }
        let patch_size = opt("patch_size", 14)?;
        let spatial_merge_size = opt("spatial_merge_size", 2)?;
        let window_size = opt("window_size", 112)?;
        if patch_size == 0
            || spatial_merge_size == 0
            || window_size % (patch_size * spatial_merge_size) != 0
        {
            return Err(f.invalid(
                &name("window_size"),
                format!("({window_size}) must be a multiple of patch_size*spatial_merge_size ({patch_size}*{spatial_merge_size})"),
            ));
        }
        let out_hidden_size = opt("out_hidden_size", text_hidden)?;
        if out_hidden_size != text_hidden {
            return Err(f.invalid(
                &name("out_hidden_size"),
                format!("({out_hidden_size}) must equal the text hidden_size ({text_hidden})"),
            ));
        }
        Ok(VisionConfig {
            depth,
            hidden_size,
            num_heads,
            intermediate_size: req("intermediate_size")?,
            patch_size,
            temporal_patch_size: opt("temporal_patch_size", 2)?,
            in_channels: match get("in_channels") {
                Some(x) => f.usize(x, &name("in_channels"))?,
                None => opt("in_chans", 3)?,
            },
            spatial_merge_size,
            window_size,
            fullatt_block_indexes,
            out_hidden_size,
            tokens_per_second: get("tokens_per_second")
                .map_or(Ok(2.0), |x| f.f64(x, &name("tokens_per_second")))?,
            // Not stored by HF; the published vision RMSNorms use 1e-6 and the rotary base 10000.
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
        })
    }
}

/// Reads the image processor parameters of a checkpoint directory: `processor_config.json`
/// (transformers 5.x, under `image_processor`) or `preprocessor_config.json` (4.x).
pub fn load_preprocess_params(dir: impl AsRef<Path>) -> Result<PreprocessParams, ConfigError> {
    let dir = dir.as_ref();
    for file in ["processor_config.json", "preprocessor_config.json"] {
        let path = dir.join(file);
        if path.is_file() {
            let root = read_json(&path)?;
            return preprocess_params_from_value(&root, &path);
        }
    }
    Err(ConfigError::NoProcessorConfig {
        dir: dir.to_path_buf(),
    })
}

/// Parses processor parameters from either dialect; missing fields keep the class defaults.
pub fn preprocess_params_from_value(
    root: &Value,
    path: &Path,
) -> Result<PreprocessParams, ConfigError> {
    let f = Fields { path };
    let mut obj = f.object(root, "")?;
    let mut prefix = String::new();
    // 5.x `processor_config.json` nests the image processor.
    if let Some(inner) = obj.get("image_processor") {
        obj = f.object(inner, "image_processor")?;
        prefix = "image_processor.".into();
    }
    let name = |k: &str| format!("{prefix}{k}");
    let mut p = PreprocessParams::default();
    let size = match obj.get("size").filter(|v| !v.is_null()) {
        Some(v) => Some(f.object(v, &name("size"))?),
        None => None,
    };
    // Explicit `min_pixels`/`max_pixels` win: 4.x processors read them over `size`.
    if let Some(v) = obj.get("min_pixels").filter(|v| !v.is_null()) {
        p.min_pixels = f.usize(v, &name("min_pixels"))?;
    } else if let Some(v) = size.and_then(|s| s.get("shortest_edge")) {
        p.min_pixels = f.usize(v, &name("size.shortest_edge"))?;
    }
    if let Some(v) = obj.get("max_pixels").filter(|v| !v.is_null()) {
        p.max_pixels = f.usize(v, &name("max_pixels"))?;
    } else if let Some(v) = size.and_then(|s| s.get("longest_edge")) {
        p.max_pixels = f.usize(v, &name("size.longest_edge"))?;
    }
    if p.min_pixels == 0 || p.min_pixels > p.max_pixels {
        return Err(f.invalid(
            &name("min_pixels"),
            format!(
                "({}) must be positive and at most max_pixels ({})",
                p.min_pixels, p.max_pixels
            ),
        ));
    }
    for (key, slot) in [
        ("patch_size", &mut p.patch_size),
        ("temporal_patch_size", &mut p.temporal_patch_size),
        ("merge_size", &mut p.merge_size),
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            *slot = f.usize(v, &name(key))?;
            if *slot == 0 {
                return Err(f.invalid(&name(key), "must be positive".into()));
            }
        }
    }
    for (key, slot) in [
        ("image_mean", &mut p.image_mean),
        ("image_std", &mut p.image_std),
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            let list = f.f64_list(v, &name(key))?;
            if list.len() != 3 {
                return Err(f.invalid(&name(key), format!("has {} values, expected 3", list.len())));
            }
            for (s, x) in slot.iter_mut().zip(list) {
                *s = x as f32;
            }
        }
    }
    if p.image_std.iter().any(|&s| s <= 0.0) {
        return Err(f.invalid(&name("image_std"), "must be positive".into()));
    }
    if let Some(v) = obj.get("rescale_factor").filter(|v| !v.is_null()) {
        p.rescale_factor = f.f64(v, &name("rescale_factor"))? as f32;
    }
    Ok(p)
}

fn read_json(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// Typed field access whose errors name the file and the field.
struct Fields<'a> {
    path: &'a Path,
}

impl Fields<'_> {
    fn missing(&self, field: &str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            field: field.to_string(),
        }
    }
    fn invalid(&self, field: &str, problem: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            problem,
        }
    }
    fn object<'v>(&self, v: &'v Value, field: &str) -> Result<&'v Map<String, Value>, ConfigError> {
        v.as_object().ok_or_else(|| {
            self.invalid(field_or_root(field), format!("is {v}, expected an object"))
        })
    }
    fn usize(&self, v: &Value, field: &str) -> Result<usize, ConfigError> {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.invalid(field, format!("is {v}, expected a non-negative integer")))
    }
    fn f64(&self, v: &Value, field: &str) -> Result<f64, ConfigError> {
        v.as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| self.invalid(field, format!("is {v}, expected a number")))
    }
    fn bool(&self, v: &Value, field: &str) -> Result<bool, ConfigError> {
        v.as_bool()
            .ok_or_else(|| self.invalid(field, format!("is {v}, expected true or false")))
    }
    fn usize_list(&self, v: &Value, field: &str) -> Result<Vec<usize>, ConfigError> {
        let a = v
            .as_array()
            .ok_or_else(|| self.invalid(field, format!("is {v}, expected a list")))?;
        a.iter().map(|x| self.usize(x, field)).collect()
    }
    fn f64_list(&self, v: &Value, field: &str) -> Result<Vec<f64>, ConfigError> {
        let a = v
            .as_array()
            .ok_or_else(|| self.invalid(field, format!("is {v}, expected a list")))?;
        a.iter().map(|x| self.f64(x, field)).collect()
    }
}

fn field_or_root(field: &str) -> &str {
    if field.is_empty() {
        "<root>"
    } else {
        field
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tf4() -> Value {
        json!({
            "model_type": "qwen2_5_vl",
            "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 600,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
            "hidden_act": "silu", "tie_word_embeddings": true,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "image_token_id": 590, "video_token_id": 591, "vision_start_token_id": 587,
            "vision_end_token_id": 588, "bos_token_id": 575, "eos_token_id": 577,
            "vision_config": {"depth": 2, "hidden_size": 32, "num_heads": 2, "intermediate_size": 48,
                "hidden_act": "silu", "fullatt_block_indexes": [1], "window_size": 112,
                "out_hidden_size": 64, "in_chans": 3}
        })
    }

    fn tf5() -> Value {
        json!({
            "model_type": "qwen2_5_vl", "tie_word_embeddings": false,
            "image_token_id": 590, "video_token_id": 591, "vision_start_token_id": 587,
            "vision_end_token_id": 588,
            "text_config": {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
                "num_attention_heads": 4, "num_key_value_heads": 1, "vocab_size": 600,
                "rms_norm_eps": 1e-6, "hidden_act": "silu", "eos_token_id": [577, 575],
                "rope_parameters": {"rope_type": "default", "mrope_section": [4, 2, 2], "rope_theta": 1000000.0}},
            "vision_config": {"depth": 3, "hidden_size": 32, "num_heads": 2, "intermediate_size": 48,
                "fullatt_block_indexes": [1], "out_hidden_size": 64, "in_channels": 3}
        })
    }

    fn parse(v: &Value) -> Result<Config, ConfigError> {
        Config::from_value(v, Path::new("config.json"))
    }

    #[test]
    fn both_dialects_parse() {
        let a = parse(&tf4()).unwrap();
        assert_eq!(a.text.mrope_section, vec![2, 3, 3]);
        assert_eq!(a.text.head_dim, 16);
        assert!(a.text.tie_word_embeddings);
        assert_eq!(a.tokens.eos_token_ids, vec![577]);
        assert_eq!(a.vision.head_dim(), 16);
        assert_eq!(a.vision.window_merged_cells(), 4);
        let b = parse(&tf5()).unwrap();
        assert_eq!(b.text.mrope_section, vec![4, 2, 2]);
        assert_eq!(b.text.num_key_value_heads, 1);
        assert_eq!(b.text.num_hidden_layers, 3);
        assert!(!b.text.tie_word_embeddings);
        assert_eq!(b.text.rope_theta, 1e6);
        assert_eq!(b.tokens.eos_token_ids, vec![577, 575]);
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = tf4();
        v.as_object_mut().unwrap().remove("vocab_size");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("vocab_size"), "{e}");

        let mut v = tf5();
        v["text_config"]["rope_parameters"]["mrope_section"] = json!([4, 4, 4]);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("mrope_section") && e.contains("head_dim/2 = 8"),
            "{e}"
        );

        let mut v = tf5();
        v["vision_config"]["num_heads"] = json!("two");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("vision_config.num_heads"), "{e}");

        let mut v = tf4();
        v["vision_config"]["fullatt_block_indexes"] = json!([5]);
        let e = parse(&v).unwrap_err().to_string();
        assert!(
            e.contains("fullatt_block_indexes") && e.contains("depth is 2"),
            "{e}"
        );

        let mut v = tf4();
        v.as_object_mut().unwrap().remove("rope_scaling");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("mrope_section"), "{e}");

        let mut v = tf4();
        v["image_token_id"] = json!(10_000);
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("image_token_id") && e.contains("outside"), "{e}");
    }

    #[test]
    fn processor_dialects() {
        let p4 = preprocess_params_from_value(
            &json!({"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "merge_size": 2,
                "temporal_patch_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}),
            Path::new("preprocessor_config.json"),
        )
        .unwrap();
        assert_eq!((p4.min_pixels, p4.max_pixels), (3136, 12845056));
        assert_eq!(p4.image_mean, [0.5; 3]);
        let p5 = preprocess_params_from_value(
            &json!({"image_processor": {"size": {"shortest_edge": 1000, "longest_edge": 50176}}}),
            Path::new("processor_config.json"),
        )
        .unwrap();
        assert_eq!((p5.min_pixels, p5.max_pixels), (1000, 50176));
        assert_eq!(p5.image_std, PreprocessParams::default().image_std);
        let e = preprocess_params_from_value(
            &json!({"min_pixels": 10, "max_pixels": 5}),
            Path::new("preprocessor_config.json"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("min_pixels"), "{e}");
    }
}
