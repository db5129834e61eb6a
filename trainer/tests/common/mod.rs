//! Where the integration tests find the real Anatomy-R1 questions and the tiny model fixtures.

#![allow(dead_code)]

use std::path::PathBuf;

pub const FILES: [&str; 3] = ["GRPO.json", "GRPO-ASC-Learning.json", "GRPO-GDQA.json"];

/// `../shared/data/anatomy-r1/` beside the repository (CI has it), or `ANATOMY_R1_DATA`. Missing data
/// fails the test rather than skipping it: these tests are the proof on the real files.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("ANATOMY_R1_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/anatomy-r1")
        });
    assert!(
        dir.join(FILES[0]).exists(),
        "the Anatomy-R1 data is not at {} (set ANATOMY_R1_DATA)",
        dir.display()
    );
    dir
}

pub fn fixture_model(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/qwen2_5_vl")
        .join(case)
        .join("model")
}

pub const CLASSES: [&str; 6] = [
    "Abdominal Wall Cavity",
    "Cystic Plate",
    "Gallbladder",
    "Gut",
    "Liver",
    "Omentum",
];

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anatomy-trainer-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
