//! GDQA on every real Anatomy-R1 record: each variant's correct letter points to the same answer
//! text, in the parts and in the rendered prompt read back by the loader's own parser.

mod common;

use anatomy_trainer::data::anatomy_r1::split_prompt;
use anatomy_trainer::data::prompt::render;
use anatomy_trainer::data::{load, LoadOptions};
use anatomy_trainer::gdqa::{make_variants, rephrasings};
use common::{data_dir, FILES};

#[test]
fn every_variant_of_every_record_keeps_its_answer() {
    let mut checked = 0;
    let mut templated = 0;
    let mut total = 0;
    for file in FILES {
        let qs = load(data_dir().join(file), &LoadOptions::default())
            .unwrap()
            .questions;
        for q in &qs {
            total += 1;
            let r = rephrasings(&q.question);
            assert!(!r.is_empty(), "{}", q.question);
            // Generic rewordings start with one of these; the rest come from a spatial family.
            if r.iter().any(|x| {
                !x.starts_with("Based on the image")
                    && !x.starts_with("Look at the image")
                    && !x.starts_with("Regarding this")
            }) {
                templated += 1;
            }
            for k in [1, 4, 8] {
                let vs = make_variants(q, k, 17);
                assert_eq!(vs.len(), k);
                for v in &vs {
                    assert_eq!(v.answer_text(), q.answer_text(), "{file} {}", q.id);
                    let mut a = v.options.clone();
                    let mut b = q.options.clone();
                    a.sort();
                    b.sort();
                    assert_eq!(a, b);
                    let parts = split_prompt(&render(v)).unwrap();
                    assert_eq!(parts.options[v.answer], q.answer_text());
                    assert_eq!(parts.question, v.question);
                    assert!(parts.instruction.contains("<think> ... </think> <answer>"));
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3000 * 13);
    eprintln!("{templated} of {total} questions matched a spatial rephrasing family");
    // SGG-VQA questions come from a handful of templates: nearly all must be recognised.
    assert!(templated * 100 >= total * 95, "{templated} of {total}");
}

/// A position-biased policy (always answers "A") on the real questions: every plain group agrees
/// with itself, so none carries a gradient; spread over GDQA variants whose options are permuted,
/// the same policy's rollouts disagree and most groups do. This is the effect the paper's
/// invalid-gradient figure shows, measured with the crate's own rewards, hardness and metric.
#[test]
fn gdqa_lowers_the_invalid_gradient_ratio_of_a_biased_policy() {
    use anatomy_trainer::gdqa::metrics::DEFAULT_TOLERANCE;
    use anatomy_trainer::gdqa::{
        group_advantages, invalid_gradient_ratio, spread_group, GroupOutcome, HardnessConfig,
        HardnessTracker,
    };
    use anatomy_trainer::reward::{rewards, RewardWeights};

    let qs = load(data_dir().join("GRPO.json"), &LoadOptions::default())
        .unwrap()
        .questions;
    let completion = "<think>the first option looks right</think> <answer>A</answer>";
    let (g, k) = (8, 4);
    let mut hardness = HardnessTracker::new(HardnessConfig::default());
    let mut plain = Vec::new();
    let mut spread = Vec::new();
    for q in &qs {
        let r = rewards(completion, q, RewardWeights::default());
        let group = vec![r.total; g];
        hardness.record(&q.id, &group, &vec![r.accuracy; g]);
        plain.push((q.answer_text().to_string(), group));
        assert!(
            hardness.is_hard(&q.id),
            "a zero-variance group makes its question hard"
        );
        let variants = make_variants(q, k, 5);
        let group: Vec<f32> = spread_group(g, k)
            .into_iter()
            .map(|v| rewards(completion, &variants[v], RewardWeights::default()).total)
            .collect();
        let adv = group_advantages(&group, 1e-6);
        assert!(
            adv.iter().sum::<f32>().abs() < 1e-3,
            "advantages over the whole group"
        );
        spread.push((q.answer_text().to_string(), group));
    }
    let ratio = |groups: &[(String, Vec<f32>)]| {
        let o: Vec<GroupOutcome> = groups
            .iter()
            .map(|(c, r)| GroupOutcome {
                class: c,
                rewards: r,
            })
            .collect();
        invalid_gradient_ratio(&o, DEFAULT_TOLERANCE)
    };
    let before = ratio(&plain);
    let after = ratio(&spread);
    eprintln!(
        "invalid-gradient ratio of an always-A policy: GRPO {:.3}, GDQA (K={k}) {:.3}",
        before.ratio, after.ratio
    );
    for (class, c) in &after.per_class {
        eprintln!(
            "  {class}: {:.3} -> {:.3}",
            before.per_class[class].ratio, c.ratio
        );
    }
    assert_eq!(before.ratio, 1.0);
    assert_eq!(before.per_class.len(), 6);
    assert!(after.ratio < 0.5, "{}", after.ratio);
    assert!(after.per_class.values().all(|c| c.ratio < 1.0));
}
