//! `anatomy augment`: the GDQA variants of each question (rephrasing, option order with the answer
//! letter remapped, instruction wording), all with the same correct answer.

use std::io::Write;
use std::path::PathBuf;

use anatomy_trainer::data::{load, LoadOptions, Question};
use anatomy_trainer::gdqa::make_variants;
use anyhow::{bail, Result};

#[derive(clap::Args)]
pub struct AugmentArgs {
    /// Question file: Anatomy-R1 JSON, OmniMedVQA JSON or our JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Variants per question, the original included (variant 0).
    #[arg(long, default_value_t = 4)]
    variants: usize,
    /// Seed of the option permutations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
    /// Prefix for image paths.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Skip malformed records (and count them) instead of failing.
    #[arg(long)]
    skip_bad: bool,
    /// JSON lines, one per variant.
    #[arg(long)]
    json: bool,
}

/// One JSON line: `id` of the source record, `variant`, `question`, `options` in their new order,
/// `answer` as the letter, plus `answer_text`, `image` and `instruction`.
fn variant_json(id: &str, variant: usize, x: &Question) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "variant": variant,
        "question": x.question,
        "options": x.options,
        "answer": x.answer_letter().to_string(),
        "answer_text": x.answer_text(),
        "image": x.image,
        "instruction": x.instruction,
    })
}

pub fn run(args: AugmentArgs) -> Result<()> {
    if args.variants == 0 {
        bail!("--variants must be at least 1");
    }
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
    let limit = args.limit.unwrap_or(usize::MAX);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for q in loaded.questions.iter().take(limit) {
        for (v, x) in make_variants(q, args.variants, args.seed)
            .iter()
            .enumerate()
        {
            if args.json {
                writeln!(out, "{}", variant_json(&q.id, v, x))?;
            } else {
                writeln!(out, "#{} variant {}: {}", q.id, v, x.question)?;
                for (i, o) in x.options.iter().enumerate() {
                    let mark = if i == x.answer { "*" } else { " " };
                    writeln!(out, "  {mark}{}. {o}", anatomy_trainer::data::letter(i))?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anatomy_trainer::data::prompt::PAPER_INSTRUCTION_CHOICE;

    #[test]
    fn a_variant_line_keeps_the_answer_letter_on_its_text() {
        let q = Question {
            id: "12".into(),
            image: "/CholecT45/a.png".into(),
            instruction: PAPER_INSTRUCTION_CHOICE.into(),
            question: "What is the white anatomy?".into(),
            options_heading: "Anatomy Options".into(),
            options: vec![
                "Liver".into(),
                "Gut".into(),
                "Omentum".into(),
                "Cystic Plate".into(),
            ],
            answer: 3,
            question_type: None,
            modality: None,
            caption: None,
        };
        for (v, x) in make_variants(&q, 5, 9).iter().enumerate() {
            let j = variant_json(&q.id, v, x);
            assert_eq!(j["id"], "12");
            assert_eq!(j["variant"], v);
            let letter = j["answer"].as_str().unwrap().chars().next().unwrap();
            let idx = anatomy_trainer::data::letter_index(letter).unwrap();
            assert_eq!(j["options"][idx], "Cystic Plate");
            assert_eq!(j["options"].as_array().unwrap().len(), 4);
            assert!(j["question"].is_string());
        }
    }
}
