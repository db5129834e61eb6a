//! `anatomy plot`: draw one or more runs' `metrics.jsonl` as the paper's two figures (reward with
//! S(q) on a second axis, and the invalid-gradient ratio per answer class), runs overlaid.

use std::path::PathBuf;

use anatomy_trainer::run::plot::{load_run, plot_runs, DEFAULT_FONT};
use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Run directories holding a `metrics.jsonl`; each becomes one legend entry, named after it.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Where to write the PNGs (default: the first run directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// TrueType font for the labels.
    #[arg(long, default_value = DEFAULT_FONT)]
    font: PathBuf,
}

pub fn run(args: PlotArgs) -> Result<()> {
    let runs = args
        .runs
        .iter()
        .map(|dir| load_run(dir).with_context(|| format!("reading run {}", dir.display())))
        .collect::<Result<Vec<_>>>()?;
    let out = args.out.unwrap_or_else(|| args.runs[0].clone());
    let files = plot_runs(&runs, &out, &args.font).context("plotting")?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
