//! The RL prompt, rebuilt from a question's parts so that augmentation can change any of them.
//!
//! The layout is the Anatomy-R1 files' own: instruction, `Question:`, the question, the options
//! heading and `A. text` lines; rendering a parsed record gives its `instruction` field back.

use super::question::{letter, Question};

/// The instruction of `GRPO.json` (the answer text is asked for).
pub const PAPER_INSTRUCTION_ANSWER: &str = "You are an expert in cholecystectomy surgical procedures, and I will provide you with a clinical image of a cholecystectomy surgery. Please analyze the image and answer the question. You should only return the answer of the question, not any other text. Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. The output answer format should be as follows:<think> ... </think> <answer>YOUR ANSWER HERE</answer>.";

/// The instruction of `GRPO-ASC-Learning.json` (the choice letter is asked for).
pub const PAPER_INSTRUCTION_CHOICE: &str = "You are an expert in cholecystectomy surgical procedures, and I will provide you with a clinical image of a cholecystectomy surgery. Please analyze the image and follow the instructions:\n\n1.Select the most suitable option for the problem based on the given anatomy options. Only one correct answer exists. You should only return the choice letter, not any other text.\n\n2.Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. The output answer format should be as follows:<think> ... </think> <answer>YOUR ANSWER HERE</answer>.";

/// The instruction of `GRPO-GDQA.json`.
pub const PAPER_INSTRUCTION_GDQA: &str = "You are an expert in cholecystectomy surgical procedures, and I will provide you with a clinical image of a cholecystectomy surgery. Please analyze the image and follow the instructions:\n\n1.Select the most suitable option for the problem based on the given anatomy options. Only one correct answer exists. You should only return the choice letter, not any other text.\n\n2.Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. The output answer format should be as follows:<think> ... </think> <answer>YOUR CHOICE HERE</answer>.";

/// The instruction of sources that bring none (OmniMedVQA, our JSONL): the paper's wording without
/// the cholecystectomy framing, which would mislead on other anatomy.
pub const DEFAULT_INSTRUCTION: &str = "You are an expert in medical imaging, and I will provide you with a clinical image. Please analyze the image and follow the instructions:\n\n1.Select the most suitable option for the problem based on the given options. Only one correct answer exists. You should only return the choice letter, not any other text.\n\n2.Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. The output answer format should be as follows:<think> ... </think> <answer>YOUR CHOICE HERE</answer>.";

/// Further wordings of the general instruction, for GDQA's instruction variants.
pub const GENERAL_INSTRUCTION_VARIANTS: [&str; 2] = [
    "Look carefully at the clinical image and answer the multiple-choice question below. Exactly one option is correct; reply with its letter only.\n\nFirst reason step by step in <think> </think>, then give the final choice in <answer> </answer> tags, as follows:<think> ... </think> <answer>YOUR CHOICE HERE</answer>.",
    "You are a medical image analysis expert. Study the image and choose the single best option for the question. Return only the option letter.\n\nWrite your reasoning in <think> </think> and your final choice in <answer> </answer> tags. The output answer format should be as follows:<think> ... </think> <answer>YOUR CHOICE HERE</answer>.",
];

/// The wordings an instruction may be swapped for without changing what is asked: the paper's
/// three among themselves, and the general ones among themselves (so that a cholecystectomy
/// instruction never lands on other data, nor the reverse). An instruction of neither family is
/// kept as it is: nothing says another wording would ask for the same output.
pub fn instruction_variants(instruction: &str) -> Vec<String> {
    let paper = [
        PAPER_INSTRUCTION_CHOICE,
        PAPER_INSTRUCTION_GDQA,
        PAPER_INSTRUCTION_ANSWER,
    ];
    let mut general = vec![DEFAULT_INSTRUCTION];
    general.extend(GENERAL_INSTRUCTION_VARIANTS);
    let family: Vec<&str> = if paper.contains(&instruction) {
        paper.to_vec()
    } else if general.contains(&instruction) {
        general
    } else {
        vec![instruction]
    };
    family.into_iter().map(str::to_string).collect()
}

/// The full RL prompt of a question.
pub fn render(q: &Question) -> String {
    let mut s = String::with_capacity(q.instruction.len() + 256);
    s.push_str(&q.instruction);
    s.push_str("\nQuestion:\n");
    s.push_str(&q.question);
    s.push('\n');
    s.push_str(&q.options_heading);
    s.push(':');
    for (i, o) in q.options.iter().enumerate() {
        s.push('\n');
        s.push(letter(i));
        s.push_str(". ");
        s.push_str(o);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::anatomy_r1::split_prompt;

    fn sample() -> Question {
        Question {
            id: "7".into(),
            image: "x.png".into(),
            instruction: PAPER_INSTRUCTION_CHOICE.into(),
            question: "What anatomy is at the top-left of the frame ?".into(),
            options_heading: "Anatomy Options".into(),
            options: vec!["Liver".into(), "Gut".into(), "Omentum".into()],
            answer: 1,
            question_type: None,
            modality: None,
            caption: None,
        }
    }

    #[test]
    fn render_then_split_gives_the_parts_back() {
        let q = sample();
        let p = render(&q);
        assert!(
            p.ends_with("Anatomy Options:\nA. Liver\nB. Gut\nC. Omentum"),
            "{p}"
        );
        let parts = split_prompt(&p).unwrap();
        assert_eq!(parts.instruction, q.instruction);
        assert_eq!(parts.question, q.question);
        assert_eq!(parts.options_heading, q.options_heading);
        assert_eq!(parts.options, q.options);
    }

    #[test]
    fn every_instruction_asks_for_the_think_answer_format() {
        for i in [PAPER_INSTRUCTION_ANSWER, DEFAULT_INSTRUCTION]
            .into_iter()
            .map(str::to_string)
            .chain(instruction_variants(PAPER_INSTRUCTION_CHOICE))
            .chain(instruction_variants(DEFAULT_INSTRUCTION))
        {
            assert!(i.contains("<think> ... </think> <answer>"), "{i}");
        }
        assert_eq!(instruction_variants(PAPER_INSTRUCTION_GDQA).len(), 3);
        assert_eq!(instruction_variants("custom"), ["custom"]);
    }
}
