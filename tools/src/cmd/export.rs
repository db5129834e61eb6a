//! `anatomy export`: a training run (or one of its checkpoints) -> the language-model GGUF and the
//! vision-projector GGUF, through the same writer as `anatomy convert`.
//!
//! The LoRA adapters are folded into the base in tensor space (the run's `init` chain first, as
//! the trainer merged it, then the run's own), written as an HF safetensors directory (kept with
//! `--hf-out`, else a temporary directory beside the output), and that directory is converted. A
//! full fine-tuning checkpoint already is such a directory and is copied as it is. The language-model file carries the training provenance under `anatomy.*`.

mod provenance;

use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::recipe::Recipe;
use anatomy_trainer::export::{merge_to_dir, AdapterSet};
use anatomy_trainer::run::checkpoint::Weights;
use anatomy_trainer::run::{checkpoint, RunConfig};
use anatomy_trainer::weights::chain;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The metadata prefix of the provenance keys (`inspect` shows them apart).
pub use provenance::PREFIX;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run directory (its latest checkpoint) or a `checkpoint-NNNNNN` directory.
    source: PathBuf,
    /// Output: a directory (gets `model.gguf` and `mmproj.gguf`) or a prefix `p` (gets `p.gguf`
    /// and `p-mmproj.gguf`).
    #[arg(long)]
    out: PathBuf,
    /// Recipe: q8_0, q4_k_m, q5_k_m, f16 or f32.
    #[arg(long, default_value = "q8_0")]
    quant: String,
    /// Also keep the merged model as an HF safetensors directory here (transformers, vLLM).
    #[arg(long, value_name = "DIR")]
    hf_out: Option<PathBuf>,
    /// The base HF directory, instead of the one the run's config.toml names.
    #[arg(long, value_name = "DIR")]
    base: Option<PathBuf>,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Where the export reads from.
struct Source {
    checkpoint: PathBuf,
    run_dir: Option<PathBuf>,
    config: Option<RunConfig>,
}

fn resolve(path: &Path) -> Result<Source> {
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let (checkpoint, run_dir) = if path.join("adapter.safetensors").is_file()
        || (path.join("state.json").is_file() && checkpoint::is_full(path))
    {
        let parent = path
            .parent()
            .filter(|p| p.join("config.toml").is_file())
            .map(Path::to_path_buf);
        (path.to_path_buf(), parent)
    } else if path.join("config.toml").is_file() {
        if !path.join("latest").is_file() {
            bail!(
                "{} is a run directory without checkpoints (no `latest` file): the run wrote none yet; train until a checkpoint is saved (`checkpoint_every` steps or the end)",
                path.display()
            );
        }
        let ck = checkpoint::latest(path)?;
        if !ck.join("adapter.safetensors").is_file() && !checkpoint::is_full(&ck) {
            bail!(
                "{}: `latest` names {}, which has neither adapter.safetensors nor model.safetensors",
                path.display(),
                ck.display()
            );
        }
        (ck, Some(path.to_path_buf()))
    } else {
        bail!(
            "{} is neither a run directory (config.toml) nor a checkpoint directory (adapter.safetensors)",
            path.display()
        );
    };
    let config = match &run_dir {
        Some(d) => Some(RunConfig::load(&d.join("config.toml"), &[])?),
        None => None,
    };
    Ok(Source {
        checkpoint,
        run_dir,
        config,
    })
}

/// The two output files and the model name (`general.name`) from `--out`.
fn outputs(out: &Path, source: &Path) -> (PathBuf, PathBuf, String) {
    let as_dir = out.is_dir() || out.as_os_str().to_string_lossy().ends_with('/');
    if as_dir {
        let name = source
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        return (out.join("model.gguf"), out.join("mmproj.gguf"), name);
    }
    let stem = match out.extension() {
        Some(e) if e == "gguf" => out.with_extension(""),
        _ => out.to_path_buf(),
    };
    let name = stem
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut lm = stem.clone().into_os_string();
    lm.push(".gguf");
    let mut mm = stem.into_os_string();
    mm.push("-mmproj.gguf");
    (lm.into(), mm.into(), name)
}

pub fn run(args: ExportArgs) -> Result<()> {
    let recipe = Recipe::parse(&args.quant).with_context(|| {
        format!(
            "unknown --quant {:?} (q8_0, q4_k_m, q5_k_m, f16, f32)",
            args.quant
        )
    })?;
    let src = resolve(&args.source)?;
    let base = match (&args.base, &src.config) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c.base.clone(),
        (None, None) => bail!(
            "{} has no run config.toml beside it to name the base model: pass --base <hf-dir>",
            src.checkpoint.display()
        ),
    };
    if !base.join("config.json").is_file() {
        bail!(
            "base model {} has no config.json (is it an HF Qwen2.5-VL directory?)",
            base.display()
        );
    }

    // The init chain first, as the trainer merged it before training on top; a full fine-tuning
    // checkpoint in the chain is an HF directory that replaces everything before it.
    let (root, earlier) = match src.config.as_ref().and_then(|c| c.init.as_deref()) {
        Some(init) => chain(&base, Some(init))
            .with_context(|| format!("reading the run's init checkpoint {}", init.display()))?,
        None => (base.clone(), Vec::new()),
    };
    let ck = checkpoint::load(&src.checkpoint)?;
    let (root, stages) =
        match &ck.weights {
            Weights::Adapter(a) => {
                let mut stages = Vec::new();
                for dir in &earlier {
                    stages.push(AdapterSet::from_checkpoint(dir).with_context(|| {
                        format!("reading the init checkpoint {}", dir.display())
                    })?);
                }
                stages.push(AdapterSet::from_tensors(
                    &src.checkpoint,
                    &ck.state.lora,
                    a,
                )?);
                (root, stages)
            }
            _ => (src.checkpoint.clone(), Vec::new()),
        };
    drop(ck.optimizer);

    let meta = provenance::collect(&provenance::Inputs {
        base: &base,
        config: src.config.as_ref(),
        checkpoint: &src.checkpoint,
        steps: ck.state.step,
        run_dir: src.run_dir.as_deref(),
    })?;

    let (lm, mm, name) = outputs(&args.out, src.run_dir.as_deref().unwrap_or(&args.source));
    if let Some(parent) = lm.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }

    // The merged HF directory: kept at --hf-out, else temporary beside the output (same disk,
    // which /tmp may not be for a multi-GB model), removed when `_tmp` drops.
    let _tmp;
    let merged: PathBuf = match &args.hf_out {
        Some(dir) => {
            if dir.exists()
                && std::fs::read_dir(dir)
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(true)
            {
                bail!(
                    "--hf-out {} exists and is not empty; remove it or choose another",
                    dir.display()
                );
            }
            let mut tmp = dir.clone().into_os_string();
            tmp.push(".tmp");
            let tmp = PathBuf::from(tmp);
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp)
                    .with_context(|| format!("removing {}", tmp.display()))?;
            }
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            merge(&root, &stages, &tmp, !args.quiet)?;
            if dir.exists() {
                std::fs::remove_dir(dir).with_context(|| format!("replacing {}", dir.display()))?;
            }
            std::fs::rename(&tmp, dir)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
            dir.clone()
        }
        None => {
            let parent = lm
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let t = tempfile::Builder::new()
                .prefix(".anatomy-export-")
                .tempdir_in(parent)
                .with_context(|| {
                    format!("creating a temporary directory in {}", parent.display())
                })?;
            merge(&root, &stages, t.path(), !args.quiet)?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };

    super::convert::convert_with(
        &merged,
        &lm,
        Some(&mm),
        recipe,
        !args.quiet,
        Some(&name),
        meta,
    )
    .with_context(|| format!("converting the merged model in {}", merged.display()))?;
    if !args.quiet {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "exported {} ({} bytes) and {} ({} bytes) from {}",
            lm.display(),
            size(&lm),
            mm.display(),
            size(&mm),
            src.checkpoint.display()
        );
        if let Some(d) = &args.hf_out {
            eprintln!("merged HF model in {}", d.display());
        }
    }
    Ok(())
}

fn merge(base: &Path, stages: &[AdapterSet], out: &Path, progress: bool) -> Result<()> {
    let bar = if progress {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("merging LoRA [{bar:40}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    merge_to_dir(base, stages, out, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| {
        format!(
            "merging the adapters into {} (writing {})",
            base.display(),
            out.display()
        )
    })?;
    bar.finish_and_clear();
    Ok(())
}
