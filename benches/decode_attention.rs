//! Decode attention of Qwen2.5-VL-3B's shape (16 query heads over 2 KV heads of 128, one query
//! row) over a KV cache of 576 positions (a 512-token prompt plus the 64th generated token), for
//! 36 layers whose caches together (42 MB) do not fit in cache, as in a decoded token, on one
//! thread, with the KV cache in f32 (`attention_36_layers`) and in f16 (`attention_36_layers_f16`,
//! half the bytes). Throughput is in bytes of an f32 cache's K and V; `memory_read` sums a buffer
//! of that size in the same run with the runtime's bandwidth probe, the rate attention would reach
//! if only the reads cost time.
//!
//! `cargo bench --bench decode_attention` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use anatomy_runtime::backend::cpu::bandwidth::read_sum;
use anatomy_runtime::backend::cpu::CpuBackend;
use anatomy_runtime::backend::{AttnShape, Backend, CacheType, Mask, WorkspaceSpec};
use anatomy_runtime::quant::test_values::xorshift_values;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const LAYERS: usize = 36;
const HEADS: usize = 16;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 128;
const POSITIONS: usize = 576;

fn bench(c: &mut Criterion) {
    // One thread, like the probe it is compared with.
    let b = CpuBackend::new(Some(1)).expect("cpu backend");
    let kv_len = POSITIONS * KV_HEADS * HEAD_DIM;
    let kv = KV_HEADS * HEAD_DIM;
    let layer = |seed: u64, ty: CacheType| {
        let mut buf = b.alloc(kv_len);
        b.write(&mut buf, 0, &xorshift_values(kv_len, seed));
        let mut cache = b.alloc_cache(POSITIONS, kv, ty);
        b.store_rows(&buf, &mut cache, 0, POSITIONS, kv);
        cache
    };
    let caches = |ty| {
        let ks: Vec<_> = (0..LAYERS as u64).map(|l| layer(2 * l + 1, ty)).collect();
        let vs: Vec<_> = (0..LAYERS as u64).map(|l| layer(2 * l + 2, ty)).collect();
        (ks, vs)
    };
    let mut q = b.alloc(HEADS * HEAD_DIM);
    b.write(&mut q, 0, &xorshift_values(HEADS * HEAD_DIM, 99));
    let mut out = b.alloc(HEADS * HEAD_DIM);
    let mut ws = b.workspace(WorkspaceSpec {
        rows: 1,
        cols: HEADS * HEAD_DIM,
        keys: POSITIONS,
        heads: HEADS,
    });
    let shape = AttnShape {
        n_q: 1,
        n_kv: POSITIONS,
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
    };
    let mask = Mask::Causal {
        past: POSITIONS - 1,
    };
    let bytes = (2 * LAYERS * kv_len * 4) as u64;
    let mut g = c.benchmark_group("decode_attention_3b_576");
    g.throughput(Throughput::Bytes(bytes))
        .measurement_time(Duration::from_secs(3));
    for (name, ty) in [
        ("attention_36_layers", CacheType::F32),
        ("attention_36_layers_f16", CacheType::F16),
    ] {
        let (ks, vs) = caches(ty);
        g.bench_function(name, |bn| {
            bn.iter(|| {
                b.scope(|| {
                    for l in 0..LAYERS {
                        b.cached_attention(&mut ws, &q, &ks[l], &vs[l], &mut out, shape, &mask);
                    }
                });
                black_box(&out);
            })
        });
    }
    let words = vec![1u64; bytes as usize / 8];
    g.bench_function("memory_read", |bn| bn.iter(|| read_sum(black_box(&words))));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
