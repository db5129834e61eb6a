//! `anatomy ask`: answer a question about an image with a model.
//!
//! `--hf <dir>` runs the candle reference implementation on an HF checkpoint directory (the path the
//! fixtures check against transformers); the quantized GGUF runtime comes with its own issue.

use std::io::Write;
use std::path::PathBuf;

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_models::qwen2_5_vl::preprocess::preprocess_file;
use anatomy_models::qwen2_5_vl::sampling::{Sampler, SamplingParams};
use anatomy_models::qwen2_5_vl::template::{user_prompt, ChatTokenizer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

#[derive(clap::Args)]
pub struct AskArgs {
    /// HF checkpoint directory (config.json, safetensors, tokenizer.json, processor config).
    #[arg(long)]
    hf: Option<PathBuf>,
    /// Image file (PNG or JPEG).
    #[arg(long)]
    image: Option<PathBuf>,
    /// The question.
    question: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed of the sampler: the same seed gives the same answer.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Weights' compute type: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AskArgs) -> Result<()> {
    let Some(dir) = args.hf.as_deref() else {
        bail!("no model given: pass --hf <checkpoint dir> (the GGUF runtime comes with a later issue)");
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
    let prompt = user_prompt(&args.question, args.image.is_some());
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
