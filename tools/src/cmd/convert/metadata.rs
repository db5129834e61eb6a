//! The metadata llama.cpp's converter writes: `qwen2vl.*` hyperparameters and `tokenizer.*` for the
//! language model, `clip.*` for the vision projector (keys and value types as in
//! `conversion/qwenvl.py`, `base.py` and gguf-py's `vocab.py`).

use std::path::Path;

use anatomy_models::qwen2_5_vl::recipe::Recipe;
use anatomy_models::qwen2_5_vl::{Config, PreprocessParams};
use anatomy_runtime::gguf::OwnedValue;
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

type Meta = Vec<(String, OwnedValue)>;

fn put(m: &mut Meta, k: &str, v: OwnedValue) {
    m.push((k.to_string(), v));
}

fn u32v(x: usize) -> Result<OwnedValue> {
    Ok(OwnedValue::U32(
        u32::try_from(x).context("value exceeds u32")?,
    ))
}

fn general(m: &mut Meta, arch: &str, kind: &str, name: &str, file_type: u32) {
    put(m, "general.architecture", OwnedValue::String(arch.into()));
    put(m, "general.type", OwnedValue::String(kind.into()));
    put(m, "general.name", OwnedValue::String(name.into()));
    put(m, "general.file_type", OwnedValue::U32(file_type));
    put(m, "general.quantization_version", OwnedValue::U32(2));
}

/// `general.size_label` as llama.cpp's converter writes it (gguf-py's
/// `model_weight_count_rounded_notation` of the file's element count, two significant digits at
/// least: "95K", "7.6B"), so file names and model cards built from it read the same.
pub fn size_label(params: u64) -> OwnedValue {
    let p = params as f64;
    let (scaled, suffix) = if p > 1e12 {
        (p * 1e-12, "T")
    } else if p > 1e9 {
        (p * 1e-9, "B")
    } else if p > 1e6 {
        (p * 1e-6, "M")
    } else {
        (p * 1e-3, "K")
    };
    // Python's round() is half-to-even; `lstrip('0')` makes a rounded 0 count as no digits.
    let rounded = scaled.round_ties_even() as u64;
    let digits = if rounded == 0 {
        0
    } else {
        rounded.to_string().len()
    };
    let fix = 2usize.saturating_sub(digits);
    OwnedValue::String(format!("{scaled:.fix$}{suffix}"))
}

/// Metadata of the language-model file.
pub fn language(cfg: &Config, dir: &Path, name: &str, recipe: Recipe) -> Result<Meta> {
    let mut m = language_params(cfg, name, recipe)?;
    tokenizer(&mut m, cfg, dir)?;
    Ok(m)
}

/// The language-model file's `general.*` and `qwen2vl.*` keys, without the tokenizer (for files
/// whose vocabulary comes from elsewhere than an HF directory).
pub fn language_params(cfg: &Config, name: &str, recipe: Recipe) -> Result<Meta> {
    let t = &cfg.text;
    let mut m = Meta::new();
    general(&mut m, "qwen2vl", "model", name, recipe.file_type());
    put(&mut m, "qwen2vl.block_count", u32v(t.num_hidden_layers)?);
    put(
        &mut m,
        "qwen2vl.context_length",
        u32v(t.max_position_embeddings)?,
    );
    put(&mut m, "qwen2vl.embedding_length", u32v(t.hidden_size)?);
    put(
        &mut m,
        "qwen2vl.feed_forward_length",
        u32v(t.intermediate_size)?,
    );
    put(
        &mut m,
        "qwen2vl.attention.head_count",
        u32v(t.num_attention_heads)?,
    );
    put(
        &mut m,
        "qwen2vl.attention.head_count_kv",
        u32v(t.num_key_value_heads)?,
    );
    let mut sections: Vec<i32> = t.mrope_section.iter().map(|&s| s as i32).collect();
    sections.resize(4, 0);
    put(
        &mut m,
        "qwen2vl.rope.dimension_sections",
        OwnedValue::i32s(sections),
    );
    put(
        &mut m,
        "qwen2vl.rope.freq_base",
        OwnedValue::F32(t.rope_theta as f32),
    );
    put(
        &mut m,
        "qwen2vl.attention.layer_norm_rms_epsilon",
        OwnedValue::F32(t.rms_norm_eps as f32),
    );
    Ok(m)
}

/// Metadata of the vision-projector file.
pub fn mmproj(cfg: &Config, pre: &PreprocessParams, name: &str, file_type: u32) -> Result<Meta> {
    let v = &cfg.vision;
    let mut m = Meta::new();
    general(&mut m, "clip", "mmproj", name, file_type);
    put(
        &mut m,
        "clip.projector_type",
        OwnedValue::String("qwen2.5vl_merger".into()),
    );
    put(&mut m, "clip.has_vision_encoder", OwnedValue::Bool(true));
    put(
        &mut m,
        "clip.vision.projection_dim",
        u32v(v.out_hidden_size)?,
    );
    // The HF config has no image size; llama.cpp's converter injects 560 (used for warm-up only).
    put(&mut m, "clip.vision.image_size", OwnedValue::U32(560));
    put(&mut m, "clip.vision.patch_size", u32v(v.patch_size)?);
    put(&mut m, "clip.vision.embedding_length", u32v(v.hidden_size)?);
    put(
        &mut m,
        "clip.vision.feed_forward_length",
        u32v(v.intermediate_size)?,
    );
    put(&mut m, "clip.vision.block_count", u32v(v.depth)?);
    put(
        &mut m,
        "clip.vision.attention.head_count",
        u32v(v.num_heads)?,
    );
    // llama.cpp takes the text model's epsilon for the vision RMSNorms too.
    put(
        &mut m,
        "clip.vision.attention.layer_norm_epsilon",
        OwnedValue::F32(cfg.text.rms_norm_eps as f32),
    );
    put(
        &mut m,
        "clip.vision.image_mean",
        OwnedValue::f32s(pre.image_mean),
    );
    put(
        &mut m,
        "clip.vision.image_std",
        OwnedValue::f32s(pre.image_std),
    );
    // The processor's pixel budget, under gguf-py's standard keys. llama.cpp's converter does not
    // write them for Qwen2.5-VL (its loader fixes 8..4096 image tokens and ignores them); our
    // runtime reads them so that a model trained on small images sees them at the same size.
    put(
        &mut m,
        "clip.vision.image_min_pixels",
        u32v(pre.min_pixels)?,
    );
    put(
        &mut m,
        "clip.vision.image_max_pixels",
        u32v(pre.max_pixels)?,
    );
    put(&mut m, "clip.use_silu", OwnedValue::Bool(true));
    put(
        &mut m,
        "clip.vision.n_wa_pattern",
        u32v(wa_pattern(&v.fullatt_block_indexes)?)?,
    );
    Ok(m)
}

/// Full-attention blocks as llama.cpp encodes them: every n-th block, n = first index + 1; the
/// converter refuses layouts that are not evenly spaced, and so do we.
fn wa_pattern(full: &[usize]) -> Result<usize> {
    let Some(&first) = full.first() else {
        bail!("vision config has no fullatt_block_indexes")
    };
    let n = first + 1;
    for (i, &b) in full.iter().enumerate() {
        if b != n * (i + 1) - 1 {
            bail!("fullatt_block_indexes {full:?} are not evenly spaced by {n}, which llama.cpp's n_wa_pattern cannot express");
        }
    }
    Ok(n)
}

fn read_json(path: &Path) -> Result<Json> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` for a Qwen2 byte-level BPE tokenizer.
fn tokenizer(m: &mut Meta, cfg: &Config, dir: &Path) -> Result<()> {
    let tj = read_json(&dir.join("tokenizer.json"))?;
    let vocab = tj["model"]["vocab"]
        .as_object()
        .context("tokenizer.json: no model.vocab")?;
    let n = cfg.text.vocab_size;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; n];
    let mut place = |id: u64, tok: &str, ty: i32| -> Result<()> {
        let slot = tokens
            .get_mut(id as usize)
            .with_context(|| format!("tokenizer.json: token id {id} >= vocab_size {n}"))?;
        *slot = Some((tok.to_string(), ty));
        Ok(())
    };
    for (tok, id) in vocab {
        place(
            id.as_u64().context("tokenizer.json: non-integer id")?,
            tok,
            1,
        )?;
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        let (id, content) = (
            a["id"].as_u64().context("added token without id")?,
            a["content"]
                .as_str()
                .context("added token without content")?,
        );
        let looks_special = content.starts_with("<|") && content.ends_with("|>");
        let ty = if a["special"].as_bool().unwrap_or(false) || looks_special {
            3
        } else {
            4
        };
        place(id, content, ty)?;
    }
    // Ids the tokenizer does not define are embedding-table padding; llama.cpp names them [PAD{id}].
    let (names, types): (Vec<String>, Vec<i32>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or((format!("[PAD{i}]"), 5)))
        .unzip();
    let merges: Vec<String> = tj["model"]["merges"]
        .as_array()
        .context("tokenizer.json: no model.merges")?
        .iter()
        .map(|v| match v {
            Json::String(s) => Ok(s.clone()),
            Json::Array(p) if p.len() == 2 => Ok(format!(
                "{} {}",
                p[0].as_str().unwrap_or_default(),
                p[1].as_str().unwrap_or_default()
            )),
            other => bail!("tokenizer.json: merge {other} is neither \"a b\" nor [a, b]"),
        })
        .collect::<Result<_>>()?;
    put(m, "tokenizer.ggml.model", OwnedValue::String("gpt2".into()));
    put(m, "tokenizer.ggml.pre", OwnedValue::String("qwen2".into()));
    let id_of = |tok: &str| names.iter().position(|n| n == tok);
    put(
        m,
        "tokenizer.ggml.tokens",
        OwnedValue::strings(names.iter().cloned()),
    );
    put(m, "tokenizer.ggml.token_type", OwnedValue::i32s(types));
    put(m, "tokenizer.ggml.merges", OwnedValue::strings(merges));
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.exists() {
        read_json(&tc_path)?
    } else {
        Json::Null
    };
    let token_str = |v: &Json| {
        v.as_str()
            .map(String::from)
            .or_else(|| v["content"].as_str().map(String::from))
    };
    let eos = cfg.tokens.eos_token_ids.first().copied();
    let pad = token_str(&tc["pad_token"])
        .and_then(|t| id_of(&t))
        .map(|i| i as u32);
    for (key, id) in [
        ("bos", cfg.tokens.bos_token_id),
        ("eos", eos),
        ("padding", pad),
    ] {
        if let Some(id) = id {
            put(
                m,
                &format!("tokenizer.ggml.{key}_token_id"),
                OwnedValue::U32(id),
            );
        }
    }
    put(
        m,
        "tokenizer.ggml.add_bos_token",
        OwnedValue::Bool(tc["add_bos_token"].as_bool().unwrap_or(false)),
    );
    put(
        m,
        "tokenizer.ggml.add_eos_token",
        OwnedValue::Bool(tc["add_eos_token"].as_bool().unwrap_or(false)),
    );
    let template = match tc["chat_template"].as_str() {
        Some(t) => Some(t.to_string()),
        None if dir.join("chat_template.jinja").exists() => {
            Some(std::fs::read_to_string(dir.join("chat_template.jinja"))?)
        }
        None if dir.join("chat_template.json").exists() => {
            read_json(&dir.join("chat_template.json"))?["chat_template"]
                .as_str()
                .map(String::from)
        }
        None => None,
    };
    if let Some(t) = template {
        put(m, "tokenizer.chat_template", OwnedValue::String(t));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_label_matches_gguf_py() {
        // Expected strings from gguf-py's `size_label(n, n, 0, 0)`.
        for (n, want) in [
            (94_784, "95K"),
            (80_480, "80K"),
            (400, "0.40K"),
            (3_754_622_976, "3.8B"),
            (8_292_166_656, "8.3B"),
            (12_345_678, "12M"),
        ] {
            assert_eq!(size_label(n), OwnedValue::String(want.into()), "{n}");
        }
    }
}
