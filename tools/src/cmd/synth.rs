//! `anatomy synth`: a synthetic dataset of laparoscopic-style scenes with SGG-VQA questions in the
//! Anatomy-R1 JSON layout (train and held-out splits), for training and evaluating without the
//! CholecT45 frames, which cannot be redistributed.

use std::path::PathBuf;

use anatomy_trainer::synth::{generate, Form, SynthConfig};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct SynthArgs {
    /// Output directory (created if missing): images/, train.json, holdout.json, questions.json,
    /// synth.json.
    #[arg(long)]
    out: PathBuf,
    /// Number of scenes (one image each).
    #[arg(long)]
    count: usize,
    /// Seed: the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image side in pixels.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Share of the scenes held out (the last ones) into holdout.json.
    #[arg(long, default_value_t = 0.2)]
    holdout_fraction: f64,
    /// Distinct questions per scene (fewer when a scene does not allow that many).
    #[arg(long, default_value_t = 1)]
    per_image: usize,
    /// Only these question forms (comma-separated: position, attribute, relation); all by default.
    #[arg(long, value_delimiter = ',', value_parser = parse_form)]
    forms: Vec<Form>,
    /// Balance the correct answers over the six anatomy classes.
    #[arg(long)]
    balance: bool,
    /// Put this instruction before each question instead of the paper's.
    #[arg(long)]
    instruction: Option<String>,
    /// List all six anatomy classes as options in a fixed order (each class keeps its letter)
    /// instead of four shuffled ones.
    #[arg(long)]
    all_options: bool,
    /// Instead of scenes, the flat-colour task of the learning tests: `count` questions "What
    /// colour is the image?" over this many colours (2-4), each colour keeping its letter, written
    /// as `questions.jsonl` with one PNG per colour.
    #[arg(long, value_name = "N")]
    colour_task: Option<usize>,
    /// Worker threads (default: one per core). The output is the same for any number: a recipe
    /// can write the next stage's frames on a core that training leaves free.
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SynthArgs) -> Result<()> {
    if let Some(colours) = args.colour_task {
        anyhow::ensure!(
            (2..=4).contains(&colours),
            "--colour-task takes 2 to 4 colours, got {colours}"
        );
        let path = anatomy_trainer::run::synthetic::write_colour_task(
            &args.out, args.count, colours, false, args.seed,
        )
        .with_context(|| format!("writing the colour task to {}", args.out.display()))?;
        println!("{} questions in {}", args.count, path.display());
        return Ok(());
    }
    let config = SynthConfig {
        count: args.count,
        seed: args.seed,
        size: args.size,
        holdout_fraction: args.holdout_fraction,
        per_image: args.per_image,
        forms: args.forms,
        balance: args.balance,
        instruction: args.instruction,
        all_options: args.all_options,
        threads: match args.threads {
            Some(0) => anyhow::bail!("--threads must be at least 1"),
            Some(n) => n,
            None => 0,
        },
    };
    // Check before drawing a progress bar, so a bad flag gives only its message.
    config.validate()?;
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.count as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} scenes [{elapsed_precise}<{eta_precise}]",
        )
        .expect("static template"),
    );
    let summary = generate(&args.out, &config, &|done| bar.set_position(done as u64))
        .with_context(|| format!("writing a synthetic dataset to {}", args.out.display()))?;
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "{} images, {} train and {} held-out questions in {}",
            summary.images,
            summary.train,
            summary.holdout,
            args.out.display()
        );
        let forms: Vec<String> = summary
            .forms
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let answers: Vec<String> = summary
            .answers
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("forms: {}", forms.join(", "));
        println!("answers: {}", answers.join(", "));
    }
    Ok(())
}

fn parse_form(s: &str) -> Result<Form, String> {
    match s.trim() {
        "position" => Ok(Form::Position),
        "attribute" => Ok(Form::Attribute),
        "relation" => Ok(Form::Relation),
        other => Err(format!(
            "unknown form {other:?} (position, attribute, relation)"
        )),
    }
}
