//! libFuzzer target: `parse_header` over arbitrary bytes must return `Ok` or a typed `GgufError`,
//! never panic, overflow or allocate by a count read from the input. Seeds: the committed
//! malformed corpus `tests/fixtures/gguf/malformed/` (see README, "Fuzzing the GGUF parser").
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = anatomy_runtime::gguf::reader::parse_header(data, "fuzz") {
        // A header that parses must describe tensors lying inside the input, as the reader's
        // zero-copy views rely on it.
        for t in &header.tensors {
            let end = header
                .data_offset
                .checked_add(t.offset)
                .and_then(|e| e.checked_add(t.size));
            assert!(
                end.is_some_and(|e| e <= data.len() as u64),
                "tensor {} ends past the input",
                t.name
            );
        }
    }
});
