//! The Qwen2.5-VL vision tower: patch embedding, window-attention ViT blocks with 2-D rotary, and
//! the patch merger that turns each 2x2 block of patches into one language-model token.
//!
//! Patches arrive in the processor's merge-block-major order. They are reordered so that every
//! attention window is a contiguous run (`positions::window_layout`), attended per segment, merged,
//! and put back in raster order over the merged grid, the order of the `<|image_pad|>` tokens.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::error::{ModelError, Result as ModelResult};
use super::fused::scaled_masked_softmax;
use super::ops::{apply_rotary, compute_dtype, RmsNorm};
use super::rotary::vision_tables;
use super::text::Mlp;
use crate::qwen2_5_vl::config::VisionConfig;
use crate::qwen2_5_vl::positions::{vision_rotary_coords, window_layout, GridThw};

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    qkv: Linear,
    proj: Linear,
    mlp: Mlp,
    heads: usize,
    head_dim: usize,
}

impl VisionBlock {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(VisionBlock {
            norm1: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("norm1"))?,
            norm2: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("norm2"))?,
            qkv: candle_nn::linear_b(h, 3 * h, true, vb.pp("attn.qkv"))?,
            proj: candle_nn::linear_b(h, h, true, vb.pp("attn.proj"))?,
            mlp: Mlp::new(h, cfg.intermediate_size, true, vb.pp("mlp"))?,
            heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x`: `[n, hidden]` in window order; `cos`/`sin`: `[n, 1, head_dim]` in the compute dtype;
    /// `segments`: `(start, len)` runs attention is confined to.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        segments: &[(usize, usize)],
    ) -> Result<Tensor> {
        let (n, hidden) = x.dims2()?;
        let dtype = x.dtype();
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((
            n,
            3,
            self.heads,
            self.head_dim,
        ))?;
        let part = |i: usize| qkv.narrow(1, i, 1).and_then(|t| t.squeeze(1));
        // HF applies the vision rotary in f32 whatever the activation dtype.
        let rope = |t: Tensor| -> Result<Tensor> {
            apply_rotary(&t.to_dtype(compute_dtype(dtype))?, cos, sin)?.to_dtype(dtype)
        };
        let heads_first = |t: Tensor| t.transpose(0, 1).and_then(|t| t.contiguous());
        let q = heads_first(rope(part(0)?)?)?;
        let k = heads_first(rope(part(1)?)?)?;
        let v = heads_first(part(2)?)?;
        let out = segmented_attention(&q, &k, &v, segments, 1.0 / (self.head_dim as f64).sqrt())?;
        let out = out.transpose(0, 1)?.reshape((n, hidden))?;
        let x = (x + self.proj.forward(&out)?)?;
        &x + self.mlp.forward(&self.norm2.forward(&x)?)?
    }
}

/// Bidirectional attention within each segment; `q`/`k`/`v`: `[heads, n, d]`. Consecutive segments
/// of equal length (most windows) are batched into one matmul.
fn segmented_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[(usize, usize)],
    scale: f64,
) -> Result<Tensor> {
    let (heads, _, d) = q.dims3()?;
    let mut outs = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let (start, len) = segments[i];
        let mut count = 1;
        while i + count < segments.len() && segments[i + count].1 == len {
            count += 1;
        }
        let take = |t: &Tensor| {
            t.narrow(1, start, count * len)?
                .reshape((heads, count, len, d))
        };
        let (qs, ks, vs) = (take(q)?, take(k)?, take(v)?);
        let probs = scaled_masked_softmax(&qs.matmul(&ks.t()?)?, None, scale)?;
        outs.push(probs.matmul(&vs)?.reshape((heads, count * len, d))?);
        i += count;
    }
    Tensor::cat(&outs, 1)
}

#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    merged_dim: usize,
}

impl Module for PatchMerger {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)? * x.dim(1)? / self.merged_dim;
        let x = self.ln_q.forward(x)?.reshape((n, self.merged_dim))?;
        // nn.GELU() in HF is the exact erf form.
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

/// Vision encoder + merger; output rows are language-model embeddings.
#[derive(Debug, Clone)]
pub struct VisionTower {
    /// The Conv3d kernel as a `[hidden, C*T*P*P]` matrix: stride equals kernel, so the conv is a
    /// matmul per flattened patch row.
    patch_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
}

impl VisionTower {
    /// `vb` points at the vision root (`visual` or `model.visual`).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let kernel = vb.get(
            (
                h,
                cfg.in_channels,
                cfg.temporal_patch_size,
                cfg.patch_size,
                cfg.patch_size,
            ),
            "patch_embed.proj.weight",
        )?;
        let patch_embed = kernel.reshape((h, cfg.patch_dim()))?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let merged_dim = h * unit;
        let vm = vb.pp("merger");
        let merger = PatchMerger {
            ln_q: RmsNorm::new(h, cfg.rms_norm_eps, vm.pp("ln_q"))?,
            fc1: candle_nn::linear_b(merged_dim, merged_dim, true, vm.pp("mlp.0"))?,
            fc2: candle_nn::linear_b(merged_dim, cfg.out_hidden_size, true, vm.pp("mlp.2"))?,
            merged_dim,
        };
        Ok(VisionTower {
            patch_embed,
            blocks,
            merger,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.patch_embed.dtype()
    }

    fn check_inputs(&self, pixel_values: &Tensor, grids: &[GridThw]) -> ModelResult<usize> {
        let merge = self.cfg.spatial_merge_size;
        let (n, width) = pixel_values.dims2().map_err(|_| {
            ModelError::Input(format!(
                "pixel_values must be [patches, {}], got {:?}",
                self.cfg.patch_dim(),
                pixel_values.dims()
            ))
        })?;
        if width != self.cfg.patch_dim() {
            return Err(ModelError::Input(format!(
                "pixel_values rows have {width} values, the patch embedding expects {}",
                self.cfg.patch_dim()
            )));
        }
        if let Some(g) = grids
            .iter()
            .find(|g| g.contains(&0) || g[1] % merge != 0 || g[2] % merge != 0)
        {
            return Err(ModelError::Input(format!(
                "image grid {g:?} must be non-empty with h and w divisible by {merge}"
            )));
        }
        let expected: usize = grids.iter().map(|g| g[0] * g[1] * g[2]).sum();
        if n != expected {
            return Err(ModelError::Input(format!(
                "pixel_values has {n} patches but the grids {grids:?} need {expected}"
            )));
        }
        Ok(n)
    }

    /// Image embeddings `[patches / merge², out_hidden]` for `pixel_values` `[patches, C*T*P*P]`
    /// holding the images of `grids` (`[t, h, w]` in patches) one after another.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[GridThw]) -> ModelResult<Tensor> {
        let n = self.check_inputs(pixel_values, grids)?;
        let device = self.patch_embed.device().clone();
        let dtype = self.dtype();
        let merge = self.cfg.spatial_merge_size;
        let unit = merge * merge;
        let layout = window_layout(grids, merge, self.cfg.window_merged_cells());
        let coords = vision_rotary_coords(grids, merge);

        // Window order at patch level: merge units move as a whole.
        let order: Vec<u32> = layout
            .window_index
            .iter()
            .flat_map(|&cell| (0..unit).map(move |u| (cell * unit + u) as u32))
            .collect();
        let coords: Vec<[usize; 2]> = order.iter().map(|&p| coords[p as usize]).collect();
        let (cos, sin) = vision_tables(&coords, self.cfg.head_dim(), self.cfg.rope_theta, &device)?;
        let cdt = compute_dtype(dtype);
        let cos = cos.to_dtype(cdt)?.unsqueeze(1)?;
        let sin = sin.to_dtype(cdt)?.unsqueeze(1)?;

        let x = pixel_values
            .to_device(&device)?
            .to_dtype(dtype)?
            .matmul(&self.patch_embed.t()?)?;
        let order = Tensor::from_vec(order, n, &device)?;
        let mut x = x.index_select(&order, 0)?;

        let runs = |cu: &[usize]| -> Vec<(usize, usize)> {
            cu.windows(2).map(|w| (w[0], w[1] - w[0])).collect()
        };
        let windows = runs(&layout.cu_window_seqlens);
        let full = runs(&layout.cu_seqlens);
        for (i, block) in self.blocks.iter().enumerate() {
            let segments = if self.cfg.fullatt_block_indexes.contains(&i) {
                &full
            } else {
                &windows
            };
            x = block.forward(&x, &cos, &sin, segments)?;
        }
        let merged = self.merger.forward(&x)?;
        let reverse: Vec<u32> = layout.reverse_index().iter().map(|&i| i as u32).collect();
        let reverse = Tensor::from_vec(reverse, n / unit, &device)?;
        Ok(merged.index_select(&reverse, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    pub(crate) fn tiny_vision() -> VisionConfig {
        VisionConfig {
            depth: 2,
            hidden_size: 16,
            num_heads: 2,
            intermediate_size: 24,
            patch_size: 2,
            temporal_patch_size: 2,
            in_channels: 3,
            spatial_merge_size: 2,
            window_size: 8,
            fullatt_block_indexes: vec![1],
            out_hidden_size: 12,
            tokens_per_second: 2.0,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
        }
    }

    fn segmented_reference(q: &Tensor, k: &Tensor, v: &Tensor, segs: &[(usize, usize)]) -> Tensor {
        let outs: Vec<Tensor> = segs
            .iter()
            .map(|&(s, l)| {
                let (qs, ks, vs) = (
                    q.narrow(1, s, l).unwrap(),
                    k.narrow(1, s, l).unwrap(),
                    v.narrow(1, s, l).unwrap(),
                );
                let p = candle_nn::ops::softmax(
                    &(qs.matmul(&ks.t().unwrap()).unwrap() * 0.5).unwrap(),
                    candle_core::D::Minus1,
                )
                .unwrap();
                p.matmul(&vs).unwrap()
            })
            .collect();
        Tensor::cat(&outs, 1).unwrap()
    }

    #[test]
    fn batched_segments_equal_one_by_one() {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 13, 4), &dev).unwrap();
        let k = Tensor::randn(0f32, 1., (2, 13, 4), &dev).unwrap();
        let v = Tensor::randn(0f32, 1., (2, 13, 4), &dev).unwrap();
        let segs = [(0, 4), (4, 4), (8, 2), (10, 3)];
        let got = segmented_attention(&q, &k, &v, &segs, 0.5).unwrap();
        let want = segmented_reference(&q, &k, &v, &segs);
        let d = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
    }

    #[test]
    fn output_shape_and_per_image_independence() {
        let dev = Device::Cpu;
        let cfg = tiny_vision();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let tower = VisionTower::new(&cfg, vb).unwrap();
        for var in varmap.all_vars() {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &dev).unwrap())
                .unwrap();
        }
        // 10x6 patches: 5x3 merged cells, windows of 2x2 cells (window 8 px / merge 2 / patch 2).
        let g1 = [1, 10, 6];
        let g2 = [1, 4, 4];
        let p1 = Tensor::randn(0f32, 1., (60, cfg.patch_dim()), &dev).unwrap();
        let p2 = Tensor::randn(0f32, 1., (16, cfg.patch_dim()), &dev).unwrap();
        let out1 = tower.forward(&p1, &[g1]).unwrap();
        assert_eq!(out1.dims(), &[15, 12]);
        let out2 = tower.forward(&p2, &[g2]).unwrap();
        let both = tower
            .forward(&Tensor::cat(&[&p1, &p2], 0).unwrap(), &[g1, g2])
            .unwrap();
        let want = Tensor::cat(&[&out1, &out2], 0).unwrap();
        let d = (both - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "{d}");

        let e = tower.forward(&p1, &[g2]).unwrap_err().to_string();
        assert!(e.contains("60 patches"), "{e}");
        assert!(tower.forward(&p1, &[[1, 5, 12]]).is_err());
    }
}
