//! ASCL, the anatomical similarity curriculum: questions whose answer choices look alike are hard,
//! so training goes from dissimilar choices (low S(q)) to similar ones.
//!
//! [`similarity`] computes S(q) from an [`embedder`] or a similarity matrix; [`curriculum`] splits
//! questions into stages and paces the move between them; [`distractors`] rebuilds options from a
//! fixed label vocabulary so that each stage gets distractors of its own difficulty.

pub mod curriculum;
pub mod distractors;
pub mod embedder;
pub mod similarity;

use std::path::{Path, PathBuf};

pub use curriculum::{split_stages, Curriculum, CurriculumConfig, Pacing, Stage};
pub use embedder::{BertEmbedder, Embedder, PolicyEmbedder};
pub use similarity::{
    all_similarities, question_similarity, Aggregate, EmbeddingSimilarity, MatrixSimilarity,
    Similarity,
};

#[derive(Debug, thiserror::Error)]
pub enum AsclError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("{0}: no token embedding matrix (model.embed_tokens.weight or model.language_model.embed_tokens.weight)")]
    NoEmbeddings(PathBuf),
    #[error("text {0:?} has no tokens to embed")]
    EmptyText(String),
    #[error("similarity matrix: {0}")]
    Matrix(String),
    #[error("option {0:?} is not a label of the similarity matrix")]
    UnknownLabel(String),
    #[error("question {0} has no distractors")]
    NoDistractors(String),
    #[error("bad embedder {0:?}: expected policy, policy:<dir>, bert:<dir> or matrix:<file>")]
    BadSpec(String),
    #[error("the policy embedder needs a model directory (policy:<dir> or --model <dir>)")]
    NoPolicyModel,
    #[error("curriculum: {0}")]
    Curriculum(String),
    #[error(
        "question {id}: needs {needed} distractors but the vocabulary offers only {available}"
    )]
    SmallVocabulary {
        id: String,
        needed: usize,
        available: usize,
    },
}

/// Where S(q)'s similarities come from, as written on the command line.
#[derive(Clone, Debug, PartialEq)]
pub enum SimilaritySource {
    /// The policy's token embeddings; the directory may come separately (`--model`).
    Policy(Option<PathBuf>),
    Bert(PathBuf),
    Matrix(PathBuf),
}

impl SimilaritySource {
    /// Parses `policy`, `policy:<dir>`, `bert:<dir>` or `matrix:<file>`.
    pub fn parse(spec: &str) -> Result<Self, AsclError> {
        let (kind, arg) = match spec.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (spec, None),
        };
        match (kind, arg) {
            ("policy", None) => Ok(Self::Policy(None)),
            ("policy", Some(a)) if !a.is_empty() => Ok(Self::Policy(Some(a.into()))),
            ("bert", Some(a)) if !a.is_empty() => Ok(Self::Bert(a.into())),
            ("matrix", Some(a)) if !a.is_empty() => Ok(Self::Matrix(a.into())),
            _ => Err(AsclError::BadSpec(spec.to_string())),
        }
    }

    /// Loads the similarity; `policy_dir` serves a bare `policy`.
    pub fn load(&self, policy_dir: Option<&Path>) -> Result<Box<dyn Similarity>, AsclError> {
        Ok(match self {
            Self::Policy(dir) => {
                let dir = dir
                    .as_deref()
                    .or(policy_dir)
                    .ok_or(AsclError::NoPolicyModel)?;
                Box::new(EmbeddingSimilarity::new(PolicyEmbedder::from_dir(dir)?))
            }
            Self::Bert(dir) => Box::new(EmbeddingSimilarity::new(BertEmbedder::from_dir(dir)?)),
            Self::Matrix(file) => Box::new(MatrixSimilarity::from_file(file)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            SimilaritySource::parse("policy").unwrap(),
            SimilaritySource::Policy(None)
        );
        assert_eq!(
            SimilaritySource::parse("bert:/m").unwrap(),
            SimilaritySource::Bert("/m".into())
        );
        assert_eq!(
            SimilaritySource::parse("matrix:s.json").unwrap(),
            SimilaritySource::Matrix("s.json".into())
        );
        for bad in ["", "bert", "bert:", "glove:/x", "matrix"] {
            assert!(SimilaritySource::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            SimilaritySource::Policy(None).load(None),
            Err(AsclError::NoPolicyModel)
        ));
    }
}
