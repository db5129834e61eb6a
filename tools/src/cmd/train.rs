//! `anatomy train`: run SFT or a GRPO-family method from a `run.toml`, or resume a run, with a live
//! progress bar (step, reward, accuracy, S(q), invalid-gradient ratio); the run's plots are drawn
//! into its directory at the end.

use std::path::{Path, PathBuf};

use anatomy_trainer::run::plot::{load_run, plot_runs, DEFAULT_FONT};
use anatomy_trainer::run::{RunConfig, Trainer};
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The run configuration (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set output_dir=runs/a --set lora.rank=4`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "config")]
    resume: Option<PathBuf>,
    /// No progress bar (one line per step on stderr instead).
    #[arg(long)]
    quiet: bool,
    /// Threads for candle's CPU kernels; one per physical core by default. Small models train
    /// faster on fewer: the demo model's steps are too small to pay for waking a second thread.
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // candle sizes its pools from these variables when it first needs one, which is after this
        // point: nothing has started a thread yet.
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let mut trainer = match (&args.config, &args.resume) {
        (Some(path), None) => {
            let cfg = RunConfig::load(path, &args.set)?;
            Trainer::new(cfg).context("starting the run")?
        }
        (None, Some(dir)) => {
            if !args.set.is_empty() {
                bail!("--set cannot change a resumed run: it continues with its own config.toml");
            }
            Trainer::resume(dir).with_context(|| format!("resuming {}", dir.display()))?
        }
        _ => bail!("pass --config <run.toml> or --resume <run-dir>"),
    };
    let total = trainer.config().steps as u64;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("static template"),
    );
    bar.set_position(trainer.step_index() as u64);
    while !trainer.is_done() {
        let r = trainer.step()?;
        let sq = r.sq.map_or("-".to_string(), |s| format!("{s:.3}"));
        let msg = format!(
            "step {} reward {:.3} acc {:.3} S(q) {sq} invalid {:.2}",
            r.step, r.reward, r.accuracy, r.invalid_ratio
        );
        if args.quiet {
            eprintln!("{msg}");
        }
        bar.set_message(msg);
        bar.inc(1);
    }
    bar.finish();
    let run_dir = args
        .resume
        .clone()
        .unwrap_or_else(|| trainer.config().output_dir.clone());
    // The run itself succeeded; a missing font must not turn it into a failure.
    match load_run(&run_dir).and_then(|r| plot_runs(&[r], &run_dir, Path::new(DEFAULT_FONT))) {
        Ok(files) => {
            for f in files {
                eprintln!("plot: {}", f.display());
            }
        }
        Err(e) => eprintln!("warning: no plots: {e}"),
    }
    eprintln!("run written to {}", run_dir.display());
    Ok(())
}
