//! Where a policy's weights come from, as candle models.
//!
//! A checkpoint stands on a chain: the base HF directory, then each run's `init` checkpoint, oldest
//! first. LoRA checkpoints are merged on top of what came before; a full fine-tuning checkpoint is
//! itself an HF directory and replaces everything before it. [`chain`] walks it (through each
//! checkpoint's run `config.toml`), [`load_chain`] builds the merged model, and [`FullWeights`]
//! builds the model over a candle `VarMap` so that full fine-tuning trains every weight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::candle_nn::{VarBuilder, VarMap};
use anatomy_models::qwen2_5_vl::candle::{Qwen25VL, SafetensorsIndex};
use anatomy_models::qwen2_5_vl::config::Config;
use candle_core::{DType, Device, Tensor, Var};

use crate::lora::Lora;
use crate::run::checkpoint;
use crate::run::{RunConfig, RunError};

/// Longest `init` chain followed, so that a cycle of run directories is an error, not a hang.
const MAX_CHAIN: usize = 32;

/// The HF directory a chain's weights start from and the LoRA checkpoints merged on top of it,
/// oldest first. `checkpoint` is the newest link (`None`: just `base`).
pub fn chain(base: &Path, checkpoint: Option<&Path>) -> Result<(PathBuf, Vec<PathBuf>), RunError> {
    let mut loras = Vec::new();
    let mut cur = checkpoint.map(Path::to_path_buf);
    let root = loop {
        let Some(dir) = cur else {
            break base.to_path_buf();
        };
        if checkpoint::is_full(&dir) {
            break dir;
        }
        if loras.len() == MAX_CHAIN {
            return Err(RunError::Checkpoint {
                path: dir,
                message: format!("more than {MAX_CHAIN} init checkpoints in a chain (a cycle?)"),
            });
        }
        // The checkpoint's own run names what it was trained on top of.
        let run_cfg = dir.parent().map(|p| p.join("config.toml"));
        cur = match run_cfg.filter(|p| p.is_file()) {
            Some(p) => RunConfig::load(&p, &[])?.init,
            None => None,
        };
        loras.push(dir);
    };
    loras.reverse();
    Ok((root, loras))
}

/// The model at the end of a chain: the root directory's weights with each LoRA checkpoint merged.
pub fn load_chain(
    base: &Path,
    checkpoint: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> Result<Qwen25VL, RunError> {
    let (root, loras) = chain(base, checkpoint)?;
    let mut model = Qwen25VL::load(&root, dtype, device)?;
    for dir in loras {
        merge_lora(&mut model, &dir)?;
    }
    Ok(model)
}

/// Folds the adapters of the LoRA checkpoint in `dir` into `model`.
pub fn merge_lora(model: &mut Qwen25VL, dir: &Path) -> Result<(), RunError> {
    let ck = checkpoint::load(dir)?;
    let lora = Lora::attach(model, &ck.state.lora, 0)?;
    lora.load_tensors(ck.weights.adapter(dir)?, dir)?;
    lora.merge(model)?;
    Ok(())
}

/// Every weight of a model as a trainable variable under its checkpoint key name, and which of
/// them train: the language model's, and the vision tower's only when asked.
pub struct FullWeights {
    named: Vec<(String, Var)>,
    trainable: Vec<Var>,
    support: PathBuf,
}

impl FullWeights {
    /// Builds the model over a `VarMap` and fills each variable from the HF directory `weights`.
    /// `support` is the directory whose config, tokenizer and processor files a checkpoint copies.
    pub fn load(
        weights: &Path,
        support: &Path,
        dtype: DType,
        device: &Device,
        train_vision: bool,
    ) -> Result<(Qwen25VL, Self), RunError> {
        let config = Config::from_file(weights.join("config.json"))?;
        let index = SafetensorsIndex::open(weights)?;
        let layout = index.layout();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, dtype, device);
        let model = Qwen25VL::from_var_builder(config, vb, layout)?;
        let vision = format!("{}.", layout.vision_prefix());
        let mut named: Vec<(String, Var)> = {
            let data = varmap.data().lock().map_err(|_| RunError::Checkpoint {
                path: weights.to_path_buf(),
                message: "the variable map's lock was poisoned".into(),
            })?;
            data.iter().map(|(n, v)| (n.clone(), v.clone())).collect()
        };
        named.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, var) in &named {
            let t = index.load(name, Some(var.dims()), dtype, device)?;
            var.set(&t)?;
        }
        let trainable = named
            .iter()
            .filter(|(n, _)| train_vision || !n.starts_with(&vision))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((
            model,
            FullWeights {
                named,
                trainable,
                support: support.to_path_buf(),
            },
        ))
    }

    /// The variables the optimizer updates, in key-name order.
    pub fn vars(&self) -> Vec<Var> {
        self.trainable.clone()
    }

    pub fn num_params(&self) -> usize {
        self.trainable.iter().map(|v| v.elem_count()).sum()
    }

    /// Every weight by key name, for a checkpoint.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.named
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    pub fn support(&self) -> &Path {
        &self.support
    }
}
