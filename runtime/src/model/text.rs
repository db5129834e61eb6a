//! The Qwen2 decoder over a backend: RMSNorm, q/k/v with biases, M-RoPE, grouped-query causal
//! attention over the KV cache, SwiGLU MLP, and the head on the last row only.
//!
//! A [`TextState`] holds everything one conversation needs (activations for a chunk of tokens,
//! the KV cache for the whole context, rotary scratch), allocated once; prefill runs chunks of up
//! to `chunk` tokens through matrix-matrix products, decoding runs chunks of one.

use super::rope::{inv_freq, mrope_components, mrope_table};
use super::weights::LmWeights;
use crate::backend::{AttnShape, Backend, BackendError, CacheType, Mask, WorkspaceSpec};
use crate::gguf::qwen2vl::LmParams;

/// Most rows [`TextModel::forward_all`] takes: below every weight type's switch to the many-row
/// kernels (10 rows at least; a test in `backend::cpu` checks it), so that its rows' logits equal
/// one-token forwards'.
pub const ALL_LOGITS_ROWS: usize = 9;

pub struct TextModel<B: Backend> {
    pub w: LmWeights<B>,
    pub p: LmParams,
    inv: Vec<f32>,
    comp: Vec<usize>,
}

pub struct TextState<B: Backend> {
    /// Most tokens one forward call takes.
    pub chunk: usize,
    /// Capacity of the KV cache in tokens.
    pub ctx: usize,
    /// Tokens in the KV cache.
    pub len: usize,
    /// Input embeddings of the chunk being run (filled by the caller, `[chunk, hidden]`).
    pub x: B::Buffer,
    h: B::Buffer,
    q: B::Buffer,
    k: B::Buffer,
    v: B::Buffer,
    att: B::Buffer,
    gate: B::Buffer,
    up: B::Buffer,
    table: B::Buffer,
    host_table: Vec<f32>,
    last: B::Buffer,
    last_norm: B::Buffer,
    /// Logits of the last token run, `[vocab]`.
    pub logits: B::Buffer,
    /// Logits of every row of the last [`TextModel::forward_all`], `[rows, vocab]`: allocated by
    /// the first call, for at most [`ALL_LOGITS_ROWS`] rows.
    pub all_logits: Option<B::Buffer>,
    kc: Vec<B::Cache>,
    vc: Vec<B::Cache>,
    ws: B::Workspace,
}

impl<B: Backend> TextModel<B> {
    /// `None` when the rotary sections do not cover `head_dim / 2` frequencies.
    pub fn new(w: LmWeights<B>, p: LmParams) -> Option<Self> {
        let hd = p.embedding_length / p.head_count;
        let comp = mrope_components(&p.rope_sections, hd / 2)?;
        Some(Self {
            inv: inv_freq(p.rope_freq_base, hd),
            comp,
            w,
            p,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.p.embedding_length / self.p.head_count
    }

    /// Values per token of one layer's keys (or values).
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.p.head_count_kv
    }

    /// Allocates a conversation's state: a KV cache of `ctx` tokens holding `cache` values,
    /// chunks of `chunk` tokens.
    pub fn state(&self, b: &B, ctx: usize, chunk: usize, cache: CacheType) -> TextState<B> {
        let (e, ff, kv) = (
            self.p.embedding_length,
            self.p.feed_forward_length,
            self.kv_dim(),
        );
        let chunk = chunk.clamp(1, ctx.max(1));
        TextState {
            chunk,
            ctx,
            len: 0,
            x: b.alloc(chunk * e),
            h: b.alloc(chunk * e),
            q: b.alloc(chunk * e),
            k: b.alloc(chunk * kv),
            v: b.alloc(chunk * kv),
            att: b.alloc(chunk * e),
            gate: b.alloc(chunk * ff),
            up: b.alloc(chunk * ff),
            table: b.alloc(chunk * self.head_dim()),
            host_table: Vec::with_capacity(chunk * self.head_dim()),
            last: b.alloc(e),
            last_norm: b.alloc(e),
            logits: b.alloc(self.p.vocab_size),
            all_logits: None,
            kc: (0..self.p.block_count)
                .map(|_| b.alloc_cache(ctx, kv, cache))
                .collect(),
            vc: (0..self.p.block_count)
                .map(|_| b.alloc_cache(ctx, kv, cache))
                .collect(),
            ws: b.workspace(WorkspaceSpec {
                rows: chunk,
                cols: e.max(ff).max(kv),
                keys: ctx,
                heads: self.p.head_count,
            }),
        }
    }

    /// Writes the embeddings of `ids` into `st.x` rows `0..ids.len()`.
    pub fn embed(&self, b: &B, st: &mut TextState<B>, ids: &[u32]) -> Result<(), BackendError> {
        b.embed(&self.w.embd, ids, &mut st.x)
    }

    /// Runs rows `0..positions.len()` of `st.x` (at most `chunk`, and fitting in the cache) as
    /// the next tokens, appends their keys and values, and leaves the last row's logits in
    /// `st.logits`. The caller checks the sizes (`Session` does, with errors).
    pub fn forward(
        &self,
        b: &B,
        st: &mut TextState<B>,
        positions: &[[i64; 3]],
    ) -> Result<(), BackendError> {
        self.layers(b, st, positions)?;
        let (n, e) = (positions.len(), self.p.embedding_length);
        b.copy_rows(&st.x, n - 1, &mut st.last, 0, 1, e);
        b.rms_norm(
            &st.last,
            &self.w.out_norm,
            &mut st.last_norm,
            1,
            self.p.rms_norm_eps,
        );
        b.matmul(&mut st.ws, self.w.head(), &st.last_norm, 1, &mut st.logits)
    }

    /// [`Self::forward`] for at most [`ALL_LOGITS_ROWS`] rows, leaving every row's logits in
    /// `st.all_logits` (row `i` at `i·vocab`): the check of drafted tokens. Below the many-row
    /// kernels' switch every product takes the dots row by row, so each row's logits are those a
    /// one-token forward would give.
    pub fn forward_all(
        &self,
        b: &B,
        st: &mut TextState<B>,
        positions: &[[i64; 3]],
    ) -> Result<(), BackendError> {
        let n = positions.len();
        debug_assert!(n <= ALL_LOGITS_ROWS);
        self.layers(b, st, positions)?;
        let out = st
            .all_logits
            .get_or_insert_with(|| b.alloc(ALL_LOGITS_ROWS * self.p.vocab_size));
        b.rms_norm(&st.x, &self.w.out_norm, &mut st.h, n, self.p.rms_norm_eps);
        b.matmul(&mut st.ws, self.w.head(), &st.h, n, out)
    }

    /// The decoder layers over rows `0..positions.len()` of `st.x`, their keys and values
    /// appended to the cache.
    fn layers(
        &self,
        b: &B,
        st: &mut TextState<B>,
        positions: &[[i64; 3]],
    ) -> Result<(), BackendError> {
        let n = positions.len();
        debug_assert!(n >= 1 && n <= st.chunk && st.len + n <= st.ctx);
        let (e, ff, kv, hd) = (
            self.p.embedding_length,
            self.p.feed_forward_length,
            self.kv_dim(),
            self.head_dim(),
        );
        let eps = self.p.rms_norm_eps;
        mrope_table(positions, &self.inv, &self.comp, &mut st.host_table);
        b.write(&mut st.table, 0, &st.host_table);
        let past = st.len;
        let shape = AttnShape {
            n_q: n,
            n_kv: past + n,
            heads: self.p.head_count,
            kv_heads: self.p.head_count_kv,
            head_dim: hd,
        };
        for (i, l) in self.w.layers.iter().enumerate() {
            b.rms_norm(&st.x, &l.attn_norm, &mut st.h, n, eps);
            b.matmuls(
                &mut st.ws,
                &[&l.q, &l.k, &l.v],
                &st.h,
                n,
                &mut [&mut st.q, &mut st.k, &mut st.v],
            )?;
            b.add_bias(&mut st.q, &l.q_b, n);
            b.add_bias(&mut st.k, &l.k_b, n);
            b.add_bias(&mut st.v, &l.v_b, n);
            b.rope(&mut st.q, &st.table, n, shape.heads, hd);
            b.rope(&mut st.k, &st.table, n, shape.kv_heads, hd);
            b.store_rows(&st.k, &mut st.kc[i], past, n, kv);
            b.store_rows(&st.v, &mut st.vc[i], past, n, kv);
            b.cached_attention(
                &mut st.ws,
                &st.q,
                &st.kc[i],
                &st.vc[i],
                &mut st.att,
                shape,
                &Mask::Causal { past },
            );
            b.matmul(&mut st.ws, &l.o, &st.att, n, &mut st.h)?;
            b.add(&mut st.x, &st.h, n * e);
            b.rms_norm(&st.x, &l.ffn_norm, &mut st.h, n, eps);
            b.matmuls(
                &mut st.ws,
                &[&l.gate, &l.up],
                &st.h,
                n,
                &mut [&mut st.gate, &mut st.up],
            )?;
            b.swiglu(&mut st.gate, &st.up, n * ff);
            b.matmul(&mut st.ws, &l.down, &st.gate, n, &mut st.h)?;
            b.add(&mut st.x, &st.h, n * e);
        }
        st.len += n;
        Ok(())
    }
}
