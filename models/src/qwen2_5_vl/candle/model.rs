//! [`Qwen25VL`]: the vision tower and the language model loaded from an HF checkpoint directory,
//! with the glue between them: image embeddings scattered into the `<|image_pad|>` slots, M-RoPE
//! positions from `positions::rope_index`, prefill and cached decoding.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::error::{ModelError, Result};
use super::kv_cache::Cache;
use super::text::{LogitsMode, Positions, TextModel};
use super::vision::VisionTower;
use super::weights::{CheckpointBackend, KeyLayout, SafetensorsIndex};
use crate::qwen2_5_vl::config::Config;
use crate::qwen2_5_vl::positions::{rope_index, GridThw, RopeIndex};

/// Qwen2.5-VL for conditional generation.
#[derive(Debug, Clone)]
pub struct Qwen25VL {
    config: Config,
    vision: VisionTower,
    text: TextModel,
}

impl Qwen25VL {
    /// Loads `dir/config.json` and the safetensors weights of `dir` (either key layout), converting
    /// every tensor to `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = Config::from_file(dir.join("config.json"))?;
        let index = Arc::new(SafetensorsIndex::open(dir)?);
        let layout = index.layout();
        let backend = CheckpointBackend::new(index);
        let failure = backend.failure_slot();
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        Self::from_var_builder(config, vb, layout).map_err(|e| {
            // Prefer the typed error the backend recorded over candle's string copy of it.
            CheckpointBackend::take_failure(&failure).unwrap_or(e)
        })
    }

    /// Builds the model from any `VarBuilder` rooted at the checkpoint's top level, e.g. one over
    /// a `VarMap` for fresh trainable weights.
    pub fn from_var_builder(config: Config, vb: VarBuilder, layout: KeyLayout) -> Result<Self> {
        let vision = VisionTower::new(&config.vision, vb.pp(layout.vision_prefix()))?;
        let text = TextModel::new(&config.text, vb.pp(layout.text_prefix()), vb.pp("lm_head"))?;
        Ok(Qwen25VL {
            config,
            vision,
            text,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn text(&self) -> &TextModel {
        &self.text
    }

    /// The language model, for attaching or merging adapters.
    pub fn text_mut(&mut self) -> &mut TextModel {
        &mut self.text
    }

    pub fn vision(&self) -> &VisionTower {
        &self.vision
    }

    pub fn dtype(&self) -> DType {
        self.text.dtype()
    }

    pub fn device(&self) -> &Device {
        self.text.device()
    }

    pub fn new_cache(&self) -> Cache {
        self.text.new_cache()
    }

    /// Image embeddings `[patches / 4, text_hidden]` in `<|image_pad|>` order.
    pub fn vision_forward(&self, pixel_values: &Tensor, grids: &[GridThw]) -> Result<Tensor> {
        self.vision.forward(pixel_values, grids)
    }

    /// Token embeddings `[1, L, hidden]`.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        Ok(self.text.embed_tokens(ids)?)
    }

    /// Language-model logits for embeddings `[1, L, hidden]` at M-RoPE `positions`, continuing
    /// after the tokens `cache` holds (and appending these).
    pub fn forward_embeds<'p>(
        &self,
        embeds: &Tensor,
        positions: impl Into<Positions<'p>>,
        cache: &mut Cache,
        mode: LogitsMode,
    ) -> Result<Tensor> {
        Ok(self.text.forward(embeds, positions, cache, mode)?)
    }

    /// The prompt's input embeddings `[1, L, hidden]` (image embeddings in the `<|image_pad|>`
    /// slots, in order) and its M-RoPE positions.
    pub fn prompt_embeds(
        &self,
        input_ids: &[u32],
        pixel_values: Option<&Tensor>,
        grids: &[GridThw],
    ) -> Result<(Tensor, RopeIndex)> {
        let image_token = self.config.tokens.image_token_id;
        let rope = rope_index(
            input_ids,
            grids,
            image_token,
            self.config.vision.spatial_merge_size,
        )?;
        let text_embeds = self.embed_tokens(input_ids)?;
        let embeds = match (pixel_values, grids.is_empty()) {
            (_, true) => text_embeds,
            (None, false) => {
                return Err(ModelError::Input(format!(
                    "image grids {grids:?} given without pixel_values"
                )))
            }
            (Some(pixels), false) => {
                let images = self.vision_forward(pixels, grids)?;
                scatter_image_embeds(&text_embeds, &images, input_ids, image_token)?
            }
        };
        Ok((embeds, rope))
    }

    /// Runs the prompt through the model into an empty `cache`. Returns the last position's logits
    /// `[vocab]` and the rope delta: the token at sequence index `i >= L` has position
    /// `i + rope_delta`.
    pub fn prefill(
        &self,
        input_ids: &[u32],
        pixel_values: Option<&Tensor>,
        grids: &[GridThw],
        cache: &mut Cache,
    ) -> Result<(Tensor, i64)> {
        if input_ids.is_empty() {
            return Err(ModelError::Input("empty prompt".into()));
        }
        if !cache.is_empty() {
            return Err(ModelError::Input(format!(
                "prefill needs an empty cache, this one holds {} tokens",
                cache.len()
            )));
        }
        let (embeds, rope) = self.prompt_embeds(input_ids, pixel_values, grids)?;
        let logits = self.forward_embeds(&embeds, &rope.positions, cache, LogitsMode::Last)?;
        Ok((logits.flatten_all()?, rope.rope_delta))
    }

    /// Feeds one token at M-RoPE position `position` (all three components) and returns its
    /// logits `[vocab]`.
    pub fn decode_step(&self, token: u32, position: i64, cache: &mut Cache) -> Result<Tensor> {
        let embeds = self.embed_tokens(&[token])?;
        let logits = self.forward_embeds(&embeds, &[[position; 3]], cache, LogitsMode::Last)?;
        Ok(logits.flatten_all()?)
    }

    /// Greedy decoding of up to `max_new` tokens, stopping after any token in `stop`.
    pub fn generate_greedy(
        &self,
        input_ids: &[u32],
        pixel_values: Option<&Tensor>,
        grids: &[GridThw],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut cache = self.new_cache();
        let (mut logits, delta) = self.prefill(input_ids, pixel_values, grids, &mut cache)?;
        let mut out = Vec::with_capacity(max_new);
        while out.len() < max_new {
            let token = argmax(&logits)?;
            out.push(token);
            if stop.contains(&token) || out.len() == max_new {
                break;
            }
            let position = cache.len() as i64 + delta;
            logits = self.decode_step(token, position, &mut cache)?;
        }
        Ok(out)
    }
}

/// Index of the largest value of a 1-D tensor (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &Tensor) -> Result<u32> {
    let v = logits
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in v.iter().enumerate() {
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i as u32)
        .ok_or_else(|| ModelError::Input("argmax of an empty tensor".into()))
}

/// Replaces the rows of `<|image_pad|>` tokens with the image embeddings, in order. Done as one
/// gather over `[text; images]` so gradients reach both the token and the image embeddings.
fn scatter_image_embeds(
    text: &Tensor,
    images: &Tensor,
    input_ids: &[u32],
    image_token: u32,
) -> Result<Tensor> {
    let l = input_ids.len();
    let n_images = images.dim(0)?;
    let slots = input_ids.iter().filter(|&&t| t == image_token).count();
    if slots != n_images {
        return Err(ModelError::Input(format!(
            "the prompt has {slots} image placeholder tokens but the vision tower produced {n_images} embeddings"
        )));
    }
    let mut next = 0;
    let gather: Vec<u32> = input_ids
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            if t == image_token {
                next += 1;
                (l + next - 1) as u32
            } else {
                i as u32
            }
        })
        .collect();
    let images = images.to_dtype(text.dtype())?;
    let all = Tensor::cat(&[&text.squeeze(0)?, &images], 0)?;
    let gather = Tensor::from_vec(gather, l, text.device())?;
    Ok(all.index_select(&gather, 0)?.unsqueeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scatter_places_images_in_order() {
        let dev = Device::Cpu;
        let text = Tensor::zeros((1, 5, 2), DType::F32, &dev).unwrap();
        let images = Tensor::new(&[[1f32, 1.], [2., 2.]], &dev).unwrap();
        let out = scatter_image_embeds(&text, &images, &[0, 9, 0, 9, 0], 9)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(out, vec![[0., 0.], [1., 1.], [0., 0.], [2., 2.], [0., 0.]]);
        assert!(scatter_image_embeds(&text, &images, &[9, 0, 0, 0, 0], 9).is_err());
    }

    #[test]
    fn argmax_takes_first_maximum() {
        let t = Tensor::new(&[1f32, 3., 3., 2.], &Device::Cpu).unwrap();
        assert_eq!(argmax(&t).unwrap(), 1);
    }
}
