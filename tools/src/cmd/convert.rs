//! `anatomy convert`: an HF Qwen2.5-VL checkpoint -> the language-model GGUF and (with `--mmproj`)
//! the vision-projector GGUF, with llama.cpp's names, metadata and per-tensor types of the chosen
//! recipe. Tensors are read, cut, quantized and written one at a time, so peak memory is one
//! tensor (in f32) plus its encoding, never the model.

mod hf_weights;
pub(crate) mod metadata;

use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_models::qwen2_5_vl::names::{hf_to_gguf, GgufFileKind, Slice};
use anatomy_models::qwen2_5_vl::recipe::{Recipe, StoreType};
use anatomy_models::qwen2_5_vl::Config;
use anatomy_runtime::gguf::{GgufWriter, OwnedValue, PendingTensor, DEFAULT_ALIGNMENT};
use anatomy_runtime::quant::quantize::quantize_to_vec;
use anatomy_runtime::quant::GgmlType;
use anyhow::{bail, Context, Result};
use hf_weights::HfWeights;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// HF checkpoint directory (config.json, safetensors, tokenizer.json, processor config).
    hf_dir: PathBuf,
    /// Language-model GGUF to write.
    #[arg(long)]
    out: PathBuf,
    /// Vision-projector GGUF to write (omit to write the language model only).
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// Recipe: q4_k_m, q5_k_m, q8_0, f16 or f32.
    #[arg(long, default_value = "q4_k_m")]
    quant: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// One tensor to write: where it comes from and how it is stored.
pub(crate) struct Planned {
    hf: String,
    slice: Slice,
    pub tensor: PendingTensor,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    let recipe = Recipe::parse(&args.quant).with_context(|| {
        format!(
            "unknown --quant {:?} (q4_k_m, q5_k_m, q8_0, f16, f32)",
            args.quant
        )
    })?;
    convert(
        &args.hf_dir,
        &args.out,
        args.mmproj.as_deref(),
        recipe,
        !args.quiet,
    )
}

/// Converts `dir` into `out` (and `mmproj`), the library form of the command for tests.
pub fn convert(
    dir: &Path,
    out: &Path,
    mmproj: Option<&Path>,
    recipe: Recipe,
    progress: bool,
) -> Result<()> {
    convert_with(dir, out, mmproj, recipe, progress, None, Vec::new())
}

/// [`convert`] with `general.name` given (instead of the directory's name) and `extra` metadata
/// appended to the language-model file (`anatomy export`'s provenance).
pub fn convert_with(
    dir: &Path,
    out: &Path,
    mmproj: Option<&Path>,
    recipe: Recipe,
    progress: bool,
    name: Option<&str>,
    extra: Vec<(String, OwnedValue)>,
) -> Result<()> {
    let cfg = Config::from_file(dir.join("config.json"))?;
    let weights = HfWeights::open(dir)?;
    let name = name.map(String::from).unwrap_or_else(|| {
        dir.canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into())
    });
    let mut lm_meta = metadata::language(&cfg, dir, &name, recipe)?;
    lm_meta.extend(extra);
    let names: Vec<&str> = weights.names().collect();
    let shape = |hf: &str| weights.shape(hf);
    let lm = plan(&names, shape, &cfg, GgufFileKind::Language, recipe)?;
    lm_meta.push(("general.size_label".into(), size_label(&lm)));
    write(out, &lm_meta, lm, progress, |p| read_encoded(&weights, p))?;
    if let Some(path) = mmproj {
        let pre = load_preprocess_params(dir)?;
        if cfg.vision.temporal_patch_size != 2 {
            bail!(
                "temporal_patch_size {} (llama.cpp's projector needs 2)",
                cfg.vision.temporal_patch_size
            );
        }
        let mut meta = metadata::mmproj(&cfg, &pre, &name, mmproj_file_type(recipe))?;
        let mm = plan(&names, shape, &cfg, GgufFileKind::Mmproj, recipe)?;
        meta.push(("general.size_label".into(), size_label(&mm)));
        write(path, &meta, mm, progress, |p| read_encoded(&weights, p))?;
    }
    Ok(())
}

/// `general.file_type` of the projector file: the k-quant recipes leave projectors in F16.
pub(crate) fn mmproj_file_type(recipe: Recipe) -> u32 {
    match recipe {
        Recipe::F32 => 0,
        Recipe::Q8_0 => 7,
        Recipe::F16 | Recipe::Q4KM | Recipe::Q5KM => 1,
    }
}

fn read_encoded(w: &HfWeights, p: &Planned) -> Result<Vec<u8>> {
    let (_, data) = w.read(&p.hf, p.slice)?;
    quantize_to_vec(p.tensor.ty, &data)
        .with_context(|| format!("quantizing {} to {}", p.tensor.name, p.tensor.ty))
}

/// llama.cpp's size label of one file: the elements of the tensors it holds.
pub(crate) fn size_label(plan: &[Planned]) -> OwnedValue {
    metadata::size_label(
        plan.iter()
            .map(|p| p.tensor.shape.iter().product::<u64>())
            .sum(),
    )
}

fn ggml_type(t: StoreType) -> GgmlType {
    match t {
        StoreType::F32 => GgmlType::F32,
        StoreType::F16 => GgmlType::F16,
        StoreType::Q8_0 => GgmlType::Q8_0,
        StoreType::Q5_0 => GgmlType::Q5_0,
        StoreType::Q5_1 => GgmlType::Q5_1,
        StoreType::Q4_K => GgmlType::Q4_K,
        StoreType::Q5_K => GgmlType::Q5_K,
        StoreType::Q6_K => GgmlType::Q6_K,
    }
}

/// Sort key: embeddings first, then blocks in order, then heads (llama.cpp's layout, and what
/// streaming readers expect).
fn order(name: &str) -> (u8, usize, String) {
    let layer = name
        .trim_start_matches("v.")
        .strip_prefix("blk.")
        .and_then(|r| r.split('.').next())
        .and_then(|n| n.parse().ok());
    match layer {
        Some(i) => (1, i, name.into()),
        None if name.starts_with("token_embd") || name.starts_with("v.patch_embd") => {
            (0, 0, name.into())
        }
        None => (2, 0, name.into()),
    }
}

/// The GGUF tensors of `file` made from the HF tensors `names` (HF shapes from `shape`), with
/// the recipe's storage types, in llama.cpp's order.
pub(crate) fn plan(
    names: &[&str],
    shape: impl Fn(&str) -> Result<Vec<usize>>,
    cfg: &Config,
    file: GgufFileKind,
    recipe: Recipe,
) -> Result<Vec<Planned>> {
    let tied = !names
        .iter()
        .any(|n| hf_to_gguf(n).is_some_and(|m| m.iter().any(|t| t.name == "output.weight")));
    let mut out = Vec::new();
    for &hf in names {
        for t in hf_to_gguf(hf)
            .into_iter()
            .flatten()
            .filter(|t| t.file == file)
        {
            let mut shape = shape(hf)?;
            match t.slice {
                Slice::Whole => {}
                Slice::QkvPart(_) => shape[0] /= 3,
                Slice::TemporalKernel(_) => {
                    shape.remove(2);
                }
            }
            let ggml_shape: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
            let ty = ggml_type(recipe.tensor_type(
                file,
                &t.name,
                &ggml_shape,
                cfg.text.num_hidden_layers,
                tied,
            ));
            out.push(Planned {
                hf: hf.to_string(),
                slice: t.slice,
                tensor: PendingTensor {
                    name: t.name,
                    shape: ggml_shape,
                    ty,
                },
            });
        }
    }
    out.sort_by_key(|p| order(&p.tensor.name));
    if out.is_empty() {
        bail!("no tensors for the {file:?} file");
    }
    Ok(out)
}

/// Writes `path` with `meta` and the tensors of `plan`, whose bytes `encode` gives one tensor at a
/// time, so that only one tensor is ever held in memory.
pub(crate) fn write(
    path: &Path,
    meta: &[(String, OwnedValue)],
    plan: Vec<Planned>,
    progress: bool,
    mut encode: impl FnMut(&Planned) -> Result<Vec<u8>>,
) -> Result<()> {
    let tensors: Vec<PendingTensor> = plan.iter().map(|p| p.tensor.clone()).collect();
    let mut writer = GgufWriter::create(path, meta, tensors, DEFAULT_ALIGNMENT)?;
    let bar = if progress {
        ProgressBar::new(plan.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} tensors")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    for p in &plan {
        let bytes = encode(p)?;
        writer.write_tensor(&p.tensor.name, &bytes)?;
        bar.inc(1);
    }
    writer.finish()?;
    bar.finish_and_clear();
    Ok(())
}
