//! LoRA on the language model: which linear layers get adapters, their rank, alpha and dropout,
//! their seeded initialisation (A Kaiming-uniform as in PEFT, B zero so training starts from the
//! base model), and saving, loading and merging them.
//!
//! Adapters are saved as safetensors under PEFT's key names
//! (`base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`), so the file reads as a
//! PEFT adapter of the transformers 4.x layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::adapter::adapter_dtype;
use anatomy_models::qwen2_5_vl::candle::{LowRank, Qwen25VL};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("rank must be positive")]
    ZeroRank,
    #[error("target module {0:?} matches no linear layer of the language model")]
    UnknownTarget(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: no tensor {key}")]
    MissingKey { path: PathBuf, key: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Layer suffixes (`q_proj`, `mlp.up_proj`, ...) or `all-linear`.
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["all-linear".into()],
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// The model's linear layers this config targets, in model order.
    pub fn targets(&self, model: &Qwen25VL) -> Result<Vec<String>, LoraError> {
        let names = model.text().linear_names();
        if self.target_modules.iter().any(|t| t == "all-linear") {
            return Ok(names);
        }
        for t in &self.target_modules {
            if !names.iter().any(|n| n.ends_with(&format!(".{t}"))) {
                return Err(LoraError::UnknownTarget(t.clone()));
            }
        }
        Ok(names
            .into_iter()
            .filter(|n| {
                self.target_modules
                    .iter()
                    .any(|t| n.ends_with(&format!(".{t}")))
            })
            .collect())
    }
}

/// The trainable adapters attached to a model.
pub struct Lora {
    config: LoraConfig,
    /// `(layer name, A, B)` in model order.
    layers: Vec<(String, Var, Var)>,
}

impl Lora {
    /// Creates fresh adapters from `seed` and attaches them to `model`.
    pub fn attach(model: &mut Qwen25VL, config: &LoraConfig, seed: u64) -> Result<Self, LoraError> {
        if config.rank == 0 {
            return Err(LoraError::ZeroRank);
        }
        let dtype = adapter_dtype(model.dtype());
        let device = model.device().clone();
        let mut rng = SplitMix64::new(seed);
        let mut layers = Vec::new();
        for name in config.targets(model)? {
            let (inp, out) = model.text_mut().linear_dims(&name)?;
            // PEFT: kaiming_uniform_(a = sqrt(5)) on A, i.e. U(-1/sqrt(in), 1/sqrt(in)).
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..config.rank * inp)
                .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
                .collect();
            let a = Tensor::from_vec(a, (config.rank, inp), &device)?.to_dtype(dtype)?;
            let b = Tensor::zeros((out, config.rank), dtype, &device)?;
            layers.push((name, Var::from_tensor(&a)?, Var::from_tensor(&b)?));
        }
        let lora = Lora {
            config: config.clone(),
            layers,
        };
        lora.install(model)?;
        Ok(lora)
    }

    fn install(&self, model: &mut Qwen25VL) -> Result<(), LoraError> {
        let text = model.text_mut();
        text.adapters().set_dropout(self.config.dropout);
        for (name, a, b) in &self.layers {
            let lora = LowRank {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: self.config.scale(),
            };
            text.set_adapter(name, lora)?;
        }
        Ok(())
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The trainable variables, A then B for each layer in model order.
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(_, a, b)| [a.clone(), b.clone()])
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// PEFT key of a layer's A or B factor.
    pub fn key(layer: &str, factor: char) -> String {
        format!("base_model.model.model.{layer}.lora_{factor}.weight")
    }

    /// The adapters as named tensors (for a checkpoint).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.layers
            .iter()
            .flat_map(|(name, a, b)| {
                [
                    (Self::key(name, 'A'), a.as_tensor().clone()),
                    (Self::key(name, 'B'), b.as_tensor().clone()),
                ]
            })
            .collect()
    }

    /// Overwrites the adapter values with those in `tensors` (a checkpoint), keeping the variables
    /// the model already holds.
    pub fn load_tensors(
        &self,
        tensors: &HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<(), LoraError> {
        for (name, a, b) in &self.layers {
            for (factor, var) in [('A', a), ('B', b)] {
                let key = Self::key(name, factor);
                let t = tensors.get(&key).ok_or_else(|| LoraError::MissingKey {
                    path: path.to_path_buf(),
                    key: key.clone(),
                })?;
                var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
            }
        }
        Ok(())
    }

    /// Attaches adapters read from a safetensors file written by [`Self::tensors`].
    pub fn load(model: &mut Qwen25VL, config: &LoraConfig, path: &Path) -> Result<Self, LoraError> {
        let lora = Self::attach(model, config, 0)?;
        let tensors =
            candle_core::safetensors::load(path, model.device()).map_err(|e| LoraError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        lora.load_tensors(&tensors, path)?;
        Ok(lora)
    }

    /// Folds the adapters into the base weights; `model` then runs the fine-tuned weights without
    /// adapters.
    pub fn merge(self, model: &mut Qwen25VL) -> Result<(), LoraError> {
        model.text_mut().merge_adapters()?;
        Ok(())
    }
}
