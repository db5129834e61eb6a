//! What `cargo fuzz run gguf_header` checks, replayed on stable in `cargo test`: every file of the
//! committed malformed corpus (the fuzz target's seeds) and any local fuzz finds under
//! `fuzz/corpus/gguf_header/` and `fuzz/artifacts/gguf_header/` go through
//! `anatomy_runtime::gguf::reader::parse_header` without panicking, and a header that parses
//! only describes tensors inside the input.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use anatomy_runtime::gguf::reader::parse_header;

fn inputs() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in [
        "tests/fixtures/gguf/malformed",
        "fuzz/corpus/gguf_header",
        "fuzz/artifacts/gguf_header",
    ] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        out.extend(
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file()),
        );
    }
    out.sort();
    out
}

#[test]
fn fuzz_corpus_replays_through_parse_header() {
    let files = inputs();
    assert!(files.len() >= 30, "only {} corpus files", files.len());
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let label = path.display().to_string();
        let parsed = catch_unwind(AssertUnwindSafe(|| parse_header(&bytes, &label)));
        let Ok(result) = parsed else {
            panic!("{label}: parse_header panicked");
        };
        if let Ok(header) = result {
            for t in &header.tensors {
                let end = header
                    .data_offset
                    .checked_add(t.offset)
                    .and_then(|e| e.checked_add(t.size));
                assert!(
                    end.is_some_and(|e| e <= bytes.len() as u64),
                    "{label}: tensor {} ends past the input",
                    t.name
                );
            }
        }
    }
}
