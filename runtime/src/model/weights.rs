//! The two files' tensors as backend handles, by llama.cpp's names. Matrices stay in the map
//! (zero-copy on the CPU); only 1-D norms and biases are decoded, and the two temporal halves of
//! the patch embedding are interleaved once into one `[hidden, C*T*P*P]` matrix.

use std::sync::Arc;

use crate::backend::{Backend, BackendError};
use crate::gguf::qwen2vl::{LmParams, MmprojParams};
use crate::gguf::GgufFile;

pub struct LmLayer<B: Backend> {
    pub attn_norm: B::Buffer,
    pub q: B::Matrix,
    pub q_b: B::Buffer,
    pub k: B::Matrix,
    pub k_b: B::Buffer,
    pub v: B::Matrix,
    pub v_b: B::Buffer,
    pub o: B::Matrix,
    pub ffn_norm: B::Buffer,
    pub gate: B::Matrix,
    pub up: B::Matrix,
    pub down: B::Matrix,
}

pub struct LmWeights<B: Backend> {
    pub embd: B::Matrix,
    /// `None`: the head is tied to the embedding table (Qwen2.5-VL-3B).
    pub output: Option<B::Matrix>,
    pub out_norm: B::Buffer,
    pub layers: Vec<LmLayer<B>>,
}

impl<B: Backend> LmWeights<B> {
    pub fn load(b: &B, f: &Arc<GgufFile>, p: &LmParams) -> Result<Self, BackendError> {
        let layers = (0..p.block_count)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                Ok(LmLayer {
                    attn_norm: b.vector(f, &n("attn_norm.weight"))?,
                    q: b.matrix(f, &n("attn_q.weight"))?,
                    q_b: b.vector(f, &n("attn_q.bias"))?,
                    k: b.matrix(f, &n("attn_k.weight"))?,
                    k_b: b.vector(f, &n("attn_k.bias"))?,
                    v: b.matrix(f, &n("attn_v.weight"))?,
                    v_b: b.vector(f, &n("attn_v.bias"))?,
                    o: b.matrix(f, &n("attn_output.weight"))?,
                    ffn_norm: b.vector(f, &n("ffn_norm.weight"))?,
                    gate: b.matrix(f, &n("ffn_gate.weight"))?,
                    up: b.matrix(f, &n("ffn_up.weight"))?,
                    down: b.matrix(f, &n("ffn_down.weight"))?,
                })
            })
            .collect::<Result<_, BackendError>>()?;
        Ok(Self {
            embd: b.matrix(f, "token_embd.weight")?,
            output: if p.has_output {
                Some(b.matrix(f, "output.weight")?)
            } else {
                None
            },
            out_norm: b.vector(f, "output_norm.weight")?,
            layers,
        })
    }

    pub fn head(&self) -> &B::Matrix {
        self.output.as_ref().unwrap_or(&self.embd)
    }
}

pub struct VisionLayer<B: Backend> {
    pub ln1: B::Buffer,
    pub q: B::Matrix,
    pub q_b: B::Buffer,
    pub k: B::Matrix,
    pub k_b: B::Buffer,
    pub v: B::Matrix,
    pub v_b: B::Buffer,
    pub out: B::Matrix,
    pub out_b: B::Buffer,
    pub ln2: B::Buffer,
    pub gate: B::Matrix,
    pub gate_b: B::Buffer,
    pub up: B::Matrix,
    pub up_b: B::Buffer,
    pub down: B::Matrix,
    pub down_b: B::Buffer,
}

pub struct VisionWeights<B: Backend> {
    /// `[hidden, 3 * 2 * P * P]`, columns in the processor's `(C, T, py, px)` patch order.
    pub patch: B::Matrix,
    pub layers: Vec<VisionLayer<B>>,
    pub post_ln: B::Buffer,
    pub mm0: B::Matrix,
    pub mm0_b: B::Buffer,
    pub mm2: B::Matrix,
    pub mm2_b: B::Buffer,
}

impl<B: Backend> VisionWeights<B> {
    pub fn load(b: &B, f: &Arc<GgufFile>, p: &MmprojParams) -> Result<Self, BackendError> {
        let layers = (0..p.block_count)
            .map(|i| {
                let n = |s: &str| format!("v.blk.{i}.{s}");
                Ok(VisionLayer {
                    ln1: b.vector(f, &n("ln1.weight"))?,
                    q: b.matrix(f, &n("attn_q.weight"))?,
                    q_b: b.vector(f, &n("attn_q.bias"))?,
                    k: b.matrix(f, &n("attn_k.weight"))?,
                    k_b: b.vector(f, &n("attn_k.bias"))?,
                    v: b.matrix(f, &n("attn_v.weight"))?,
                    v_b: b.vector(f, &n("attn_v.bias"))?,
                    out: b.matrix(f, &n("attn_out.weight"))?,
                    out_b: b.vector(f, &n("attn_out.bias"))?,
                    ln2: b.vector(f, &n("ln2.weight"))?,
                    gate: b.matrix(f, &n("ffn_gate.weight"))?,
                    gate_b: b.vector(f, &n("ffn_gate.bias"))?,
                    up: b.matrix(f, &n("ffn_up.weight"))?,
                    up_b: b.vector(f, &n("ffn_up.bias"))?,
                    down: b.matrix(f, &n("ffn_down.weight"))?,
                    down_b: b.vector(f, &n("ffn_down.bias"))?,
                })
            })
            .collect::<Result<_, BackendError>>()?;
        Ok(Self {
            patch: patch_matrix(b, f, p)?,
            layers,
            post_ln: b.vector(f, "v.post_ln.weight")?,
            mm0: b.matrix(f, "mm.0.weight")?,
            mm0_b: b.vector(f, "mm.0.bias")?,
            mm2: b.matrix(f, "mm.2.weight")?,
            mm2_b: b.vector(f, "mm.2.bias")?,
        })
    }
}

/// The Conv3d kernel (stride = kernel) as one matrix over flattened `(C, T, py, px)` patches: the
/// file stores the two temporal slices as separate `[hidden, C, P, P]` tensors.
fn patch_matrix<B: Backend>(
    b: &B,
    f: &GgufFile,
    p: &MmprojParams,
) -> Result<B::Matrix, BackendError> {
    let get = |name: &str| -> Result<Vec<f32>, BackendError> {
        let t = f.tensor(name).ok_or_else(|| BackendError::MissingTensor {
            path: f.path().into(),
            tensor: name.into(),
        })?;
        t.dequantize().map_err(|source| BackendError::Quant {
            tensor: name.into(),
            source,
        })
    };
    let (k0, k1) = (get("v.patch_embd.weight")?, get("v.patch_embd.weight.1")?);
    let (h, pp) = (p.embedding_length, p.patch_size * p.patch_size);
    let cols = 3 * 2 * pp;
    let mut m = vec![0f32; h * cols];
    for oc in 0..h {
        for c in 0..3 {
            for (t, k) in [&k0, &k1].into_iter().enumerate() {
                let src = &k[(oc * 3 + c) * pp..(oc * 3 + c + 1) * pp];
                let dst = oc * cols + (c * 2 + t) * pp;
                m[dst..dst + pp].copy_from_slice(src);
            }
        }
    }
    Ok(b.matrix_from_f32(h, cols, m))
}
