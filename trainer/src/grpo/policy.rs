//! The policy side of GRPO on the candle model: a prompt (with its image) encoded once, G sampled
//! completions that share the prompt's KV cache, and the per-token log-probabilities of given
//! completions recomputed in a differentiable forward for the loss.

use anatomy_models::qwen2_5_vl::candle::ops::compute_dtype;
use anatomy_models::qwen2_5_vl::candle::ModelError;
use anatomy_models::qwen2_5_vl::candle::{Cache, LogitsMode, Qwen25VL};
use anatomy_models::qwen2_5_vl::positions::{rope_index, GridThw};
use anatomy_models::qwen2_5_vl::sampling::Sampler;
use candle_core::{DType, Result, Tensor, D};

/// A prompt ready for the language model: the vision tower has run once, and its embeddings sit
/// in the `<|image_pad|>` slots. Detached when the vision tower and the embeddings are frozen
/// (LoRA), so every forward that follows can reuse them without a graph behind them.
#[derive(Clone, Debug)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// `[1, L, hidden]`.
    pub embeds: Tensor,
    pub positions: Vec<[i64; 3]>,
    /// The completion token at sequence index `i >= L` has position `i + rope_delta`.
    pub rope_delta: i64,
}

impl Prompt {
    pub fn encode(
        model: &Qwen25VL,
        ids: &[u32],
        pixel_values: Option<&Tensor>,
        grids: &[GridThw],
    ) -> anatomy_models::qwen2_5_vl::candle::error::Result<Self> {
        let (embeds, rope) = model.prompt_embeds(ids, pixel_values, grids)?;
        let positions = anatomy_models::qwen2_5_vl::candle::Positions::from(&rope.positions)
            .triples(ids.len())?
            .into_owned();
        Ok(Prompt {
            ids: ids.to_vec(),
            embeds: embeds.detach(),
            positions,
            rope_delta: rope.rope_delta,
        })
    }

    /// Like [`Self::encode`] with image embeddings from an earlier `vision_forward` (one per image,
    /// reused by every question variant asked about it).
    pub fn with_image_embeds(
        model: &Qwen25VL,
        ids: &[u32],
        image_embeds: Option<&Tensor>,
        grids: &[GridThw],
    ) -> anatomy_models::qwen2_5_vl::candle::error::Result<Self> {
        Self::build(model, ids, image_embeds, grids, true)
    }

    /// Like [`Self::with_image_embeds`], but the embeddings keep their graph: under full
    /// fine-tuning the loss reaches the token embeddings of the prompt, and the vision tower when
    /// `image_embeds` came from a tracked `vision_forward`.
    pub fn with_image_embeds_tracked(
        model: &Qwen25VL,
        ids: &[u32],
        image_embeds: Option<&Tensor>,
        grids: &[GridThw],
    ) -> anatomy_models::qwen2_5_vl::candle::error::Result<Self> {
        Self::build(model, ids, image_embeds, grids, false)
    }

    fn build(
        model: &Qwen25VL,
        ids: &[u32],
        image_embeds: Option<&Tensor>,
        grids: &[GridThw],
        detach: bool,
    ) -> anatomy_models::qwen2_5_vl::candle::error::Result<Self> {
        let cfg = model.config();
        let image_token = cfg.tokens.image_token_id;
        let rope = rope_index(ids, grids, image_token, cfg.vision.spatial_merge_size)?;
        let text = model.embed_tokens(ids)?.squeeze(0)?;
        let embeds = match image_embeds {
            None => text,
            Some(images) => {
                let l = ids.len();
                let mut next = l;
                let gather: Vec<u32> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| {
                        if t == image_token {
                            next += 1;
                            (next - 1) as u32
                        } else {
                            i as u32
                        }
                    })
                    .collect();
                if next - l != images.dim(0)? {
                    return Err(ModelError::Input(format!(
                        "{} image slots for {} image embeddings",
                        next - l,
                        images.dim(0)?
                    )));
                }
                let all = Tensor::cat(&[&text, &images.to_dtype(text.dtype())?], 0)?;
                all.index_select(&Tensor::new(gather, text.device())?, 0)?
            }
        };
        let embeds = embeds.unsqueeze(0)?;
        Ok(Prompt {
            ids: ids.to_vec(),
            embeds: if detach { embeds.detach() } else { embeds },
            positions: rope.positions,
            rope_delta: rope.rope_delta,
        })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// M-RoPE position of the `j`-th completion token.
    fn completion_position(&self, j: usize) -> [i64; 3] {
        [(self.len() + j) as i64 + self.rope_delta; 3]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct RolloutConfig {
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// Tokens that end a completion; the stop token is kept as its last token (it is trained on,
    /// so the model learns to stop).
    pub stop: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    /// Ended on a stop token rather than the token budget.
    pub stopped: bool,
}

impl Completion {
    /// The tokens without the trailing stop token, for decoding to text.
    pub fn text_tokens(&self) -> &[u32] {
        match self.stopped {
            true => &self.tokens[..self.tokens.len() - 1],
            false => &self.tokens,
        }
    }
}

/// Samples `n` completions of `prompt`. The prompt runs through the model once; each sample
/// continues from a copy of that cache (copies share the prompt's key/value tensors).
pub fn rollout(
    model: &Qwen25VL,
    prompt: &Prompt,
    n: usize,
    cfg: &RolloutConfig,
    sampler: &mut Sampler,
) -> Result<Vec<Completion>> {
    let mut cache = model.new_cache();
    let first = model
        .text()
        .forward(
            &prompt.embeds,
            &prompt.positions,
            &mut cache,
            LogitsMode::Last,
        )?
        .detach();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(sample_one(
            model,
            prompt,
            &first,
            cache.clone(),
            cfg,
            sampler,
        )?);
    }
    Ok(out)
}

fn sample_one(
    model: &Qwen25VL,
    prompt: &Prompt,
    first: &Tensor,
    mut cache: Cache,
    cfg: &RolloutConfig,
    sampler: &mut Sampler,
) -> Result<Completion> {
    let mut logits = first.clone();
    let mut tokens = Vec::new();
    while tokens.len() < cfg.max_new_tokens {
        let row: Vec<f32> = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let token = sampler.sample(&row);
        tokens.push(token);
        if cfg.stop.contains(&token) {
            return Ok(Completion {
                tokens,
                stopped: true,
            });
        }
        if tokens.len() == cfg.max_new_tokens {
            break;
        }
        let embeds = model.text().embed_tokens(&[token])?;
        let pos = [prompt.completion_position(tokens.len() - 1)];
        logits = model
            .text()
            .forward(&embeds, &pos, &mut cache, LogitsMode::Last)?
            .detach();
    }
    Ok(Completion {
        tokens,
        stopped: false,
    })
}

/// Per-token log-probabilities `[B, T]` (f32 or wider, differentiable in the model's trainable weights) of
/// `completions` after `prompt`, and the `[B, T]` mask of real tokens. Logits are divided by
/// `temperature` before the softmax, as TRL does, so the ratio compares the sampling distributions.
pub fn completion_logps(
    model: &Qwen25VL,
    prompt: &Prompt,
    completions: &[&[u32]],
    temperature: f64,
) -> Result<(Tensor, Tensor)> {
    let b = completions.len();
    let t = completions.iter().map(|c| c.len()).max().unwrap_or(0);
    if b == 0 || t == 0 {
        candle_core::bail!("no completion tokens to score");
    }
    let device = model.device();
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for c in completions {
        ids.extend(c.iter().copied().chain(std::iter::repeat_n(0, t - c.len())));
        mask.extend((0..t).map(|j| if j < c.len() { 1f32 } else { 0.0 }));
    }
    let text = model.text();
    let hidden_size = text.config().hidden_size;
    let completion_embeds = text.embed_tokens(&ids)?.reshape((b, t, hidden_size))?;
    let l = prompt.len();
    let prompt_embeds = prompt
        .embeds
        .to_dtype(completion_embeds.dtype())?
        .broadcast_as((b, l, hidden_size))?;
    let embeds = Tensor::cat(&[&prompt_embeds, &completion_embeds], 1)?;
    let positions: Vec<[i64; 3]> = prompt
        .positions
        .iter()
        .copied()
        .chain((0..t).map(|j| prompt.completion_position(j)))
        .collect();
    let mut cache = model.new_cache();
    let hidden = text.forward_hidden(&embeds, &positions, &mut cache)?;
    // Position i predicts token i + 1: the last prompt position predicts the first completion token.
    let logits = text.logits(&hidden.narrow(1, l - 1, t)?)?;
    // Half-precision logits widen to f32 for the softmax; f64 stays f64 (gradient checks).
    let logits = (logits.to_dtype(compute_dtype(logits.dtype()))? / temperature)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let index = Tensor::from_vec(ids, (b, t, 1), device)?;
    let picked = logp.gather(&index, 2)?.squeeze(2)?;
    let mask = Tensor::from_vec(mask, (b, t), device)?.to_dtype(picked.dtype())?;
    Ok((picked, mask))
}

/// The SFT loss on the answer tokens only: each example's mean negative log-likelihood of
/// `targets[i]` after `prompts[i]`, averaged over the examples. The examples run side by side in
/// one forward, each row padded at its end to the longest (the causal mask keeps the padding out
/// of every real token's view), so a batch costs a few large ops instead of many small ones.
pub fn sft_loss(model: &Qwen25VL, prompts: &[&Prompt], targets: &[&[u32]]) -> Result<Tensor> {
    if prompts.is_empty() || prompts.len() != targets.len() {
        candle_core::bail!(
            "{} prompts and {} targets for the SFT loss",
            prompts.len(),
            targets.len()
        );
    }
    if targets.iter().any(|t| t.is_empty()) {
        candle_core::bail!("an SFT target has no tokens");
    }
    let text = model.text();
    let width = prompts
        .iter()
        .zip(targets)
        .map(|(p, t)| p.len() + t.len())
        .max()
        .unwrap_or(0);
    let b = prompts.len();
    let mut rows = Vec::with_capacity(b);
    let mut positions = Vec::with_capacity(b);
    // Row-major indices into `[b * width]` of the positions that predict a target token, the
    // token each predicts, and its weight 1 / (target length * b).
    let (mut at, mut labels, mut weights) = (vec![], vec![], vec![]);
    for (i, (p, t)) in prompts.iter().zip(targets).enumerate() {
        let l = p.len();
        let pad = width - l - t.len();
        let ids: Vec<u32> = t
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0, pad))
            .collect();
        let tail = text.embed_tokens(&ids)?;
        rows.push(Tensor::cat(&[&p.embeds.to_dtype(tail.dtype())?, &tail], 1)?);
        positions.push(
            p.positions
                .iter()
                .copied()
                .chain((0..width - l).map(|j| p.completion_position(j)))
                .collect::<Vec<_>>(),
        );
        // Position l - 1 + j predicts target token j.
        at.extend((0..t.len()).map(|j| (i * width + l - 1 + j) as u32));
        labels.extend_from_slice(t);
        weights.extend(std::iter::repeat_n(1.0 / (t.len() * b) as f64, t.len()));
    }
    let device = model.device();
    let embeds = Tensor::cat(&rows, 0)?;
    let hidden = text.forward_hidden_rows(&embeds, &positions, &mut model.new_cache())?;
    let hidden = hidden.reshape((b * width, text.config().hidden_size))?;
    let n = at.len();
    let hidden = hidden.index_select(&Tensor::from_vec(at, n, device)?, 0)?;
    let logits = text.logits(&hidden)?;
    let logits = logits.to_dtype(compute_dtype(logits.dtype()))?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = logp
        .gather(&Tensor::from_vec(labels, (n, 1), device)?, 1)?
        .squeeze(1)?;
    let weights = Tensor::from_vec(weights, n, device)?.to_dtype(picked.dtype())?;
    (picked * weights)?.sum_all()?.neg()
}
