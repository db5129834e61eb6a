//! S(q): how alike a question's answer choices are, from cosine similarities of embedded option
//! texts (cached per distinct text) or from a clinician-supplied similarity matrix.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use super::embedder::Embedder;
use super::AsclError;
use crate::data::{normalize, Question};

/// Similarity of two option texts, symmetric, 1 for identical texts.
pub trait Similarity {
    fn similarity(&self, a: &str, b: &str) -> Result<f32, AsclError>;
}

/// How the correct option's similarities to the distractors are folded into S(q).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Aggregate {
    /// The paper's S(q): the mean over distractors.
    #[default]
    Mean,
    /// The hardest distractor alone.
    Max,
}

/// S(q) of one question.
pub fn question_similarity(
    q: &Question,
    sim: &dyn Similarity,
    agg: Aggregate,
) -> Result<f32, AsclError> {
    let correct = q.answer_text();
    let mut sum = 0.0f32;
    let mut max = f32::NEG_INFINITY;
    let mut n = 0usize;
    for d in q.distractors() {
        let s = sim.similarity(correct, d)?;
        sum += s;
        max = max.max(s);
        n += 1;
    }
    if n == 0 {
        return Err(AsclError::NoDistractors(q.id.clone()));
    }
    Ok(match agg {
        Aggregate::Mean => sum / n as f32,
        Aggregate::Max => max,
    })
}

/// S(q) of every question, in order.
pub fn all_similarities(
    questions: &[Question],
    sim: &dyn Similarity,
    agg: Aggregate,
) -> Result<Vec<f32>, AsclError> {
    questions
        .iter()
        .map(|q| question_similarity(q, sim, agg))
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Cosine similarity of embeddings, each distinct option text embedded once: a data set of
/// thousands of questions has only a handful of anatomy names.
pub struct EmbeddingSimilarity<E> {
    embedder: E,
    cache: RefCell<HashMap<String, Vec<f32>>>,
}

impl<E: Embedder> EmbeddingSimilarity<E> {
    pub fn new(embedder: E) -> Self {
        Self {
            embedder,
            cache: RefCell::new(HashMap::new()),
        }
    }

    /// How many distinct texts have been embedded so far.
    pub fn cached(&self) -> usize {
        self.cache.borrow().len()
    }

    fn vector(&self, text: &str) -> Result<Vec<f32>, AsclError> {
        if let Some(v) = self.cache.borrow().get(text) {
            return Ok(v.clone());
        }
        let v = self.embedder.embed(text)?;
        self.cache.borrow_mut().insert(text.to_string(), v.clone());
        Ok(v)
    }
}

impl<E: Embedder> Similarity for EmbeddingSimilarity<E> {
    fn similarity(&self, a: &str, b: &str) -> Result<f32, AsclError> {
        Ok(cosine(&self.vector(a)?, &self.vector(b)?))
    }
}

/// A similarity matrix over labels, e.g. from clinicians' judgement:
/// `{"labels": ["Liver", ...], "matrix": [[1.0, 0.4, ...], ...]}`, matched case-insensitively.
#[derive(Debug, Clone)]
pub struct MatrixSimilarity {
    index: HashMap<String, usize>,
    matrix: Vec<Vec<f32>>,
}

#[derive(serde::Deserialize)]
struct MatrixFile {
    labels: Vec<String>,
    matrix: Vec<Vec<f32>>,
}

/// How far apart `m[i][j]` and `m[j][i]` may be: hand-written matrices round to a few digits.
const SYMMETRY_TOLERANCE: f32 = 1e-4;

impl MatrixSimilarity {
    pub fn new(labels: Vec<String>, matrix: Vec<Vec<f32>>) -> Result<Self, AsclError> {
        let n = labels.len();
        if n == 0 || matrix.len() != n || matrix.iter().any(|r| r.len() != n) {
            return Err(AsclError::Matrix(format!(
                "{n} labels need an {n}x{n} matrix"
            )));
        }
        let mut index = HashMap::new();
        for (i, l) in labels.iter().enumerate() {
            if index.insert(normalize(l), i).is_some() {
                return Err(AsclError::Matrix(format!("label {l:?} appears twice")));
            }
        }
        for (i, row) in matrix.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                if !x.is_finite() {
                    return Err(AsclError::Matrix(format!("entry [{i}][{j}] is not finite")));
                }
                if (x - matrix[j][i]).abs() > SYMMETRY_TOLERANCE {
                    return Err(AsclError::Matrix(format!(
                        "not symmetric: [{i}][{j}] = {x} but [{j}][{i}] = {}",
                        matrix[j][i]
                    )));
                }
            }
        }
        Ok(Self { index, matrix })
    }

    pub fn from_json(text: &str) -> Result<Self, AsclError> {
        let f: MatrixFile =
            serde_json::from_str(text).map_err(|e| AsclError::Matrix(e.to_string()))?;
        Self::new(f.labels, f.matrix)
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, AsclError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AsclError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text).map_err(|e| match e {
            AsclError::Matrix(m) => AsclError::Matrix(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    fn label(&self, text: &str) -> Result<usize, AsclError> {
        self.index
            .get(&normalize(text))
            .copied()
            .ok_or_else(|| AsclError::UnknownLabel(text.to_string()))
    }
}

impl Similarity for MatrixSimilarity {
    fn similarity(&self, a: &str, b: &str) -> Result<f32, AsclError> {
        Ok(self.matrix[self.label(a)?][self.label(b)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(options: &[&str], answer: usize) -> Question {
        Question {
            id: "q".into(),
            image: "x".into(),
            instruction: String::new(),
            question: "?".into(),
            options_heading: "Options".into(),
            options: options.iter().map(|s| s.to_string()).collect(),
            answer,
            question_type: None,
            modality: None,
            caption: None,
        }
    }

    fn matrix() -> MatrixSimilarity {
        MatrixSimilarity::from_json(
            r#"{"labels": ["Liver", "Gut", "Omentum"],
                "matrix": [[1.0, 0.2, 0.6], [0.2, 1.0, 0.4], [0.6, 0.4, 1.0]]}"#,
        )
        .unwrap()
    }

    #[test]
    fn sq_is_mean_or_max_over_distractors() {
        let m = matrix();
        let question = q(&["Gut", "liver", "OMENTUM"], 1);
        let mean = question_similarity(&question, &m, Aggregate::Mean).unwrap();
        assert!((mean - 0.4).abs() < 1e-6, "{mean}");
        let max = question_similarity(&question, &m, Aggregate::Max).unwrap();
        assert!((max - 0.6).abs() < 1e-6, "{max}");
    }

    #[test]
    fn matrix_rejects_bad_input() {
        let bad = [
            r#"{"labels": ["A", "B"], "matrix": [[1.0, 0.2], [0.3, 1.0]]}"#,
            r#"{"labels": ["A", "B"], "matrix": [[1.0, 0.2]]}"#,
            r#"{"labels": ["A", "a"], "matrix": [[1.0, 0.2], [0.2, 1.0]]}"#,
            r#"{"labels": [], "matrix": []}"#,
            r#"{"labels": ["A"]}"#,
        ];
        for b in bad {
            assert!(
                matches!(MatrixSimilarity::from_json(b), Err(AsclError::Matrix(_))),
                "{b}"
            );
        }
        let e = question_similarity(&q(&["Liver", "Spleen"], 0), &matrix(), Aggregate::Mean);
        assert!(matches!(e, Err(AsclError::UnknownLabel(l)) if l == "Spleen"));
    }

    struct Letters;
    impl Embedder for Letters {
        // Counts of a, b, c: texts sharing letters point the same way.
        fn embed(&self, text: &str) -> Result<Vec<f32>, AsclError> {
            Ok(['a', 'b', 'c']
                .iter()
                .map(|c| text.chars().filter(|x| x == c).count() as f32)
                .collect())
        }
    }

    #[test]
    fn embedding_similarity_caches_each_text_once() {
        let s = EmbeddingSimilarity::new(Letters);
        assert!((s.similarity("aa", "a").unwrap() - 1.0).abs() < 1e-6);
        assert!(s.similarity("a", "b").unwrap().abs() < 1e-6);
        assert!((s.similarity("ab", "a").unwrap() - 0.5f32.sqrt()).abs() < 1e-6);
        assert_eq!(s.cached(), 4);
    }
}
