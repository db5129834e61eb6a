//! The two GRPO rewards of Anatomy-R1: accuracy of the final answer and adherence to the
//! `<think>...</think> <answer>...</answer>` format. Pure functions of the completion text.

use crate::data::{letter_index, normalize, Question};

/// How much each reward counts in the total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RewardWeights {
    pub accuracy: f32,
    pub format: f32,
}

impl Default for RewardWeights {
    fn default() -> Self {
        Self {
            accuracy: 1.0,
            format: 1.0,
        }
    }
}

/// Both rewards of one completion and their weighted sum.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rewards {
    pub accuracy: f32,
    pub format: f32,
    pub total: f32,
}

pub fn rewards(completion: &str, q: &Question, w: RewardWeights) -> Rewards {
    let accuracy = accuracy_reward(completion, q);
    let format = format_reward(completion);
    Rewards {
        accuracy,
        format,
        total: w.accuracy * accuracy + w.format * format,
    }
}

/// The text of the last `<answer>...</answer>` outside any `<think>` block.
///
/// Answers inside the reasoning are ignored so that a policy cannot hedge by "answering" while
/// thinking; an unclosed `<think>` hides everything after it for the same reason.
pub fn extract_answer(completion: &str) -> Option<&str> {
    let mut last = None;
    let mut rest = completion;
    let mut offset = 0;
    loop {
        let think = rest.find("<think>");
        let answer = rest.find("<answer>");
        match (think, answer) {
            (Some(t), a) if a.is_none_or(|a| t < a) => {
                let after = &rest[t..];
                let close = after.find("</think>")?;
                let skip = t + close + "</think>".len();
                offset += skip;
                rest = &completion[offset..];
            }
            (_, Some(a)) => {
                let start = a + "<answer>".len();
                let Some(len) = rest[start..].find("</answer>") else {
                    return last;
                };
                last = Some(&rest[start..start + len]);
                let skip = start + len + "</answer>".len();
                offset += skip;
                rest = &completion[offset..];
            }
            _ => return last,
        }
    }
}

/// 1 when the final answer names the correct option, else 0.
///
/// Accepted: the letter (`B`, `b.`, `(B)`), the option text, or the letter followed by its own
/// text (`B. Liver`); case and spacing do not matter. A letter with another option's text, two
/// letters, or anything more is wrong: a hedge must never pay.
pub fn accuracy_reward(completion: &str, q: &Question) -> f32 {
    match extract_answer(completion) {
        Some(a) if answer_matches(a, q) => 1.0,
        _ => 0.0,
    }
}

fn answer_matches(answer: &str, q: &Question) -> bool {
    let a = normalize(answer);
    let a = a.trim_end_matches(['.', '!']).trim();
    if a.is_empty() {
        return false;
    }
    let text = normalize(q.answer_text());
    if a == text {
        return true;
    }
    match split_letter(a) {
        Some((i, rest)) if i == q.answer => rest.is_empty() || rest == text,
        _ => false,
    }
}

/// `b`, `(b)`, `b)`, `b.`, `b:` and what follows, or `None` if the answer does not open with a
/// lone letter.
fn split_letter(a: &str) -> Option<(usize, &str)> {
    let a = a.strip_prefix('(').unwrap_or(a);
    let mut chars = a.char_indices();
    let (_, c) = chars.next()?;
    let idx = letter_index(c)?;
    let rest = &a[c.len_utf8()..];
    let rest = rest
        .strip_prefix(')')
        .or_else(|| rest.strip_prefix('.'))
        .or_else(|| rest.strip_prefix(':'))
        .unwrap_or(rest);
    // Without a separator the letter must stand alone, or "gut" would read as option G.
    if rest.len() == a.len() - c.len_utf8() && !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some((idx, rest.trim()))
}

/// 1 when the completion is exactly `<think>...</think>` then `<answer>...</answer>`, with
/// whitespace only around and between them, no nested or repeated tags and a non-empty answer.
pub fn format_reward(completion: &str) -> f32 {
    let ok = (|| {
        let s = completion.trim().strip_prefix("<think>")?;
        let (think, rest) = s.split_once("</think>")?;
        let rest = rest.trim_start().strip_prefix("<answer>")?;
        let (answer, tail) = rest.split_once("</answer>")?;
        let clean = |t: &str| {
            !t.contains("<think>")
                && !t.contains("</think>")
                && !t.contains("<answer>")
                && !t.contains("</answer>")
        };
        (tail.trim().is_empty() && clean(think) && clean(answer) && !answer.trim().is_empty())
            .then_some(())
    })();
    if ok.is_some() {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> Question {
        Question {
            id: "0".into(),
            image: "x.png".into(),
            instruction: String::new(),
            question: "What anatomy is at the top-mid of the frame ?".into(),
            options_heading: "Anatomy Options".into(),
            options: vec![
                "Gallbladder".into(),
                "Liver".into(),
                "Abdominal Wall Cavity".into(),
                "Gut".into(),
            ],
            answer: 1,
            question_type: None,
            modality: None,
            caption: None,
        }
    }

    #[test]
    fn accuracy_table() {
        let cases: &[(&str, f32)] = &[
            ("<think>red, smooth</think> <answer>B</answer>", 1.0),
            ("<think>x</think><answer> b </answer>", 1.0),
            ("<think>x</think><answer>B.</answer>", 1.0),
            ("<think>x</think><answer>(B)</answer>", 1.0),
            ("<think>x</think><answer>Liver</answer>", 1.0),
            ("<think>x</think><answer>  LIVER </answer>", 1.0),
            ("<think>x</think><answer>B. Liver</answer>", 1.0),
            ("<think>x</think><answer>B: liver</answer>", 1.0),
            ("<think>x</think><answer>(B) Liver</answer>", 1.0),
            ("<think>x</think><answer>B Liver</answer>", 1.0),
            // no think block at all: accuracy still judged, format is not
            ("<answer>B</answer>", 1.0),
            // wrong letter, wrong text, letter with another option's text
            ("<think>x</think><answer>A</answer>", 0.0),
            ("<think>x</think><answer>Gut</answer>", 0.0),
            ("<think>x</think><answer>B. Gut</answer>", 0.0),
            ("<think>x</think><answer>A. Liver</answer>", 0.0),
            // two different letters, or all of them
            ("<think>x</think><answer>A or B</answer>", 0.0),
            ("<think>x</think><answer>B, C</answer>", 0.0),
            ("<think>x</think><answer>ABCD</answer>", 0.0),
            ("<think>x</think><answer>Liver or Gut</answer>", 0.0),
            // "Gut" must not read as the letter G followed by "ut"
            ("<think>x</think><answer>Gallbladder</answer>", 0.0),
            // empty answer, no answer, unclosed answer
            ("<think>x</think><answer></answer>", 0.0),
            ("<think>x</think><answer>   </answer>", 0.0),
            ("<think>the answer is B</think>", 0.0),
            ("<think>x</think><answer>B", 0.0),
            ("B", 0.0),
        ];
        for (completion, want) in cases {
            assert_eq!(accuracy_reward(completion, &q()), *want, "{completion:?}");
        }
    }

    #[test]
    fn reward_hacking_attempts() {
        let q = q();
        // Several answer tags: only the last counts, and the format reward is lost.
        let many = "<think>x</think><answer>B</answer><answer>A</answer>";
        assert_eq!(accuracy_reward(many, &q), 0.0);
        assert_eq!(format_reward(many), 0.0);
        let many_right_last = "<think>x</think><answer>A</answer><answer>B</answer>";
        assert_eq!(accuracy_reward(many_right_last, &q), 1.0);
        assert_eq!(format_reward(many_right_last), 0.0);
        // An answer hidden inside the reasoning does not count, nor does it pass the format.
        let inside = "<think><answer>B</answer></think><answer>A</answer>";
        assert_eq!(accuracy_reward(inside, &q), 0.0);
        assert_eq!(format_reward(inside), 0.0);
        let only_inside = "<think>hmm <answer>B</answer></think>";
        assert_eq!(accuracy_reward(only_inside, &q), 0.0);
        assert_eq!(format_reward(only_inside), 0.0);
        // An unclosed think hides a later answer.
        let unclosed = "<think>x <answer>B</answer>";
        assert_eq!(accuracy_reward(unclosed, &q), 0.0);
        // Empty answer passes neither.
        let empty = "<think>x</think><answer></answer>";
        assert_eq!(format_reward(empty), 0.0);
        assert_eq!(rewards(empty, &q, RewardWeights::default()).total, 0.0);
    }

    #[test]
    fn format_table() {
        let cases: &[(&str, f32)] = &[
            ("<think>a</think><answer>B</answer>", 1.0),
            (
                "  <think>\nlong\nreasoning\n</think>\n<answer> B </answer>\n",
                1.0,
            ),
            ("<think></think> <answer>B</answer>", 1.0),
            ("<answer>B</answer>", 0.0),
            ("<think>a</think>", 0.0),
            ("text before <think>a</think><answer>B</answer>", 0.0),
            ("<think>a</think><answer>B</answer> and after", 0.0),
            ("<think>a</think> between <answer>B</answer>", 0.0),
            ("<answer>B</answer><think>a</think>", 0.0),
            ("<think>a<think>b</think></think><answer>B</answer>", 0.0),
            ("<think>a</think><answer>B</answer><answer>C</answer>", 0.0),
            ("<think>a</think><answer>B", 0.0),
            ("", 0.0),
        ];
        for (completion, want) in cases {
            assert_eq!(format_reward(completion), *want, "{completion:?}");
        }
    }

    #[test]
    fn weights_apply() {
        let w = RewardWeights {
            accuracy: 0.8,
            format: 0.2,
        };
        let r = rewards("<think>a</think><answer>B</answer>", &q(), w);
        assert_eq!(
            r,
            Rewards {
                accuracy: 1.0,
                format: 1.0,
                total: 1.0
            }
        );
        let r = rewards("<answer>Liver</answer>", &q(), w);
        assert!((r.total - 0.8).abs() < 1e-6);
        let r = rewards("<think>a</think><answer>A</answer>", &q(), w);
        assert!((r.total - 0.2).abs() < 1e-6);
    }
}
