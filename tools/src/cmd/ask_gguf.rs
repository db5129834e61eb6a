//! `anatomy ask --model/--mmproj`: the lean runtime on GGUF files, streaming text or printing one
//! JSON object with the answer, the option choice and probabilities, and timings; for several
//! questions about one image, one answer (one JSON line) per question from one session.

use std::io::Write;

use anatomy_runtime::generate::{AskRequest, Flow, ImageInput};
use anatomy_runtime::gguf::Residence;
use anatomy_runtime::{Model, ModelOptions, SamplingParams, Session};
use anyhow::{Context, Result};

use super::ask::AskArgs;

/// `"A;B; C"` -> `["A", "B", "C"]`; an empty list or empty entry is refused by the runtime.
pub fn parse_options(s: &str) -> Vec<String> {
    s.split(';').map(|o| o.trim().to_string()).collect()
}

pub fn run(args: &AskArgs) -> Result<()> {
    let lm = args.model.as_deref().context("--model is required")?;
    let opts = ModelOptions {
        threads: args.threads,
        context: args.context,
        cache_type: args.cache_type,
        max_image_tokens: args.max_image_tokens,
        residence: Residence::from_no_mmap(args.no_mmap),
        ..Default::default()
    };
    let model = Model::load(lm, args.mmproj.as_deref(), &opts)
        .with_context(|| format!("loading {}", lm.display()))?;
    let mut session = model.session();
    let several = args.questions.len() > 1;
    for question in &args.questions {
        if several && !args.json {
            println!("Q: {question}");
        }
        answer_one(&mut session, args, question)?;
    }
    Ok(())
}

/// Asks `question` on `session` (whose image cache and context the questions before it left) and
/// prints the answer.
fn answer_one(session: &mut Session, args: &AskArgs, question: &str) -> Result<()> {
    let req = AskRequest {
        question: question.to_string(),
        image: args.image.clone().map(ImageInput::Path),
        options: args
            .options
            .as_deref()
            .map(parse_options)
            .unwrap_or_default(),
        max_tokens: args.max_tokens,
        lookup: args.lookup,
        sampling: SamplingParams {
            temperature: args.temp,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repeat_penalty,
            seed: args.seed,
        },
    };
    let mut stdout = std::io::stdout();
    let json = args.json;
    let answer = session.ask(&req, &mut |piece| {
        if !json {
            // A closed stdout (a pipe to `head`) ends generation instead of failing it.
            if write!(stdout, "{piece}")
                .and_then(|_| stdout.flush())
                .is_err()
            {
                return Flow::Stop;
            }
        }
        Flow::Continue
    })?;
    let t = &answer.timings;
    if json {
        let mut out = serde_json::json!({
            "question": question,
            "text": answer.text,
            "token_ids": answer.token_ids,
            "prompt_tokens": answer.prompt_tokens,
            "image_tokens": answer.image_tokens,
            "finish": format!("{:?}", answer.finish).to_lowercase(),
            "timings": {
                "load_ms": t.load_ms,
                "image_encode_ms": t.image_encode_ms,
                "image_cached": t.image_cached,
                "prefill_ms": t.prefill_ms,
                "prefill_tokens": t.prefill_tokens,
                "prefill_reused_tokens": t.prefill_reused_tokens,
                "decode_ms": t.decode_ms,
                "decode_tokens": t.decode_tokens,
                "lookup_accepted_tokens": t.lookup_accepted_tokens,
                "peak_rss_bytes": t.peak_rss_bytes,
            },
        });
        if let (Some(c), Some(p)) = (answer.choice, &answer.option_probs) {
            out["choice"] = serde_json::json!(c.to_string());
            out["option_probs"] = serde_json::json!(p);
            out["answer_tag_generated"] = serde_json::json!(answer.answer_tag_generated);
        }
        println!("{out}");
    } else {
        println!();
        if let (Some(c), Some(p)) = (answer.choice, &answer.option_probs) {
            let probs: Vec<String> = p
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{}={v:.3}", anatomy_runtime::generate::option_letter(i)))
                .collect();
            println!("choice: {c} ({})", probs.join(", "));
        }
    }
    Ok(())
}
