//! The Qwen2 tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata, no `tokenizer.json`:
//! added tokens (control and user-defined) are split out of the raw text first, the rest is NFC
//! normalised, cut by the Qwen2 pre-tokenizer regex, mapped to GPT-2 byte characters and merged
//! by rank. This is the pipeline of the HF `tokenizer.json` Qwen2 ships (normalizer NFC, Split
//! with the regex below in `Isolated` mode, ByteLevel without prefix space, BPE).
//!
//! - `bpe`: the byte map and the merge table.

mod bpe;

use std::collections::HashMap;

use fancy_regex::Regex;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::gguf::GgufFile;
use bpe::{byte_chars, Merges};

/// The Qwen2 pre-tokenizer split (`tokenizer.ggml.pre = qwen2`).
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: missing tokenizer key {key}")]
    MissingKey { path: String, key: &'static str },
    #[error(
        "{path}: tokenizer.ggml.model is {found:?}; only byte-level BPE (\"gpt2\") is supported"
    )]
    Model { path: String, found: String },
    #[error("{path}: tokenizer.ggml.pre is {found:?}; only the Qwen2 pre-tokenizer is supported")]
    Pre { path: String, found: String },
    #[error("{path}: merge {index} ({merge:?}) does not name two tokens whose join is a token")]
    BadMerge {
        path: String,
        index: usize,
        merge: String,
    },
    #[error("{path}: {key} has {found} entries, the vocabulary {expected}")]
    Length {
        path: String,
        key: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("the vocabulary has no {0} token")]
    MissingToken(&'static str),
    #[error("text splitting failed: {0}")]
    Regex(String),
}

/// A byte-level BPE tokenizer.
pub struct Tokenizer {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
    merges: Merges,
    /// Added tokens, longest first so a token that extends another wins.
    added: Vec<(String, u32)>,
    /// Control tokens, dropped by `decode(.., skip_special = true)`.
    control: Vec<bool>,
    /// Whether a token's text is raw (added tokens) rather than byte characters.
    raw: Vec<bool>,
    char_byte: HashMap<char, u8>,
    /// Vocabulary id of each byte's character, when the vocabulary has it.
    byte_id: [Option<u32>; 256],
    re: Regex,
    pub eos_id: Option<u32>,
    pub bos_id: Option<u32>,
}

impl Tokenizer {
    /// Reads `tokenizer.ggml.{model,pre,tokens,token_type,merges}` and the special-token ids.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, TokenizerError> {
        let path = f.path().to_string();
        let missing = |key: &'static str| TokenizerError::MissingKey {
            path: path.clone(),
            key,
        };
        let model = f
            .get("tokenizer.ggml.model")
            .and_then(|v| v.as_str())
            .ok_or_else(|| missing("tokenizer.ggml.model"))?;
        if model != "gpt2" {
            return Err(TokenizerError::Model {
                path,
                found: model.into(),
            });
        }
        if let Some(pre) = f.get("tokenizer.ggml.pre").and_then(|v| v.as_str()) {
            if pre != "qwen2" {
                return Err(TokenizerError::Pre {
                    path,
                    found: pre.into(),
                });
            }
        }
        let tokens: Vec<String> = f
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .and_then(|a| a.strings().map(|s| s.map(String::from).collect()))
            .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
        let types: Vec<i64> = match f.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .as_array()
                .and_then(|a| a.ints())
                .ok_or_else(|| missing("tokenizer.ggml.token_type"))?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(TokenizerError::Length {
                path,
                key: "tokenizer.ggml.token_type",
                found: types.len(),
                expected: tokens.len(),
            });
        }
        let merges: Vec<&str> = f
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.as_array())
            .and_then(|a| a.strings().map(|s| s.collect()))
            .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
        let id_key = |k: &str| {
            f.get(k)
                .and_then(|v| v.as_u64())
                .and_then(|v| u32::try_from(v).ok())
                .filter(|&v| (v as usize) < tokens.len())
        };
        let (eos_id, bos_id) = (
            id_key("tokenizer.ggml.eos_token_id"),
            id_key("tokenizer.ggml.bos_token_id"),
        );
        Self::new(path, tokens, &types, &merges, eos_id, bos_id)
    }

    fn new(
        path: String,
        tokens: Vec<String>,
        types: &[i64],
        merges: &[&str],
        eos_id: Option<u32>,
        bos_id: Option<u32>,
    ) -> Result<Self, TokenizerError> {
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            // The first id wins on duplicates, as in llama.cpp's `token_to_id` build.
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let mut table = Merges::default();
        for (rank, m) in merges.iter().enumerate() {
            let bad = || TokenizerError::BadMerge {
                path: path.clone(),
                index: rank,
                merge: m.to_string(),
            };
            let (a, b) = m.split_once(' ').ok_or_else(bad)?;
            let (Some(&l), Some(&r), Some(&j)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            else {
                return Err(bad());
            };
            table.insert(l, r, rank as u32, j);
        }
        let is_added = |t: i64| t == TYPE_CONTROL || t == TYPE_USER_DEFINED;
        let mut added: Vec<(String, u32)> = tokens
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(_, (s, &t))| is_added(t) && !s.is_empty())
            .map(|(i, (s, _))| (s.clone(), i as u32))
            .collect();
        added.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let byte_char = byte_chars();
        let char_byte = byte_char
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let mut byte_id = [None; 256];
        for (b, slot) in byte_id.iter_mut().enumerate() {
            *slot = ids.get(&byte_char[b].to_string()).copied();
        }
        let re = Regex::new(QWEN2_PATTERN).map_err(|e| TokenizerError::Regex(e.to_string()))?;
        Ok(Self {
            control: types.iter().map(|&t| t == TYPE_CONTROL).collect(),
            raw: types.iter().map(|&t| is_added(t)).collect(),
            tokens,
            ids,
            merges: table,
            added,
            char_byte,
            byte_id,
            re,
            eos_id,
            bos_id,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    /// The stored piece of `id` (byte characters for ordinary tokens).
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }

    /// Token ids of `text`; added tokens anywhere in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match self.next_added(rest) {
                Some((at, len, id)) => {
                    self.encode_plain(&rest[..at], &mut out)?;
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain(rest, &mut out)?;
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The earliest added token in `s` (longest at that position): (byte offset, length, id).
    fn next_added(&self, s: &str) -> Option<(usize, usize, u32)> {
        let mut best: Option<(usize, usize, u32)> = None;
        for (tok, id) in &self.added {
            if let Some(at) = s.find(tok.as_str()) {
                // `added` is longest first, so an equal position keeps the longer token.
                if best.is_none_or(|(b, _, _)| at < b) {
                    best = Some((at, tok.len(), *id));
                }
            }
        }
        best
    }

    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let text: String = text.nfc().map(|(c, _)| c).collect();
        let mut last = 0;
        let mut symbols = Vec::new();
        for m in self.re.find_iter(&text) {
            let m = m.map_err(|e| TokenizerError::Regex(e.to_string()))?;
            // `Isolated`: text between matches is a piece too.
            if m.start() > last {
                self.bpe_piece(&text[last..m.start()], &mut symbols, out);
            }
            self.bpe_piece(m.as_str(), &mut symbols, out);
            last = m.end();
        }
        if last < text.len() {
            self.bpe_piece(&text[last..], &mut symbols, out);
        }
        Ok(())
    }

    fn bpe_piece(&self, piece: &str, symbols: &mut Vec<u32>, out: &mut Vec<u32>) {
        symbols.clear();
        // Bytes without a vocabulary entry are dropped, as HF's BPE does without an unk token.
        symbols.extend(piece.bytes().filter_map(|b| self.byte_id[b as usize]));
        self.merges.apply(symbols);
        out.extend_from_slice(symbols);
    }

    /// The text of `ids`; control tokens are dropped when `skip_special`. Invalid UTF-8 (a
    /// character cut between tokens) decodes to U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        String::from_utf8_lossy(&self.decode_bytes(ids, skip_special)).into_owned()
    }

    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(tok) = self.tokens.get(id as usize) else {
                continue;
            };
            if skip_special && self.is_control(id) {
                continue;
            }
            if self.raw[id as usize] {
                bytes.extend_from_slice(tok.as_bytes());
            } else {
                for c in tok.chars() {
                    match self.char_byte.get(&c) {
                        Some(&b) => bytes.push(b),
                        None => bytes.extend_from_slice(c.to_string().as_bytes()),
                    }
                }
            }
        }
        bytes
    }
}

#[cfg(test)]
mod tests;
