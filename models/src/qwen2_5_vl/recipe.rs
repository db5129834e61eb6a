//! Per-tensor storage types of the quantization recipes `f32`, `f16`, `q8_0` (what llama.cpp's
//! converter writes for `--outtype`) and `q4_k_m`, `q5_k_m` (what `llama-quantize` then picks,
//! after `llama_tensor_get_type_impl` and its shape fallbacks in llama-quant.cpp). Types are named
//! here by ggml's names so this crate needs no dependency on the runtime.

use super::names::GgufFileKind;

/// A quantization recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipe {
    F32,
    F16,
    Q8_0,
    Q4KM,
    Q5KM,
}

/// The storage types the recipes use.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreType {
    F32,
    F16,
    Q8_0,
    Q5_0,
    Q5_1,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl StoreType {
    /// ggml's type name, e.g. `q4_K`.
    pub fn ggml_name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q4_K => "q4_K",
            Self::Q5_K => "q5_K",
            Self::Q6_K => "q6_K",
        }
    }

    fn block(self) -> u64 {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q8_0 | Self::Q5_0 | Self::Q5_1 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => 256,
        }
    }
}

impl Recipe {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "f32" => Self::F32,
            "f16" => Self::F16,
            "q8_0" => Self::Q8_0,
            "q4_k_m" => Self::Q4KM,
            "q5_k_m" => Self::Q5KM,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
            Self::Q4KM => "q4_k_m",
            Self::Q5KM => "q5_k_m",
        }
    }

    /// llama.cpp's `general.file_type` (LlamaFileType) for the language-model file.
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
            Self::Q4KM => 15,
            Self::Q5KM => 17,
        }
    }

    /// The type of GGUF tensor `name` with ggml shape `shape` in `file`. `n_layers` is the number
    /// of language-model blocks; `tied` says the model has no `output.weight`.
    pub fn tensor_type(
        self,
        file: GgufFileKind,
        name: &str,
        shape: &[u64],
        n_layers: usize,
        tied: bool,
    ) -> StoreType {
        let ne0 = shape.first().copied().unwrap_or(1);
        // The converter keeps 1-D tensors, norms and everything not named `*.weight` in F32.
        let is_patch = name.starts_with("v.patch_embd.weight");
        if shape.len() <= 1
            || name.ends_with("_norm.weight")
            || !(name.ends_with(".weight") || is_patch)
        {
            return StoreType::F32;
        }
        let converter = |out: StoreType| match out {
            StoreType::Q8_0 if is_patch => StoreType::F32,
            t if !ne0.is_multiple_of(t.block()) => StoreType::F16,
            t => t,
        };
        match (self, file) {
            (Self::F32, _) => StoreType::F32,
            (Self::F16, _) => StoreType::F16,
            (Self::Q8_0, _) => converter(StoreType::Q8_0),
            // llama-quantize is not run on projectors; the k-quant recipes ship them in F16, as
            // the published Qwen2.5-VL GGUFs do.
            (Self::Q4KM | Self::Q5KM, GgufFileKind::Mmproj) => StoreType::F16,
            (Self::Q4KM | Self::Q5KM, GgufFileKind::Language) => {
                fallback(self.k_type(name, ne0, n_layers, tied), ne0)
            }
        }
    }

    /// `llama_tensor_get_type_impl` for the categories Qwen2.5-VL has.
    fn k_type(self, name: &str, ne0: u64, n_layers: usize, tied: bool) -> StoreType {
        let default = if self == Self::Q4KM {
            StoreType::Q4_K
        } else {
            StoreType::Q5_K
        };
        if name == "output.weight" || (tied && name == "token_embd.weight") {
            return if !ne0.is_multiple_of(default.block()) {
                StoreType::Q8_0
            } else {
                StoreType::Q6_K
            };
        }
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(i) = layer {
            if name.contains("attn_qkv.weight") {
                return if self == Self::Q4KM {
                    StoreType::Q5_K
                } else {
                    StoreType::Q6_K
                };
            }
            if (name.contains("attn_v.weight") || name.contains("ffn_down"))
                && use_more_bits(i, n_layers)
            {
                return StoreType::Q6_K;
            }
        }
        default
    }
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers and every third between.
pub fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// `tensor_type_fallback`: rows not divisible by the block size take the next 32-block type, and
/// F16 when even that does not fit.
fn fallback(t: StoreType, ne0: u64) -> StoreType {
    if ne0.is_multiple_of(t.block()) {
        return t;
    }
    let next = match t {
        StoreType::Q4_K => StoreType::Q5_0,
        StoreType::Q5_K => StoreType::Q5_1,
        StoreType::Q6_K => StoreType::Q8_0,
        other => other,
    };
    if !ne0.is_multiple_of(next.block()) {
        StoreType::F16
    } else {
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GgufFileKind::*;

    #[test]
    fn q4_k_m_matches_llama_quantize_on_the_7b_layout() {
        let r = Recipe::Q4KM;
        let more: Vec<usize> = (0..28).filter(|&i| use_more_bits(i, 28)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
        assert_eq!(
            r.tensor_type(Language, "blk.5.attn_v.weight", &[3584, 512], 28, false),
            StoreType::Q6_K
        );
        assert_eq!(
            r.tensor_type(Language, "blk.6.attn_v.weight", &[3584, 512], 28, false),
            StoreType::Q4_K
        );
        assert_eq!(
            r.tensor_type(Language, "blk.8.ffn_down.weight", &[18944, 3584], 28, false),
            StoreType::Q6_K
        );
        assert_eq!(
            r.tensor_type(Language, "blk.8.ffn_up.weight", &[3584, 18944], 28, false),
            StoreType::Q4_K
        );
        assert_eq!(
            r.tensor_type(Language, "output.weight", &[3584, 152064], 28, false),
            StoreType::Q6_K
        );
        assert_eq!(
            r.tensor_type(Language, "token_embd.weight", &[3584, 152064], 28, false),
            StoreType::Q4_K
        );
        assert_eq!(
            r.tensor_type(Language, "token_embd.weight", &[2048, 151936], 36, true),
            StoreType::Q6_K
        );
        assert_eq!(
            r.tensor_type(Language, "blk.0.attn_norm.weight", &[3584], 28, false),
            StoreType::F32
        );
        assert_eq!(
            r.tensor_type(Language, "blk.0.attn_q.bias", &[3584], 28, false),
            StoreType::F32
        );
        assert_eq!(
            Recipe::Q5KM.tensor_type(Language, "blk.9.attn_q.weight", &[3584, 3584], 28, false),
            StoreType::Q5_K
        );
    }

    #[test]
    fn fallbacks_and_converter_rules() {
        let r = Recipe::Q4KM;
        assert_eq!(
            r.tensor_type(Language, "blk.0.attn_q.weight", &[64, 64], 2, true),
            StoreType::Q5_0
        );
        assert_eq!(
            Recipe::Q5KM.tensor_type(Language, "blk.1.attn_q.weight", &[64, 64], 2, true),
            StoreType::Q5_1
        );
        assert_eq!(
            r.tensor_type(Language, "blk.1.ffn_down.weight", &[96, 64], 2, true),
            StoreType::Q8_0
        );
        assert_eq!(
            r.tensor_type(Language, "token_embd.weight", &[64, 512], 2, true),
            StoreType::Q8_0
        );
        assert_eq!(
            r.tensor_type(Language, "blk.0.ffn_up.weight", &[48, 64], 2, true),
            StoreType::F16
        );
        assert_eq!(
            Recipe::Q8_0.tensor_type(Mmproj, "v.blk.0.ffn_down.weight", &[3420, 1280], 2, true),
            StoreType::F16
        );
        assert_eq!(
            Recipe::Q8_0.tensor_type(Mmproj, "v.patch_embd.weight", &[14, 14, 3, 1280], 2, true),
            StoreType::F32
        );
        assert_eq!(
            Recipe::F16.tensor_type(Mmproj, "v.patch_embd.weight.1", &[14, 14, 3, 1280], 2, true),
            StoreType::F16
        );
        assert_eq!(
            r.tensor_type(Mmproj, "mm.0.weight", &[5120, 5120], 2, true),
            StoreType::F16
        );
        assert_eq!(
            Recipe::F16.tensor_type(Mmproj, "mm.0.bias", &[5120], 2, true),
            StoreType::F32
        );
    }
}
