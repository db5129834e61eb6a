//! Our own JSONL: one object per line with `image`, `question`, `options` (array of texts) and
//! `answer` (the letter or the option text); `id` and `instruction` (the text put before the
//! question, [`DEFAULT_INSTRUCTION`] when absent) are optional.

use super::{
    find_option, parse_letter, remap_image, str_field, validate, LoadOptions, Question, RecordError,
};
use crate::data::prompt::DEFAULT_INSTRUCTION;

/// The non-blank lines of a JSONL file as JSON values; a line that is not JSON stays an error so
/// that it keeps its record index.
pub fn records(text: &str) -> impl Iterator<Item = Result<serde_json::Value, RecordError>> + '_ {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| RecordError::Json(e.to_string())))
}

pub fn parse(
    index: usize,
    record: &serde_json::Value,
    options: &LoadOptions,
) -> Result<Question, RecordError> {
    let record = record.as_object().ok_or(RecordError::NotObject)?;
    let question = str_field(record, "question")?;
    let image = str_field(record, "image")?;
    let answer = str_field(record, "answer")?;
    let texts: Vec<String> = record
        .get("options")
        .and_then(|v| v.as_array())
        .and_then(|a| {
            a.iter()
                .map(|o| o.as_str().map(|s| s.trim().to_string()))
                .collect()
        })
        .ok_or(RecordError::NotStringArray("options"))?;
    // The text wins over the letter reading so that an option literally named "A" still works.
    let answer = find_option(&texts, answer)
        .or_else(|| parse_letter(answer).filter(|&i| i < texts.len()))
        .ok_or_else(|| RecordError::AnswerNotAnOption(answer.to_string()))?;
    let id = match record.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => index.to_string(),
    };
    let instruction = match record.get("instruction") {
        None | Some(serde_json::Value::Null) => DEFAULT_INSTRUCTION.to_string(),
        Some(_) => str_field(record, "instruction")?.to_string(),
    };
    validate(Question {
        id,
        image: remap_image(image, options),
        instruction,
        question: question.trim().to_string(),
        options_heading: "Options".to_string(),
        options: texts,
        answer,
        question_type: None,
        modality: None,
        caption: None,
    })
}
