//! The Anatomy-R1 JSON: the question and lettered options live inside the `instruction` prompt,
//! `solution` is the correct letter and `answer` its text, which must agree. The optional `form`
//! that `anatomy synth` writes (`position`, `attribute`, `relation`) becomes the question type, so
//! evaluation can be broken down by it; its optional `caption` (the scene cell by cell) becomes the
//! question's caption.

use super::{
    find_option, opt_str_field, parse_letter, remap_image, str_field, validate, LoadOptions,
    Question, RecordError,
};
use crate::data::question::letter;

const QUESTION_MARK: &str = "Question:\n";

/// Parses one Anatomy-R1 record (`index` becomes its id: the files have no ids of their own).
pub fn parse(
    index: usize,
    record: &serde_json::Value,
    options: &LoadOptions,
) -> Result<Question, RecordError> {
    let record = record.as_object().ok_or(RecordError::NotObject)?;
    let instruction = str_field(record, "instruction")?;
    let solution = str_field(record, "solution")?;
    let answer_text = str_field(record, "answer")?;
    let image = str_field(record, "images")?;
    let parts = split_prompt(instruction)?;
    let answer =
        parse_letter(solution).ok_or_else(|| RecordError::BadLetter(solution.to_string()))?;
    if answer >= parts.options.len() {
        return Err(RecordError::BadLetter(solution.to_string()));
    }
    if find_option(&parts.options[answer..=answer], answer_text).is_none() {
        return Err(RecordError::LetterMismatch {
            letter: letter(answer),
            option: parts.options[answer].clone(),
            answer: answer_text.to_string(),
        });
    }
    validate(Question {
        id: index.to_string(),
        image: remap_image(image, options),
        instruction: parts.instruction,
        question: parts.question,
        options_heading: parts.options_heading,
        options: parts.options,
        answer,
        question_type: opt_str_field(record, "form"),
        modality: None,
        caption: opt_str_field(record, "caption"),
    })
}

/// The parts of a rendered prompt, the inverse of [`crate::data::prompt::render`].
#[derive(Debug, PartialEq)]
pub struct PromptParts {
    pub instruction: String,
    pub question: String,
    pub options_heading: String,
    pub options: Vec<String>,
}

/// Splits `<instruction>\nQuestion:\n<question>\n<Heading>:\nA. ..\nB. ..` into its parts.
///
/// The question may span lines, so the option list is found from the end: the trailing run of
/// `X. text` lines with consecutive letters, preceded by a line ending in `:`.
pub fn split_prompt(prompt: &str) -> Result<PromptParts, RecordError> {
    let at = prompt.rfind(QUESTION_MARK).ok_or(RecordError::NoQuestion)?;
    let instruction = prompt[..at].strip_suffix('\n').unwrap_or(&prompt[..at]);
    let body: Vec<&str> = prompt[at + QUESTION_MARK.len()..].lines().collect();
    let heading_at = body
        .iter()
        .rposition(|l| l.ends_with(':') && !l.contains(". "))
        .ok_or(RecordError::NoOptions)?;
    if heading_at == 0 {
        return Err(RecordError::EmptyQuestion);
    }
    let mut options = Vec::new();
    for line in &body[heading_at + 1..] {
        if line.trim().is_empty() {
            continue;
        }
        let want = letter(options.len());
        let text = line
            .strip_prefix(want)
            .and_then(|rest| rest.strip_prefix(". "))
            .ok_or_else(|| RecordError::BadOptionLine(line.to_string()))?;
        options.push(text.trim().to_string());
    }
    if options.is_empty() {
        return Err(RecordError::NoOptions);
    }
    let heading = body[heading_at];
    Ok(PromptParts {
        instruction: instruction.to_string(),
        question: body[..heading_at].join("\n"),
        options_heading: heading[..heading.len() - 1].to_string(),
        options,
    })
}
