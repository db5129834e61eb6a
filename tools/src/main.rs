//! `anatomy`: the command line of anatomy-r1. One file per subcommand under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "anatomy", version, about = "Teach vision-language models surgical anatomy, and run them offline")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ask a question about an image.
    Ask(cmd::ask::AskArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ask(args) => cmd::ask::run(args),
    }
}
