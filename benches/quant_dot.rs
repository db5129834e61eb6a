//! Throughput of the weight-row dot-product kernels (`anatomy_runtime::quant::vec_dot_rows`, the
//! entry a decode step's matrix-vector products take: AVX-512 VNNI or AVX2/FMA where the CPU has
//! them) per storage type, at the row lengths of Qwen2.5-VL's matrices (2048: the 3B hidden size;
//! 11008: the 3B FFN width), on one thread. Two matrix sizes: 1 GiB on huge pages, far beyond
//! any L3 we target (the Xeon VM's is 260 MiB), so that every iteration streams the weights from
//! DRAM as a decode step's products do from a mapped model on huge pages (`dram`), and 256 KB,
//! which stays in L2 and shows what the kernel itself can do (`l2`). Throughput is in bytes of
//! weights read; `memory_read` sums a buffer of the DRAM size, on the same pages, in the same run
//! with the runtime's bandwidth probe (`backend::cpu::bandwidth`): the ceiling a kernel that only
//! reads memory could reach on this machine, against which `dram` shows how well each kernel
//! overlaps its arithmetic with the stream.
//!
//! `cargo bench --bench quant_dot` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::time::Duration;

use anatomy_runtime::backend::cpu::bandwidth::read_sum;
use anatomy_runtime::gguf::huge_anon;
use anatomy_runtime::quant::quantize::quantize_to_vec;
use anatomy_runtime::quant::test_values::xorshift_values;
use anatomy_runtime::quant::{vec_dot_rows, GgmlType};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memmap2::MmapMut;

/// Weight bytes per DRAM benchmark: far beyond L2 and any L3 of the machines we target (64 MiB
/// fitted in the Xeon VM's 260 MiB L3, so it timed the cache). On that VM, one thread: Q6_K at
/// 0.95 of `memory_read`, Q4_K and Q8_0 at 0.91; a scratch run of the same stream with two
/// threads gave Q6_K 0.92-0.96 and Q4_K 0.80-0.84 (`docs/speed-log.md`).
const MATRIX_BYTES: usize = 1 << 30;
/// Weight bytes per in-cache benchmark: inside the L2 of the machines we target.
const CACHED_BYTES: usize = 256 << 10;
/// Distinct rows actually quantized; the matrix repeats them, since what the kernels take time on
/// does not depend on the values and quantizing 64 MB per type would dominate the run.
const UNIQUE_ROWS: usize = 64;

const TYPES: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// A matrix of `bytes` (rounded down to whole rows) of `ty` rows of length `n`, on huge pages
/// where the OS grants them, its length in bytes, and an activation row in the type the kernel
/// pairs with it.
fn setup(ty: GgmlType, n: usize, bytes: usize) -> (MmapMut, usize, usize, Vec<u8>) {
    let row_bytes = ty.bytes_for(n as u64).expect("whole blocks") as usize;
    let unique =
        quantize_to_vec(ty, &xorshift_values(n * UNIQUE_ROWS, 7)).expect("quantize weights");
    let len = bytes / row_bytes * row_bytes;
    let mut matrix = huge_anon(len.max(1)).expect("anonymous memory");
    for chunk in matrix[..len].chunks_mut(unique.len()) {
        chunk.copy_from_slice(&unique[..chunk.len()]);
    }
    let act =
        quantize_to_vec(ty.vec_dot_type(), &xorshift_values(n, 11)).expect("quantize activations");
    (matrix, len, row_bytes, act)
}

fn bench(c: &mut Criterion) {
    for n in [2048usize, 11008] {
        let mut g = c.benchmark_group(format!("quant_dot/{n}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let mut words = huge_anon(MATRIX_BYTES).expect("anonymous memory");
        for (i, w) in words.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(i as u64 * 31 + 7).to_le_bytes());
        }
        let baseline: &[u64] = bytemuck::cast_slice(&words[..]);
        g.throughput(Throughput::Bytes(MATRIX_BYTES as u64));
        g.bench_function("memory_read", |b| b.iter(|| read_sum(black_box(baseline))));
        for (place, bytes) in [("dram", MATRIX_BYTES), ("l2", CACHED_BYTES)] {
            for ty in TYPES {
                let (matrix, len, row_bytes, act) = setup(ty, n, bytes);
                let matrix = &matrix[..len];
                let mut out = vec![0f32; len / row_bytes];
                g.throughput(Throughput::Bytes(len as u64));
                let id = BenchmarkId::new(format!("vec_dot_rows_{place}"), ty.name());
                g.bench_with_input(id, &ty, |b, &ty| {
                    b.iter(|| {
                        vec_dot_rows(ty, n, matrix, ty.vec_dot_type(), &act, &mut out)
                            .expect("whole rows");
                        black_box(out[0])
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
