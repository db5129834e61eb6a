//! The pipeline on a small hand-made vocabulary: added-token splitting, the regex pieces, merges
//! and byte-exact decoding. Agreement with HF `tokenizers` at full scale is in `tests/`.

use super::bpe::byte_chars;
use super::*;

/// 256 byte tokens, then "Ġt" "he" "Ġthe" by merges, then two added tokens.
fn tiny() -> Tokenizer {
    let bc = byte_chars();
    let mut tokens: Vec<String> = bc.iter().map(|c| c.to_string()).collect();
    let mut types = vec![1i64; 256];
    for t in ["Ġt", "he", "Ġthe"] {
        tokens.push(t.into());
        types.push(1);
    }
    tokens.push("<|im_end|>".into());
    types.push(TYPE_CONTROL);
    tokens.push("<tool>".into());
    types.push(TYPE_USER_DEFINED);
    Tokenizer::new(
        "tiny".into(),
        tokens,
        &types,
        &["Ġ t", "h e", "Ġt he"],
        Some(259),
        None,
    )
    .unwrap()
}

#[test]
fn merges_added_tokens_and_round_trip() {
    let t = tiny();
    let ids = t.encode("hi the<|im_end|>x<tool>").unwrap();
    let h = b'h' as u32;
    assert_eq!(
        ids,
        vec![h, b'i' as u32, 258, 259, b'x' as u32, 260],
        "{ids:?}"
    );
    assert_eq!(t.decode(&ids, false), "hi the<|im_end|>x<tool>");
    assert_eq!(t.decode(&ids, true), "hi thex<tool>");
}

#[test]
fn unicode_and_whitespace_round_trip_bytewise() {
    let t = tiny();
    for s in [
        "naïve café  \n\n  x",
        "数字 123\t\t",
        "  ",
        "e\u{301}",
        "😀!!",
    ] {
        let ids = t.encode(s).unwrap();
        let nfc: String = s.nfc().map(|(c, _)| c).collect();
        assert_eq!(t.decode(&ids, false), nfc, "{s:?}");
    }
    // Digits are split one by one by the Qwen2 pattern.
    assert_eq!(t.encode("123").unwrap().len(), 3);
}

#[test]
fn bad_merges_are_refused() {
    let bc = byte_chars();
    let tokens: Vec<String> = bc.iter().map(|c| c.to_string()).collect();
    let e = Tokenizer::new("x".into(), tokens, &[1; 256], &["a zz"], None, None);
    assert!(matches!(e, Err(TokenizerError::BadMerge { index: 0, .. })));
}
