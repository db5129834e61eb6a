//! The synthetic dataset: read back by the trainer's own Anatomy-R1 loader exactly like the paper's
//! files, answers that follow from the drawn geometry, and byte-for-byte reproducibility per seed.

use std::collections::HashSet;
use std::path::Path;

use anatomy_models::qwen2_5_vl::preprocess::load_image;
use anatomy_trainer::data::{load, normalize};
use anatomy_trainer::synth::questions::{caption, cell_counts, dominant, CELLS};
use anatomy_trainer::synth::{
    generate, load_options, make_scene, Form, Structure, SynthConfig, SynthError,
};

fn config(count: usize, seed: u64) -> SynthConfig {
    SynthConfig {
        count,
        seed,
        size: 96,
        holdout_fraction: 0.25,
        per_image: 2,
        ..SynthConfig::default()
    }
}

fn write(dir: &Path, cfg: &SynthConfig) {
    generate(dir, cfg, &|_| {}).unwrap();
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["", "images"] {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.strip_prefix(dir).unwrap().display().to_string();
            out.push((name, std::fs::read(&p).unwrap()));
        }
    }
    out
}

#[test]
fn the_trainer_loader_reads_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(24, 7);
    let summary = generate(dir.path(), &cfg, &|_| {}).unwrap();
    assert_eq!(summary.images, 24);
    let names: Vec<&str> = Structure::ALL.iter().map(|s| s.name()).collect();

    let mut images_by_split = Vec::new();
    for (file, expected) in [
        ("train.json", summary.train),
        ("holdout.json", summary.holdout),
    ] {
        let path = dir.path().join(file);
        let loaded = load(&path, &load_options(dir.path())).unwrap();
        assert!(loaded.skipped.is_empty());
        assert_eq!(loaded.questions.len(), expected, "{file}");
        let raw: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut images = HashSet::new();
        for (q, r) in loaded.questions.iter().zip(&raw) {
            assert_eq!(q.options.len(), 4);
            assert_eq!(q.options_heading, "Anatomy Options");
            // The record's form becomes the question type that `eval` breaks accuracy down by.
            assert_eq!(q.question_type.as_deref(), r["form"].as_str());
            assert!(q.question_type.is_some());
            // The record's caption becomes the question's, nine cells in reading order.
            assert_eq!(q.caption.as_deref(), r["caption"].as_str());
            let caption = q.caption.as_deref().unwrap();
            let cells: Vec<&str> = caption.split(", ").collect();
            assert_eq!(cells.len(), 9, "{caption}");
            for (cell, name) in CELLS.iter().zip(&cells) {
                let rest = name.strip_prefix(cell).unwrap();
                let rest = rest.strip_prefix(' ').unwrap();
                assert!(rest == "mixed" || names.contains(&rest), "{caption}");
            }
            assert!(q.options.iter().all(|o| names.contains(&o.as_str())));
            assert_eq!(
                q.answer_letter().to_string(),
                r["solution"].as_str().unwrap()
            );
            assert_eq!(
                normalize(q.answer_text()),
                normalize(r["answer"].as_str().unwrap())
            );
            assert!(r["sft_prompt"].as_str().unwrap().starts_with("<image>"));
            assert!(r["sft_prompt"]
                .as_str()
                .unwrap()
                .ends_with(q.options[3].as_str()));
            let (rgb, w, h) = load_image(&q.image).unwrap();
            assert_eq!((w, h), (96, 96));
            assert_eq!(rgb.len(), 96 * 96 * 3);
            images.insert(q.image.clone());
        }
        images_by_split.push(images);
    }
    // 25% of 24 scenes held out, and no image in both splits.
    assert_eq!(images_by_split[1].len(), 6);
    assert_eq!(images_by_split[0].len(), 18);
    assert!(images_by_split[0].is_disjoint(&images_by_split[1]));
    let all = load(dir.path().join("questions.json"), &load_options(dir.path())).unwrap();
    assert_eq!(all.questions.len(), summary.train + summary.holdout);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("synth.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["seed"], 7);
    assert_eq!(manifest["count"], 24);
}

#[test]
fn same_seed_same_bytes_whatever_the_threads_other_seed_other_bytes() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write(a.path(), &config(10, 3));
    // One worker instead of one per core: the same bytes.
    write(
        b.path(),
        &SynthConfig {
            threads: 1,
            ..config(10, 3)
        },
    );
    write(
        c.path(),
        &SynthConfig {
            threads: 3,
            ..config(10, 4)
        },
    );
    let (fa, fb, fc) = (files(a.path()), files(b.path()), files(c.path()));
    assert_eq!(fa.len(), 4 + 10);
    assert_eq!(fa, fb);
    for ((name, x), (_, z)) in fa.iter().zip(&fc) {
        if name.ends_with(".png") || name == "train.json" {
            assert_ne!(x, z, "{name} should differ between seeds");
        }
    }
}

#[test]
fn answers_follow_from_the_drawn_geometry() {
    let mut forms = HashSet::new();
    let mut answers = HashSet::new();
    let mut vertical_checked = 0;
    for index in 0..300 {
        let (scene, asked) = make_scene(11, index, 96, 3).unwrap();
        let facts = scene.facts();
        for a in &asked {
            assert_eq!(a.options.len(), 4);
            assert_eq!(a.options[a.answer], a.structure.name());
            let distinct: HashSet<_> = a.options.iter().collect();
            assert_eq!(distinct.len(), 4);
            // The answer is drawn: a visible share of the frame belongs to it.
            let share = facts
                .iter()
                .find(|f| f.object == anatomy_trainer::synth::scene::Object::Anatomy(a.structure))
                .map_or(0.0, |f| f.share);
            assert!(share >= 0.02, "{} covers {share}", a.question);
            if a.form == Form::Position {
                let cell = CELLS
                    .iter()
                    .position(|c| {
                        a.question == format!("What anatomy is at the {c} of the frame ?")
                    })
                    .unwrap();
                assert_eq!(dominant(&scene, cell), Some(a.structure));
                let counts = cell_counts(&scene, cell);
                let most = (0..6).max_by_key(|&i| counts[i]).unwrap();
                assert_eq!(Structure::ALL[most], a.structure, "{}", a.question);
                // The caption names the asked cell by the answer.
                let entry = format!("{} {}", CELLS[cell], a.structure.name());
                assert!(
                    caption(&scene).split(", ").any(|c| c == entry),
                    "{entry} not in {}",
                    caption(&scene)
                );
            }
            if a.question.starts_with("What is the ") && a.form == Form::Attribute {
                // "What is the red anatomy?": no other visible structure has that colour.
                let colour = a.structure.colour();
                if a.question == format!("What is the {colour} anatomy?") {
                    let same: Vec<_> = facts
                        .iter()
                        .filter_map(|f| match f.object {
                            anatomy_trainer::synth::scene::Object::Anatomy(s) => Some(s),
                            _ => None,
                        })
                        .filter(|s| s.colour() == colour)
                        .collect();
                    assert_eq!(same, vec![a.structure], "{}", a.question);
                }
            }
            if a.form == Form::Relation && check_vertical_relation(&facts, a) {
                vertical_checked += 1;
            }
            forms.insert(a.form);
            answers.insert(a.structure);
        }
    }
    assert_eq!(forms.len(), 3, "all three forms occur");
    assert_eq!(answers.len(), 6, "all six classes are answers");
    assert!(
        vertical_checked >= 10,
        "{vertical_checked} above/below questions checked"
    );
}

#[test]
fn bad_settings_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        (
            SynthConfig {
                count: 0,
                ..config(1, 0)
            },
            "count",
        ),
        (
            SynthConfig {
                size: 8,
                ..config(1, 0)
            },
            "size",
        ),
        (
            SynthConfig {
                size: 100_000,
                ..config(1, 0)
            },
            "size",
        ),
        (
            SynthConfig {
                holdout_fraction: 1.5,
                ..config(1, 0)
            },
            "holdout",
        ),
        (
            SynthConfig {
                holdout_fraction: f64::NAN,
                ..config(1, 0)
            },
            "holdout",
        ),
        (
            SynthConfig {
                per_image: 0,
                ..config(1, 0)
            },
            "per image",
        ),
    ];
    for (cfg, word) in bad {
        let e = generate(dir.path(), &cfg, &|_| {}).unwrap_err();
        assert!(e.to_string().contains(word), "{e}");
    }
    // Nothing was written for a rejected configuration.
    assert!(!dir.path().join("images").exists());
    // An output path under a regular file cannot be created.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    let e = generate(&file.join("sub"), &config(1, 0), &|_| {}).unwrap_err();
    assert!(matches!(e, SynthError::Io { .. }), "{e}");
}

/// For a one-clause "above/below the <key> <noun>" question naming a structure, the answer's
/// centroid is on the stated side of the reference's, by a visible margin.
fn check_vertical_relation(
    facts: &[anatomy_trainer::synth::scene::Facts],
    a: &anatomy_trainer::synth::Asked,
) -> bool {
    use anatomy_trainer::synth::scene::Object;
    let q = a.question.trim_end_matches('?');
    if q.contains(" and ") {
        return false;
    }
    for (word, sign) in [(" above the ", 1.0f32), (" below the ", -1.0)] {
        let Some(at) = q.find(word) else { continue };
        let words: Vec<&str> = q[at + word.len()..].split(' ').collect();
        let key = words[words.len().saturating_sub(2)];
        let Some(r) = Structure::ALL.iter().find(|s| s.key() == key) else {
            continue;
        };
        let centroid = |s: Structure| {
            facts
                .iter()
                .find(|f| f.object == Object::Anatomy(s))
                .map(|f| f.centroid)
                .unwrap()
        };
        let gap = sign * (centroid(*r).1 - centroid(a.structure).1);
        assert!(gap > 0.05, "{}: gap {gap}", a.question);
        return true;
    }
    false
}

#[test]
fn forms_and_balance_restrict_and_even_out_the_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig {
        count: 60,
        per_image: 1,
        holdout_fraction: 0.0,
        forms: vec![Form::Position],
        balance: true,
        ..config(60, 4)
    };
    let summary = generate(dir.path(), &cfg, &|_| {}).unwrap();
    assert_eq!(summary.forms["position"], 60, "{:?}", summary.forms);
    assert_eq!(summary.answers.len(), 6, "{:?}", summary.answers);
    for (class, n) in &summary.answers {
        assert!(
            (2..=16).contains(n),
            "{class}: {n} of 60 ({:?})",
            summary.answers
        );
    }
    let plain = generate(tempfile::tempdir().unwrap().path(), &config(60, 4), &|_| {}).unwrap();
    assert!(plain.forms["attribute"] + plain.forms["relation"] > 0);
}
