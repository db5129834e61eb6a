//! Tensor names between HF Qwen2.5-VL checkpoints and the two GGUF files llama.cpp's converter
//! writes for them: the language model (`general.architecture = qwen2vl`) and the vision
//! projector (`clip`, `mmproj`). Where the layouts differ (the fused vision qkv, the Conv3d patch
//! kernel), the mapping says how to cut the HF tensor; GGUF follows llama.cpp, code adapts.
//!
//! HF names come in two dialects: transformers 4.x (`model.layers.*`, `visual.*`) and 5.x
//! (`model.language_model.layers.*`, `model.visual.*`); both map to the same GGUF names.

/// Which of the two GGUF files a tensor goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufFileKind {
    /// The language model (`qwen2vl`).
    Language,
    /// The vision projector (`clip`).
    Mmproj,
}

/// How a GGUF tensor is cut from its HF tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slice {
    /// The whole tensor, unchanged (GGUF shape = reversed HF shape).
    Whole,
    /// Part `0..3` (q, k, v) of the fused vision `attn.qkv` along its first (output) dimension.
    QkvPart(usize),
    /// Temporal kernel `0..2` of the Conv3d patch embedding `[out, in, t, h, w]` -> `[out, in, h, w]`.
    TemporalKernel(usize),
}

/// One GGUF tensor and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorName {
    pub file: GgufFileKind,
    pub name: String,
    pub slice: Slice,
}

/// The HF name without the dialect prefixes: `layers.*`, `embed_tokens.*`, `norm.*`, `lm_head.*`
/// for the language model and `visual.*` for the vision tower.
fn canonical(hf: &str) -> &str {
    if let Some(rest) = hf.strip_prefix("model.language_model.") {
        return rest;
    }
    if let Some(rest) = hf.strip_prefix("model.visual.") {
        // Re-rooted below by the caller; keep the `visual.` marker.
        return &hf[hf.len() - rest.len() - "visual.".len()..];
    }
    hf.strip_prefix("model.").unwrap_or(hf)
}

const LM_LAYER: [(&str, &str); 12] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

const VISION_BLOCK: [(&str, &str); 12] = [
    ("attn.proj.weight", "attn_out.weight"),
    ("attn.proj.bias", "attn_out.bias"),
    ("norm1.weight", "ln1.weight"),
    ("norm2.weight", "ln2.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.gate_proj.bias", "ffn_gate.bias"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.up_proj.bias", "ffn_up.bias"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.down_proj.bias", "ffn_down.bias"),
    ("attn.qkv.weight", "attn_{}.weight"),
    ("attn.qkv.bias", "attn_{}.bias"),
];

/// Splits `layers.N.rest` (or `blocks.N.rest`) into `(N, rest)`.
fn layer(s: &str, prefix: &str) -> Option<(usize, String)> {
    let rest = s.strip_prefix(prefix)?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest.to_string()))
}

/// The GGUF tensors made from HF tensor `hf` (three for the fused vision qkv, two for the patch
/// kernel, one otherwise), or `None` for a tensor llama.cpp does not keep.
pub fn hf_to_gguf(hf: &str) -> Option<Vec<GgufTensorName>> {
    let c = canonical(hf);
    let lm = |name: String| {
        Some(vec![GgufTensorName {
            file: GgufFileKind::Language,
            name,
            slice: Slice::Whole,
        }])
    };
    let mm = |name: String, slice| GgufTensorName {
        file: GgufFileKind::Mmproj,
        name,
        slice,
    };
    match c {
        "embed_tokens.weight" => return lm("token_embd.weight".into()),
        "norm.weight" => return lm("output_norm.weight".into()),
        "lm_head.weight" => return lm("output.weight".into()),
        "visual.patch_embed.proj.weight" => {
            return Some(vec![
                mm("v.patch_embd.weight".into(), Slice::TemporalKernel(0)),
                mm("v.patch_embd.weight.1".into(), Slice::TemporalKernel(1)),
            ])
        }
        "visual.merger.ln_q.weight" => {
            return Some(vec![mm("v.post_ln.weight".into(), Slice::Whole)])
        }
        _ => {}
    }
    if let Some(rest) = c.strip_prefix("visual.merger.mlp.") {
        return Some(vec![mm(format!("mm.{rest}"), Slice::Whole)])
            .filter(|_| rest.starts_with("0.") || rest.starts_with("2."));
    }
    if let Some((n, rest)) = layer(c, "layers.") {
        let (_, g) = LM_LAYER.iter().find(|(h, _)| *h == rest)?;
        return lm(format!("blk.{n}.{g}"));
    }
    if let Some((n, rest)) = layer(c, "visual.blocks.") {
        let (_, g) = VISION_BLOCK.iter().find(|(h, _)| *h == rest)?;
        if rest.starts_with("attn.qkv.") {
            return Some(
                ["q", "k", "v"]
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        mm(
                            format!("v.blk.{n}.{}", g.replace("{}", p)),
                            Slice::QkvPart(i),
                        )
                    })
                    .collect(),
            );
        }
        return Some(vec![mm(format!("v.blk.{n}.{g}"), Slice::Whole)]);
    }
    None
}

/// The HF tensor (4.x dialect name) and slice a GGUF tensor of `file` comes from.
pub fn gguf_to_hf(file: GgufFileKind, gguf: &str) -> Option<(String, Slice)> {
    match (file, gguf) {
        (GgufFileKind::Language, "token_embd.weight") => {
            return Some(("model.embed_tokens.weight".into(), Slice::Whole))
        }
        (GgufFileKind::Language, "output_norm.weight") => {
            return Some(("model.norm.weight".into(), Slice::Whole))
        }
        (GgufFileKind::Language, "output.weight") => {
            return Some(("lm_head.weight".into(), Slice::Whole))
        }
        (GgufFileKind::Mmproj, "v.patch_embd.weight") => {
            return Some((
                "visual.patch_embed.proj.weight".into(),
                Slice::TemporalKernel(0),
            ))
        }
        (GgufFileKind::Mmproj, "v.patch_embd.weight.1") => {
            return Some((
                "visual.patch_embed.proj.weight".into(),
                Slice::TemporalKernel(1),
            ))
        }
        (GgufFileKind::Mmproj, "v.post_ln.weight") => {
            return Some(("visual.merger.ln_q.weight".into(), Slice::Whole))
        }
        _ => {}
    }
    match file {
        GgufFileKind::Language => {
            let (n, rest) = layer(gguf, "blk.")?;
            let (h, _) = LM_LAYER.iter().find(|(_, g)| *g == rest)?;
            Some((format!("model.layers.{n}.{h}"), Slice::Whole))
        }
        GgufFileKind::Mmproj => {
            if let Some(rest) = gguf.strip_prefix("mm.") {
                return (rest.starts_with("0.") || rest.starts_with("2."))
                    .then(|| (format!("visual.merger.mlp.{rest}"), Slice::Whole));
            }
            let (n, rest) = layer(gguf, "v.blk.")?;
            for (i, p) in ["q", "k", "v"].iter().enumerate() {
                for suffix in ["weight", "bias"] {
                    if rest == format!("attn_{p}.{suffix}") {
                        return Some((
                            format!("visual.blocks.{n}.attn.qkv.{suffix}"),
                            Slice::QkvPart(i),
                        ));
                    }
                }
            }
            let (h, _) = VISION_BLOCK.iter().find(|(_, g)| *g == rest)?;
            Some((format!("visual.blocks.{n}.{h}"), Slice::Whole))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_dialects_map_and_invert() {
        let cases = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            (
                "model.language_model.embed_tokens.weight",
                "token_embd.weight",
            ),
            ("model.layers.3.self_attn.v_proj.bias", "blk.3.attn_v.bias"),
            (
                "model.language_model.layers.3.mlp.down_proj.weight",
                "blk.3.ffn_down.weight",
            ),
            ("lm_head.weight", "output.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("visual.blocks.1.norm2.weight", "v.blk.1.ln2.weight"),
            (
                "model.visual.blocks.1.attn.proj.bias",
                "v.blk.1.attn_out.bias",
            ),
            ("visual.merger.mlp.2.weight", "mm.2.weight"),
            ("model.visual.merger.ln_q.weight", "v.post_ln.weight"),
        ];
        for (hf, g) in cases {
            let m = hf_to_gguf(hf).unwrap_or_else(|| panic!("{hf} unmapped"));
            assert_eq!(m.len(), 1);
            assert_eq!(m[0].name, g);
            let (back, slice) = gguf_to_hf(m[0].file, g).unwrap();
            assert_eq!(slice, Slice::Whole);
            assert_eq!(hf_to_gguf(&back).unwrap()[0].name, g);
        }
        let qkv = hf_to_gguf("visual.blocks.0.attn.qkv.weight").unwrap();
        let names: Vec<_> = qkv.iter().map(|t| (t.name.as_str(), t.slice)).collect();
        assert_eq!(
            names,
            [
                ("v.blk.0.attn_q.weight", Slice::QkvPart(0)),
                ("v.blk.0.attn_k.weight", Slice::QkvPart(1)),
                ("v.blk.0.attn_v.weight", Slice::QkvPart(2))
            ]
        );
        assert_eq!(
            gguf_to_hf(GgufFileKind::Mmproj, "v.blk.0.attn_k.bias"),
            Some(("visual.blocks.0.attn.qkv.bias".into(), Slice::QkvPart(1)))
        );
        assert_eq!(
            hf_to_gguf("visual.patch_embed.proj.weight").unwrap()[1].name,
            "v.patch_embd.weight.1"
        );
        assert_eq!(hf_to_gguf("model.rotary_emb.inv_freq"), None);
        assert_eq!(hf_to_gguf("visual.merger.mlp.1.weight"), None);
    }
}
