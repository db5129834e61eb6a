//! Deterministic kernel inputs for tests and benchmarks (the runtime's own and the workspace's):
//! values spread over [-1, 1) that exercise every quantization level, with no random-number crate.

/// `n` values in [-1, 1) from a xorshift generator started at `seed`.
pub fn xorshift_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}
