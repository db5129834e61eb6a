//! `anatomy ask`: answer a question about an image with a model.
//!
//! `--model lm.gguf [--mmproj mmproj.gguf]` runs the lean runtime (`anatomy_runtime`, no candle)
//! on GGUF files; `--hf <dir>` runs the candle reference implementation on an HF checkpoint
//! directory (the path the fixtures check against transformers). With neither, the demo model
//! committed under `demo/` answers (see [`demo_files`]).

use std::io::Write;
use std::path::PathBuf;

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_models::qwen2_5_vl::preprocess::preprocess_file;
use anatomy_models::qwen2_5_vl::sampling::{Sampler, SamplingParams};
use anatomy_models::qwen2_5_vl::template::{user_prompt, ChatTokenizer};
use anatomy_runtime::backend::CacheType;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

#[derive(clap::Args)]
pub struct AskArgs {
    /// HF checkpoint directory (config.json, safetensors, tokenizer.json, processor config).
    #[arg(long, conflicts_with_all = ["model", "mmproj"])]
    pub(crate) hf: Option<PathBuf>,
    /// Language-model GGUF file (runs the lean runtime).
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// Vision-projector GGUF file (needed with --image).
    #[arg(long, requires = "model")]
    pub(crate) mmproj: Option<PathBuf>,
    /// Multiple-choice options separated by ';': prints the chosen letter and option probabilities.
    #[arg(long, conflicts_with = "hf")]
    pub(crate) options: Option<String>,
    /// Worker threads (GGUF runtime); physical cores by default.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Read the GGUF files into memory (on huge pages where the OS allows) instead of mapping
    /// them: a slower load and memory of its own, faster decoding where page walks cost.
    #[arg(long)]
    pub(crate) no_mmap: bool,
    /// Largest image in vision tokens (GGUF runtime); bounds memory for large frames.
    #[arg(long)]
    pub(crate) max_image_tokens: Option<usize>,
    /// Keep only the k most likely tokens when sampling; 0 keeps all.
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: usize,
    /// Drop tokens below this fraction of the top probability; 0 keeps all.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) min_p: f32,
    /// Penalty on tokens already in the context; 1 is off.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) repeat_penalty: f32,
    /// KV-cache length in tokens (GGUF runtime).
    #[arg(long)]
    pub(crate) context: Option<usize>,
    /// What the KV cache stores (GGUF runtime): f32, exact, or f16, half the memory (as
    /// llama.cpp's default cache).
    #[arg(long, default_value = "f32", value_name = "f32|f16")]
    pub(crate) cache_type: CacheType,
    /// Image file (PNG or JPEG).
    #[arg(long)]
    pub(crate) image: Option<PathBuf>,
    /// The question. Several questions about one image are answered in turn by one session:
    /// the image is encoded once and each prompt runs only what follows the part it shares with
    /// the one before (GGUF runtime).
    #[arg(value_name = "QUESTION", required = true)]
    pub(crate) questions: Vec<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temp: f32,
    /// Prompt-lookup decoding: draft up to N tokens per step from earlier text of the context
    /// (option names, phrases the answer repeats) and check them in one pass; the answer is the
    /// same as without (GGUF runtime; at most 8).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) lookup: usize,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    /// Seed of the sampler: the same seed gives the same answer.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Weights' compute type: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub(crate) dtype: String,
    /// Print one JSON object per question (one per line) instead of streaming text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Environment variable that points at another demo directory (tests, packaged installs).
pub const DEMO_DIR_ENV: &str = "ANATOMY_DEMO_DIR";
/// The demo model's language-model file, in the demo directory.
pub const DEMO_MODEL: &str = "anatomy-demo.gguf";
/// The demo model's vision-projector file, in the demo directory.
pub const DEMO_MMPROJ: &str = "anatomy-demo-mmproj.gguf";

/// The demo directory: `$ANATOMY_DEMO_DIR`, else `demo/` of the source tree this binary was
/// built from (so `cargo run -- ask ...` works from a fresh clone).
pub fn demo_dir() -> PathBuf {
    match std::env::var_os(DEMO_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../demo")),
    }
}

/// The demo model's two files, checked to exist.
pub fn demo_files() -> Result<(PathBuf, PathBuf)> {
    let dir = demo_dir();
    let (lm, mm) = (dir.join(DEMO_MODEL), dir.join(DEMO_MMPROJ));
    for p in [&lm, &mm] {
        if !p.is_file() {
            bail!(
                "no --model or --hf given, and the demo model file {} does not exist (set {DEMO_DIR_ENV} to the directory holding {DEMO_MODEL} and {DEMO_MMPROJ}, or pass --model <lm.gguf> --mmproj <mmproj.gguf>)",
                p.display()
            );
        }
    }
    Ok((lm, mm))
}

pub fn run(mut args: AskArgs) -> Result<()> {
    if args.hf.is_some() && args.lookup > 0 {
        bail!("--lookup is a GGUF runtime option (--model); --hf decodes one token at a time");
    }
    if args.model.is_none() && args.hf.is_none() {
        let (lm, mm) = demo_files()?;
        args.model = Some(lm);
        args.mmproj = Some(mm);
    }
    if args.model.is_some() {
        return super::ask_gguf::run(&args);
    }
    let Some(dir) = args.hf.as_deref() else {
        bail!("no model given: pass --model <lm.gguf> [--mmproj <mmproj.gguf>] or --hf <checkpoint dir>");
    };
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("--dtype {other}: expected f32, bf16 or f16"),
    };
    let device = Device::Cpu;
    let model = Qwen25VL::load(dir, dtype, &device)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    let config = model.config().clone();
    let tokenizer = ChatTokenizer::from_dir(dir)?;

    let merge = config.vision.spatial_merge_size;
    let (pixels, grids) = match &args.image {
        Some(path) => {
            let params = load_preprocess_params(dir)?;
            let img = preprocess_file(path, &params)?;
            let t = Tensor::from_slice(&img.pixel_values, (img.n_patches, img.patch_dim), &device)?;
            (Some(t), vec![img.grid_thw])
        }
        None => (None, Vec::new()),
    };
    let image_tokens: Vec<usize> = grids
        .iter()
        .map(|g| g[0] * g[1] * g[2] / (merge * merge))
        .collect();
    let [question] = &args.questions[..] else {
        bail!("--hf answers one question at a time; the GGUF runtime (--model) takes several");
    };
    let prompt = user_prompt(question, args.image.is_some());
    let prompt_ids = tokenizer.encode_prompt(&prompt, &image_tokens)?;

    let mut cache = model.new_cache();
    let (mut logits, rope_delta) =
        model.prefill(&prompt_ids, pixels.as_ref(), &grids, &mut cache)?;
    let stops = tokenizer.stop_tokens(&config.tokens.eos_token_ids);
    let mut sampler = Sampler::new(SamplingParams {
        temperature: args.temp,
        top_p: args.top_p,
        seed: args.seed,
    });
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0;
    let mut stdout = std::io::stdout();
    for step in 0..args.max_tokens {
        let row: Vec<f32> = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let next = sampler.sample(&row);
        if stops.contains(&next) {
            break;
        }
        generated.push(next);
        if !args.json {
            // Decode the whole answer each time: byte-level BPE pieces are not valid UTF-8 alone.
            let text = tokenizer.decode(&generated, true)?;
            if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{fffd}')
            {
                write!(stdout, "{}", &text[printed..])?;
                stdout.flush()?;
                printed = text.len();
            }
        }
        if step + 1 == args.max_tokens {
            break;
        }
        let position = (prompt_ids.len() + generated.len() - 1) as i64 + rope_delta;
        logits = model.decode_step(next, position, &mut cache)?;
    }
    let text = tokenizer.decode(&generated, true)?;
    if args.json {
        let out = serde_json::json!({
            "text": text,
            "token_ids": generated,
            "prompt_tokens": prompt_ids.len(),
            "image_tokens": image_tokens.iter().sum::<usize>(),
        });
        println!("{out}");
    } else {
        if text.len() > printed {
            write!(stdout, "{}", text.get(printed..).unwrap_or_default())?;
        }
        println!();
    }
    Ok(())
}
