//! ASCL with the policy embedder on the committed tiny checkpoints (single-file 4.x and sharded
//! 5.x) and with a similarity matrix, on the real questions.

mod common;

use anatomy_models::qwen2_5_vl::template::ChatTokenizer;
use anatomy_trainer::ascl::distractors::{label_vocabulary, rebuild_distractors};
use anatomy_trainer::ascl::{
    all_similarities, split_stages, Aggregate, Embedder, MatrixSimilarity, PolicyEmbedder,
    SimilaritySource,
};
use anatomy_trainer::data::{load, LoadOptions};
use candle_core::{Device, Tensor};
use common::{data_dir, fixture_model, CLASSES};

#[test]
fn policy_embedding_is_the_mean_of_the_token_rows() {
    for case in ["square", "wide"] {
        let dir = fixture_model(case);
        let e = PolicyEmbedder::from_dir(&dir).unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let hidden = config["hidden_size"]
            .as_u64()
            .or_else(|| config["text_config"]["hidden_size"].as_u64())
            .unwrap() as usize;
        assert_eq!(e.hidden_size(), hidden, "{case}");
        // Recompute "Abdominal Wall Cavity" by hand from the raw tensor file.
        let ids = ChatTokenizer::from_dir(&dir)
            .unwrap()
            .encode("Abdominal Wall Cavity")
            .unwrap();
        assert!(ids.len() > 1, "several tokens, so the mean matters");
        let weights = if case == "square" {
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
        } else {
            let mut all = std::collections::HashMap::new();
            for i in 1..=3 {
                all.extend(
                    candle_core::safetensors::load(
                        dir.join(format!("model-0000{i}-of-00003.safetensors")),
                        &Device::Cpu,
                    )
                    .unwrap(),
                );
            }
            all
        };
        let table = weights
            .get("model.embed_tokens.weight")
            .or_else(|| weights.get("model.language_model.embed_tokens.weight"))
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let idx = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap();
        let want: Vec<f32> = table
            .index_select(&idx, 0)
            .unwrap()
            .mean(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = e.embed("Abdominal Wall Cavity").unwrap();
        assert_eq!(got.len(), hidden);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-6, "{case}: {a} vs {b}");
        }
    }
}

fn stage_checks(sq: &[f32], n: usize) {
    let stages = split_stages(sq, 3).unwrap();
    assert!(!stages.is_empty() && stages.len() <= 3);
    assert_eq!(stages.iter().map(|s| s.count).sum::<usize>(), n);
    for w in stages.windows(2) {
        assert!(w[0].sq_max < w[1].sq_min, "stages overlap: {stages:?}");
    }
    for s in &stages {
        assert!(s.sq_min <= s.sq_mean && s.sq_mean <= s.sq_max);
        for &m in &s.members {
            assert!(sq[m] >= s.sq_min && sq[m] <= s.sq_max);
        }
    }
}

#[test]
fn policy_sq_stages_on_real_questions() {
    let qs = load(
        data_dir().join("GRPO-ASC-Learning.json"),
        &LoadOptions::default(),
    )
    .unwrap()
    .questions;
    let sim = SimilaritySource::parse("policy")
        .unwrap()
        .load(Some(&fixture_model("square")))
        .unwrap();
    let sq = all_similarities(&qs, sim.as_ref(), Aggregate::Mean).unwrap();
    assert!(sq.iter().all(|s| (-1.0..=1.0).contains(s)));
    // Six classes, so the values repeat, but not all questions are alike.
    assert!(sq.iter().any(|&s| s != sq[0]));
    stage_checks(&sq, qs.len());
    let max = all_similarities(&qs, sim.as_ref(), Aggregate::Max).unwrap();
    assert!(max.iter().zip(&sq).all(|(m, s)| m >= s));
    // Sharded 5.x checkpoint through the same path.
    let wide = SimilaritySource::Policy(Some(fixture_model("wide")))
        .load(None)
        .unwrap();
    assert!((wide.similarity("Liver", "Liver").unwrap() - 1.0).abs() < 1e-5);
    let wide_sq = all_similarities(&qs, wide.as_ref(), Aggregate::Mean).unwrap();
    stage_checks(&wide_sq, qs.len());
    assert_ne!(
        wide_sq, sq,
        "two different checkpoints see the names differently"
    );
}

fn real_matrix() -> MatrixSimilarity {
    // A clinician-style judgement: organs next to each other in the field of view are confusable.
    let m = vec![
        vec![1.0, 0.2, 0.1, 0.3, 0.4, 0.5],
        vec![0.2, 1.0, 0.8, 0.1, 0.6, 0.2],
        vec![0.1, 0.8, 1.0, 0.2, 0.5, 0.3],
        vec![0.3, 0.1, 0.2, 1.0, 0.2, 0.7],
        vec![0.4, 0.6, 0.5, 0.2, 1.0, 0.3],
        vec![0.5, 0.2, 0.3, 0.7, 0.3, 1.0],
    ];
    MatrixSimilarity::new(CLASSES.iter().map(|s| s.to_uppercase()).collect(), m).unwrap()
}

#[test]
fn matrix_sq_and_distractor_rebuild_on_real_questions() {
    let qs = load(data_dir().join("GRPO.json"), &LoadOptions::default())
        .unwrap()
        .questions;
    let sim = real_matrix();
    let sq = all_similarities(&qs, &sim, Aggregate::Mean).unwrap();
    stage_checks(&sq, qs.len());
    let vocab = label_vocabulary(&qs);
    assert_eq!(vocab, CLASSES);
    let mut per_stage = [0.0f32; 3];
    for q in &qs {
        for (stage, acc) in per_stage.iter_mut().enumerate() {
            let r = rebuild_distractors(q, &vocab, &sim, stage, 3).unwrap();
            assert_eq!(r.answer, q.answer);
            assert_eq!(r.answer_text(), q.answer_text());
            *acc += anatomy_trainer::ascl::question_similarity(&r, &sim, Aggregate::Mean).unwrap();
        }
    }
    assert!(
        per_stage[0] < per_stage[1] && per_stage[1] < per_stage[2],
        "{per_stage:?}"
    );
}

/// A curriculum run on the real questions logs a mean S(q) per step that climbs stage by stage,
/// the ASCL curve of the paper's reward-and-S(q) figure, as JSON lines a user can plot.
#[test]
fn curriculum_run_logs_climbing_sq() {
    use anatomy_trainer::ascl::curriculum::mean_sq;
    use anatomy_trainer::ascl::{Curriculum, CurriculumConfig, Pacing};
    use anatomy_trainer::gdqa::InvalidGradientRatio;
    use anatomy_trainer::metrics::{write_jsonl, StepMetrics};

    let qs = load(
        data_dir().join("GRPO-ASC-Learning.json"),
        &LoadOptions::default(),
    )
    .unwrap()
    .questions;
    let sq = all_similarities(&qs, &real_matrix(), Aggregate::Mean).unwrap();
    let stages = split_stages(&sq, 3).unwrap();
    let config = CurriculumConfig {
        pacing: Pacing::Steps(4),
        replay: 0.0,
        seed: 7,
    };
    let mut c = Curriculum::new(stages, config).unwrap();
    let mut log = Vec::new();
    let mut per_stage = vec![Vec::new(); 3];
    for step in 0..12 {
        let batch = c.next_batch(16);
        let m = StepMetrics {
            step,
            stage: c.stage(),
            mean_reward: 0.0,
            mean_sq: mean_sq(&batch, &sq),
            invalid_gradient: InvalidGradientRatio::default(),
        };
        per_stage[m.stage].push(m.mean_sq.unwrap());
        write_jsonl(&mut log, &m).unwrap();
        c.record(0.0);
    }
    let text = String::from_utf8(log).unwrap();
    assert_eq!(text.lines().count(), 12);
    let means: Vec<f32> = per_stage
        .iter()
        .map(|v| v.iter().sum::<f32>() / v.len() as f32)
        .collect();
    assert!(means[0] < means[1] && means[1] < means[2], "{means:?}");
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["stage"], 2);
    assert!(last["mean_sq"].as_f64().unwrap() > means[0] as f64);
}
