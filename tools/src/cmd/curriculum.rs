//! `anatomy curriculum`: the ASCL stages of a question file, ordered easy (dissimilar answer
//! choices, low S(q)) to hard, with their S(q) ranges; optionally how rebuilt distractors change
//! the options per stage.

use std::path::PathBuf;

use anatomy_trainer::ascl::distractors::{label_vocabulary, rebuild_distractors};
use anatomy_trainer::ascl::{
    all_similarities, question_similarity, split_stages, Aggregate, SimilaritySource, Stage,
};
use anatomy_trainer::data::{load, LoadOptions, Question};
use anyhow::{bail, Context, Result};

#[derive(clap::Args)]
pub struct CurriculumArgs {
    /// Question file: Anatomy-R1 JSON, OmniMedVQA JSON or our JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Where similarities come from: policy (token embeddings of --model), policy:<dir>,
    /// bert:<dir> (a sentence encoder) or matrix:<file> (JSON labels + matrix).
    #[arg(long, default_value = "policy")]
    embedder: String,
    /// HF checkpoint directory of the policy, for `--embedder policy`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Number of stages (cut at S(q) quantiles).
    #[arg(long, default_value_t = 3)]
    stages: usize,
    /// S(q) as the most similar distractor instead of the mean over distractors.
    #[arg(long)]
    max: bool,
    /// Rebuild each question's distractors from the data set's label vocabulary per stage.
    #[arg(long)]
    rebuild_distractors: bool,
    /// Questions shown per stage with --rebuild-distractors.
    #[arg(long, default_value_t = 3)]
    examples: usize,
    /// Prefix for image paths.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Skip malformed records (and count them) instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CurriculumArgs) -> Result<()> {
    let options = LoadOptions {
        image_root: args.image_root.clone(),
        skip_bad: args.skip_bad,
    };
    let loaded = load(&args.data, &options)?;
    if !loaded.skipped.is_empty() {
        eprintln!(
            "skipped {} malformed records of {}",
            loaded.skipped.len(),
            args.data.display()
        );
    }
    let questions = loaded.questions;
    if questions.is_empty() {
        bail!("{}: no questions", args.data.display());
    }
    let source = SimilaritySource::parse(&args.embedder)?;
    let sim = source
        .load(args.model.as_deref())
        .with_context(|| format!("loading the {} embedder", args.embedder))?;
    let agg = if args.max {
        Aggregate::Max
    } else {
        Aggregate::Mean
    };
    let sq = all_similarities(&questions, sim.as_ref(), agg)?;
    let stages = split_stages(&sq, args.stages)?;

    let mut rebuilt: Vec<(f32, Vec<(Question, Question)>)> = Vec::new();
    if args.rebuild_distractors {
        let vocab = label_vocabulary(&questions);
        // Rebuilding only makes sense over a closed label set (SGG-VQA's six classes); say how
        // large this one is so that an open-vocabulary file is noticed.
        eprintln!(
            "label vocabulary: {} labels ({})",
            vocab.len(),
            if vocab.len() <= 12 {
                vocab.join(", ")
            } else {
                "first 12: ".to_string() + &vocab[..12].join(", ")
            }
        );
        for s in &stages {
            let mut sum = 0.0;
            let mut examples = Vec::new();
            for &i in &s.members {
                let r = rebuild_distractors(
                    &questions[i],
                    &vocab,
                    sim.as_ref(),
                    s.stage,
                    stages.len(),
                )?;
                sum += question_similarity(&r, sim.as_ref(), agg)?;
                if examples.len() < args.examples {
                    examples.push((questions[i].clone(), r));
                }
            }
            rebuilt.push((sum / s.count as f32, examples));
        }
    }

    if args.json {
        println!("{}", stages_json(&stages, &rebuilt));
        Ok(())
    } else {
        print_table(&args, &stages, &rebuilt, questions.len());
        Ok(())
    }
}

/// `{"stages": [{"stage", "count", "sq_min", "sq_mean", "sq_max"}, ...]}` in training order, with
/// `rebuilt_sq_mean` and `examples` per stage when distractors were rebuilt.
fn stages_json(
    stages: &[Stage],
    rebuilt: &[(f32, Vec<(Question, Question)>)],
) -> serde_json::Value {
    let stages: Vec<serde_json::Value> = stages
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let mut v = serde_json::json!({
                "stage": s.stage,
                "count": s.count,
                "sq_min": s.sq_min,
                "sq_mean": s.sq_mean,
                "sq_max": s.sq_max,
            });
            if let Some((mean, examples)) = rebuilt.get(k) {
                v["rebuilt_sq_mean"] = serde_json::json!(mean);
                v["examples"] = examples
                    .iter()
                    .map(|(before, after)| {
                        serde_json::json!({
                            "id": before.id,
                            "answer": before.answer_letter().to_string(),
                            "before": before.options,
                            "after": after.options,
                        })
                    })
                    .collect();
            }
            v
        })
        .collect();
    serde_json::json!({ "stages": stages })
}

fn print_table(
    args: &CurriculumArgs,
    stages: &[Stage],
    rebuilt: &[(f32, Vec<(Question, Question)>)],
    total: usize,
) {
    println!(
        "{} questions from {}, S(q) by {} ({}), training order easy -> hard:",
        total,
        args.data.display(),
        args.embedder,
        if args.max { "max" } else { "mean" }
    );
    println!("stage  count  S(q) min   mean    max");
    for s in stages {
        println!(
            "{:>5}  {:>5}  {:>8.4} {:>7.4} {:>7.4}",
            s.stage, s.count, s.sq_min, s.sq_mean, s.sq_max
        );
    }
    if stages.len() < args.stages {
        println!(
            "({} stages, not {}: questions with equal S(q) share a stage)",
            stages.len(),
            args.stages
        );
    }
    for (s, (mean, examples)) in stages.iter().zip(rebuilt) {
        println!(
            "\nstage {}: rebuilt distractors, mean S(q) {:.4} -> {:.4}",
            s.stage, s.sq_mean, mean
        );
        for (before, after) in examples {
            println!(
                "  #{} answer {}: [{}] -> [{}]",
                before.id,
                before.answer_text(),
                before.options.join(", "),
                after.options.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_issue_keys_in_training_order() {
        let stages = split_stages(&[0.3, 0.1, 0.2, 0.9], 2).unwrap();
        let v = stages_json(&stages, &[]);
        let arr = v["stages"].as_array().unwrap();
        assert_eq!(arr.len(), 2);
        for (k, s) in arr.iter().enumerate() {
            assert_eq!(s["stage"], k);
            for key in ["count", "sq_min", "sq_mean", "sq_max"] {
                assert!(s[key].is_number(), "{key}");
            }
            assert!(s.get("examples").is_none());
        }
        assert_eq!(arr[0]["count"], 2);
        assert!(arr[0]["sq_max"].as_f64() < arr[1]["sq_min"].as_f64());
    }
}
