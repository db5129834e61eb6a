//! The Qwen2 language model of Qwen2.5-VL: pre-norm decoder layers with biased q/k/v, unbiased
//! o_proj, grouped KV heads, M-RoPE, causal attention and a SwiGLU MLP; final RMSNorm and an LM
//! head that is the embedding matrix when `tie_word_embeddings`.
//!
//! One forward serves prefill, decoding and training: it takes input embeddings and the 3-D
//! positions of the new tokens, attends over whatever the [`Cache`] already holds, and appends to
//! it. Only ops with backward passes are used.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};

use super::adapter::{AdaptedLinear, AdapterControl, LowRank};
use super::kv_cache::Cache;
use super::ops::{apply_rotary, attention, compute_dtype, RmsNorm};
use super::rotary::mrope_tables;
use crate::qwen2_5_vl::config::TextConfig;

/// M-RoPE positions of the tokens being fed: `(t, h, w)` triples, or a `[3, L]` / `[3, 1, L]`
/// integer tensor laid out like HF's `position_ids`.
#[derive(Debug, Clone, Copy)]
pub enum Positions<'a> {
    Triples(&'a [[i64; 3]]),
    Tensor(&'a Tensor),
}

impl<'a> From<&'a [[i64; 3]]> for Positions<'a> {
    fn from(p: &'a [[i64; 3]]) -> Self {
        Positions::Triples(p)
    }
}

impl<'a> From<&'a Vec<[i64; 3]>> for Positions<'a> {
    fn from(p: &'a Vec<[i64; 3]>) -> Self {
        Positions::Triples(p)
    }
}

impl<'a, const N: usize> From<&'a [[i64; 3]; N]> for Positions<'a> {
    fn from(p: &'a [[i64; 3]; N]) -> Self {
        Positions::Triples(p)
    }
}

impl<'a> From<&'a Tensor> for Positions<'a> {
    fn from(t: &'a Tensor) -> Self {
        Positions::Tensor(t)
    }
}

impl Positions<'_> {
    /// The triples, checked to number `len`.
    pub fn triples(&self, len: usize) -> Result<Cow<'_, [[i64; 3]]>> {
        let triples: Cow<'_, [[i64; 3]]> = match self {
            Positions::Triples(p) => Cow::Borrowed(p),
            Positions::Tensor(t) => {
                let t = match t.rank() {
                    2 => (*t).clone(),
                    3 if t.dim(1)? == 1 => t.squeeze(1)?,
                    _ => candle_core::bail!(
                        "position tensor must be [3, L] or [3, 1, L], got {:?}",
                        t.dims()
                    ),
                };
                if t.dim(0)? != 3 {
                    candle_core::bail!("position tensor must be [3, L], got {:?}", t.dims());
                }
                let rows = t.to_dtype(DType::I64)?.to_vec2::<i64>()?;
                let n = rows[0].len();
                Cow::Owned(
                    (0..n)
                        .map(|i| [rows[0][i], rows[1][i], rows[2][i]])
                        .collect(),
                )
            }
        };
        if triples.len() != len {
            candle_core::bail!("{} positions given for {len} tokens", triples.len());
        }
        Ok(triples)
    }
}

/// Which positions to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// `[b, L, vocab]`, for training.
    All,
    /// `[b, 1, vocab]`, for generation.
    Last,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: AdaptedLinear,
    k_proj: AdaptedLinear,
    v_proj: AdaptedLinear,
    o_proj: AdaptedLinear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (heads, kv_heads) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let linear =
            |i, o, bias, name| candle_nn::linear_b(i, o, bias, vb.pp(name)).map(AdaptedLinear::new);
        Ok(SelfAttention {
            q_proj: linear(h, heads * d, true, "q_proj")?,
            k_proj: linear(h, kv_heads * d, true, "k_proj")?,
            v_proj: linear(h, kv_heads * d, true, "v_proj")?,
            o_proj: linear(heads * d, h, false, "o_proj")?,
            heads,
            kv_heads,
            head_dim: d,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut Cache,
        layer: usize,
    ) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let split = |t: Tensor, n: usize| t.reshape((b, l, n, self.head_dim))?.transpose(1, 2);
        let q = split(self.q_proj.forward(x)?, self.heads)?;
        let k = split(self.k_proj.forward(x)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x)?, self.kv_heads)?.contiguous()?;
        // HF multiplies in the activation dtype with cos/sin already cast to it.
        let q = apply_rotary(&q, cos, sin)?;
        let k = apply_rotary(&k, cos, sin)?;
        let (k, v) = cache.append(layer, &k, &v)?;
        let out = attention(&q, &k, &v, mask, 1.0 / (self.head_dim as f64).sqrt())?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, l, self.heads * self.head_dim))?;
        self.o_proj.forward(&out)
    }
}

/// SwiGLU MLP `down(silu(gate(x)) * up(x))`; the vision blocks use it with biases.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    gate_proj: AdaptedLinear,
    up_proj: AdaptedLinear,
    down_proj: AdaptedLinear,
}

impl Mlp {
    pub(crate) fn new(
        hidden: usize,
        intermediate: usize,
        bias: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let linear =
            |i, o, name| candle_nn::linear_b(i, o, bias, vb.pp(name)).map(AdaptedLinear::new);
        Ok(Mlp {
            gate_proj: linear(hidden, intermediate, "gate_proj")?,
            up_proj: linear(hidden, intermediate, "up_proj")?,
            down_proj: linear(intermediate, hidden, "down_proj")?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(x)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: SelfAttention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

/// The language model: embeddings, decoder layers, final norm, LM head.
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    cfg: TextConfig,
    adapters: Arc<AdapterControl>,
}

impl TextModel {
    /// `vb` points at the text model's root (`model` or `model.language_model`), `vb_lm_head` at
    /// `lm_head` (unused when the embeddings are tied).
    pub fn new(cfg: &TextConfig, vb: VarBuilder, vb_lm_head: VarBuilder) -> Result<Self> {
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("embed_tokens"))?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let vb = vb.pp(format!("layers.{i}"));
            let eps = cfg.rms_norm_eps;
            layers.push(DecoderLayer {
                input_layernorm: RmsNorm::new(cfg.hidden_size, eps, vb.pp("input_layernorm"))?,
                self_attn: SelfAttention::new(cfg, vb.pp("self_attn"))?,
                post_attention_layernorm: RmsNorm::new(
                    cfg.hidden_size,
                    eps,
                    vb.pp("post_attention_layernorm"),
                )?,
                mlp: Mlp::new(cfg.hidden_size, cfg.intermediate_size, false, vb.pp("mlp"))?,
            });
        }
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?;
        let lm_head = if cfg.tie_word_embeddings {
            Linear::new(embed_tokens.embeddings().clone(), None)
        } else {
            candle_nn::linear_b(cfg.hidden_size, cfg.vocab_size, false, vb_lm_head)?
        };
        Ok(TextModel {
            embed_tokens,
            layers,
            norm,
            lm_head,
            cfg: cfg.clone(),
            adapters: Arc::new(AdapterControl::default()),
        })
    }

    /// The linear layers adapters can attach to, as `layers.{i}.self_attn.{q,k,v,o}_proj` and
    /// `layers.{i}.mlp.{gate,up,down}_proj` (the checkpoint's names under the text model's root).
    pub fn linear_names(&self) -> Vec<String> {
        (0..self.layers.len())
            .flat_map(|i| {
                LINEAR_SUFFIXES
                    .iter()
                    .map(move |s| format!("layers.{i}.{s}"))
            })
            .collect()
    }

    fn linear_mut(&mut self, name: &str) -> Option<&mut AdaptedLinear> {
        let rest = name.strip_prefix("layers.")?;
        let (i, suffix) = rest.split_once('.')?;
        let layer = self.layers.get_mut(i.parse::<usize>().ok()?)?;
        Some(match suffix {
            "self_attn.q_proj" => &mut layer.self_attn.q_proj,
            "self_attn.k_proj" => &mut layer.self_attn.k_proj,
            "self_attn.v_proj" => &mut layer.self_attn.v_proj,
            "self_attn.o_proj" => &mut layer.self_attn.o_proj,
            "mlp.gate_proj" => &mut layer.mlp.gate_proj,
            "mlp.up_proj" => &mut layer.mlp.up_proj,
            "mlp.down_proj" => &mut layer.mlp.down_proj,
            _ => return None,
        })
    }

    /// `(in, out)` features of a linear layer named as in [`Self::linear_names`].
    pub fn linear_dims(&mut self, name: &str) -> Result<(usize, usize)> {
        match self.linear_mut(name) {
            Some(l) => l.dims(),
            None => candle_core::bail!("the language model has no linear layer {name:?}"),
        }
    }

    /// Attaches (or replaces) the adapter of one linear layer.
    pub fn set_adapter(&mut self, name: &str, lora: LowRank) -> Result<()> {
        let control = self.adapters.clone();
        match self.linear_mut(name) {
            Some(l) => l.set_adapter(lora, control),
            None => candle_core::bail!("the language model has no linear layer {name:?}"),
        }
    }

    /// The switch shared by all adapters (on/off, dropout).
    pub fn adapters(&self) -> &AdapterControl {
        &self.adapters
    }

    /// Folds every adapter into its base weight; the model then runs without adapters.
    pub fn merge_adapters(&mut self) -> Result<()> {
        for name in self.linear_names() {
            if let Some(l) = self.linear_mut(&name) {
                l.merge()?;
            }
        }
        Ok(())
    }

    /// The weight of a linear layer named as in [`Self::linear_names`] (after any merge).
    pub fn linear_weight(&mut self, name: &str) -> Option<Tensor> {
        self.linear_mut(name).map(|l| l.base().weight().clone())
    }

    pub fn config(&self) -> &TextConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.embeddings().dtype()
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.embeddings().device()
    }

    pub fn new_cache(&self) -> Cache {
        Cache::new(self.layers.len())
    }

    /// Token embeddings `[1, L, hidden]`.
    pub fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            );
        }
        let ids = Tensor::new(ids, self.device())?.unsqueeze(0)?;
        self.embed_tokens.forward(&ids)
    }

    /// Hidden states after the final norm, `[b, L, hidden]`, for embeddings `[b, L, hidden]` at
    /// `positions` (one per token, shared by the batch), continuing after what `cache` holds.
    pub fn forward_hidden<'p>(
        &self,
        embeds: &Tensor,
        positions: impl Into<Positions<'p>>,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let l = self.check_embeds(embeds, cache)?;
        let positions = positions.into();
        let (cos, sin) = self.rotary(&positions.triples(l)?)?;
        self.run_layers(embeds, &cos, &sin, cache)
    }

    /// Like [`Self::forward_hidden`] for a batch whose rows have their own positions
    /// (`positions[i]` for row `i`), e.g. different prompts side by side. Rows shorter than `L` are
    /// padded at the end: under the causal mask a real token never sees the padding after it.
    pub fn forward_hidden_rows(
        &self,
        embeds: &Tensor,
        positions: &[Vec<[i64; 3]>],
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let l = self.check_embeds(embeds, cache)?;
        if positions.len() != embeds.dim(0)? {
            candle_core::bail!(
                "{} position rows given for a batch of {}",
                positions.len(),
                embeds.dim(0)?
            );
        }
        let mut cos = Vec::with_capacity(positions.len());
        let mut sin = Vec::with_capacity(positions.len());
        for row in positions {
            let (c, s) = self.rotary(&Positions::Triples(row).triples(l)?)?;
            cos.push(c);
            sin.push(s);
        }
        // [b, 1, L, head_dim]: one table per row, shared by its heads.
        let cos = Tensor::stack(&cos, 0)?.unsqueeze(1)?;
        let sin = Tensor::stack(&sin, 0)?.unsqueeze(1)?;
        self.run_layers(embeds, &cos, &sin, cache)
    }

    /// Checks `embeds` `[b, L, hidden]` against the model and `cache`; returns `L`.
    fn check_embeds(&self, embeds: &Tensor, cache: &Cache) -> Result<usize> {
        let (_, l, h) = embeds.dims3()?;
        if l == 0 {
            candle_core::bail!("no tokens to run the language model on");
        }
        if h != self.cfg.hidden_size {
            candle_core::bail!(
                "input embeddings have width {h}, the model {}",
                self.cfg.hidden_size
            );
        }
        if cache.num_layers() != self.layers.len() {
            candle_core::bail!(
                "cache has {} layers, the model {}",
                cache.num_layers(),
                self.layers.len()
            );
        }
        Ok(l)
    }

    /// M-RoPE cos/sin tables `[L, head_dim]` in the model's dtype.
    fn rotary(&self, positions: &[[i64; 3]]) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = mrope_tables(
            positions,
            self.cfg.head_dim,
            self.cfg.rope_theta,
            &self.cfg.mrope_section,
            self.device(),
        )?;
        Ok((cos.to_dtype(self.dtype())?, sin.to_dtype(self.dtype())?))
    }

    fn run_layers(
        &self,
        embeds: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut Cache,
    ) -> Result<Tensor> {
        let l = embeds.dim(1)?;
        let dtype = self.dtype();
        let past = cache.len();
        let mask = if l > 1 {
            Some(causal_mask(l, past, compute_dtype(dtype), self.device())?)
        } else {
            None
        };
        let mut x = embeds.to_dtype(dtype)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let hsn = layer.input_layernorm.forward(&x)?;
            let attn = layer
                .self_attn
                .forward(&hsn, cos, sin, mask.as_ref(), cache, i)?;
            x = (residual + attn)?;
            let residual = x.clone();
            let hsn = layer.post_attention_layernorm.forward(&x)?;
            x = (residual + layer.mlp.forward(&hsn)?)?;
        }
        cache.advance(l);
        self.norm.forward(&x)
    }

    /// Logits for hidden states from [`Self::forward_hidden`].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Logits `[b, L, vocab]` (or `[b, 1, vocab]` with [`LogitsMode::Last`]).
    pub fn forward<'p>(
        &self,
        embeds: &Tensor,
        positions: impl Into<Positions<'p>>,
        cache: &mut Cache,
        mode: LogitsMode,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(embeds, positions, cache)?;
        let hidden = match mode {
            LogitsMode::All => hidden,
            LogitsMode::Last => {
                let l = hidden.dim(1)?;
                hidden.narrow(1, l - 1, 1)?
            }
        };
        self.logits(&hidden)
    }
}

const LINEAR_SUFFIXES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Additive mask `[l, past + l]`: new token `i` sees cached tokens and new tokens `<= i`.
fn causal_mask(l: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let total = past + l;
    let data: Vec<f32> = (0..l)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(data, (l, total), device)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    pub(crate) fn tiny_config(tie: bool) -> TextConfig {
        TextConfig {
            vocab_size: 50,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            mrope_section: vec![2, 1, 1],
            max_position_embeddings: 512,
            tie_word_embeddings: tie,
        }
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    fn randomised(varmap: &VarMap) {
        for var in varmap.all_vars() {
            let r = Tensor::randn(0f32, 0.5, var.shape(), var.device())
                .unwrap()
                .to_dtype(var.dtype())
                .unwrap();
            var.set(&r).unwrap();
        }
    }

    #[test]
    fn decode_with_cache_equals_full_forward() {
        let dev = Device::Cpu;
        for tie in [false, true] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let cfg = tiny_config(tie);
            let model = TextModel::new(&cfg, vb.pp("model"), vb.pp("lm_head")).unwrap();
            randomised(&varmap);
            let ids = [3u32, 7, 1, 9, 4, 22, 5];
            // Image-like positions in the middle, then text continuing after them.
            let pos: Vec<[i64; 3]> = vec![
                [0, 0, 0],
                [1, 1, 1],
                [2, 2, 2],
                [2, 3, 2],
                [2, 2, 3],
                [4, 4, 4],
                [5, 5, 5],
            ];
            let embeds = model.embed_tokens(&ids).unwrap();
            let mut c = model.new_cache();
            let full = model
                .forward(&embeds, &pos, &mut c, LogitsMode::All)
                .unwrap();
            assert_eq!(full.dims(), &[1, 7, 50]);
            assert_eq!(c.len(), 7);

            let mut c = model.new_cache();
            let pre = model
                .forward(
                    &embeds.narrow(1, 0, 4).unwrap(),
                    &pos[..4],
                    &mut c,
                    LogitsMode::Last,
                )
                .unwrap();
            assert_eq!(pre.dims(), &[1, 1, 50]);
            assert!(max_abs_diff(&pre, &full.narrow(1, 3, 1).unwrap()) < 1e-5);
            for i in 4..7 {
                let step = model
                    .forward(
                        &embeds.narrow(1, i, 1).unwrap(),
                        &pos[i..=i],
                        &mut c,
                        LogitsMode::Last,
                    )
                    .unwrap();
                let d = max_abs_diff(&step, &full.narrow(1, i, 1).unwrap());
                assert!(d < 1e-5, "tie={tie} step {i}: {d}");
            }
        }
    }

    #[test]
    fn rows_with_their_own_positions_equal_one_row_at_a_time() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let model = TextModel::new(&tiny_config(false), vb.pp("model"), vb.pp("lm_head")).unwrap();
        randomised(&varmap);
        let a = (
            [3u32, 7, 1, 9, 4],
            vec![[0, 0, 0], [1, 1, 1], [1, 2, 1], [1, 1, 2], [3, 3, 3]],
        );
        let b = ([8u32, 2, 6], vec![[0, 0, 0], [1, 1, 1], [2, 2, 2]]);
        // Row b padded at the end to a's length, with any ids and positions.
        let pad_ids = [b.0[0], b.0[1], b.0[2], 0, 0];
        let mut pad_pos = b.1.clone();
        pad_pos.extend([[9, 9, 9], [0, 0, 0]]);
        let embeds = Tensor::cat(
            &[
                model.embed_tokens(&a.0).unwrap(),
                model.embed_tokens(&pad_ids).unwrap(),
            ],
            0,
        )
        .unwrap();
        let both = model
            .forward_hidden_rows(&embeds, &[a.1.clone(), pad_pos], &mut model.new_cache())
            .unwrap();
        assert_eq!(both.dims(), &[2, 5, 32]);
        for (row, (ids, pos)) in [(0, (&a.0[..], &a.1)), (1, (&b.0[..], &b.1))] {
            let alone = model
                .forward_hidden(
                    &model.embed_tokens(ids).unwrap(),
                    pos,
                    &mut model.new_cache(),
                )
                .unwrap();
            let batched = both
                .narrow(0, row, 1)
                .unwrap()
                .narrow(1, 0, ids.len())
                .unwrap();
            let d = max_abs_diff(&alone, &batched);
            assert!(d < 1e-5, "row {row}: {d}");
        }
        let wrong =
            model.forward_hidden_rows(&embeds, std::slice::from_ref(&a.1), &mut model.new_cache());
        assert!(wrong.unwrap_err().to_string().contains("1 position rows"));
    }

    #[test]
    fn positions_from_tensor() {
        let dev = Device::Cpu;
        let t = Tensor::new(&[[0u32, 1, 2], [0, 1, 5], [0, 3, 2]], &dev).unwrap();
        let p = Positions::from(&t);
        assert_eq!(p.triples(3).unwrap()[1], [1, 1, 3]);
        assert!(p.triples(2).is_err());
        let t3 = t.unsqueeze(1).unwrap().to_dtype(DType::I64).unwrap();
        assert_eq!(Positions::from(&t3).triples(3).unwrap()[2], [2, 5, 2]);
    }

    #[test]
    fn causal_mask_shape() {
        let m = causal_mask(2, 3, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0., 0., 0., 0., f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.; 5]);
    }
}
