//! GDQA variants of a question that keep its correct answer: rephrasings (families for SGG-VQA's
//! spatial templates, as `GRPO-GDQA.json` rewords `GRPO.json`, and generic ones for anything
//! else), option-order permutations with the answer letter remapped, and instruction wordings.

use crate::data::prompt::instruction_variants;
use crate::data::Question;
use crate::rng::{hash_str, SplitMix64};

/// What a SGG-VQA question asks about, once its template wording is stripped.
enum Parsed<'a> {
    /// "What anatomy is at the {position} of the frame ?"
    Position(&'a str),
    /// A described thing: "brown top-mid anatomy", "anatomy that is within the gut thing".
    Described(&'a str),
}

fn parse(q: &str) -> Option<Parsed<'_>> {
    if let Some(pos) = q
        .strip_prefix("What anatomy is at the ")
        .and_then(|r| r.strip_suffix(" of the frame"))
    {
        return Some(Parsed::Position(pos));
    }
    for prefix in [
        "What is the name of the ",
        "What name is the ",
        "What is the ",
    ] {
        if let Some(np) = q.strip_prefix(prefix) {
            return Some(Parsed::Described(np));
        }
    }
    let rest = q.strip_prefix("There is a ")?;
    for suffix in [
        "; what is it",
        "; what is its name",
        "; what name is it",
        ", what is its name",
        ", what is it",
    ] {
        if let Some(np) = rest.strip_suffix(suffix) {
            // GDQA's own file writes "...object?; what name is it?": drop the stray mark.
            return Some(Parsed::Described(np.trim_end_matches('?').trim_end()));
        }
    }
    None
}

fn article(np: &str) -> &'static str {
    match np.chars().next() {
        Some(c) if "aeiouAEIOU".contains(c) => "an",
        _ => "a",
    }
}

/// Comparison key: rewordings that differ only in case or in the space before `?` are the same.
fn key(q: &str) -> String {
    crate::data::normalize(&q.replace(" ?", "?"))
}

/// Rewordings of a question that ask the same thing, without the original; never empty for a
/// non-empty question, since generic rewordings apply when no template matches.
pub fn rephrasings(question: &str) -> Vec<String> {
    let q = question.trim();
    let core = q.strip_suffix('?').unwrap_or(q).trim_end();
    let mut out: Vec<String> = match parse(core) {
        Some(Parsed::Position(pos)) => vec![
            format!("Which anatomy is located at the {pos} of the frame?"),
            format!("There is an anatomy at the {pos} of the frame; what is it?"),
            format!("What is the name of the anatomy at the {pos} of the frame?"),
            format!("What anatomy is at the {pos} of the frame?"),
        ],
        // Several SGG-VQA question parts carry no `?` of their own; keep their words intact.
        Some(Parsed::Described(np)) if !np.is_empty() => {
            let a = article(np);
            vec![
                format!("There is {a} {np}, what is its name?"),
                format!("There is {a} {np}; what is it?"),
                format!("What is the name of the {np}?"),
                format!("What name is the {np}?"),
                format!("What is the {np}?"),
            ]
        }
        _ => Vec::new(),
    };
    if !q.is_empty() {
        let mut chars = q.chars();
        let lowered = match (chars.next(), chars.next()) {
            // Keep acronyms ("CT", "MRI") as they are.
            (Some(c), Some(d)) if !d.is_uppercase() => {
                format!("{}{}", c.to_lowercase(), &q[c.len_utf8()..])
            }
            _ => q.to_string(),
        };
        out.push(format!("Based on the image, {lowered}"));
        out.push(format!("Look at the image and answer: {q}"));
        out.push(format!("Regarding this surgical image: {q}"));
    }
    let original = key(q);
    let mut seen = std::collections::HashSet::new();
    out.retain(|r| key(r) != original && seen.insert(key(r)));
    out
}

/// A permutation of `0..n` other than the identity (when `n > 1`).
fn permutation(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    if n < 2 {
        return p;
    }
    rng.shuffle(&mut p);
    if p.iter().enumerate().all(|(i, &x)| i == x) {
        p.rotate_left(1);
    }
    p
}

/// `k` variants of a question: variant 0 is the question itself, the others each combine a
/// rephrasing, an option order (answer letter remapped) and an instruction wording. The same
/// question, `k` and `seed` give the same variants.
pub fn make_variants(q: &Question, k: usize, seed: u64) -> Vec<Question> {
    let phrasings = rephrasings(&q.question);
    let instructions = instruction_variants(&q.instruction);
    let mut rng = SplitMix64::new(seed ^ hash_str(&q.id) ^ hash_str(&q.question));
    let mut out = Vec::with_capacity(k);
    for v in 0..k {
        if v == 0 {
            out.push(q.clone());
            continue;
        }
        let mut variant = q.clone();
        if !phrasings.is_empty() {
            variant.question = phrasings[(v - 1) % phrasings.len()].clone();
        }
        variant.instruction = instructions[v % instructions.len()].clone();
        // new slot i holds old option perm[i]
        let perm = permutation(q.options.len(), &mut rng);
        variant.options = perm.iter().map(|&i| q.options[i].clone()).collect();
        variant.answer = perm.iter().position(|&i| i == q.answer).unwrap_or(q.answer);
        out.push(variant);
    }
    out
}

/// Which variant each of a group's `group` rollouts answers: round-robin over `k` variants, so
/// every variant gets `group / k` rollouts or one more.
pub fn spread_group(group: usize, k: usize) -> Vec<usize> {
    (0..group).map(|i| i % k.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spatial_families() {
        let r = rephrasings("What anatomy is at the top-mid of the frame ?");
        assert!(r.contains(&"Which anatomy is located at the top-mid of the frame?".to_string()));
        assert!(!r
            .iter()
            .any(|x| x == "What anatomy is at the top-mid of the frame?"));
        let r = rephrasings("What is the brown top-mid anatomy?");
        assert_eq!(r[0], "There is a brown top-mid anatomy, what is its name?");
        let r = rephrasings("What is the name of the anatomy that is within the gut thing?");
        assert_eq!(
            r[0],
            "There is an anatomy that is within the gut thing, what is its name?"
        );
        let r = rephrasings("There is a object that is below the liver anatomy?; what name is it?");
        assert!(
            r.contains(&"What is the name of the object that is below the liver anatomy?".into())
        );
        let r = rephrasings("Is this CT of the chest?");
        assert_eq!(r[0], "Based on the image, is this CT of the chest?");
        assert!(rephrasings("").is_empty());
    }

    #[test]
    fn variants_keep_the_answer_and_move_the_letter() {
        let q = Question {
            id: "3".into(),
            image: "x".into(),
            instruction: crate::data::prompt::PAPER_INSTRUCTION_ANSWER.into(),
            question: "What is the yellow anatomy?".into(),
            options_heading: "Anatomy Options".into(),
            options: vec![
                "Liver".into(),
                "Gut".into(),
                "Omentum".into(),
                "Cystic Plate".into(),
            ],
            answer: 2,
            question_type: None,
            modality: None,
            caption: None,
        };
        let v = make_variants(&q, 4, 0);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], q);
        for x in &v[1..] {
            assert_eq!(x.answer_text(), "Omentum");
            assert_ne!(x.options, q.options);
            assert_ne!(x.question, q.question);
            let mut sorted = x.options.clone();
            sorted.sort();
            let mut orig = q.options.clone();
            orig.sort();
            assert_eq!(sorted, orig);
        }
        assert_eq!(make_variants(&q, 4, 0), v, "deterministic");
        assert_ne!(v[1].instruction, v[2].instruction);
    }

    #[test]
    fn groups_spread_evenly() {
        assert_eq!(spread_group(8, 3), vec![0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!(spread_group(3, 0), vec![0, 0, 0]);
    }
}
