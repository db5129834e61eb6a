//! Checkpoints: `checkpoint-<step>/` holding the trained weights, `optimizer.safetensors` (AdamW
//! moments and step) and `state.json` (step, dropout stream, and the history a resume replays).
//! A LoRA run saves `adapter.safetensors` (PEFT key names); a full fine-tuning run saves
//! `model.safetensors` under the base's key names with the base's config, tokenizer and processor
//! files beside it, so its checkpoint directory is itself an HF model directory. Each is written into `checkpoint-<step>.tmp` and the directory renamed
//! into place, then `latest` (the directory's name) is replaced the same way, so an interrupted
//! write never leaves a half checkpoint that a resume would read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::RunError;

/// One step's draws and outcomes, enough to rebuild the question sampler and the GDQA hardness
/// tracker by replaying them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepHistory {
    pub draws: Vec<usize>,
    pub mean_reward: f32,
    /// `(question id, rewards, accuracies)` of every group the hardness tracker saw.
    pub groups: Vec<(String, Vec<f32>, Vec<f32>)>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub step: usize,
    pub dropout_seed: u64,
    /// The adapters' shape, so that a later run can load them as its `init`.
    pub lora: crate::lora::LoraConfig,
    #[serde(default)]
    pub finetune: super::config::Finetune,
    pub history: Vec<StepHistory>,
}

/// The trained weights of a checkpoint.
pub enum Weights {
    /// LoRA factors under PEFT key names.
    Adapter(HashMap<String, Tensor>),
    /// Every weight under the base's key names, to be saved with copies of `support`'s
    /// non-weight files (config, tokenizer, processor).
    Full {
        tensors: HashMap<String, Tensor>,
        support: PathBuf,
    },
    /// A full checkpoint as loaded: `model.safetensors` stays on disk, to be read with the
    /// checkpoint directory as an HF model directory.
    FullOnDisk,
}

impl Weights {
    /// The adapters, or an error naming `dir` for a full checkpoint.
    pub fn adapter(&self, dir: &Path) -> Result<&HashMap<String, Tensor>, RunError> {
        match self {
            Weights::Adapter(a) => Ok(a),
            _ => Err(err(
                dir,
                "a full fine-tuning checkpoint (model.safetensors), not LoRA adapters",
            )),
        }
    }
}

/// Whether `dir` holds a full fine-tuning checkpoint (or any HF weights) rather than adapters.
pub fn is_full(dir: &Path) -> bool {
    !dir.join("adapter.safetensors").is_file()
        && (dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file())
}

/// Files of an HF directory that are not weights, copied beside a full checkpoint's weights.
fn is_support_file(name: &str) -> bool {
    !(name.ends_with(".safetensors")
        || name == "model.safetensors.index.json"
        || name.ends_with(".bin")
        || name.ends_with(".pt")
        || name == "state.json"
        || name.starts_with('.'))
}

/// Copies `from`'s non-weight files (config, tokenizer, processor) into `to`.
fn copy_support_files(from: &Path, to: &Path) -> Result<(), RunError> {
    for entry in std::fs::read_dir(from).map_err(|e| RunError::io(from, e))? {
        let src = entry.map_err(|e| RunError::io(from, e))?.path();
        let name = src.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if src.is_file() && is_support_file(name) {
            let dst = to.join(name);
            std::fs::copy(&src, &dst).map_err(|e| RunError::io(&dst, e))?;
        }
    }
    Ok(())
}

/// `run_dir/processor/`: copies of `root`'s non-weight files with the processor's `max_pixels`
/// (and `size.longest_edge`, transformers 5's spelling) set to `max_pixels`, for a run that
/// trains on other image sizes than its starting checkpoint; its checkpoints copy these files,
/// so export and inference resize images as training did.
pub fn support_with_max_pixels(
    root: &Path,
    run_dir: &Path,
    max_pixels: usize,
) -> Result<PathBuf, RunError> {
    let dir = run_dir.join("processor");
    std::fs::create_dir_all(&dir).map_err(|e| RunError::io(&dir, e))?;
    copy_support_files(root, &dir)?;
    let path = dir.join("preprocessor_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| RunError::io(&path, e))?;
    let mut pp: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(&path, e))?;
    let obj = pp
        .as_object_mut()
        .ok_or_else(|| err(&path, "not a JSON object"))?;
    let min = obj
        .get("min_pixels")
        .and_then(|v| v.as_u64())
        .map_or(max_pixels, |v| (v as usize).min(max_pixels));
    obj.insert("max_pixels".into(), max_pixels.into());
    obj.insert("min_pixels".into(), min.into());
    if let Some(size) = obj.get_mut("size").and_then(|v| v.as_object_mut()) {
        size.insert("longest_edge".into(), max_pixels.into());
        size.insert("shortest_edge".into(), min.into());
    }
    let out = serde_json::to_string_pretty(&pp).map_err(|e| err(&path, e))?;
    std::fs::write(&path, out).map_err(|e| RunError::io(&path, e))?;
    Ok(dir)
}

pub struct Checkpoint {
    pub weights: Weights,
    pub optimizer: HashMap<String, Tensor>,
    pub state: RunState,
}

fn err(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `checkpoint-<step>` under `run_dir` and points `latest` at it; removes older ones.
pub fn save(run_dir: &Path, ck: &Checkpoint) -> Result<PathBuf, RunError> {
    let name = format!("checkpoint-{:06}", ck.state.step);
    let tmp = run_dir.join(format!("{name}.tmp"));
    let dest = run_dir.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| RunError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| RunError::io(&tmp, e))?;
    match &ck.weights {
        Weights::Adapter(a) => candle_core::safetensors::save(a, tmp.join("adapter.safetensors"))
            .map_err(|e| err(&tmp, e))?,
        Weights::Full { tensors, support } => {
            candle_core::safetensors::save(tensors, tmp.join("model.safetensors"))
                .map_err(|e| err(&tmp, e))?;
            copy_support_files(support, &tmp)?;
        }
        Weights::FullOnDisk => return Err(err(&tmp, "no weights in memory to save")),
    }
    candle_core::safetensors::save(&ck.optimizer, tmp.join("optimizer.safetensors"))
        .map_err(|e| err(&tmp, e))?;
    let state = serde_json::to_string(&ck.state).map_err(|e| err(&tmp, e))?;
    std::fs::write(tmp.join("state.json"), state).map_err(|e| RunError::io(&tmp, e))?;
    if dest.exists() {
        std::fs::remove_dir_all(&dest).map_err(|e| RunError::io(&dest, e))?;
    }
    std::fs::rename(&tmp, &dest).map_err(|e| RunError::io(&dest, e))?;
    let latest_tmp = run_dir.join("latest.tmp");
    std::fs::write(&latest_tmp, &name).map_err(|e| RunError::io(&latest_tmp, e))?;
    std::fs::rename(&latest_tmp, run_dir.join("latest")).map_err(|e| RunError::io(run_dir, e))?;
    for entry in std::fs::read_dir(run_dir).map_err(|e| RunError::io(run_dir, e))? {
        let path = entry.map_err(|e| RunError::io(run_dir, e))?.path();
        let n = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if n.starts_with("checkpoint-") && n != name && !n.ends_with(".tmp") && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|e| RunError::io(&path, e))?;
        }
    }
    Ok(dest)
}

/// The checkpoint directory `latest` names in `run_dir`.
pub fn latest(run_dir: &Path) -> Result<PathBuf, RunError> {
    let p = run_dir.join("latest");
    let name = std::fs::read_to_string(&p).map_err(|e| RunError::io(&p, e))?;
    Ok(run_dir.join(name.trim()))
}

/// Reads a checkpoint directory.
pub fn load(dir: &Path) -> Result<Checkpoint, RunError> {
    let st = |f: &str| {
        let p = dir.join(f);
        candle_core::safetensors::load(&p, &Device::Cpu).map_err(|e| err(&p, e))
    };
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| RunError::io(&sp, e))?;
    let weights = match is_full(dir) {
        true => Weights::FullOnDisk,
        false => Weights::Adapter(st("adapter.safetensors")?),
    };
    Ok(Checkpoint {
        weights,
        optimizer: st("optimizer.safetensors")?,
        state: serde_json::from_str(&text).map_err(|e| err(&sp, e))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_max_pixels_override_rewrites_only_the_processor_bounds() {
        let root = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let pp = r#"{"min_pixels": 3136, "max_pixels": 12544, "patch_size": 14,
            "size": {"longest_edge": 12544, "shortest_edge": 3136}}"#;
        std::fs::write(root.path().join("preprocessor_config.json"), pp).unwrap();
        std::fs::write(root.path().join("config.json"), "{}").unwrap();
        std::fs::write(root.path().join("model.safetensors"), "weights").unwrap();

        let dir = support_with_max_pixels(root.path(), run.path(), 28224).unwrap();
        assert_eq!(dir, run.path().join("processor"));
        assert!(dir.join("config.json").is_file());
        assert!(
            !dir.join("model.safetensors").exists(),
            "weights are not support files"
        );
        let text = std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["max_pixels"], 28224);
        assert_eq!(v["min_pixels"], 3136);
        assert_eq!(v["size"]["longest_edge"], 28224);
        assert_eq!(v["patch_size"], 14);

        // A bound below min_pixels pulls min_pixels down with it.
        let dir = support_with_max_pixels(root.path(), run.path(), 1568).unwrap();
        let text = std::fs::read_to_string(dir.join("preprocessor_config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["min_pixels"].as_u64(), v["max_pixels"].as_u64()),
            (Some(1568), Some(1568))
        );

        std::fs::remove_file(root.path().join("preprocessor_config.json")).unwrap();
        let fresh = tempfile::tempdir().unwrap();
        let e = support_with_max_pixels(root.path(), fresh.path(), 28224).unwrap_err();
        assert!(e.to_string().contains("preprocessor_config.json"), "{e}");
    }
}
