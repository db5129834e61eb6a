//! `anatomy eval`: greedy accuracy of a model (optionally with a run's LoRA checkpoint) on a
//! multiple-choice question file, overall and per answer class, with the confusion matrix.

use std::path::PathBuf;

use anatomy_trainer::eval::{self, EvalOptions, EvalReport};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The HF Qwen2.5-VL directory (weights, config, tokenizer, preprocessor config).
    #[arg(long)]
    hf: PathBuf,
    /// A `checkpoint-NNNNNN` directory of a run, or a run directory (its latest checkpoint).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The question file (Anatomy-R1 JSON, OmniMedVQA or JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Prefix joined in front of every image path of the question file.
    #[arg(long, value_name = "DIR")]
    image_root: Option<PathBuf>,
    /// Evaluate only the first N questions.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Most tokens generated per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Print one JSON object (accuracy, count, per_class, confusion) instead of tables.
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let opts = EvalOptions {
        base: args.hf,
        adapter: args.adapter,
        data: args.data,
        image_root: args.image_root,
        limit: args.limit,
        max_new_tokens: args.max_new_tokens,
    };
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]")
            .expect("static template"),
    );
    let report = eval::run(&opts, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("evaluating on {}", opts.data.display()))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_tables(&report);
    }
    Ok(())
}

fn print_tables(r: &EvalReport) {
    println!("accuracy {:.4} ({} questions)", r.accuracy, r.count);
    println!();
    let width = r
        .confusion
        .labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:<width$}  {:>8}  {:>6}", "class", "accuracy", "count");
    for (class, c) in &r.per_class {
        println!("{class:<width$}  {:>8.4}  {:>6}", c.accuracy, c.count);
    }
    println!();
    println!("confusion (rows: answer, columns: predicted)");
    print!("{:<width$}", "");
    for l in &r.confusion.labels {
        print!("  {l:>width$}");
    }
    println!();
    // The last label is "invalid", which no question has as its answer: its row is always zero.
    let rows = r.confusion.labels.len().saturating_sub(1);
    for (label, row) in r
        .confusion
        .labels
        .iter()
        .zip(&r.confusion.matrix)
        .take(rows)
    {
        print!("{label:<width$}");
        for n in row {
            print!("  {n:>width$}");
        }
        println!();
    }
}
