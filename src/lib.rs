//! Shared helpers of the workspace-level integration tests (`tests/`) and benchmarks (`benches/`):
//! where the committed fixtures live and how numbers are compared against the recorded references.

use std::path::PathBuf;

/// `tests/fixtures/` of this repository.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// The directory of one Qwen2.5-VL fixture case (`square`, `wide`).
pub fn qwen_case(case: &str) -> PathBuf {
    fixtures_dir().join("qwen2_5_vl").join(case)
}

/// Largest absolute difference and that difference relative to the reference's largest magnitude.
///
/// Relative-to-max rather than element-wise, because near-zero reference entries make element-wise
/// ratios meaningless while the comparison should still scale with the tensor's size.
pub fn max_diff(actual: &[f32], expected: &[f32]) -> (f32, f32) {
    assert_eq!(actual.len(), expected.len(), "length mismatch");
    let abs = actual
        .iter()
        .zip(expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let scale = expected.iter().map(|b| b.abs()).fold(0.0f32, f32::max);
    (abs, if scale > 0.0 { abs / scale } else { abs })
}
