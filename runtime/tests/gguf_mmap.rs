//! Zero-copy loading: `GgufFile::open` maps the file instead of reading it, so opening a 64 MiB
//! GGUF leaves resident memory almost unchanged and only the pages a tensor view actually reads
//! become resident. Measured with `/proc/self/smaps_rollup` (Linux only); one test per binary so no
//! concurrently running test moves the figures.

#![cfg(target_os = "linux")]

use anatomy_runtime::gguf::{GgufFile, GgufWriter, PendingTensor};
use anatomy_runtime::quant::GgmlType;

/// Resident set size of this process in bytes.
fn rss_bytes() -> u64 {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn open_maps_and_reading_pages_in() {
    const SIDE: usize = 4096; // 4096 x 4096 f32 = 64 MiB
    let size = (SIDE * SIDE * 4) as u64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    {
        // Non-zero bytes, so no filesystem can store the tensor as a hole.
        let data: Vec<u8> = (0..SIDE * SIDE)
            .flat_map(|i| ((i % 251) as f32 + 1.0).to_le_bytes())
            .collect();
        let tensors = vec![PendingTensor {
            name: "w".into(),
            shape: vec![SIDE as u64, SIDE as u64],
            ty: GgmlType::F32,
        }];
        let mut w = GgufWriter::create(&path, &[], tensors, 32).unwrap();
        w.write_tensor("w", &data).unwrap();
        w.finish().unwrap();
    } // the 64 MiB source buffer is freed (returned to the OS: above malloc's mmap threshold)

    let before = rss_bytes();
    let g = GgufFile::open(&path).unwrap();
    let t = g.tensor("w").unwrap();
    let values = t.as_f32().unwrap();
    assert_eq!(values.len(), SIDE * SIDE);
    let opened = rss_bytes();

    // One read per 4 KiB page faults every page of the tensor in.
    let touched: f64 = values.iter().step_by(1024).map(|&v| v as f64).sum();
    assert!(touched > 0.0);
    let read = rss_bytes();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let grow_open = opened.saturating_sub(before);
    let grow_read = read.saturating_sub(before);
    eprintln!(
        "file {:.1} MiB: RSS +{:.2} MiB after open, +{:.2} MiB after reading the tensor",
        mib(size),
        mib(grow_open),
        mib(grow_read)
    );
    // Opening parses only the header: anything near the file size would mean a copy.
    assert!(grow_open < size / 16, "open grew RSS by {grow_open} bytes");
    // Reading maps the tensor's pages (from the page cache, still shared, not copied): about
    // the tensor's size, and not twice it.
    assert!(
        grow_read > size * 9 / 10 && grow_read < size * 3 / 2,
        "reading grew RSS by {grow_read} bytes of {size}"
    );
}
