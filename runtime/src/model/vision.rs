//! The vision tower and merger over a backend: patch embedding, window-ordered blocks with 2-D
//! rotary and window/full attention, the RMSNorm + GELU(erf) merger, and the inverse permutation
//! back to raster order over the merged grid (the order of the `<|image_pad|>` tokens).

use anatomy_models::qwen2_5_vl::positions::{vision_rotary_coords, window_layout, GridThw};

use super::rope::vision_table;
use super::weights::VisionWeights;
use crate::backend::{AttnShape, Backend, BackendError, Mask, WorkspaceSpec};
use crate::gguf::qwen2vl::MmprojParams;

/// HF's vision rotary base (not stored in the projector file; the same for every Qwen2.5-VL).
pub const VISION_ROPE_THETA: f32 = 10_000.0;

pub struct VisionModel<B: Backend> {
    pub w: VisionWeights<B>,
    pub p: MmprojParams,
}

/// Activations for images of up to `patches` patches; grown (never shrunk) when a larger image
/// arrives, so a session asking about frames of one size allocates once.
pub struct VisionScratch<B: Backend> {
    patches: usize,
    px: B::Buffer,
    x: B::Buffer,
    h: B::Buffer,
    q: B::Buffer,
    k: B::Buffer,
    v: B::Buffer,
    att: B::Buffer,
    gate: B::Buffer,
    up: B::Buffer,
    merged: B::Buffer,
    proj: B::Buffer,
    table: B::Buffer,
    host_table: Vec<f32>,
    ws: B::Workspace,
}

impl<B: Backend> VisionModel<B> {
    pub fn head_dim(&self) -> usize {
        self.p.embedding_length / self.p.head_count
    }

    pub fn merge(&self) -> usize {
        self.p.spatial_merge_size
    }

    /// Output width (the language model's hidden size).
    pub fn out_dim(&self) -> usize {
        self.p.projection_dim
    }

    fn patch_dim(&self) -> usize {
        3 * 2 * self.p.patch_size * self.p.patch_size
    }

    fn scratch(&self, b: &B, patches: usize) -> VisionScratch<B> {
        let (h, ff) = (self.p.embedding_length, self.p.feed_forward_length);
        let out = self.out_dim();
        VisionScratch {
            patches,
            px: b.alloc(patches * self.patch_dim()),
            x: b.alloc(patches * h),
            h: b.alloc(patches * h),
            q: b.alloc(patches * h),
            k: b.alloc(patches * h),
            v: b.alloc(patches * h),
            att: b.alloc(patches * h),
            gate: b.alloc(patches * ff),
            up: b.alloc(patches * ff),
            merged: b.alloc(patches * h),
            proj: b.alloc(patches.div_ceil(self.merge() * self.merge()) * out),
            table: b.alloc(patches * self.head_dim()),
            host_table: Vec::new(),
            ws: b.workspace(WorkspaceSpec {
                rows: patches,
                cols: [self.patch_dim(), ff, 4 * h, out, h]
                    .into_iter()
                    .max()
                    .unwrap_or(h),
                keys: patches,
                heads: self.p.head_count,
            }),
        }
    }

    /// Encodes one image's `pixel_values` (`[patches, 3*2*P*P]`, processor order) with grid
    /// `[t, h, w]` into `out` rows `[patches / merge², projection_dim]` in raster order.
    pub fn encode(
        &self,
        b: &B,
        scratch: &mut Option<VisionScratch<B>>,
        pixels: &[f32],
        grid: GridThw,
        out: &mut B::Buffer,
    ) -> Result<(), BackendError> {
        let merge = self.merge();
        let unit = merge * merge;
        let n = grid[0] * grid[1] * grid[2];
        let hd = self.p.embedding_length;
        if scratch.as_ref().is_some_and(|s| s.patches < n) {
            *scratch = None;
        }
        let s = scratch.get_or_insert_with(|| self.scratch(b, n));
        let window_cells = self.p.window_size / (self.p.patch_size * merge);
        let layout = window_layout(&[grid], merge, window_cells.max(1));
        let coords = vision_rotary_coords(&[grid], merge);
        let order: Vec<usize> = layout
            .window_index
            .iter()
            .flat_map(|&cell| (0..unit).map(move |u| cell * unit + u))
            .collect();
        let ordered: Vec<[usize; 2]> = order.iter().map(|&p| coords[p]).collect();
        vision_table(
            &ordered,
            self.head_dim(),
            VISION_ROPE_THETA,
            &mut s.host_table,
        );
        b.write(&mut s.table, 0, &s.host_table);
        b.write(&mut s.px, 0, pixels);

        b.matmul(&mut s.ws, &self.w.patch, &s.px, n, &mut s.h)?;
        b.gather_rows(&s.h, &order, &mut s.x, hd);

        let runs = |cu: &[usize]| -> Vec<(usize, usize)> {
            cu.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
        };
        let windows = runs(&layout.cu_window_seqlens);
        let full = runs(&layout.cu_seqlens);
        let shape = AttnShape {
            n_q: n,
            n_kv: n,
            heads: self.p.head_count,
            kv_heads: self.p.head_count,
            head_dim: self.head_dim(),
        };
        let eps = self.p.layer_norm_epsilon;
        let ff = self.p.feed_forward_length;
        for (i, l) in self.w.layers.iter().enumerate() {
            let is_full = self.p.n_wa_pattern > 0 && (i + 1) % self.p.n_wa_pattern == 0;
            let mask = Mask::Segments(if is_full { &full } else { &windows });
            b.rms_norm(&s.x, &l.ln1, &mut s.h, n, eps);
            b.matmul(&mut s.ws, &l.q, &s.h, n, &mut s.q)?;
            b.add_bias(&mut s.q, &l.q_b, n);
            b.matmul(&mut s.ws, &l.k, &s.h, n, &mut s.k)?;
            b.add_bias(&mut s.k, &l.k_b, n);
            b.matmul(&mut s.ws, &l.v, &s.h, n, &mut s.v)?;
            b.add_bias(&mut s.v, &l.v_b, n);
            b.rope(&mut s.q, &s.table, n, shape.heads, shape.head_dim);
            b.rope(&mut s.k, &s.table, n, shape.heads, shape.head_dim);
            b.attention(&mut s.ws, &s.q, &s.k, &s.v, &mut s.att, shape, &mask);
            b.matmul(&mut s.ws, &l.out, &s.att, n, &mut s.h)?;
            b.add_bias(&mut s.h, &l.out_b, n);
            b.add(&mut s.x, &s.h, n * hd);
            b.rms_norm(&s.x, &l.ln2, &mut s.h, n, eps);
            b.matmul(&mut s.ws, &l.gate, &s.h, n, &mut s.gate)?;
            b.add_bias(&mut s.gate, &l.gate_b, n);
            b.matmul(&mut s.ws, &l.up, &s.h, n, &mut s.up)?;
            b.add_bias(&mut s.up, &l.up_b, n);
            b.swiglu(&mut s.gate, &s.up, n * ff);
            b.matmul(&mut s.ws, &l.down, &s.gate, n, &mut s.h)?;
            b.add_bias(&mut s.h, &l.down_b, n);
            b.add(&mut s.x, &s.h, n * hd);
        }
        // Merger: each run of `unit` consecutive patches is one merged row of `unit * hidden`.
        let cells = n / unit;
        b.rms_norm(&s.x, &self.w.post_ln, &mut s.h, n, eps);
        b.matmul(&mut s.ws, &self.w.mm0, &s.h, cells, &mut s.merged)?;
        b.add_bias(&mut s.merged, &self.w.mm0_b, cells);
        b.gelu(&mut s.merged, cells * unit * hd);
        b.matmul(&mut s.ws, &self.w.mm2, &s.merged, cells, &mut s.proj)?;
        b.add_bias(&mut s.proj, &self.w.mm2_b, cells);
        b.gather_rows(&s.proj, &layout.reverse_index(), out, self.out_dim());
        Ok(())
    }
}
