//! The parsed multiple-choice question every loader produces and every later stage consumes.

use std::path::PathBuf;

use serde::Serialize;

/// Most options a question may have: one letter each, `A` to `Z`.
pub const MAX_OPTIONS: usize = 26;

/// One multiple-choice question about one image, split into the parts a prompt is built from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Question {
    /// The record's own id, or its 0-based index in the file when the format has none.
    pub id: String,
    /// The image path after `--image-root` remapping.
    pub image: PathBuf,
    /// The instruction that precedes the question (the paper's expert preamble and answer format).
    pub instruction: String,
    pub question: String,
    /// The heading of the option list (`Anatomy Options` in the Anatomy-R1 files).
    pub options_heading: String,
    pub options: Vec<String>,
    /// Index of the correct option in `options`.
    pub answer: usize,
    /// OmniMedVQA's `question_type` and `modality_type`, when the source has them.
    pub question_type: Option<String>,
    pub modality: Option<String>,
    /// A description of the image the question is about, when the source has one (`anatomy
    /// synth` writes the structure of each 3x3 grid cell): text an SFT target may reason with.
    pub caption: Option<String>,
}

impl Question {
    pub fn answer_text(&self) -> &str {
        &self.options[self.answer]
    }

    pub fn answer_letter(&self) -> char {
        letter(self.answer)
    }

    /// The options other than the correct one, in their order.
    pub fn distractors(&self) -> impl Iterator<Item = &str> {
        self.options
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != self.answer)
            .map(|(_, o)| o.as_str())
    }
}

/// The letter of option `index` (`0` is `A`). Callers keep `index < MAX_OPTIONS`.
pub fn letter(index: usize) -> char {
    (b'A' + (index % MAX_OPTIONS) as u8) as char
}

/// The option index of a letter, case-insensitive.
pub fn letter_index(c: char) -> Option<usize> {
    let u = c.to_ascii_uppercase();
    u.is_ascii_uppercase().then(|| (u as u8 - b'A') as usize)
}

/// Lower-cased with runs of whitespace collapsed: how option texts and answers are compared, since
/// the source files are inconsistent in case and spacing.
pub fn normalize(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letters_round_trip() {
        for i in 0..MAX_OPTIONS {
            assert_eq!(letter_index(letter(i)), Some(i));
        }
        assert_eq!(letter_index('c'), Some(2));
        assert_eq!(letter_index('1'), None);
    }

    #[test]
    fn normalize_collapses_case_and_space() {
        assert_eq!(
            normalize("  Abdominal   Wall\tCavity "),
            "abdominal wall cavity"
        );
    }
}
