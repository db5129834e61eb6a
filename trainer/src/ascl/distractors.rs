//! Distractor rebuild for data sets with a fixed label vocabulary (SGG-VQA's six anatomy classes):
//! early stages get the labels least like the answer, later stages the most alike, so that S(q)
//! itself climbs with the curriculum.

use std::collections::BTreeMap;

use super::similarity::Similarity;
use super::AsclError;
use crate::data::{normalize, Question};

/// The distinct option texts of a data set (first spelling seen), sorted: its label vocabulary.
pub fn label_vocabulary(questions: &[Question]) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for q in questions {
        for o in &q.options {
            seen.entry(normalize(o)).or_insert_with(|| o.clone());
        }
    }
    seen.into_values().collect()
}

/// The question with its distractors replaced by vocabulary labels chosen for `stage` of
/// `stages`: the candidates (every label but the answer) are ranked by similarity to the answer
/// and a window slides from the least similar (stage 0) to the most similar (last stage).
///
/// The answer keeps its letter and a distractor that is chosen again keeps its slot, so the output
/// shows exactly which distractors changed; new ones fill the freed slots, least similar first.
pub fn rebuild_distractors(
    q: &Question,
    vocabulary: &[String],
    sim: &dyn Similarity,
    stage: usize,
    stages: usize,
) -> Result<Question, AsclError> {
    let answer = q.answer_text();
    let key = normalize(answer);
    let mut ranked = Vec::new();
    for label in vocabulary.iter().filter(|l| normalize(l) != key) {
        ranked.push((sim.similarity(answer, label)?, label));
    }
    let needed = q.options.len() - 1;
    if ranked.len() < needed {
        return Err(AsclError::SmallVocabulary {
            id: q.id.clone(),
            needed,
            available: ranked.len(),
        });
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    let slack = ranked.len() - needed;
    let offset = if stages <= 1 {
        0
    } else {
        (stage.min(stages - 1) * slack + (stages - 1) / 2) / (stages - 1)
    };
    let mut chosen: Vec<&String> = ranked[offset..offset + needed]
        .iter()
        .map(|(_, l)| *l)
        .collect();
    let mut out = q.clone();
    let mut open = Vec::new();
    for (i, slot) in out.options.iter_mut().enumerate() {
        if i == q.answer {
            continue;
        }
        match chosen.iter().position(|l| normalize(l) == normalize(slot)) {
            Some(p) => {
                chosen.remove(p);
            }
            None => open.push(i),
        }
    }
    for (i, label) in open.into_iter().zip(chosen) {
        out.options[i] = label.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ascl::similarity::{question_similarity, Aggregate, MatrixSimilarity};

    #[test]
    fn stages_slide_from_unlike_to_alike() {
        let labels = [
            "Liver",
            "Gut",
            "Omentum",
            "Gallbladder",
            "Cystic Plate",
            "Abdominal Wall Cavity",
        ];
        // Similarity to Liver rises with the label's position.
        let n = labels.len();
        let m: Vec<Vec<f32>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| if i == j { 1.0 } else { 0.1 * (i + j) as f32 })
                    .collect()
            })
            .collect();
        let sim = MatrixSimilarity::new(labels.iter().map(|s| s.to_string()).collect(), m).unwrap();
        let q = Question {
            id: "1".into(),
            image: "x".into(),
            instruction: String::new(),
            question: "?".into(),
            options_heading: "Options".into(),
            options: vec![
                "Gut".into(),
                "Liver".into(),
                "Omentum".into(),
                "Gallbladder".into(),
            ],
            answer: 1,
            question_type: None,
            modality: None,
            caption: None,
        };
        let vocab: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let easy = rebuild_distractors(&q, &vocab, &sim, 0, 3).unwrap();
        let mid = rebuild_distractors(&q, &vocab, &sim, 1, 3).unwrap();
        let hard = rebuild_distractors(&q, &vocab, &sim, 2, 3).unwrap();
        assert_eq!(easy.options, ["Gut", "Liver", "Omentum", "Gallbladder"]);
        // Distractors chosen again keep their slots; new ones take the freed slots.
        assert_eq!(
            mid.options,
            ["Cystic Plate", "Liver", "Omentum", "Gallbladder"]
        );
        assert_eq!(
            hard.options,
            [
                "Cystic Plate",
                "Liver",
                "Abdominal Wall Cavity",
                "Gallbladder"
            ]
        );
        let s = |q: &Question| question_similarity(q, &sim, Aggregate::Mean).unwrap();
        assert!(s(&easy) < s(&mid) && s(&mid) < s(&hard));
        for r in [&easy, &mid, &hard] {
            assert_eq!(r.answer_text(), "Liver");
        }
        let small = rebuild_distractors(&q, &vocab[..3], &sim, 0, 3);
        assert!(matches!(
            small,
            Err(AsclError::SmallVocabulary {
                needed: 3,
                available: 2,
                ..
            })
        ));
    }

    #[test]
    fn vocabulary_merges_spellings() {
        let mk = |o: &[&str]| Question {
            id: "0".into(),
            image: "x".into(),
            instruction: String::new(),
            question: "?".into(),
            options_heading: "Options".into(),
            options: o.iter().map(|s| s.to_string()).collect(),
            answer: 0,
            question_type: None,
            modality: None,
            caption: None,
        };
        let v = label_vocabulary(&[mk(&["Liver", "Gut"]), mk(&["gut", "Omentum"])]);
        assert_eq!(v, ["Gut", "Liver", "Omentum"]);
    }
}
