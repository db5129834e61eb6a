//! Chat template of Qwen2.5-VL-Instruct, `<|image_pad|>` expansion, stop tokens and tokenization.
//!
//! The template is the one the HF processor ships (`chat_template.json` / `.jinja`), restated in Rust
//! rather than run through a Jinja engine: it is small, fixed for this architecture, and a Rust
//! version cannot silently change behaviour with a template file edit.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";
pub const IMAGE_PAD: &str = "<|image_pad|>";
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error("tokenization failed: {0}")]
    Encode(String),
    #[error("decoding failed: {0}")]
    Decode(String),
    #[error("the tokenizer has no token {0:?}, which Qwen2.5-VL needs")]
    MissingToken(&'static str),
    #[error("the prompt has {found} images but {given} image token counts were given")]
    ImageCount { found: usize, given: usize },
}

/// One piece of a message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Image,
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: Vec<Part>,
}

impl Message {
    pub fn user(content: Vec<Part>) -> Self {
        Self {
            role: "user".into(),
            content,
        }
    }
    pub fn system(text: impl Into<String>) -> Self {
        Self {
            role: "system".into(),
            content: vec![Part::Text(text.into())],
        }
    }
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: "assistant".into(),
            content: vec![Part::Text(text.into())],
        }
    }
}

/// Renders messages as the Qwen2.5-VL-Instruct template does, each image as a single
/// `<|vision_start|><|image_pad|><|vision_end|>` (expanded after tokenization).
pub fn render(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut s = String::new();
    for (i, m) in messages.iter().enumerate() {
        if i == 0 && m.role != "system" {
            s.push_str(&format!(
                "{IM_START}system\n{DEFAULT_SYSTEM_PROMPT}{IM_END}\n"
            ));
        }
        s.push_str(IM_START);
        s.push_str(&m.role);
        s.push('\n');
        for part in &m.content {
            match part {
                Part::Image => {
                    s.push_str(VISION_START);
                    s.push_str(IMAGE_PAD);
                    s.push_str(VISION_END);
                }
                Part::Text(t) => s.push_str(t),
            }
        }
        s.push_str(IM_END);
        s.push('\n');
    }
    if add_generation_prompt {
        s.push_str(IM_START);
        s.push_str("assistant\n");
    }
    s
}

/// The single-turn prompt `anatomy ask` sends: one user message with the image first, then the text.
pub fn user_prompt(question: &str, with_image: bool) -> String {
    let mut content = Vec::new();
    if with_image {
        content.push(Part::Image);
    }
    content.push(Part::Text(question.to_string()));
    render(&[Message::user(content)], true)
}

/// The checkpoint's tokenizer with the ids of the tokens the template and generation need.
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    pub image_pad_id: u32,
    pub im_end_id: u32,
    pub end_of_text_id: u32,
}

impl ChatTokenizer {
    /// Loads `tokenizer.json` from an HF checkpoint directory.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, TemplateError> {
        Self::from_file(dir.as_ref().join("tokenizer.json"))
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TemplateError> {
        let path = path.as_ref();
        let tokenizer = Tokenizer::from_file(path).map_err(|e| TemplateError::Load {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let id = |t: &'static str| {
            tokenizer
                .token_to_id(t)
                .ok_or(TemplateError::MissingToken(t))
        };
        Ok(Self {
            image_pad_id: id(IMAGE_PAD)?,
            im_end_id: id(IM_END)?,
            end_of_text_id: id(END_OF_TEXT)?,
            tokenizer,
        })
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TemplateError> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| TemplateError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes a rendered prompt and expands its `i`-th `<|image_pad|>` into `image_tokens[i]`
    /// copies, as the HF processor does (before tokenizing; the result is the same because the pad
    /// is an added token that never merges with its neighbours).
    pub fn encode_prompt(
        &self,
        prompt: &str,
        image_tokens: &[usize],
    ) -> Result<Vec<u32>, TemplateError> {
        let ids = self.encode(prompt)?;
        let found = ids.iter().filter(|&&t| t == self.image_pad_id).count();
        if found != image_tokens.len() {
            return Err(TemplateError::ImageCount {
                found,
                given: image_tokens.len(),
            });
        }
        let mut out = Vec::with_capacity(ids.len() + image_tokens.iter().sum::<usize>());
        let mut counts = image_tokens.iter();
        for id in ids {
            if id == self.image_pad_id {
                let n = counts.next().copied().unwrap_or(1);
                out.extend(std::iter::repeat_n(id, n));
            } else {
                out.push(id);
            }
        }
        Ok(out)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TemplateError> {
        self.tokenizer
            .decode(ids, skip_special)
            .map_err(|e| TemplateError::Decode(e.to_string()))
    }

    /// Tokens that end generation: `<|im_end|>`, `<|endoftext|>`, and the config's EOS ids.
    pub fn stop_tokens(&self, config_eos: &[u32]) -> Vec<u32> {
        let mut v = vec![self.im_end_id, self.end_of_text_id];
        for &e in config_eos {
            if !v.contains(&e) {
                v.push(e);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_instruct_template() {
        let p = user_prompt("Describe this image.", true);
        assert_eq!(
            p,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>Describe this image.<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn explicit_system_prompt_replaces_the_default() {
        let p = render(
            &[
                Message::system("Be brief."),
                Message::user(vec![Part::Text("Hi".into())]),
                Message::assistant("Hello"),
            ],
            false,
        );
        assert_eq!(
            p,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello<|im_end|>\n"
        );
    }
}
