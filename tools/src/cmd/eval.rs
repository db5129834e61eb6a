//! `anatomy eval`: accuracy of a model on a multiple-choice question file, overall and per answer
//! class, with the confusion matrix.
//!
//! `--model lm.gguf --mmproj mmproj.gguf` (or neither, for the demo model) runs the lean runtime,
//! the path `anatomy ask` takes: the prediction is the option with the highest probability at the
//! answer position, and the report adds the expected calibration error of those probabilities
//! and latency percentiles. `--hf DIR [--adapter CKPT]` runs the candle reference model greedily
//! and scores the completions with the training reward, as before.
//!
//! Image paths that are relative are taken from the question file's directory unless
//! `--image-root` says otherwise: `anatomy synth` writes `images/000000.png` beside its JSON.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anatomy_runtime::backend::CacheType;
use anatomy_runtime::generate::{AskRequest, Flow, ImageInput};
use anatomy_runtime::{Model, ModelOptions, SamplingParams};
use anatomy_trainer::data::{self, LoadOptions};
use anatomy_trainer::eval::{self, EvalOptions, EvalReport, Prediction};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// Bins of the expected calibration error (equal width over the top option probability).
pub const ECE_BINS: usize = 10;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The HF Qwen2.5-VL directory (runs the candle reference model).
    #[arg(long, conflicts_with_all = ["model", "mmproj", "threads"])]
    hf: Option<PathBuf>,
    /// With --hf: a `checkpoint-NNNNNN` directory of a run, or a run directory (its latest).
    #[arg(long, requires = "hf")]
    adapter: Option<PathBuf>,
    /// Language-model GGUF (runs the lean runtime); the demo model when neither this nor --hf.
    #[arg(long, requires = "mmproj")]
    model: Option<PathBuf>,
    /// Vision-projector GGUF of --model.
    #[arg(long, requires = "model")]
    mmproj: Option<PathBuf>,
    /// The question file (Anatomy-R1 JSON, OmniMedVQA or JSONL).
    #[arg(long)]
    data: PathBuf,
    /// Directory relative image paths are joined to (default: the question file's directory).
    #[arg(long, value_name = "DIR")]
    image_root: Option<PathBuf>,
    /// Evaluate only the first N questions.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Most tokens generated per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Prompt-lookup decoding: draft up to N tokens per step (see `anatomy ask --lookup`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    lookup: usize,
    /// Worker threads of the runtime; physical cores by default.
    #[arg(long)]
    threads: Option<usize>,
    /// What the runtime's KV cache stores: f32 or f16 (see `anatomy ask --cache-type`).
    #[arg(long, default_value = "f32", value_name = "f32|f16")]
    cache_type: CacheType,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write one JSON line per question to FILE: `id`, `class`, `question_type`, `predicted`,
    /// `correct`, `completion` (the generated text) and `option_probs`.
    #[arg(long, value_name = "FILE", conflicts_with = "hf")]
    predictions: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    match args.hf.clone() {
        Some(hf) => run_hf(&args, hf),
        None => {
            let (lm, mm) = match (&args.model, &args.mmproj) {
                (Some(lm), Some(mm)) => (lm.clone(), mm.clone()),
                _ => super::ask::demo_files()?,
            };
            run_gguf(&args, &lm, &mm)
        }
    }
}

/// The question file's directory, where relative image paths point by default.
fn data_dir(data: &Path) -> PathBuf {
    match data.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn run_hf(args: &EvalArgs, hf: PathBuf) -> Result<()> {
    // The loader joins `image_root` to every path, absolute ones included, so the data file's
    // directory is only the default when all paths are relative.
    let image_root = match &args.image_root {
        Some(r) => Some(r.clone()),
        None => {
            let qs = data::load(&args.data, &LoadOptions::default())?.questions;
            qs.iter()
                .all(|q| q.image.is_relative())
                .then(|| data_dir(&args.data))
        }
    };
    let opts = EvalOptions {
        base: hf,
        adapter: args.adapter.clone(),
        data: args.data.clone(),
        image_root,
        limit: args.limit,
        max_new_tokens: args.max_new_tokens,
    };
    let bar = progress_bar();
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

fn run_gguf(args: &EvalArgs, lm: &Path, mm: &Path) -> Result<()> {
    let opts = LoadOptions {
        image_root: args.image_root.clone(),
        skip_bad: false,
    };
    let mut questions = data::load(&args.data, &opts)?.questions;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    if questions.is_empty() {
        bail!("{}: no questions to evaluate", args.data.display());
    }
    if args.image_root.is_none() {
        let dir = data_dir(&args.data);
        for q in &mut questions {
            if q.image.is_relative() {
                q.image = dir.join(&q.image);
            }
        }
    }
    let model = Model::load(
        lm,
        Some(mm),
        &ModelOptions {
            threads: args.threads,
            cache_type: args.cache_type,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading {} and {}", lm.display(), mm.display()))?;
    let mut session = model.session();
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        progress_bar()
    };
    bar.set_length(questions.len() as u64);
    let mut predictions = Vec::with_capacity(questions.len());
    let mut confidences = Vec::with_capacity(questions.len());
    let mut latencies = Vec::with_capacity(questions.len());
    let mut text_correct = 0usize;
    let mut lines = String::new();
    for q in &questions {
        let req = AskRequest {
            question: q.question.clone(),
            image: Some(ImageInput::Path(q.image.clone())),
            options: q.options.clone(),
            max_tokens: args.max_new_tokens,
            lookup: args.lookup,
            sampling: SamplingParams::default(),
        };
        let t = Instant::now();
        let answer = session
            .ask(&req, &mut |_| Flow::Continue)
            .with_context(|| format!("question {} (image {})", q.id, q.image.display()))?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        let probs = answer.option_probs.with_context(|| {
            format!(
                "question {}: the runtime gave no option probabilities",
                q.id
            )
        })?;
        let best = argmax(&probs);
        confidences.push((probs[best] as f64, best == q.answer));
        text_correct += usize::from(eval::predicted_option(&answer.text, q) == Some(q.answer));
        let p = Prediction {
            id: q.id.clone(),
            class: q.answer_text().to_string(),
            question_type: q.question_type.clone(),
            predicted: q.options[best].clone(),
            correct: best == q.answer,
            completion: answer.text,
        };
        if args.predictions.is_some() {
            let mut line = serde_json::to_value(&p)?;
            line["option_probs"] = json!(probs);
            lines.push_str(&serde_json::to_string(&line)?);
            lines.push('\n');
        }
        predictions.push(p);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(path) = &args.predictions {
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let n = predictions.len();
    let report = eval::summarize(predictions);
    let ece = expected_calibration_error(&confidences, ECE_BINS);
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let latency = json!({
        "p50": percentile(&sorted, 50.0),
        "p95": percentile(&sorted, 95.0),
        "mean": sorted.iter().sum::<f64>() / n as f64,
        "max": sorted.last().copied().unwrap_or(0.0),
    });
    let text_accuracy = text_correct as f64 / n as f64;
    if args.json {
        let mut out = serde_json::to_value(&report)?;
        out["n"] = json!(n);
        out["ece"] = json!(ece);
        out["text_accuracy"] = json!(text_accuracy);
        out["latency_ms"] = latency;
        out["model"] = json!(lm.display().to_string());
        out["mmproj"] = json!(mm.display().to_string());
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_tables(&report);
        println!();
        println!(
            "expected calibration error {ece:.4} ({ECE_BINS} bins over the top option probability)"
        );
        println!("accuracy of the generated text's answer {text_accuracy:.4}");
        println!(
            "latency per question: p50 {:.1} ms, p95 {:.1} ms",
            latency["p50"].as_f64().unwrap_or(0.0),
            latency["p95"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > p[b] { i } else { b })
}

/// Expected calibration error: the questions binned by their top probability into `bins` equal
/// intervals of [0, 1] (1.0 in the last), then the count-weighted mean of |accuracy - mean
/// confidence| over the bins. In [0, 1]; 0 for an empty list.
pub fn expected_calibration_error(items: &[(f64, bool)], bins: usize) -> f64 {
    if items.is_empty() || bins == 0 {
        return 0.0;
    }
    let mut sums = vec![(0usize, 0.0f64, 0usize); bins];
    for &(conf, ok) in items {
        let c = conf.clamp(0.0, 1.0);
        let b = ((c * bins as f64) as usize).min(bins - 1);
        sums[b].0 += 1;
        sums[b].1 += c;
        sums[b].2 += usize::from(ok);
    }
    let n = items.len() as f64;
    sums.iter()
        .filter(|s| s.0 > 0)
        .map(|&(k, conf, ok)| {
            let k = k as f64;
            (k / n) * (ok as f64 / k - conf / k).abs()
        })
        .sum()
}

/// Percentile `p` of sorted values, interpolating between the nearest ranks (numpy's default).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let pos = (p / 100.0).clamp(0.0, 1.0) * (n - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        }
    }
}

const TYPE_HEADING: &str = "question type";

fn print_tables(r: &EvalReport) {
    println!("accuracy {:.4} ({} questions)", r.accuracy, r.count);
    println!();
    let width = r
        .confusion
        .labels
        .iter()
        .chain(r.per_type.keys())
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(if r.per_type.is_empty() {
            5
        } else {
            TYPE_HEADING.len()
        });
    println!("{:<width$}  {:>8}  {:>6}", "class", "accuracy", "count");
    for (class, c) in &r.per_class {
        println!("{class:<width$}  {:>8.4}  {:>6}", c.accuracy, c.count);
    }
    if !r.per_type.is_empty() {
        println!();
        println!(
            "{:<width$}  {:>8}  {:>6}",
            TYPE_HEADING, "accuracy", "count"
        );
        for (t, c) in &r.per_type {
            println!("{t:<width$}  {:>8.4}  {:>6}", c.accuracy, c.count);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ece_of_perfect_and_overconfident_predictions() {
        assert_eq!(expected_calibration_error(&[], 10), 0.0);
        // Confidence 1 and always right: calibrated.
        assert_eq!(expected_calibration_error(&[(1.0, true); 4], 10), 0.0);
        // Confidence 0.95, right half the time: 0.45 off in the one bin.
        let e = expected_calibration_error(&[(0.95, true), (0.95, false)], 10);
        assert!((e - 0.45).abs() < 1e-12, "{e}");
        // Two bins, weighted by count: |1 - 0.55| * 1/3 + |0 - 0.25| * 2/3.
        let e = expected_calibration_error(&[(0.55, true), (0.25, false), (0.25, false)], 10);
        assert!((e - (0.45 / 3.0 + 0.5 / 3.0)).abs() < 1e-12, "{e}");
    }

    #[test]
    fn percentiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert!((percentile(&v, 95.0) - 4.8).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
