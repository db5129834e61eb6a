//! `anatomy init-base`: a new random-weight Qwen2.5-VL checkpoint (HF layout) of the sizes in a
//! spec file, with a BPE vocabulary trained on question files, to train a small model from scratch
//! (the demo model's recipe starts here).

use std::path::PathBuf;

use anatomy_trainer::base::{init_base, BaseSpec};
use anatomy_trainer::data::{self, prompt};
use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct InitBaseArgs {
    /// TOML file with the sizes (`bpe_vocab`, `hidden_size`, ..., `max_pixels`, `seed`).
    #[arg(long)]
    spec: PathBuf,
    /// A Qwen2.5-VL HF directory whose tokenizer settings, special tokens, chat template and
    /// processor normalisation are kept.
    #[arg(long)]
    template: PathBuf,
    /// Question files whose prompts and answers the BPE vocabulary is trained on (repeatable).
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: InitBaseArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.spec)
        .with_context(|| format!("reading {}", args.spec.display()))?;
    let spec: BaseSpec =
        toml::from_str(&text).with_context(|| format!("parsing {}", args.spec.display()))?;
    let mut corpus = Vec::new();
    for file in &args.data {
        let opts = data::LoadOptions {
            image_root: file.parent().map(PathBuf::from),
            skip_bad: false,
        };
        let qs = data::load(file, &opts)
            .with_context(|| format!("loading {}", file.display()))?
            .questions;
        for q in qs {
            corpus.push(prompt::render(&q));
            // The completions the model will write, so the answer tags get their own tokens.
            for i in 0..q.options.len() {
                corpus.push(format!(
                    "<think> </think> <answer>{}</answer>",
                    data::letter(i)
                ));
            }
        }
    }
    init_base(&args.template, &corpus, &spec, &args.out)?;
    println!("base model written to {}", args.out.display());
    Ok(())
}
