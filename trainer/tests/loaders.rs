//! The loaders on the three real Anatomy-R1 files, on OmniMedVQA-layout and JSONL files, and on
//! malformed records.

mod common;

use std::collections::BTreeSet;

use anatomy_trainer::data::prompt::render;
use anatomy_trainer::data::{load, load_as, DataError, Format, LoadOptions, RecordError};
use common::{data_dir, scratch, CLASSES, FILES};

#[test]
fn real_files_load_whole_and_consistent() {
    for file in FILES {
        let path = data_dir().join(file);
        let loaded = load(&path, &LoadOptions::default()).unwrap();
        assert!(loaded.skipped.is_empty());
        let qs = &loaded.questions;
        assert_eq!(qs.len(), 1000, "{file}");
        let raw: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut classes = BTreeSet::new();
        for (q, r) in qs.iter().zip(&raw) {
            assert_eq!(q.options.len(), 4, "{file} {}", q.id);
            assert_eq!(q.answer_text(), r["answer"].as_str().unwrap().trim());
            assert_eq!(
                q.answer_letter().to_string(),
                r["solution"].as_str().unwrap().trim()
            );
            // The prompt rebuilt from the parsed parts is the file's own, byte for byte.
            assert_eq!(
                render(q),
                r["instruction"].as_str().unwrap(),
                "{file} {}",
                q.id
            );
            assert!(
                q.image.to_str().unwrap().starts_with("/CholecT45/"),
                "{:?}",
                q.image
            );
            classes.insert(q.answer_text().to_string());
            for o in &q.options {
                assert!(CLASSES.contains(&o.as_str()), "{o}");
            }
        }
        assert_eq!(classes.into_iter().collect::<Vec<_>>(), CLASSES, "{file}");
    }
}

#[test]
fn image_root_remaps_paths() {
    let opts = LoadOptions {
        image_root: Some("/data/cholec".into()),
        skip_bad: false,
    };
    let qs = load(data_dir().join("GRPO.json"), &opts).unwrap().questions;
    // The first record's path has a leading space in the file.
    assert_eq!(
        qs[0].image,
        std::path::Path::new("/data/cholec/CholecT45/data/VID66/000791.png")
    );
}

const GOOD: &str = r#"{"instruction": "Be an expert.\nQuestion:\nWhat is the white anatomy?\nAnatomy Options:\nA. Liver\nB. Gut", "solution": "B", "answer": "Gut", "images": " /x/1.png"}"#;

/// Which error a malformed record must give.
type IsReason = fn(&RecordError) -> bool;

#[test]
fn malformed_records_name_file_and_index_or_are_counted() {
    let bad: &[(&str, IsReason)] = &[
        (
            r#"{"instruction": "Question:\nWhat?\nAnatomy Options:\nA. Liver\nB. Gut", "solution": "A", "answer": "Gut", "images": "x"}"#,
            |e| matches!(e, RecordError::LetterMismatch { letter: 'A', .. }),
        ),
        (
            r#"{"instruction": "Question:\nWhat?\nAnatomy Options:\nA. Liver\nB. Gut", "solution": "E", "answer": "Gut", "images": "x"}"#,
            |e| matches!(e, RecordError::BadLetter(_)),
        ),
        (
            r#"{"instruction": "Question:\nWhat?\nAnatomy Options:\nA. Liver\nC. Gut", "solution": "A", "answer": "Liver", "images": "x"}"#,
            |e| matches!(e, RecordError::BadOptionLine(_)),
        ),
        (
            r#"{"instruction": "What?\nA. Liver\nB. Gut", "solution": "A", "answer": "Liver", "images": "x"}"#,
            |e| matches!(e, RecordError::NoQuestion),
        ),
        (
            r#"{"instruction": "Question:\nWhat?\nAnatomy Options:\nA. Liver", "solution": "A", "answer": "Liver", "images": "x"}"#,
            |e| matches!(e, RecordError::OptionCount(1)),
        ),
        (
            r#"{"instruction": "Question:\nWhat?\nAnatomy Options:\nA. Liver\nB. liver", "solution": "A", "answer": "Liver", "images": "x"}"#,
            |e| matches!(e, RecordError::DuplicateOption(_)),
        ),
        (
            r#"{"instruction": "Question:\nWhat?\nAnatomy Options:\nA. Liver\nB. Gut", "solution": "A", "answer": "Liver"}"#,
            |e| matches!(e, RecordError::MissingField("images")),
        ),
        (r#"["not", "an", "object"]"#, |e| {
            matches!(e, RecordError::NotObject)
        }),
    ];
    let dir = scratch("malformed");
    for (i, (record, is)) in bad.iter().enumerate() {
        let path = dir.join(format!("bad{i}.json"));
        std::fs::write(&path, format!("[{GOOD}, {GOOD}, {record}, {GOOD}]")).unwrap();
        match load(&path, &LoadOptions::default()) {
            Err(e @ DataError::Record { index: 2, .. }) => {
                let DataError::Record { reason, .. } = &e else {
                    unreachable!()
                };
                assert!(is(reason), "case {i}: {reason}");
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("bad{i}.json")) && msg.contains("record 2"),
                    "{msg}"
                );
            }
            other => panic!("case {i}: expected record 2 to fail, got {other:?}"),
        }
        let skipped = load(
            &path,
            &LoadOptions {
                skip_bad: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(skipped.questions.len(), 3, "case {i}");
        assert_eq!(skipped.skipped.len(), 1);
        assert_eq!(skipped.skipped[0].0, 2);
        assert_eq!(skipped.questions[2].id, "3", "ids stay the file's indices");
    }
    let not_array = dir.join("obj.json");
    std::fs::write(&not_array, GOOD).unwrap();
    assert!(matches!(
        load(&not_array, &LoadOptions::default()),
        Err(DataError::NotArray { .. })
    ));
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "[{").unwrap();
    assert!(matches!(
        load(&broken, &LoadOptions::default()),
        Err(DataError::Json { .. })
    ));
    assert!(matches!(
        load(dir.join("missing.json"), &LoadOptions::default()),
        Err(DataError::Io { .. })
    ));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn omnimed_layout() {
    let dir = scratch("omnimed");
    let path = dir.join("omni.json");
    std::fs::write(
        &path,
        r#"[
 {"question_id": "Chest CT_0001", "question": "What organ is shown?", "gt_answer": "Lung", "option_A": "Heart", "option_B": "lung", "option_C": "Liver", "option_D": "Kidney", "image_path": "Images/ct/1.png", "question_type": "Anatomy Identification", "modality_type": "CT"},
 {"question": "Is there a fracture?", "gt_answer": "No", "option_A": "Yes", "option_B": "No", "image_path": "Images/xr/2.png", "question_type": "Disease Diagnosis", "modality_type": "X-Ray"},
 {"question": "Which?", "gt_answer": "Spleen", "option_A": "Yes", "option_B": "No", "image_path": "x.png"},
 {"question": "Which?", "gt_answer": "Yes", "option_A": "Yes", "option_B": 2, "image_path": "x.png"}
]"#,
    )
    .unwrap();
    let opts = LoadOptions {
        image_root: Some("/omni".into()),
        skip_bad: true,
    };
    let loaded = load(&path, &opts).unwrap();
    assert_eq!(loaded.questions.len(), 2);
    assert_eq!(loaded.skipped.len(), 2);
    assert!(matches!(&loaded.skipped[0], (2, RecordError::AnswerNotAnOption(a)) if a == "Spleen"));
    assert!(matches!(&loaded.skipped[1], (3, RecordError::NotString(k)) if k == "option_B"));
    let q = &loaded.questions[0];
    assert_eq!(
        (q.id.as_str(), q.answer, q.options.len()),
        ("Chest CT_0001", 1, 4)
    );
    assert_eq!(q.modality.as_deref(), Some("CT"));
    assert_eq!(q.question_type.as_deref(), Some("Anatomy Identification"));
    assert_eq!(q.image, std::path::Path::new("/omni/Images/ct/1.png"));
    assert_eq!(loaded.questions[1].options, ["Yes", "No"]);
    assert_eq!(loaded.questions[1].id, "1");
    assert!(render(q).ends_with("Options:\nA. Heart\nB. lung\nC. Liver\nD. Kidney"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn jsonl_layout() {
    let dir = scratch("jsonl");
    let path = dir.join("own.jsonl");
    std::fs::write(
        &path,
        concat!(
            r#"{"id": "a1", "image": "f/1.png", "question": "Which organ?", "options": ["Liver", "Gut", "Omentum"], "answer": "C"}"#, "\n",
            "\n",
            r#"{"image": "f/2.png", "question": "Which organ?", "options": ["A", "B"], "answer": "B"}"#, "\n",
            r#"{"image": "f/3.png", "question": "Which organ?", "options": ["Liver", "Gut"], "answer": "gut"}"#, "\n",
            "{not json\n",
            r#"{"image": "f/5.png", "question": "Which organ?", "options": "Liver", "answer": "A"}"#, "\n",
        ),
    )
    .unwrap();
    let err = load(&path, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Record {
                index: 3,
                reason: RecordError::Json(_),
                ..
            }
        ),
        "{err}"
    );
    let loaded = load(
        &path,
        &LoadOptions {
            skip_bad: true,
            ..Default::default()
        },
    )
    .unwrap();
    let qs = &loaded.questions;
    assert_eq!(qs.len(), 3);
    assert_eq!(
        loaded.skipped.iter().map(|s| s.0).collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!((qs[0].id.as_str(), qs[0].answer_text()), ("a1", "Omentum"));
    // An option literally named "B" is matched as text.
    assert_eq!(qs[1].answer, 1);
    assert_eq!(qs[2].answer_text(), "Gut");
    // The same records as a JSON array, detected; and a forced format that does not fit.
    let array = dir.join("own.json");
    std::fs::write(
        &array,
        r#"[{"image": "f/1.png", "question": "Which organ?", "options": ["Liver", "Gut"], "answer": "A"}]"#,
    )
    .unwrap();
    assert_eq!(
        load(&array, &LoadOptions::default()).unwrap().questions[0].answer_text(),
        "Liver"
    );
    let forced = load_as(&array, Format::OmniMed, &LoadOptions::default()).unwrap_err();
    assert!(
        matches!(
            forced,
            DataError::Record {
                index: 0,
                reason: RecordError::MissingField("gt_answer"),
                ..
            }
        ),
        "{forced}"
    );
    std::fs::remove_dir_all(dir).ok();
}
