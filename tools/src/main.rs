//! `anatomy`: the command line of anatomy-r1. One file per subcommand under `cmd/`.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "anatomy",
    version,
    about = "Teach vision-language models surgical anatomy, and run them offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a question about an image.
    Ask(cmd::ask::AskArgs),
    /// Order a question file into ASCL curriculum stages by answer-choice similarity S(q).
    Curriculum(cmd::curriculum::CurriculumArgs),
    /// Write the GDQA variants of each question (rephrased, options permuted, answer kept).
    Augment(cmd::augment::AugmentArgs),
    /// Convert an HF Qwen2.5-VL checkpoint into GGUF files (language model and vision projector).
    Convert(cmd::convert::ConvertArgs),
    /// Create a random-weight Qwen2.5-VL of given sizes with a BPE vocabulary trained on question files.
    InitBase(cmd::init_base::InitBaseArgs),
    /// Show a GGUF file's metadata and tensors.
    Inspect(cmd::inspect::InspectArgs),
    /// Show the token ids the runtime's GGUF tokenizer gives a text.
    Tokenize(cmd::tokenize::TokenizeArgs),
    /// Measure load, image encode, prefill and decode speed of GGUF files.
    Bench(cmd::bench::BenchArgs),
    /// Write a random-weight GGUF pair with the tensor shapes of Qwen2.5-VL-3B/7B (for benchmarks).
    RandomGguf(cmd::random_gguf::RandomGgufArgs),
    /// Write synthetic laparoscopic scenes with SGG-VQA questions (Anatomy-R1 JSON, train/holdout).
    Synth(cmd::synth::SynthArgs),
    /// Train with SFT or GRPO/DAPO/GPG/Dr. GRPO (+ ASCL, + GDQA) from a run.toml, or resume a run.
    Train(cmd::train::TrainArgs),
    /// Draw runs' metrics.jsonl as PNGs: reward with S(q), and invalid-gradient ratio per class.
    Plot(cmd::plot::PlotArgs),
    /// Accuracy per answer class, confusion matrix, calibration and latency of a model.
    Eval(cmd::eval::EvalArgs),
    /// Merge a run's LoRA adapters into its base and write the GGUF files (with provenance).
    Export(cmd::export::ExportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ask(args) => cmd::ask::run(args),
        Command::Curriculum(args) => cmd::curriculum::run(args),
        Command::Augment(args) => cmd::augment::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::InitBase(args) => cmd::init_base::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Tokenize(args) => cmd::tokenize::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::RandomGguf(args) => cmd::random_gguf::run(args),
        Command::Synth(args) => cmd::synth::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Plot(args) => cmd::plot::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Export(args) => cmd::export::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, which is what a user needs.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
