//! The GGUF tokenizer at full scale: the real Qwen2 vocabulary (`../shared/data/vocab/qwen2.gguf`,
//! 151k tokens, from llama.cpp's test models) against HF `tokenizers` fed the same tokens and
//! merges with the Qwen2 `tokenizer.json` pipeline (NFC, the Split regex, ByteLevel, BPE).

use std::path::PathBuf;

use anatomy_runtime::gguf::GgufFile;
use anatomy_runtime::tokenizer::QWEN2_PATTERN;
use anatomy_runtime::Tokenizer;

fn vocab_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/vocab/qwen2.gguf")
}

/// An HF tokenizer built from the GGUF's own vocabulary, merges and token types.
fn hf_from_gguf(f: &GgufFile) -> tokenizers::Tokenizer {
    let tokens: Vec<&str> = f
        .get("tokenizer.ggml.tokens")
        .unwrap()
        .as_array()
        .unwrap()
        .strings()
        .unwrap()
        .collect();
    let types = f
        .get("tokenizer.ggml.token_type")
        .unwrap()
        .as_array()
        .unwrap()
        .ints()
        .unwrap();
    let merges: Vec<&str> = f
        .get("tokenizer.ggml.merges")
        .unwrap()
        .as_array()
        .unwrap()
        .strings()
        .unwrap()
        .collect();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
        if *ty == 3 || *ty == 4 {
            added.push(
                serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *ty == 3}),
            );
        } else {
            vocab.insert(t.to_string(), i.into());
        }
    }
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    json.to_string().parse().unwrap()
}

const TEXTS: &[&str] = &[
    "Which organ is at the top-left of the frame?",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n",
    "The gallbladder's cystic duct isn't clipped; we'll REVIEW it. They'd've said I'M sure.",
    "Numbers: 1234567890, 3.14159, -42, 1e-6, 10,000 and ١٢٣ (Arabic-Indic) and ⅧⅨ",
    "Whitespace:   three spaces,\ttab,\t\ttwo tabs,\n\nnewlines\r\n crlf  \n   trailing   ",
    "Unicode: naïve café résumé, Zürich, 東京タワー, 胆囊三角, Ελληνικά, русский, עברית, हिन्दी",
    "Emoji 😀👍🏽 and ZWJ 👩‍⚕️ family 👨‍👩‍👧 flags 🇩🇪",
    "Decomposed e\u{301} and Å vs A\u{30a}; ligature ﬁ; full-width ＡＢＣ１２３",
    "<think> The structure is smooth and red. </think> <answer>B</answer>",
    "code: fn main() { println!(\"{}\", x[0] >= 1 && y != 2); } // ok?!...",
    "<|endoftext|><|endoftext|>x<|im_end|>",
    "    leading spaces and a very_long_identifier_name_with_underscores__",
    "Mixed\u{00a0}no-break\u{2003}em-space\u{3000}ideographic",
    "A. Liver\nB. Gallbladder\nC. Cystic artery\nD. Common bile duct",
    "",
    " ",
    "'s 'S 'Re 'VE 'll 'd 'm",
];

#[test]
fn equals_hf_tokenizers_on_the_real_qwen2_vocabulary() {
    let path = vocab_path();
    let f = GgufFile::open(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared vocabulary is required)",
            path.display()
        )
    });
    let ours = Tokenizer::from_gguf(&f).unwrap();
    let hf = hf_from_gguf(&f);
    assert!(ours.vocab_size() > 151_000);
    let mut agree = 0;
    for t in TEXTS {
        let want = hf.encode(*t, false).unwrap().get_ids().to_vec();
        let got = ours.encode(t).unwrap();
        assert_eq!(got, want, "{t:?}");
        let nfc_decoded = hf.decode(&want, false).unwrap();
        assert_eq!(ours.decode(&got, false), nfc_decoded, "{t:?}");
        agree += 1;
    }
    eprintln!("{agree}/{} texts tokenized identically", TEXTS.len());
}

/// Qwen2's vocabulary writes `<answer>B` as `<`, `answer`, `>B`: the letter is chosen while the
/// tag is still open, so the runtime must know the fused `>X` tokens to read option probabilities
/// where the model actually decides.
#[test]
fn qwen2_fuses_the_closing_bracket_with_the_letter() {
    let f = GgufFile::open(vocab_path()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let ids = tok.encode("<answer>B").unwrap();
    let fused = anatomy_runtime::generate::fused_letter_ids(&tok, 4);
    let after_open = &fused[">"];
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(after_open[1].contains(&ids[2]));
    for (i, letter) in ["A", "B", "C", "D"].iter().enumerate() {
        let want = tok.encode(&format!(">{letter}")).unwrap();
        assert_eq!(want.len(), 1);
        assert!(after_open[i].contains(&want[0]));
    }
}
