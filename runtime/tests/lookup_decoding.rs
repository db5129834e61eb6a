//! Prompt-lookup decoding (`AskRequest::lookup`, `Session::advance`) on the committed demo
//! model, whose reasoning repeats the option names of its prompt: the answers are those of
//! one-token decoding, bit for bit, and drafted tokens are actually taken.

use std::path::PathBuf;

use anatomy_runtime::generate::ImageInput;
use anatomy_runtime::{AskRequest, Flow, Model, ModelOptions, SamplingParams};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The sample questions shipped with the demo model: (question, options, image).
fn samples() -> Vec<(String, Vec<String>, PathBuf)> {
    let dir = root().join("demo/samples");
    let text = std::fs::read_to_string(dir.join("questions.json")).unwrap();
    let all: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    all.iter()
        .map(|q| {
            let lines: Vec<&str> = q["instruction"].as_str().unwrap().lines().collect();
            let at = lines.iter().position(|l| *l == "Question:").unwrap();
            let options = lines[at + 3..]
                .iter()
                .map(|l| l.split_once(". ").unwrap().1.to_string())
                .collect();
            let image = dir.join(q["images"].as_str().unwrap());
            (lines[at + 1].to_string(), options, image)
        })
        .collect()
}

#[test]
fn lookup_decoding_answers_exactly_as_one_token_decoding() {
    let opts = ModelOptions {
        threads: Some(2),
        ..Default::default()
    };
    let model = Model::load(
        root().join("demo/anatomy-demo.gguf"),
        Some(&root().join("demo/anatomy-demo-mmproj.gguf")),
        &opts,
    )
    .unwrap();
    let samples = samples();
    assert!(samples.len() >= 4);
    let sampled = SamplingParams {
        temperature: 0.9,
        seed: 11,
        ..Default::default()
    };
    for sampling in [SamplingParams::default(), sampled] {
        // One session per setting, answering the questions in turn: each prompt after the
        // first keeps the prefix the one before left, drafted tokens included or not.
        let answers = |lookup: usize| {
            let mut s = model.session();
            samples
                .iter()
                .take(4)
                .map(|(question, options, image)| {
                    let req = AskRequest {
                        question: question.clone(),
                        image: Some(ImageInput::Path(image.clone())),
                        options: options.clone(),
                        max_tokens: 96,
                        sampling: sampling.clone(),
                        lookup,
                    };
                    s.ask(&req, &mut |_| Flow::Continue).unwrap()
                })
                .collect::<Vec<_>>()
        };
        let want = answers(0);
        assert!(want.iter().all(|a| a.timings.lookup_accepted_tokens == 0));
        for lookup in [1, 3, 8] {
            let got = answers(lookup);
            let mut accepted = 0;
            for (g, w) in got.iter().zip(&want) {
                let what = format!("lookup {lookup}, temperature {}", sampling.temperature);
                assert_eq!(g.token_ids, w.token_ids, "{what}");
                assert_eq!(g.text, w.text, "{what}");
                assert_eq!(g.finish, w.finish, "{what}");
                assert_eq!(g.choice, w.choice, "{what}");
                let bits = |p: &Option<Vec<f32>>| {
                    p.as_ref()
                        .map(|p| p.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
                };
                assert_eq!(bits(&g.option_probs), bits(&w.option_probs), "{what}");
                assert_eq!(g.timings.decode_tokens, w.timings.decode_tokens, "{what}");
                assert!(g.timings.lookup_accepted_tokens <= g.timings.decode_tokens);
                accepted += g.timings.lookup_accepted_tokens;
            }
            assert!(
                accepted > 0,
                "lookup {lookup}: no drafted token was taken on answers that repeat their prompt"
            );
        }
    }
}
