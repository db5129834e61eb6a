//! `anatomy tokenize`: the ids (and pieces) the runtime's GGUF tokenizer gives a text. Works on a
//! vocabulary-only GGUF: only the `tokenizer.ggml.*` metadata is read.

use std::path::PathBuf;

use anatomy_runtime::gguf::GgufFile;
use anatomy_runtime::Tokenizer;
use anyhow::{Context, Result};

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A GGUF file with `tokenizer.ggml.*` metadata (a model or a vocabulary-only file).
    #[arg(long)]
    model: PathBuf,
    /// Print one JSON object (`ids`, `pieces`, `count`).
    #[arg(long)]
    json: bool,
    /// The text to tokenize (special tokens such as <|im_start|> are recognised).
    text: String,
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let f = GgufFile::open(&args.model)?;
    let tok = Tokenizer::from_gguf(&f)
        .with_context(|| format!("reading the tokenizer of {}", args.model.display()))?;
    let ids = tok.encode(&args.text)?;
    // Pieces as text (byte characters decoded; a piece may be a partial UTF-8 sequence).
    let pieces: Vec<String> = ids.iter().map(|&i| tok.decode(&[i], false)).collect();
    if args.json {
        let out = serde_json::json!({ "ids": ids, "pieces": pieces, "count": ids.len() });
        println!("{out}");
    } else {
        for (id, p) in ids.iter().zip(&pieces) {
            println!("{id:>8} {p:?}");
        }
    }
    Ok(())
}
