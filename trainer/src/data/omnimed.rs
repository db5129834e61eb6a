//! The OmniMedVQA JSON layout: `question`, `gt_answer` (the option text), `option_A`..`option_D`
//! (fewer for some questions), `image_path`, `question_type`, `modality_type`.

use super::{
    find_option, opt_str_field, remap_image, str_field, validate, LoadOptions, Question,
    RecordError, MAX_OPTIONS,
};
use crate::data::prompt::DEFAULT_INSTRUCTION;
use crate::data::question::letter;

pub fn parse(
    index: usize,
    record: &serde_json::Value,
    options: &LoadOptions,
) -> Result<Question, RecordError> {
    let record = record.as_object().ok_or(RecordError::NotObject)?;
    let question = str_field(record, "question")?;
    let gt = str_field(record, "gt_answer")?;
    let image = str_field(record, "image_path")?;
    // Options are consecutive from A; a gap would shift every later letter, so stop at the first.
    let mut texts = Vec::new();
    for i in 0..MAX_OPTIONS {
        let key = format!("option_{}", letter(i));
        match record.get(&key) {
            Some(serde_json::Value::String(s)) => texts.push(s.trim().to_string()),
            Some(serde_json::Value::Null) | None => break,
            Some(_) => return Err(RecordError::NotString(key)),
        }
    }
    let answer =
        find_option(&texts, gt).ok_or_else(|| RecordError::AnswerNotAnOption(gt.into()))?;
    let id = match record.get("question_id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => index.to_string(),
    };
    validate(Question {
        id,
        image: remap_image(image, options),
        instruction: DEFAULT_INSTRUCTION.to_string(),
        question: question.trim().to_string(),
        options_heading: "Options".to_string(),
        options: texts,
        answer,
        question_type: opt_str_field(record, "question_type"),
        modality: opt_str_field(record, "modality_type"),
        caption: None,
    })
}
