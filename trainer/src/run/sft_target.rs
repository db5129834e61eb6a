//! The text an SFT step trains the model to write: `sft.think` with its placeholders filled in,
//! then the answer letter.

use super::RunError;
use crate::data::{self, Question};

/// `<think>{think}</think> <answer>L</answer>` for option `answer` of `q`, where `think` is the
/// template with `{answer}` (the option's text), `{options}` (the lettered option lines),
/// `{caption}` (the question's caption; an error naming the question when it has none) and
/// `{cell}` ([`named_cell`] of the caption) filled in.
pub fn sft_text(template: &str, q: &Question, answer: usize) -> Result<String, RunError> {
    let options = q
        .options
        .iter()
        .enumerate()
        .map(|(i, o)| format!("{}. {o}", data::letter(i)))
        .collect::<Vec<_>>()
        .join("\n");
    let mut think = template
        .replace("{answer}", &q.options[answer])
        .replace("{options}", &options);
    if think.contains("{caption}") {
        think = think.replace("{caption}", caption_of(q)?);
    }
    if think.contains("{cell}") {
        think = think.replace("{cell}", &named_cell(caption_of(q)?, &q.question));
    }
    Ok(format!(
        "<think>{think}</think> <answer>{}</answer>",
        data::letter(answer)
    ))
}

/// The caption's key (the text before an entry's first space, e.g. `top-left`) that the question
/// names as a whole word, followed by a space; empty when it names none. Restating the asked cell
/// right before the answer turns "find the cell the question names among nine" into copying the
/// word that follows the same two tokens in the caption, which a small model learns far sooner.
pub fn named_cell(caption: &str, question: &str) -> String {
    let words: Vec<&str> = question
        .split(|c: char| c.is_whitespace() || matches!(c, '?' | ',' | '.'))
        .collect();
    caption
        .split(", ")
        .filter_map(|entry| entry.split_once(' ').map(|(key, _)| key))
        .find(|key| words.contains(key))
        .map_or_else(String::new, |key| format!("{key} "))
}

/// The question's caption, or the error a `{caption}` template reports without one.
pub fn caption_of(q: &Question) -> Result<&str, RunError> {
    q.caption.as_deref().ok_or_else(|| {
        RunError::Config(format!(
            "sft.think uses {{caption}} but question {} ({}) has no caption (`anatomy synth` \
             writes one per record)",
            q.id,
            q.image.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(caption: Option<&str>) -> Question {
        Question {
            id: "7".into(),
            image: "images/000007.png".into(),
            instruction: "Answer.".into(),
            question: "What anatomy is at the top-left of the frame ?".into(),
            options_heading: "Anatomy Options".into(),
            options: vec!["Liver".into(), "Gut".into(), "Omentum".into()],
            answer: 1,
            question_type: Some("position".into()),
            modality: None,
            caption: caption.map(String::from),
        }
    }

    #[test]
    fn placeholders_are_filled_in() {
        let cap = "top-left Gut, top-mid mixed";
        assert_eq!(
            sft_text(" {caption}. {answer}", &q(Some(cap)), 1).unwrap(),
            "<think> top-left Gut, top-mid mixed. Gut</think> <answer>B</answer>"
        );
        assert_eq!(
            sft_text("{options}", &q(None), 2).unwrap(),
            "<think>A. Liver\nB. Gut\nC. Omentum</think> <answer>C</answer>"
        );
    }

    #[test]
    fn the_named_cell_is_restated() {
        let cap = "top-left Gut, top-mid mixed, center Liver";
        let t = " {caption}. {cell}{answer}";
        assert_eq!(
            sft_text(t, &q(Some(cap)), 1).unwrap(),
            "<think> top-left Gut, top-mid mixed, center Liver. top-left Gut</think> \
             <answer>B</answer>"
        );
        assert_eq!(
            named_cell(cap, "What is the brown center anatomy?"),
            "center "
        );
        assert_eq!(named_cell(cap, "What is the red anatomy?"), "");
        // A key must be a whole word of the question, not part of one.
        assert_eq!(named_cell("left Gut", "What is at the top-left ?"), "");
    }

    #[test]
    fn a_caption_template_without_a_caption_names_the_question() {
        let e = sft_text(" {caption}. {answer}", &q(None), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("question 7") && e.contains("000007.png"), "{e}");
    }
}
