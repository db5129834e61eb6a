//! Greedy evaluation of a base model, optionally with a run's LoRA checkpoint merged in, on a
//! multiple-choice question file: accuracy overall and per answer class, and the confusion matrix
//! of answer class against predicted class.
//!
//! Prompts are the ones training uses (`data::prompt::render` in the chat template with the image),
//! and a completion is scored by the training reward's own parsing, so that eval accuracy and the
//! `accuracy` a run logs mean the same thing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::candle::Qwen25VL;
use anatomy_models::qwen2_5_vl::config::load_preprocess_params;
use anatomy_models::qwen2_5_vl::preprocess::{preprocess_file, PreprocessParams};
use anatomy_models::qwen2_5_vl::template::{user_prompt, ChatTokenizer};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::data::{self, prompt, Question};
use crate::reward;
use crate::run::{checkpoint, RunError};

/// The confusion-matrix label of a completion whose answer names no single option.
pub const INVALID: &str = "invalid";

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: no questions to evaluate")]
    NoQuestions { path: PathBuf },
    #[error("question {id}")]
    Question {
        id: String,
        #[source]
        source: Box<EvalError>,
    },
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    #[error(transparent)]
    Model(#[from] anatomy_models::qwen2_5_vl::candle::ModelError),
    #[error(transparent)]
    Template(#[from] anatomy_models::qwen2_5_vl::template::TemplateError),
    #[error(transparent)]
    Preprocess(#[from] anatomy_models::qwen2_5_vl::preprocess::PreprocessError),
    #[error(transparent)]
    ModelConfig(#[from] anatomy_models::qwen2_5_vl::config::ConfigError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// The HF model directory (weights, config, tokenizer, preprocessor config).
    pub base: PathBuf,
    /// A `checkpoint-NNNNNN` directory, or a run directory (its `latest` checkpoint is used).
    pub adapter: Option<PathBuf>,
    pub data: PathBuf,
    pub image_root: Option<PathBuf>,
    /// Evaluate only the first `limit` questions of the file.
    pub limit: Option<usize>,
    pub max_new_tokens: usize,
}

/// One question's outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub id: String,
    /// The correct option's text.
    pub class: String,
    /// The question's type (OmniMedVQA's `question_type`, the synthetic scenes' `form`), if any.
    pub question_type: Option<String>,
    /// The option the answer names, or [`INVALID`].
    pub predicted: String,
    pub correct: bool,
    pub completion: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassAccuracy {
    pub accuracy: f64,
    pub count: usize,
}

/// Rows are answer classes and columns predicted classes, both in `labels` order; `labels` ends
/// with [`INVALID`], whose row is all zeros (no question's answer is invalid) so that the matrix
/// stays square.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<usize>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub accuracy: f64,
    pub count: usize,
    pub per_class: BTreeMap<String, ClassAccuracy>,
    /// Accuracy per question type, over the questions that have one (absent when none has).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub per_type: BTreeMap<String, ClassAccuracy>,
    pub confusion: Confusion,
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// Which option a completion's final answer names: the one option the reward would pay for, or
/// `None` when it names none or is ambiguous (e.g. two options with the same text).
///
/// Asking the reward about each option in turn keeps one definition of "this answer means option
/// i" instead of a second parser that could drift from the one training is scored with.
pub fn predicted_option(completion: &str, q: &Question) -> Option<usize> {
    reward::extract_answer(completion)?;
    let mut probe = q.clone();
    let mut found = None;
    for i in 0..q.options.len() {
        probe.answer = i;
        if reward::accuracy_reward(completion, &probe) > 0.0 {
            if found.is_some() {
                return None;
            }
            found = Some(i);
        }
    }
    found
}

/// Scores one completion.
pub fn predict(q: &Question, completion: String) -> Prediction {
    let predicted = predicted_option(&completion, q);
    Prediction {
        id: q.id.clone(),
        class: q.answer_text().to_string(),
        question_type: q.question_type.clone(),
        predicted: predicted.map_or_else(|| INVALID.to_string(), |i| q.options[i].clone()),
        correct: predicted == Some(q.answer),
        completion,
    }
}

/// Aggregates predictions into accuracy, per-class accuracy and the confusion matrix.
pub fn summarize(predictions: Vec<Prediction>) -> EvalReport {
    let count = predictions.len();
    let correct = predictions.iter().filter(|p| p.correct).count();
    let mut per_class: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut per_type: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let tally = |m: &mut BTreeMap<String, (usize, usize)>, key: &str, ok: bool| {
        let e = m.entry(key.to_string()).or_default();
        e.0 += usize::from(ok);
        e.1 += 1;
    };
    for p in &predictions {
        tally(&mut per_class, &p.class, p.correct);
        if let Some(t) = &p.question_type {
            tally(&mut per_type, t, p.correct);
        }
    }
    // Predicted texts that are no question's answer still need a column, or counts would not add
    // up to the number of questions.
    let mut labels: Vec<String> = per_class.keys().cloned().collect();
    for p in &predictions {
        if p.predicted != INVALID && !labels.contains(&p.predicted) {
            labels.push(p.predicted.clone());
        }
    }
    labels[per_class.len()..].sort();
    labels.push(INVALID.to_string());
    let index = |l: &str| {
        labels
            .iter()
            .position(|x| x == l)
            .unwrap_or(labels.len() - 1)
    };
    let mut matrix = vec![vec![0usize; labels.len()]; labels.len()];
    for p in &predictions {
        matrix[index(&p.class)][index(&p.predicted)] += 1;
    }
    let accuracies = |m: BTreeMap<String, (usize, usize)>| {
        m.into_iter()
            .map(|(c, (ok, n))| {
                (
                    c,
                    ClassAccuracy {
                        accuracy: ratio(ok, n),
                        count: n,
                    },
                )
            })
            .collect()
    };
    EvalReport {
        accuracy: ratio(correct, count),
        count,
        per_class: accuracies(per_class),
        per_type: accuracies(per_type),
        confusion: Confusion { labels, matrix },
        predictions,
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// A loaded model ready to answer questions greedily.
pub struct Evaluator {
    model: Qwen25VL,
    tok: ChatTokenizer,
    params: PreprocessParams,
    stop: Vec<u32>,
    max_new_tokens: usize,
}

impl Evaluator {
    /// Loads the base model in f32 on the CPU and merges the adapter checkpoint, if any, into it:
    /// merged weights decode as fast as the base and give the fine-tuned policy exactly.
    pub fn load(
        base: &Path,
        adapter: Option<&Path>,
        max_new_tokens: usize,
    ) -> Result<Self, EvalError> {
        let ck = match adapter {
            Some(dir) if dir.join("latest").is_file() => Some(checkpoint::latest(dir)?),
            other => other.map(Path::to_path_buf),
        };
        // The checkpoint's whole `init` chain, so a GRPO run started from an SFT checkpoint is
        // evaluated with both.
        let (root, _) = crate::weights::chain(base, ck.as_deref())?;
        let model = crate::weights::load_chain(base, ck.as_deref(), DType::F32, &Device::Cpu)?;
        let tok = ChatTokenizer::from_dir(&root)?;
        let params = load_preprocess_params(&root)?;
        let stop = tok.stop_tokens(&model.config().tokens.eos_token_ids);
        Ok(Self {
            model,
            tok,
            params,
            stop,
            max_new_tokens,
        })
    }

    /// The greedy completion for one question.
    pub fn complete(&self, q: &Question) -> Result<String, EvalError> {
        let img = preprocess_file(&q.image, &self.params)?;
        let pixels = Tensor::from_slice(
            &img.pixel_values,
            (img.n_patches, img.patch_dim),
            self.model.device(),
        )?
        .to_dtype(self.model.dtype())?;
        let grid = img.grid_thw;
        let merge = self.model.config().vision.spatial_merge_size;
        let text = user_prompt(&prompt::render(q), true);
        let ids = self
            .tok
            .encode_prompt(&text, &[grid[0] * grid[1] * grid[2] / (merge * merge)])?;
        let out = self.model.generate_greedy(
            &ids,
            Some(&pixels),
            &[grid],
            self.max_new_tokens,
            &self.stop,
        )?;
        Ok(self.tok.decode(&out, true)?)
    }

    /// Answers every question in order, calling `progress(done, total)` after each.
    pub fn evaluate(
        &self,
        questions: &[Question],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<EvalReport, EvalError> {
        let mut predictions = Vec::with_capacity(questions.len());
        for (i, q) in questions.iter().enumerate() {
            let completion = self.complete(q).map_err(|e| EvalError::Question {
                id: q.id.clone(),
                source: Box::new(e),
            })?;
            predictions.push(predict(q, completion));
            progress(i + 1, questions.len());
        }
        Ok(summarize(predictions))
    }
}

/// Loads the questions and the model and evaluates.
pub fn run(
    opts: &EvalOptions,
    progress: impl FnMut(usize, usize),
) -> Result<EvalReport, EvalError> {
    let load = data::LoadOptions {
        image_root: opts.image_root.clone(),
        skip_bad: false,
    };
    let mut questions = data::load(&opts.data, &load)?.questions;
    if let Some(n) = opts.limit {
        questions.truncate(n);
    }
    if questions.is_empty() {
        return Err(EvalError::NoQuestions {
            path: opts.data.clone(),
        });
    }
    let evaluator = Evaluator::load(&opts.base, opts.adapter.as_deref(), opts.max_new_tokens)?;
    evaluator.evaluate(&questions, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::synthetic::write_colour_task;

    fn fixture() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/qwen2_5_vl/square/model")
    }

    fn question() -> Question {
        Question {
            id: "q".into(),
            image: "x.png".into(),
            instruction: String::new(),
            question: "Which organ?".into(),
            options_heading: "Options".into(),
            options: vec!["Liver".into(), "Gut".into(), "Gallbladder".into()],
            answer: 1,
            question_type: None,
            modality: None,
            caption: None,
        }
    }

    #[test]
    fn the_predicted_option_follows_the_reward_parsing() {
        let q = question();
        let p = |c: &str| predicted_option(c, &q);
        assert_eq!(p("<think>x</think><answer>B</answer>"), Some(1));
        assert_eq!(p("<answer>(c)</answer>"), Some(2));
        assert_eq!(p("<answer>liver</answer>"), Some(0));
        assert_eq!(p("<answer>A. Gut</answer>"), None);
        assert_eq!(p("<answer>A or B</answer>"), None);
        assert_eq!(p("no tags at all"), None);
        assert!(predict(&q, "<answer>B</answer>".into()).correct);
        assert_eq!(predict(&q, "B".into()).predicted, INVALID);
    }

    #[test]
    fn summary_counts_add_up_and_accuracy_is_the_diagonal_share() {
        let q = question();
        let mut other = question();
        other.answer = 0;
        let preds = vec![
            predict(&q, "<answer>B</answer>".into()),
            predict(&q, "<answer>A</answer>".into()),
            predict(&other, "<answer>A</answer>".into()),
            predict(&other, "nothing".into()),
            predict(&other, "<answer>Gallbladder</answer>".into()),
        ];
        let r = summarize(preds);
        assert_eq!(r.count, 5);
        assert_eq!(r.confusion.labels, ["Gut", "Liver", "Gallbladder", INVALID]);
        assert_eq!(
            r.confusion.matrix,
            vec![vec![1, 1, 0, 0], vec![0, 1, 1, 1], vec![0; 4], vec![0; 4]]
        );
        assert_eq!(r.accuracy, 0.4);
        assert_eq!(
            r.per_class["Gut"],
            ClassAccuracy {
                accuracy: 0.5,
                count: 2
            }
        );
        assert!((r.per_class["Liver"].accuracy - 1.0 / 3.0).abs() < 1e-12);
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("predictions").is_none());
        assert_eq!(v["per_class"]["Gut"]["count"], 2);
        // No question has a type: no per_type key.
        assert!(v.get("per_type").is_none());
    }

    #[test]
    fn accuracy_per_question_type_counts_only_typed_questions() {
        let typed = |t: &str| {
            let mut q = question();
            q.question_type = Some(t.to_string());
            q
        };
        let preds = vec![
            predict(&typed("position"), "<answer>B</answer>".into()),
            predict(&typed("position"), "<answer>A</answer>".into()),
            predict(&typed("attribute"), "<answer>B</answer>".into()),
            predict(&question(), "<answer>A</answer>".into()),
        ];
        let r = summarize(preds);
        assert_eq!(r.per_type.len(), 2);
        assert_eq!(r.per_type["position"].accuracy, 0.5);
        assert_eq!(r.per_type["position"].count, 2);
        assert_eq!(r.per_type["attribute"].accuracy, 1.0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["per_type"]["position"]["count"], 2);
    }

    fn check_report(r: &EvalReport, n: usize) {
        assert_eq!(r.count, n);
        assert_eq!(r.predictions.len(), n);
        let total: usize = r.confusion.matrix.iter().flatten().sum();
        assert_eq!(total, n);
        let diagonal: usize = (0..r.confusion.labels.len())
            .map(|i| r.confusion.matrix[i][i])
            .sum();
        assert!((r.accuracy - diagonal as f64 / n as f64).abs() < 1e-12);
        assert_eq!(r.per_class.values().map(|c| c.count).sum::<usize>(), n);
        for (class, acc) in &r.per_class {
            let row = r.confusion.labels.iter().position(|l| l == class).unwrap();
            assert_eq!(r.confusion.matrix[row].iter().sum::<usize>(), acc.count);
            assert!(
                (acc.accuracy - r.confusion.matrix[row][row] as f64 / acc.count as f64).abs()
                    < 1e-12
            );
        }
        assert_eq!(r.confusion.matrix.last().unwrap().iter().sum::<usize>(), 0);
    }

    #[test]
    fn the_tiny_model_on_the_colour_task_is_consistent_and_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let data = write_colour_task(tmp.path(), 8, 3, true, 11).unwrap();
        let opts = EvalOptions {
            base: fixture(),
            adapter: None,
            data,
            image_root: Some(tmp.path().to_path_buf()),
            limit: Some(6),
            max_new_tokens: 12,
        };
        let mut calls = 0;
        let a = run(&opts, |done, total| {
            calls += 1;
            assert_eq!(total, 6);
            assert_eq!(done, calls);
        })
        .unwrap();
        check_report(&a, 6);
        let b = run(&opts, |_, _| {}).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn an_empty_selection_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let data = write_colour_task(tmp.path(), 2, 2, false, 1).unwrap();
        let opts = EvalOptions {
            base: fixture(),
            adapter: None,
            data: data.clone(),
            image_root: Some(tmp.path().to_path_buf()),
            limit: Some(0),
            max_new_tokens: 4,
        };
        let err = run(&opts, |_, _| {}).err().unwrap().to_string();
        assert!(err.contains("questions.jsonl"), "{err}");
    }
}
