//! Answering a question: the prompt built with the HF chat template (options lettered as the
//! trainer's prompts are), prefill, the decode loop with streaming and cancellation, and the
//! multiple-choice confidence: the model's probability of each option letter at the answer
//! position, normalised over the options.

use std::path::PathBuf;
use std::time::Instant;

use anatomy_models::qwen2_5_vl::preprocess::{preprocess_file, preprocess_rgb8, ProcessedImage};
use anatomy_models::qwen2_5_vl::template::user_prompt;

use crate::backend::Backend;
use crate::error::RuntimeError;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::Session;
use crate::Tokenizer;

/// The tag after which the answer letter is read.
pub const ANSWER_TAG: &str = "<answer>";
/// Instruction put before a multiple-choice question (the trainer's general instruction).
pub const CHOICE_INSTRUCTION: &str = "You are an expert in medical imaging, and I will provide you with a clinical image. Please analyze the image and follow the instructions:\n\n1.Select the most suitable option for the problem based on the given options. Only one correct answer exists. You should only return the choice letter, not any other text.\n\n2.Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. The output answer format should be as follows:<think> ... </think> <answer>YOUR CHOICE HERE</answer>.";
/// Heading of the option list when the model names none.
pub const DEFAULT_OPTIONS_HEADING: &str = "Options";
/// Most options (one letter each, A to Z).
pub const MAX_OPTIONS: usize = 26;
/// GGUF key of the instruction the model was trained with (`anatomy export` writes it).
pub const PROMPT_INSTRUCTION_KEY: &str = "anatomy.prompt.instruction";
/// GGUF key of the option-list heading the model was trained with.
pub const PROMPT_HEADING_KEY: &str = "anatomy.prompt.options_heading";

/// The multiple-choice prompt layout: the instruction and option heading put around a question.
/// A model exported by `anatomy export` carries the ones it was trained on, because a model
/// answers best in the wording it learnt; other files get [`CHOICE_INSTRUCTION`] and `Options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFormat {
    pub instruction: String,
    pub options_heading: String,
}

impl Default for PromptFormat {
    fn default() -> Self {
        PromptFormat {
            instruction: CHOICE_INSTRUCTION.to_string(),
            options_heading: DEFAULT_OPTIONS_HEADING.to_string(),
        }
    }
}

impl PromptFormat {
    /// The format a language-model file states under `anatomy.prompt.*`, each part falling back
    /// to the default when absent or empty.
    pub fn from_gguf(f: &crate::gguf::GgufFile) -> Self {
        let get = |k: &str| {
            f.get(k)
                .and_then(|v| v.as_str().map(String::from))
                .filter(|s| !s.trim().is_empty())
        };
        let d = Self::default();
        PromptFormat {
            instruction: get(PROMPT_INSTRUCTION_KEY).unwrap_or(d.instruction),
            options_heading: get(PROMPT_HEADING_KEY).unwrap_or(d.options_heading),
        }
    }
}

/// Where the image comes from.
#[derive(Debug, Clone)]
pub enum ImageInput {
    Path(PathBuf),
    Rgb8 {
        data: Vec<u8>,
        width: u32,
        height: u32,
    },
}

/// One question.
#[derive(Debug, Clone)]
pub struct AskRequest {
    pub question: String,
    pub image: Option<ImageInput>,
    /// Multiple-choice options; empty for a free answer.
    pub options: Vec<String>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Prompt-lookup decoding: at most this many tokens drafted per step from earlier text of
    /// the context and checked in one pass ([`Session::advance`]); 0 decodes one token per pass.
    /// The answer is the same either way.
    pub lookup: usize,
}

/// What the streaming callback tells the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token (not included in the output).
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context is full.
    Context,
    /// The callback asked to stop.
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings {
    pub load_ms: f64,
    /// Preprocessing plus the vision tower (near zero when the image was cached).
    pub image_encode_ms: f64,
    pub image_cached: bool,
    pub prefill_ms: f64,
    /// Prompt tokens run; the rest of the prompt was the session's context already.
    pub prefill_tokens: usize,
    /// Leading prompt tokens the session's context already held (see [`Session::prefill`]).
    pub prefill_reused_tokens: usize,
    pub decode_ms: f64,
    pub decode_tokens: usize,
    /// Decoded tokens whose pass had already run as a drafted token ([`AskRequest::lookup`]).
    pub lookup_accepted_tokens: usize,
    pub peak_rss_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    pub image_tokens: usize,
    pub finish: FinishReason,
    /// The chosen option's letter, when options were given.
    pub choice: Option<char>,
    /// Probability of each option's letter at the answer position, normalised over the options.
    pub option_probs: Option<Vec<f32>>,
    /// Whether the letter was read after an `<answer>` tag the model wrote (else one was appended).
    pub answer_tag_generated: bool,
    pub timings: Timings,
}

/// `A`, `B`, ...
pub fn option_letter(i: usize) -> char {
    (b'A' + i as u8) as char
}

/// The question text sent to a model without a stated prompt format: as is, or with
/// [`CHOICE_INSTRUCTION`] and lettered options in the trainer's layout.
pub fn question_text(question: &str, options: &[String]) -> Result<String, RuntimeError> {
    question_text_in(&PromptFormat::default(), question, options)
}

/// The question text in `format`: as is without options, else the instruction, `Question:`, the
/// question, the heading and `A. option` lines, as the trainer's `prompt::render` lays them out.
pub fn question_text_in(
    format: &PromptFormat,
    question: &str,
    options: &[String],
) -> Result<String, RuntimeError> {
    if options.is_empty() {
        return Ok(question.to_string());
    }
    if options.len() > MAX_OPTIONS {
        return Err(RuntimeError::Options(format!(
            "{} options given, at most {MAX_OPTIONS}",
            options.len()
        )));
    }
    if let Some(i) = options.iter().position(|o| o.trim().is_empty()) {
        return Err(RuntimeError::Options(format!(
            "option {} is empty",
            option_letter(i)
        )));
    }
    let mut s = format!(
        "{}\nQuestion:\n{question}\n{}:",
        format.instruction, format.options_heading
    );
    for (i, o) in options.iter().enumerate() {
        s.push_str(&format!("\n{}. {}", option_letter(i), o.trim()));
    }
    Ok(s)
}

/// Bytes of mapped files this process maps with huge-page entries (`FilePmdMapped` of
/// `/proc/self/smaps_rollup`), `None` where the kernel does not say. Decode streams every weight
/// once per token, and a map of 4 KiB pages misses the TLB on each of them, so this tells whether
/// a mapped model's weights sit on huge pages (see [`crate::gguf::map_readonly`]).
pub fn file_huge_page_bytes() -> Option<u64> {
    proc_self_bytes("smaps_rollup", "FilePmdMapped:")
}

/// Bytes of the file at `path` that this process maps with huge-page entries (`FilePmdMapped`
/// summed over the maps of that file in `/proc/self/smaps`), `None` where the kernel does not say
/// or the path does not resolve. [`file_huge_page_bytes`] counts every mapped file at once; this
/// tells one model file's share, which is what decode speed follows: on the 2-vCPU Xeon VM a 3B
/// Q4_K_M file with 1.63 of its 1.93 GB on huge pages decoded at 69-80% of the bandwidth bound
/// where a fresh copy of it, all on huge pages, decoded at 82-93% in the same hour.
pub fn file_huge_page_bytes_of(path: &std::path::Path) -> Option<u64> {
    let want = std::fs::canonicalize(path).ok()?;
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    huge_page_bytes_in_smaps(&smaps, &want.to_string_lossy())
}

/// The `FilePmdMapped` figures of the maps of `path` in the text of an smaps file, in bytes;
/// `None` when no map of `path` gives one.
fn huge_page_bytes_in_smaps(smaps: &str, path: &str) -> Option<u64> {
    let (mut ours, mut total) = (false, None::<u64>);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        // A map's header: `start-end perms offset dev inode [path]`; its fields follow.
        if first.split_once('-').is_some_and(|(a, b)| {
            u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        }) {
            let mut rest = line;
            for _ in 0..5 {
                rest = rest.trim_start().split_once(' ').map_or("", |(_, r)| r);
            }
            ours = rest.trim() == path;
        } else if ours && first == "FilePmdMapped:" {
            let kb = f.next().and_then(|v| v.parse::<u64>().ok())?;
            total = Some(total.unwrap_or(0) + kb * 1024);
        }
    }
    total
}

/// Peak resident memory of this process (`VmHWM`), 0 where unavailable.
pub fn peak_rss_bytes() -> u64 {
    proc_self_bytes("status", "VmHWM:").unwrap_or(0)
}

/// The `key` line of `/proc/self/<file>` (a figure in kB), in bytes.
fn proc_self_bytes(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/self/{file}")).ok()?;
    let l = s.lines().find(|l| l.starts_with(key))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

impl<B: Backend> Session<'_, B> {
    /// Preprocesses an image with the model's processor parameters.
    pub fn preprocess(&self, image: &ImageInput) -> Result<ProcessedImage, RuntimeError> {
        let p = self.model().preprocess_params();
        Ok(match image {
            ImageInput::Path(path) => preprocess_file(path, p)?,
            ImageInput::Rgb8 {
                data,
                width,
                height,
            } => preprocess_rgb8(data, *width, *height, p)?,
        })
    }

    /// The prompt token ids of a question (image placeholders expanded to `image_tokens`).
    pub fn prompt_ids(
        &self,
        question: &str,
        image_tokens: Option<usize>,
    ) -> Result<Vec<u32>, RuntimeError> {
        let m = self.model();
        let prompt = user_prompt(question, image_tokens.is_some());
        let ids = m.tokenizer().encode(&prompt)?;
        let pad = m.special_tokens().image_pad;
        let mut out = Vec::with_capacity(ids.len() + image_tokens.unwrap_or(0));
        for id in ids {
            match (id == pad, image_tokens) {
                (true, Some(n)) => out.extend(std::iter::repeat_n(pad, n)),
                _ => out.push(id),
            }
        }
        Ok(out)
    }

    /// Answers `req`, calling `on_text` with each new piece of text as it is generated.
    pub fn ask(
        &mut self,
        req: &AskRequest,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Answer, RuntimeError> {
        let question = question_text_in(self.model().prompt_format(), &req.question, &req.options)?;
        let mut timings = Timings {
            load_ms: self.model().load_ms(),
            ..Default::default()
        };
        let t = Instant::now();
        let image = match &req.image {
            Some(input) => {
                if !self.model().has_vision() {
                    return Err(RuntimeError::NoProjector);
                }
                let img = self.preprocess(input)?;
                Some(self.encode_image(&img)?)
            }
            None => None,
        };
        timings.image_encode_ms = t.elapsed().as_secs_f64() * 1e3;
        timings.image_cached = image.is_some_and(|h| h.cached);

        let ids = self.prompt_ids(&question, image.map(|h| h.tokens))?;
        let t = Instant::now();
        let reused = self.prefill(&ids, image.as_ref())?;
        timings.prefill_ms = t.elapsed().as_secs_f64() * 1e3;
        timings.prefill_tokens = ids.len() - reused;
        timings.prefill_reused_tokens = reused;

        let letters = self.letter_ids(req.options.len());
        let fused = self.fused_letter_ids(req.options.len());
        let stops = self.model().special_tokens().stops.clone();
        let mut sampler = Sampler::new(req.sampling.clone());
        let mut out: Vec<u32> = Vec::with_capacity(req.max_tokens);
        let mut pending: Vec<u8> = Vec::new();
        let mut text_bytes: Vec<u8> = Vec::new();
        let mut probs: Option<Vec<f32>> = None;
        let mut tag_seen = false;
        let mut finish = FinishReason::Length;
        let t = Instant::now();
        // The last sampled token is in the KV cache unless the loop ended on it.
        let mut last_fed = true;
        while out.len() < req.max_tokens {
            // Byte-level BPE vocabularies (Qwen2's included) often fuse the tag's `>` with the
            // letter (`<answer>B` is `<`, `answer`, `>B`), so the letter may be chosen while the tag
            // is still open. Score the fused tokens there, and keep that score only if the model
            // does take one of them; otherwise the tag closes first and the letters come next.
            let mut fused_probs: Option<(Vec<f32>, &[Vec<u32>])> = None;
            if !letters.is_empty() && probs.is_none() {
                if tag_seen {
                    probs = Some(option_probs(self.logits(), &letters));
                } else if let Some(fused) = open_tag_rest(&text_bytes).and_then(|r| fused.get(r)) {
                    fused_probs = Some((option_probs(self.logits(), fused), fused));
                }
            }
            let (logits, history) = self.logits_and_tokens();
            let next = sampler.sample(logits, history);
            if let Some((p, fused)) = fused_probs {
                if fused.iter().any(|ids| ids.contains(&next)) {
                    probs = Some(p);
                }
            }
            if stops.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            out.push(next);
            let piece = self.model().tokenizer().decode_bytes(&[next], true);
            text_bytes.extend_from_slice(&piece);
            pending.extend_from_slice(&piece);
            tag_seen = tag_seen || contains(&text_bytes, ANSWER_TAG.as_bytes());
            let flow = emit_valid(&mut pending, on_text);
            if flow == Flow::Stop {
                finish = FinishReason::Cancelled;
                last_fed = false;
                break;
            }
            if out.len() == req.max_tokens {
                last_fed = false;
                break;
            }
            if self.remaining() == 0 {
                finish = FinishReason::Context;
                last_fed = false;
                break;
            }
            if self.advance(next, req.lookup)? {
                timings.lookup_accepted_tokens += 1;
            }
            timings.decode_tokens += 1;
        }
        timings.decode_ms = t.elapsed().as_secs_f64() * 1e3;
        if !pending.is_empty() {
            on_text(&String::from_utf8_lossy(&pending));
        }
        let answer_tag_generated = probs.is_some();
        if !letters.is_empty() && probs.is_none() {
            // The model gave no `<answer>` (or stopped right after it): score after appending it.
            let mut tail: Vec<u32> = Vec::new();
            if !last_fed {
                tail.extend(out.last().copied());
            }
            // Open the tag the way the model's vocabulary would continue it: without its `>`
            // when every letter has a fused `>X` token, so that the letters are scored where
            // the model itself would write them.
            let open = &ANSWER_TAG[..ANSWER_TAG.len() - 1];
            let closing = &ANSWER_TAG[ANSWER_TAG.len() - 1..];
            let fused_close = fused.get(closing).filter(|_| !tag_seen);
            if !tag_seen {
                let tag = if fused_close.is_some() {
                    open
                } else {
                    ANSWER_TAG
                };
                tail.extend(self.model().tokenizer().encode(tag)?);
            }
            self.append(&tail)?;
            probs = Some(option_probs(self.logits(), fused_close.unwrap_or(&letters)));
        }
        let choice = probs.as_ref().map(|p| {
            let best = p
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > p[b] { i } else { b });
            option_letter(best)
        });
        timings.peak_rss_bytes = peak_rss_bytes();
        Ok(Answer {
            text: String::from_utf8_lossy(&text_bytes).into_owned(),
            token_ids: out,
            prompt_tokens: ids.len(),
            image_tokens: image.map_or(0, |h| h.tokens),
            finish,
            choice,
            option_probs: probs,
            answer_tag_generated,
            timings,
        })
    }

    /// For each way the answer tag can still be open (`>`, `r>`, ... `<answer>` minus a prefix
    /// the model has written), the single tokens that close it and carry a letter (`>B`, `> B`),
    /// per option; only the rests for which every option has such a token.
    fn fused_letter_ids(&self, n: usize) -> std::collections::HashMap<&'static str, Vec<Vec<u32>>> {
        fused_letter_ids(self.model().tokenizer(), n)
    }

    /// For each option letter, the ids of `X` and ` X` (either may follow the tag).
    fn letter_ids(&self, n: usize) -> Vec<Vec<u32>> {
        let tok = self.model().tokenizer();
        (0..n)
            .map(|i| {
                let l = option_letter(i);
                let mut ids = Vec::new();
                for s in [l.to_string(), format!(" {l}")] {
                    if let Ok(v) = tok.encode(&s) {
                        if let [one] = v[..] {
                            if !ids.contains(&one) {
                                ids.push(one);
                            }
                        }
                    }
                }
                ids
            })
            .collect()
    }
}

/// For each way the answer tag can still be open (`>`, `r>`, ... : `<answer>` minus the prefix
/// already written), the single tokens of `tok` that close it and carry a letter (`>B`, `> B`),
/// per option; only the rests for which every one of the `n` options has such a token.
pub fn fused_letter_ids(
    tok: &Tokenizer,
    n: usize,
) -> std::collections::HashMap<&'static str, Vec<Vec<u32>>> {
    let mut out = std::collections::HashMap::new();
    if n == 0 {
        return out;
    }
    for k in 1..ANSWER_TAG.len() {
        let rest = &ANSWER_TAG[k..];
        let per_letter: Vec<Vec<u32>> = (0..n)
            .map(|i| {
                let l = option_letter(i);
                let mut ids = Vec::new();
                for s in [format!("{rest}{l}"), format!("{rest} {l}")] {
                    if let Ok(v) = tok.encode(&s) {
                        if let [one] = v[..] {
                            if !ids.contains(&one) {
                                ids.push(one);
                            }
                        }
                    }
                }
                ids
            })
            .collect();
        if per_letter.iter().all(|ids| !ids.is_empty()) {
            out.insert(rest, per_letter);
        }
    }
    out
}

/// Softmax probability of each option's letter tokens, normalised over the options.
pub fn option_probs(logits: &[f32], letters: &[Vec<u32>]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let p: Vec<f64> = letters
        .iter()
        .map(|ids| {
            ids.iter()
                .filter_map(|&i| logits.get(i as usize))
                .map(|&l| ((l - max) as f64).exp())
                .sum()
        })
        .collect();
    let total: f64 = p.iter().sum();
    p.iter()
        .map(|&x| if total > 0.0 { (x / total) as f32 } else { 0.0 })
        .collect()
}

/// What is left of the answer tag when `text` ends with a proper prefix of it (`<answer` gives
/// `>`), or `None`.
fn open_tag_rest(text: &[u8]) -> Option<&'static str> {
    let tag = ANSWER_TAG.as_bytes();
    (1..tag.len())
        .rev()
        .find(|&k| text.ends_with(&tag[..k]))
        .map(|k| &ANSWER_TAG[k..])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Sends the longest valid UTF-8 prefix of `pending` (a character may span tokens).
fn emit_valid(pending: &mut Vec<u8>, on_text: &mut dyn FnMut(&str) -> Flow) -> Flow {
    let valid = match std::str::from_utf8(pending) {
        Ok(s) => s.len(),
        // An invalid sequence that is not just cut short will never become valid: flush it.
        Err(e) if e.error_len().is_some() => pending.len(),
        Err(e) => e.valid_up_to(),
    };
    if valid == 0 {
        return Flow::Continue;
    }
    let s = String::from_utf8_lossy(&pending[..valid]).into_owned();
    pending.drain(..valid);
    on_text(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only the maps of the named file count, each map's figure once, paths with spaces too, and
    /// a file with no map (or a kernel without the field) gives `None`.
    #[test]
    fn huge_page_bytes_are_summed_over_the_named_files_maps() {
        let smaps = "\
7f0000000000-7f0000400000 r--s 00000000 fd:01 11    /models/lm.gguf
Size:               4096 kB
FilePmdMapped:      2048 kB
7f0000400000-7f0000600000 r--s 00000000 fd:01 12    /models/lm.gguf.bak
FilePmdMapped:      2048 kB
7f0000600000-7f0000800000 r--s 00400000 fd:01 11    /models/lm.gguf
FilePmdMapped:      1024 kB
7f0000800000-7f0000a00000 r--s 00000000 fd:01 13    /models/my model.gguf
FilePmdMapped:       512 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0     [stack]
FilePmdMapped:         0 kB
";
        assert_eq!(
            huge_page_bytes_in_smaps(smaps, "/models/lm.gguf"),
            Some(3072 * 1024)
        );
        assert_eq!(
            huge_page_bytes_in_smaps(smaps, "/models/my model.gguf"),
            Some(512 * 1024)
        );
        assert_eq!(huge_page_bytes_in_smaps(smaps, "/models/other.gguf"), None);
        let old_kernel =
            "7f0000000000-7f0000400000 r--s 00000000 fd:01 11 /models/lm.gguf\nSize: 4096 kB\n";
        assert_eq!(
            huge_page_bytes_in_smaps(old_kernel, "/models/lm.gguf"),
            None
        );
    }

    /// A file this process maps and reads is found in the live smaps (the figure itself depends
    /// on the kernel and the page cache), and a file it does not map is not.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_file_is_found_in_this_process_maps() {
        let dir = std::env::temp_dir().join(format!("anatomy-smaps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mapped file.bin");
        std::fs::write(&path, vec![7u8; 8 << 20]).unwrap();
        let map = crate::gguf::map_readonly(&std::fs::File::open(&path).unwrap()).unwrap();
        let sum: u64 = map.iter().step_by(4096).map(|&b| b as u64).sum();
        assert_eq!(sum, 7 * 2048);
        let has_field =
            std::fs::read_to_string("/proc/self/smaps").is_ok_and(|s| s.contains("FilePmdMapped:"));
        let found = file_huge_page_bytes_of(&path);
        assert_eq!(found.is_some(), has_field, "{found:?}");
        assert!(found.is_none_or(|b| b <= 8 << 20), "{found:?}");
        drop(map);
        assert_eq!(file_huge_page_bytes_of(&path), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn options_are_lettered_and_checked() {
        let q = question_text("Which organ?", &["Liver".into(), " Gut ".into()]).unwrap();
        assert!(q.ends_with("Question:\nWhich organ?\nOptions:\nA. Liver\nB. Gut"));
        assert!(matches!(
            question_text("q", &["a".into(), " ".into()]),
            Err(RuntimeError::Options(_))
        ));
        let many: Vec<String> = (0..27).map(|i| i.to_string()).collect();
        assert!(question_text("q", &many).is_err());
        assert_eq!(question_text("q", &[]).unwrap(), "q");
    }

    #[test]
    fn a_stated_format_replaces_instruction_and_heading() {
        let f = PromptFormat {
            instruction: "Pick one.".into(),
            options_heading: "Anatomy Options".into(),
        };
        let q = question_text_in(&f, "Where?", &["Liver".into(), "Gut".into()]).unwrap();
        assert_eq!(
            q,
            "Pick one.\nQuestion:\nWhere?\nAnatomy Options:\nA. Liver\nB. Gut"
        );
        assert_eq!(question_text_in(&f, "Where?", &[]).unwrap(), "Where?");
    }

    #[test]
    fn an_open_answer_tag_is_recognised_by_what_it_lacks() {
        assert_eq!(open_tag_rest(b"<think> </think> <answer"), Some(">"));
        assert_eq!(open_tag_rest(b"x <ans"), Some("wer>"));
        assert_eq!(open_tag_rest(b"<answer>"), None);
        assert_eq!(open_tag_rest(b"answer"), None);
    }

    #[test]
    fn option_probabilities_normalise_over_letters() {
        let logits = vec![0.0, 1.0, 2.0, 5.0];
        let p = option_probs(&logits, &[vec![1], vec![2, 0]]);
        let (a, b) = (1f64.exp(), 2f64.exp() + 1.0);
        assert!((p[0] as f64 - a / (a + b)).abs() < 1e-6);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn streaming_waits_for_whole_characters() {
        let mut got = String::new();
        let mut cb = |s: &str| {
            got.push_str(s);
            Flow::Continue
        };
        let bytes = "é".as_bytes();
        let mut pending = vec![b'a', bytes[0]];
        emit_valid(&mut pending, &mut cb);
        assert_eq!(pending, vec![bytes[0]]);
        pending.push(bytes[1]);
        emit_valid(&mut pending, &mut cb);
        assert!(pending.is_empty());
        assert_eq!(got, "aé");
    }
}
