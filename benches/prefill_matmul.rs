//! Many-row matrix products as prefill and the vision tower run them, through the CPU backend's
//! `matmul` on memory-mapped GGUF weights, with the kernel the backend picks on this CPU (the AMX
//! bf16 tiles; without AMX the int8 VNNI kernel for quantized weights and, on AMD, the AVX-512
//! BF16 one for half-precision weights, which `ANATOMY_BF16=1` times on other CPUs that have it)
//! and with the f32 kernel they replace, in the same run: the ratio of
//! the two is the figure to read (the machines are noisy; absolute rates move between runs). On a
//! CPU with none of them only the f32 rows run.
//!
//! Shapes are Qwen2.5-VL-3B's: the language model's FFN up projection (Q4_K, 2048 -> 11008) and
//! down projection (Q8_0, 11008 -> 2048) over 512 prompt rows, and the vision MLP's up projection
//! (F16, 1280 -> 3420) over the 1024 patches of a 448x448 frame. Throughput is multiply-adds.
//!
//! `cargo bench --bench prefill_matmul` (add `-- --quick` for a short run).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use anatomy_runtime::backend::{Backend, CpuBackend, WorkspaceSpec};
use anatomy_runtime::gguf::writer::{GgufWriter, PendingTensor};
use anatomy_runtime::gguf::GgufFile;
use anatomy_runtime::quant::quantize::quantize_to_vec;
use anatomy_runtime::quant::test_values::xorshift_values;
use anatomy_runtime::quant::GgmlType;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// (name, type, rows m, columns k, activation rows n)
const CASES: [(&str, GgmlType, usize, usize, usize); 3] = [
    ("ffn_up", GgmlType::Q4_K, 11008, 2048, 512),
    ("ffn_down", GgmlType::Q8_0, 2048, 11008, 512),
    ("vision_mlp_up", GgmlType::F16, 3420, 1280, 1024),
];

/// A GGUF holding the three weight matrices, in a temporary directory kept for the run.
fn weights(dir: &std::path::Path) -> Arc<GgufFile> {
    let path = dir.join("prefill_matmul.gguf");
    let tensors = CASES
        .iter()
        .map(|&(name, ty, m, k, _)| PendingTensor {
            name: name.into(),
            shape: vec![k as u64, m as u64],
            ty,
        })
        .collect();
    let mut w = GgufWriter::create(&path, &[], tensors, 32).expect("create the weights file");
    for (i, &(name, ty, m, k, _)) in CASES.iter().enumerate() {
        let data = quantize_to_vec(ty, &xorshift_values(m * k, 3 + i as u64)).expect("quantize");
        w.write_tensor(name, &data).expect("write a tensor");
    }
    w.finish().expect("finish the weights file");
    Arc::new(GgufFile::open(&path).expect("open the weights file"))
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("anatomy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let file = weights(&dir);
    let fast = CpuBackend::new(None).expect("thread pool");
    let f32_kernel = CpuBackend::new(None)
        .expect("thread pool")
        .with_amx(false)
        .with_int8(false)
        .with_avx512_bf16(false);
    for &(name, ty, m, k, n) in &CASES {
        let mut g = c.benchmark_group(format!("prefill_matmul/{name}"));
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .throughput(Throughput::Elements((m * k * n) as u64));
        let kernels = match fast.many_rows_kernel(ty) {
            "f32" => {
                eprintln!("{name}: no faster kernel than f32 for {ty} on this CPU");
                vec![("f32", &f32_kernel)]
            }
            kernel => vec![(kernel, &fast), ("f32", &f32_kernel)],
        };
        for (kernel, b) in kernels {
            let w = b.matrix(&file, name).expect("matrix");
            let mut x = b.alloc(n * k);
            b.write(&mut x, 0, &xorshift_values(n * k, 17));
            let mut out = b.alloc(n * m);
            let mut ws = b.workspace(WorkspaceSpec {
                rows: n,
                cols: m.max(k),
                keys: 1,
                heads: 1,
            });
            g.bench_function(BenchmarkId::new(kernel, format!("{m}x{k}x{n}")), |it| {
                it.iter(|| {
                    b.matmul(&mut ws, &w, &x, n, &mut out).expect("matmul");
                    black_box(&out);
                })
            });
        }
        g.finish();
    }
    drop(file);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
