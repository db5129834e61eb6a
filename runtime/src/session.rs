//! The library API: a [`Model`] (the two files, weights, tokenizer; read-only, shared across
//! threads) and a [`Session`] per conversation (KV cache, activations, a cache of encoded images
//! keyed by their content, so a second question about the same frame skips the vision tower).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anatomy_models::qwen2_5_vl::positions::{rope_index, GridThw};
use anatomy_models::qwen2_5_vl::preprocess::{PreprocessParams, ProcessedImage};
use anatomy_models::qwen2_5_vl::template::{END_OF_TEXT, IMAGE_PAD, IM_END};

use crate::backend::{Backend, CacheType, CpuBackend};
use crate::error::RuntimeError;
use crate::generate::PromptFormat;
use crate::gguf::qwen2vl::{LmParams, MmprojParams};
use crate::gguf::{GgufFile, Residence};
use crate::model::text::ALL_LOGITS_ROWS;
use crate::model::weights::{LmWeights, VisionWeights};
use crate::model::{TextModel, TextState, VisionModel, VisionScratch};
use crate::tokenizer::Tokenizer;

/// Context used when none is asked for (the files allow 128k; the KV cache is allocated whole).
pub const DEFAULT_CONTEXT: usize = 4096;
/// Tokens per prefill chunk: large enough for matrix-matrix efficiency, small enough to bound
/// the activation buffers.
pub const DEFAULT_CHUNK: usize = 256;
/// Encoded images a session keeps.
const IMAGE_CACHE: usize = 4;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct ModelOptions {
    /// Worker threads; physical cores when `None`.
    pub threads: Option<usize>,
    /// KV-cache length; `min(file's context, DEFAULT_CONTEXT)` when `None`.
    pub context: Option<usize>,
    /// What the KV cache stores: f32 (the default, exact) or f16 (half the memory).
    pub cache_type: CacheType,
    /// Largest image, in merged vision tokens (overrides the processor's `max_pixels`).
    pub max_image_tokens: Option<usize>,
    /// Processor pixel bounds (overriding the file's or the defaults).
    pub min_pixels: Option<usize>,
    pub max_pixels: Option<usize>,
    /// Where both files' bytes live: mapped (the default, zero copy) or read into memory of the
    /// process's own on huge pages (`--no-mmap`).
    pub residence: Residence,
}

/// Ids of the tokens the template and generation need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    pub image_pad: u32,
    pub im_end: u32,
    pub end_of_text: u32,
    /// Generation stops on any of these.
    pub stops: Vec<u32>,
}

/// A loaded model: language model, optional vision projector, tokenizer, on a backend.
pub struct Model<B: Backend = CpuBackend> {
    backend: B,
    text: TextModel<B>,
    vision: Option<VisionModel<B>>,
    tokenizer: Tokenizer,
    preprocess: PreprocessParams,
    special: SpecialTokens,
    context: usize,
    cache_type: CacheType,
    load_ms: f64,
    lm_bytes: u64,
    prompt: PromptFormat,
}

impl Model<CpuBackend> {
    /// Loads `lm` (and the projector `mmproj`) on the CPU backend.
    pub fn load(
        lm: impl AsRef<Path>,
        mmproj: Option<&Path>,
        opts: &ModelOptions,
    ) -> Result<Self, RuntimeError> {
        let backend = CpuBackend::new(opts.threads)?;
        Self::load_on(backend, lm, mmproj, opts)
    }
}

impl<B: Backend> Model<B> {
    /// Maps and checks both files, builds weight handles on `backend` and the tokenizer.
    pub fn load_on(
        backend: B,
        lm: impl AsRef<Path>,
        mmproj: Option<&Path>,
        opts: &ModelOptions,
    ) -> Result<Self, RuntimeError> {
        let t0 = Instant::now();
        let lm_file = Arc::new(GgufFile::open_with(lm.as_ref(), opts.residence)?);
        let lp = LmParams::from_gguf(&lm_file)?;
        let tokenizer = Tokenizer::from_gguf(&lm_file)?;
        let head_dim = lp.embedding_length / lp.head_count;
        if head_dim > crate::backend::cpu::MAX_HEAD_DIM || head_dim % 2 != 0 {
            return Err(RuntimeError::Unsupported {
                path: lm_file.path().into(),
                reason: format!("head size {head_dim} (even, at most 256 supported)"),
            });
        }
        let lw = LmWeights::load(&backend, &lm_file, &lp)?;
        let path = lm_file.path().to_string();
        let sections = lp.rope_sections.clone();
        let text = TextModel::new(lw, lp).ok_or_else(|| RuntimeError::Unsupported {
            path,
            reason: format!(
                "rope sections {sections:?} do not cover head_dim/2 = {}",
                head_dim / 2
            ),
        })?;
        let id = |t: &'static str| {
            tokenizer
                .token_id(t)
                .ok_or(crate::tokenizer::TokenizerError::MissingToken(t))
        };
        let mut special = SpecialTokens {
            image_pad: id(IMAGE_PAD)?,
            im_end: id(IM_END)?,
            end_of_text: id(END_OF_TEXT)?,
            stops: Vec::new(),
        };
        special.stops = vec![special.im_end, special.end_of_text];
        if let Some(e) = tokenizer.eos_id.filter(|e| !special.stops.contains(e)) {
            special.stops.push(e);
        }

        let mut preprocess = PreprocessParams::default();
        let vision = match mmproj {
            None => None,
            Some(p) => {
                let f = Arc::new(GgufFile::open_with(p, opts.residence)?);
                let vp = MmprojParams::from_gguf(&f)?;
                if vp.projection_dim != text.p.embedding_length {
                    return Err(RuntimeError::Mismatch(format!(
                        "{} projects to {} dimensions but {} embeds in {}",
                        f.path(),
                        vp.projection_dim,
                        lm_file.path(),
                        text.p.embedding_length
                    )));
                }
                let vhd = vp.embedding_length / vp.head_count;
                if vhd > crate::backend::cpu::MAX_HEAD_DIM || vhd % 4 != 0 {
                    return Err(RuntimeError::Unsupported {
                        path: f.path().into(),
                        reason: format!("vision head size {vhd}"),
                    });
                }
                preprocess.patch_size = vp.patch_size;
                preprocess.merge_size = vp.spatial_merge_size;
                for c in 0..3 {
                    preprocess.image_mean[c] = vp.image_mean[c];
                    preprocess.image_std[c] = vp.image_std[c];
                }
                let px = |k: &str| f.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
                if let Some(v) = px("clip.vision.image_min_pixels") {
                    preprocess.min_pixels = v;
                }
                if let Some(v) = px("clip.vision.image_max_pixels") {
                    preprocess.max_pixels = v;
                }
                let w = VisionWeights::load(&backend, &f, &vp)?;
                Some(VisionModel { w, p: vp })
            }
        };
        if let Some(v) = opts.min_pixels {
            preprocess.min_pixels = v;
        }
        if let Some(v) = opts.max_pixels {
            preprocess.max_pixels = v;
        }
        if let Some(t) = opts.max_image_tokens {
            if t < 4 {
                return Err(RuntimeError::ImageTokens(t));
            }
            let unit = preprocess.patch_size * preprocess.merge_size;
            preprocess.max_pixels = t * unit * unit;
            preprocess.min_pixels = preprocess.min_pixels.min(preprocess.max_pixels);
        }
        let context = opts
            .context
            .unwrap_or(DEFAULT_CONTEXT)
            .min(text.p.context_length)
            .max(1);
        Ok(Self {
            prompt: PromptFormat::from_gguf(&lm_file),
            lm_bytes: lm_file.file_size(),
            backend,
            text,
            vision,
            tokenizer,
            preprocess,
            special,
            context,
            cache_type: opts.cache_type,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn preprocess_params(&self) -> &PreprocessParams {
        &self.preprocess
    }

    pub fn context(&self) -> usize {
        self.context
    }

    /// What each session's KV cache stores.
    pub fn cache_type(&self) -> CacheType {
        self.cache_type
    }

    /// Bytes of one session's KV cache: keys and values of every layer for the whole context.
    pub fn cache_bytes(&self) -> u64 {
        let (layers, kv) = (self.text.p.block_count as u64, self.text.kv_dim() as u64);
        2 * layers * self.context as u64 * kv * self.cache_type.bytes() as u64
    }

    pub fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    /// The multiple-choice prompt layout the model was trained on (or the default).
    pub fn prompt_format(&self) -> &PromptFormat {
        &self.prompt
    }

    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    pub fn lm_params(&self) -> &LmParams {
        &self.text.p
    }

    /// Size of the language-model file (the weight bytes a decoded token reads, roughly).
    pub fn lm_file_bytes(&self) -> u64 {
        self.lm_bytes
    }

    /// A new conversation with its own KV cache and buffers.
    pub fn session(&self) -> Session<'_, B> {
        Session {
            model: self,
            state: self
                .text
                .state(&self.backend, self.context, DEFAULT_CHUNK, self.cache_type),
            vision: None,
            images: Vec::new(),
            logits: vec![0.0; self.text.p.vocab_size],
            positions: Vec::with_capacity(DEFAULT_CHUNK),
            tokens: Vec::with_capacity(self.context),
            context_image: None,
            rope_delta: 0,
            run: Vec::with_capacity(ALL_LOGITS_ROWS),
            taken: 0,
        }
    }
}

/// An encoded image kept by a session.
struct CachedImage<B: Backend> {
    key: u64,
    grid: GridThw,
    tokens: usize,
    embeddings: B::Buffer,
}

/// One conversation: the KV cache, activations and image cache, all allocated up front (the
/// vision buffers on the first image and when a larger one arrives).
pub struct Session<'m, B: Backend = CpuBackend> {
    pub(crate) model: &'m Model<B>,
    state: TextState<B>,
    vision: Option<VisionScratch<B>>,
    /// Most recently used last.
    images: Vec<CachedImage<B>>,
    logits: Vec<f32>,
    positions: Vec<[i64; 3]>,
    tokens: Vec<u32>,
    /// The key of the image whose embeddings the context holds, if any.
    context_image: Option<u64>,
    rope_delta: i64,
    /// The tokens of [`Self::advance`]'s last pass (the chosen token, then its draft; empty when
    /// none is ahead), of which the first `taken` are in `tokens`. The rest are ahead: their keys
    /// and values follow `tokens` in the cache (whose length is `tokens.len() + run.len() -
    /// taken`), and row `taken` of the text state's `all_logits` holds the logits after the first
    /// of them. Kept from step to step, so that decoding allocates nothing per token.
    run: Vec<u32>,
    taken: usize,
}

/// A prepared image: the index of its encoding in the session's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHandle {
    key: u64,
    pub grid: GridThw,
    pub tokens: usize,
    /// Whether the vision tower was skipped because the session had encoded this image before.
    pub cached: bool,
}

impl<'m, B: Backend> Session<'m, B> {
    pub fn model(&self) -> &'m Model<B> {
        self.model
    }

    /// Tokens in the context so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Logits after the last token run, `[vocab]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// Forgets the conversation (the image cache stays), so the next [`Self::prefill`] runs every
    /// token of its prompt.
    pub fn reset(&mut self) {
        self.drop_ahead();
        self.state.len = 0;
        self.tokens.clear();
        self.context_image = None;
        self.rope_delta = 0;
    }

    /// Encodes a preprocessed image with the vision tower, or finds it in the cache.
    pub fn encode_image(&mut self, img: &ProcessedImage) -> Result<ImageHandle, RuntimeError> {
        let m = self.model;
        let vision = m.vision.as_ref().ok_or(RuntimeError::NoProjector)?;
        let merge = vision.merge();
        let mut h = DefaultHasher::new();
        img.grid_thw.hash(&mut h);
        for v in &img.pixel_values {
            v.to_bits().hash(&mut h);
        }
        let key = h.finish();
        let tokens = img.image_tokens(merge);
        if let Some(i) = self.images.iter().position(|c| c.key == key) {
            let c = self.images.remove(i);
            let handle = ImageHandle {
                key,
                grid: c.grid,
                tokens: c.tokens,
                cached: true,
            };
            self.images.push(c);
            return Ok(handle);
        }
        let expected = 3 * 2 * vision.p.patch_size * vision.p.patch_size;
        let [t, gh, gw] = img.grid_thw;
        if img.patch_dim != expected
            || img.pixel_values.len() != t * gh * gw * expected
            || gh % merge != 0
            || gw % merge != 0
        {
            return Err(RuntimeError::Mismatch(format!(
                "the image was preprocessed for {}-value patches on grid {:?}; the projector takes {expected}-value patches in {merge}x{merge} blocks",
                img.patch_dim, img.grid_thw
            )));
        }
        let mut out = m.backend.alloc(tokens * vision.out_dim());
        let scratch = &mut self.vision;
        m.backend.scope(|| {
            vision.encode(
                &m.backend,
                scratch,
                &img.pixel_values,
                img.grid_thw,
                &mut out,
            )
        })?;
        if self.images.len() == IMAGE_CACHE {
            self.images.remove(0);
        }
        self.images.push(CachedImage {
            key,
            grid: img.grid_thw,
            tokens,
            embeddings: out,
        });
        Ok(ImageHandle {
            key,
            grid: img.grid_thw,
            tokens,
            cached: false,
        })
    }

    /// The merged image embeddings of an encoded image, `[tokens, hidden]` (a host copy).
    pub fn image_embeddings(&self, image: &ImageHandle) -> Option<Vec<f32>> {
        let c = self.images.iter().find(|c| c.key == image.key)?;
        let mut v = vec![0.0; self.model.backend.len(&c.embeddings)];
        self.model.backend.read(&c.embeddings, 0, &mut v);
        Some(v)
    }

    /// Starts the conversation over with `ids` (holding `image.tokens` `<|image_pad|>` tokens when
    /// an image is given) and runs them; the logits of the last one are then in [`Self::logits`].
    /// Returns how many leading tokens were reused instead of run.
    ///
    /// The context's longest common prefix with `ids` is kept, as llama.cpp's server does with
    /// `cache_prompt`: a second question about one frame runs only the tokens after the frame,
    /// since the system prompt and the image's hundreds of tokens come first. With another image
    /// (or none) only the part before the image placeholders is kept. The last token always runs,
    /// for its logits. The kept positions' keys and values came from the products of the earlier
    /// prompt, whose rows may have taken another kernel than a fresh run of `ids` would (the
    /// quantized dots below a few dozen rows, the many-row kernels above), so logits can differ
    /// from a fresh session's in the last bits; [`Self::reset`] first for a fresh run.
    pub fn prefill(
        &mut self,
        ids: &[u32],
        image: Option<&ImageHandle>,
    ) -> Result<usize, RuntimeError> {
        let m = self.model;
        let grids: Vec<GridThw> = image.map(|i| i.grid).into_iter().collect();
        let merge = m.preprocess.merge_size;
        let ri = rope_index(ids, &grids, m.special.image_pad, merge)?;
        if ids.is_empty() || ids.len() > self.state.ctx {
            return Err(RuntimeError::ContextOverflow {
                needed: ids.len().max(1),
                context: self.state.ctx,
            });
        }
        let cached =
            match image {
                Some(h) => Some(self.images.iter().position(|c| c.key == h.key).ok_or_else(
                    || RuntimeError::Mismatch("the image is no longer in the session".into()),
                )?),
                None => None,
            };
        let key = image.map(|h| h.key);
        let common = self
            .tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count();
        // Another image (or none) leaves only the part before its placeholders, whose positions
        // and values do not depend on it.
        let common = if self.context_image == key {
            common
        } else {
            let pad = m.special.image_pad;
            ids[..common]
                .iter()
                .position(|&t| t == pad)
                .unwrap_or(common)
        };
        let keep = common.min(ids.len() - 1);
        self.drop_ahead();
        self.tokens.truncate(keep);
        self.state.len = keep;
        self.context_image = key;
        self.rope_delta = ri.rope_delta;
        let ran = self.run_prompt(ids, keep, &ri.positions, cached);
        if ran.is_err() {
            // The cache may hold part of the prompt that `tokens` does not name.
            self.reset();
        }
        ran?;
        self.tokens.extend_from_slice(&ids[keep..]);
        m.backend.read(&self.state.logits, 0, &mut self.logits);
        Ok(keep)
    }

    /// Runs `ids[keep..]` in chunks after the `keep` positions the cache holds, copying the
    /// cached image's embeddings (`cached`, an index into the session's images) over its
    /// placeholders.
    fn run_prompt(
        &mut self,
        ids: &[u32],
        keep: usize,
        positions: &[[i64; 3]],
        cached: Option<usize>,
    ) -> Result<(), RuntimeError> {
        let m = self.model;
        let e = m.text.p.embedding_length;
        // Placeholders before `keep` were filled by the earlier run.
        let mut image_row = ids[..keep]
            .iter()
            .filter(|&&t| t == m.special.image_pad)
            .count();
        for start in (keep..ids.len()).step_by(self.state.chunk) {
            let end = (start + self.state.chunk).min(ids.len());
            let chunk = &ids[start..end];
            m.text.embed(&m.backend, &mut self.state, chunk)?;
            if let Some(ci) = cached {
                let emb = &self.images[ci].embeddings;
                // Placeholders of one image are contiguous; copy each run in this chunk.
                let mut i = 0;
                while i < chunk.len() {
                    if chunk[i] != m.special.image_pad {
                        i += 1;
                        continue;
                    }
                    let run = chunk[i..]
                        .iter()
                        .take_while(|&&t| t == m.special.image_pad)
                        .count();
                    m.backend
                        .copy_rows(emb, image_row, &mut self.state.x, i, run, e);
                    image_row += run;
                    i += run;
                }
            }
            let (state, positions) = (&mut self.state, &positions[start..end]);
            m.backend
                .scope(|| m.text.forward(&m.backend, state, positions))?;
        }
        Ok(())
    }

    /// Runs `ids` after the context (text tokens only), leaving the last one's logits.
    pub fn append(&mut self, ids: &[u32]) -> Result<(), RuntimeError> {
        let m = self.model;
        self.drop_ahead();
        if self.tokens.len() + ids.len() > self.state.ctx {
            return Err(RuntimeError::ContextOverflow {
                needed: self.tokens.len() + ids.len(),
                context: self.state.ctx,
            });
        }
        for chunk in ids.chunks(self.state.chunk) {
            self.positions.clear();
            let base = self.tokens.len() as i64 + self.rope_delta;
            self.positions
                .extend((0..chunk.len() as i64).map(|i| [base + i; 3]));
            m.text.embed(&m.backend, &mut self.state, chunk)?;
            let (state, positions) = (&mut self.state, &self.positions);
            m.backend
                .scope(|| m.text.forward(&m.backend, state, positions))?;
            self.tokens.extend_from_slice(chunk);
        }
        if !ids.is_empty() {
            m.backend.read(&self.state.logits, 0, &mut self.logits);
        }
        Ok(())
    }

    /// [`Self::append`] of one token, with prompt-lookup decoding when `lookup > 0`: tokens
    /// drafted from earlier text of the context ([`crate::lookup::draft`], at most `lookup`)
    /// run after `next` in the same forward pass, so that when the next tokens chosen are the
    /// drafted ones, their logits are already there. Returns whether `next` was such a token,
    /// checked by an earlier call (nothing ran now).
    ///
    /// The logits are those `append` gives: each row of the pass takes the same kernels as a
    /// one-token forward (fewer rows than any switch to the many-row kernels), and a token is
    /// taken from the draft only when it is the one chosen from the true logits, so sampling,
    /// seeds and outputs are unchanged. A drafted token not chosen costs its row of the pass,
    /// and its keys and values are dropped.
    pub fn advance(&mut self, next: u32, lookup: usize) -> Result<bool, RuntimeError> {
        let m = self.model;
        if self.run.get(self.taken) == Some(&next) {
            self.tokens.push(next);
            let vocab = self.logits.len();
            if let Some(all) = &self.state.all_logits {
                m.backend.read(all, self.taken * vocab, &mut self.logits);
            }
            self.taken += 1;
            return Ok(true);
        }
        self.drop_ahead();
        // Room for `next` and the draft in the cache and in one pass (none when the context is
        // full: `append` then says so).
        let room = (self.state.ctx.saturating_sub(self.tokens.len() + 1))
            .min(self.state.chunk - 1)
            .min(ALL_LOGITS_ROWS - 1);
        self.tokens.push(next);
        self.run.push(next);
        self.run
            .extend_from_slice(crate::lookup::draft(&self.tokens, lookup.min(room)));
        self.tokens.pop();
        if self.run.len() == 1 {
            self.append(&[next])?;
            return Ok(false);
        }
        self.positions.clear();
        let base = self.tokens.len() as i64 + self.rope_delta;
        self.positions
            .extend((0..self.run.len() as i64).map(|i| [base + i; 3]));
        let ran = m
            .text
            .embed(&m.backend, &mut self.state, &self.run)
            .and_then(|()| {
                let (state, positions) = (&mut self.state, &self.positions);
                m.backend
                    .scope(|| m.text.forward_all(&m.backend, state, positions))
            });
        if let Err(e) = ran {
            self.drop_ahead();
            return Err(e.into());
        }
        self.tokens.push(next);
        self.taken = 1;
        if let Some(all) = &self.state.all_logits {
            m.backend.read(all, 0, &mut self.logits);
        }
        Ok(false)
    }

    /// Forgets the drafted tokens not taken: their keys and values are past the context's end.
    fn drop_ahead(&mut self) {
        self.run.clear();
        self.taken = 0;
        self.state.len = self.tokens.len();
    }

    /// Room left in the context.
    pub fn remaining(&self) -> usize {
        self.state.ctx - self.tokens.len()
    }

    /// Mutable logits and the context, for samplers.
    pub(crate) fn logits_and_tokens(&mut self) -> (&mut [f32], &[u32]) {
        (&mut self.logits, &self.tokens)
    }
}
