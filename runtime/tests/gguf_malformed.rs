//! Replays the committed corpus of malformed GGUF files (`tests/fixtures/gguf/malformed/`, written
//! by `tools/reference/make_malformed_gguf.py`): each must fail with the typed error its file name
//! starts with, naming the file, and never panic.

use std::path::PathBuf;

use anatomy_runtime::gguf::qwen2vl::LmParams;
use anatomy_runtime::gguf::{GgufError, GgufFile};

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf/malformed")
}

/// `bad_magic` -> `BadMagic`.
fn variant(prefix: &str) -> String {
    prefix
        .split('_')
        .map(|w| w[..1].to_uppercase() + &w[1..])
        .collect()
}

fn open_as_lm(path: &std::path::Path) -> Result<(), GgufError> {
    let f = GgufFile::open(path)?;
    LmParams::from_gguf(&f).map(|_| ())
}

#[test]
fn every_malformed_file_yields_its_typed_error() {
    let mut n = 0;
    for entry in std::fs::read_dir(corpus()).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
        let expected = variant(stem.split('-').next().unwrap());
        let err = open_as_lm(&path).expect_err(&stem);
        let debug = format!("{err:?}");
        assert!(
            debug.starts_with(&format!("{expected} ")),
            "{stem}: expected {expected}, got {debug}"
        );
        assert!(
            err.to_string().contains(&format!("{stem}.gguf")),
            "{stem}: message does not name the file: {err}"
        );
        n += 1;
    }
    assert!(n >= 30, "corpus has only {n} files");
}

#[test]
fn every_prefix_of_a_valid_file_is_rejected_without_panicking() {
    let path = corpus().join("shape_mismatch-output_norm.gguf");
    let bytes = std::fs::read(&path).unwrap();
    assert!(anatomy_runtime::gguf::reader::parse_header(&bytes, "whole").is_ok());
    for cut in 0..bytes.len() {
        let r = anatomy_runtime::gguf::reader::parse_header(&bytes[..cut], "prefix");
        assert!(r.is_err(), "a {cut}-byte prefix parsed");
    }
}
