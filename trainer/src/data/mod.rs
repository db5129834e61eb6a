//! Question files: the Anatomy-R1 JSON, the OmniMedVQA JSON layout and our own JSONL.
//!
//! Every loader returns the same [`Question`]; a malformed record is an error naming its file and
//! index unless [`LoadOptions::skip_bad`] asks to skip and count it.

pub mod anatomy_r1;
pub mod jsonl;
pub mod omnimed;
pub mod prompt;
pub mod question;

use std::path::{Path, PathBuf};

pub use question::{letter, letter_index, normalize, Question, MAX_OPTIONS};

/// Why a single record could not become a [`Question`].
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("not a JSON object")]
    NotObject,
    #[error("field `{0}` is missing or not a string")]
    MissingField(&'static str),
    #[error("field `{0}` is not a string")]
    NotString(String),
    #[error("field `{0}` is not an array of strings")]
    NotStringArray(&'static str),
    #[error("no `Question:` section in the instruction")]
    NoQuestion,
    #[error("no options list after the question")]
    NoOptions,
    #[error("option line {0:?} does not start with the next letter")]
    BadOptionLine(String),
    #[error("{0} options; between 2 and {MAX_OPTIONS} are needed")]
    OptionCount(usize),
    #[error("two options have the same text {0:?}")]
    DuplicateOption(String),
    #[error("the question text is empty")]
    EmptyQuestion,
    #[error("answer letter {0:?} does not name one of the options")]
    BadLetter(String),
    #[error("answer {0:?} is none of the options")]
    AnswerNotAnOption(String),
    #[error("answer letter {letter} is {option:?} but the answer text is {answer:?}")]
    LetterMismatch {
        letter: char,
        option: String,
        answer: String,
    },
    #[error("invalid JSON: {0}")]
    Json(String),
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: expected a JSON array of records")]
    NotArray { path: PathBuf },
    #[error("{path}: cannot tell the format (expected Anatomy-R1 `instruction` or OmniMedVQA `gt_answer` records)")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: record {index}: {reason}")]
    Record {
        path: PathBuf,
        index: usize,
        reason: RecordError,
    },
}

/// The three layouts a question file can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    AnatomyR1,
    OmniMed,
    Jsonl,
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Joined in front of every image path (an absolute path is taken as relative to it), because
    /// the published paths point into the authors' own CholecT45 copy.
    pub image_root: Option<PathBuf>,
    /// Skip malformed records and count them instead of failing on the first.
    pub skip_bad: bool,
}

#[derive(Debug)]
pub struct Loaded {
    pub questions: Vec<Question>,
    /// Records skipped under `skip_bad`, with why, in file order.
    pub skipped: Vec<(usize, RecordError)>,
}

/// Loads a question file, telling its format from the extension (`.jsonl`) or the first record.
pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Loaded, DataError> {
    load_inner(path.as_ref(), None, options)
}

/// Loads a question file in a given format, whatever its name and first record say.
pub fn load_as(
    path: impl AsRef<Path>,
    format: Format,
    options: &LoadOptions,
) -> Result<Loaded, DataError> {
    load_inner(path.as_ref(), Some(format), options)
}

fn load_inner(
    path: &Path,
    format: Option<Format>,
    options: &LoadOptions,
) -> Result<Loaded, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_jsonl = match format {
        Some(f) => f == Format::Jsonl,
        None => path.extension().is_some_and(|e| e == "jsonl"),
    };
    if is_jsonl {
        return collect(path, jsonl::records(&text), options, jsonl::parse);
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| DataError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    let serde_json::Value::Array(records) = value else {
        return Err(DataError::NotArray {
            path: path.to_path_buf(),
        });
    };
    let format = match format {
        Some(f) => f,
        None => detect(&records).ok_or_else(|| DataError::UnknownFormat {
            path: path.to_path_buf(),
        })?,
    };
    let parse: Parser = match format {
        Format::AnatomyR1 => anatomy_r1::parse,
        Format::OmniMed => omnimed::parse,
        Format::Jsonl => jsonl::parse,
    };
    collect(path, records.into_iter().map(Ok), options, parse)
}

/// The format of a JSON array of records, from the first record that is an object.
fn detect(records: &[serde_json::Value]) -> Option<Format> {
    records.iter().find_map(|r| {
        let o = r.as_object()?;
        if o.contains_key("instruction") {
            Some(Format::AnatomyR1)
        } else if o.contains_key("gt_answer") {
            Some(Format::OmniMed)
        } else if o.contains_key("options") {
            // Our own records, written as one JSON array instead of lines.
            Some(Format::Jsonl)
        } else {
            None
        }
    })
}

type Parser = fn(usize, &serde_json::Value, &LoadOptions) -> Result<Question, RecordError>;

fn collect(
    path: &Path,
    records: impl Iterator<Item = Result<serde_json::Value, RecordError>>,
    options: &LoadOptions,
    parse: Parser,
) -> Result<Loaded, DataError> {
    let mut questions = Vec::new();
    let mut skipped = Vec::new();
    for (index, record) in records.enumerate() {
        match record.and_then(|r| parse(index, &r, options)) {
            Ok(q) => questions.push(q),
            Err(reason) if options.skip_bad => skipped.push((index, reason)),
            Err(reason) => {
                return Err(DataError::Record {
                    path: path.to_path_buf(),
                    index,
                    reason,
                })
            }
        }
    }
    Ok(Loaded { questions, skipped })
}

/// Applies `--image-root` and drops the stray leading space some Anatomy-R1 paths carry.
pub fn remap_image(raw: &str, options: &LoadOptions) -> PathBuf {
    let raw = raw.trim();
    match &options.image_root {
        Some(root) => root.join(raw.trim_start_matches('/')),
        None => PathBuf::from(raw),
    }
}

/// A string field of a JSON object.
pub(crate) fn str_field<'a>(
    record: &'a serde_json::Map<String, serde_json::Value>,
    key: &'static str,
) -> Result<&'a str, RecordError> {
    record
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or(RecordError::MissingField(key))
}

/// An optional string field: `None` when absent or not a string.
pub(crate) fn opt_str_field(
    record: &serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<String> {
    record.get(key).and_then(|v| v.as_str()).map(str::to_string)
}

/// The checks every format shares: option count, distinct options, a non-empty question.
pub(crate) fn validate(q: Question) -> Result<Question, RecordError> {
    if q.question.trim().is_empty() {
        return Err(RecordError::EmptyQuestion);
    }
    if q.options.len() < 2 || q.options.len() > MAX_OPTIONS {
        return Err(RecordError::OptionCount(q.options.len()));
    }
    let mut seen = std::collections::HashSet::new();
    for o in &q.options {
        if !seen.insert(normalize(o)) {
            return Err(RecordError::DuplicateOption(o.clone()));
        }
    }
    if q.answer >= q.options.len() {
        return Err(RecordError::BadLetter(letter(q.answer).to_string()));
    }
    Ok(q)
}

/// The index of the option whose text equals `answer` (case and spacing tolerant).
pub(crate) fn find_option(options: &[String], answer: &str) -> Option<usize> {
    let a = normalize(answer);
    options.iter().position(|o| normalize(o) == a)
}

/// Parses a letter field such as `"B"` or `" b "` into an option index.
pub(crate) fn parse_letter(raw: &str) -> Option<usize> {
    let mut chars = raw.trim().chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => letter_index(c),
        _ => None,
    }
}
