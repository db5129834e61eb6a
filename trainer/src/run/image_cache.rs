//! [`ImageCache`]: per image file, what the trainer keeps between steps (a frozen tower's output, or
//! a training tower's preprocessed pixels), up to a byte budget. Past the budget an image is not
//! cached and is recomputed when asked again: the same values, only slower, so a run over many
//! fresh frames (12000 frames of 168x168 pixels are 8 GB of f32 pixels) stays within memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anatomy_models::qwen2_5_vl::positions::GridThw;
use candle_core::Tensor;

/// The budget of a trainer's caches: room for a few thousand frames' pixels at the demo's sizes.
pub const DEFAULT_BUDGET_BYTES: usize = 2 << 30;

#[derive(Debug)]
pub struct ImageCache {
    map: HashMap<PathBuf, (Tensor, GridThw)>,
    bytes: usize,
    budget: usize,
}

impl ImageCache {
    pub fn new(budget: usize) -> Self {
        ImageCache {
            map: HashMap::new(),
            bytes: 0,
            budget,
        }
    }

    pub fn get(&self, path: &Path) -> Option<(Tensor, GridThw)> {
        self.map.get(path).cloned()
    }

    /// Keeps `value` for `path` if it fits in what is left of the budget.
    pub fn insert(&mut self, path: &Path, value: (Tensor, GridThw)) {
        let size = value.0.elem_count() * value.0.dtype().size_in_bytes();
        if self.map.contains_key(path) || self.bytes + size > self.budget {
            return;
        }
        self.bytes += size;
        self.map.insert(path.to_path_buf(), value);
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn entry(n: usize) -> (Tensor, GridThw) {
        (
            Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap(),
            [1, 2, 2],
        )
    }

    #[test]
    fn keeps_what_fits_and_no_more() {
        let mut c = ImageCache::new(100);
        c.insert(Path::new("a.png"), entry(10));
        c.insert(Path::new("b.png"), entry(10));
        assert_eq!(c.bytes(), 80);
        // 24 more bytes would pass the budget: not kept, and what is kept stays.
        c.insert(Path::new("c.png"), entry(6));
        assert!(c.get(Path::new("c.png")).is_none());
        assert_eq!(c.get(Path::new("a.png")).unwrap().0.elem_count(), 10);
        // A second insert of a cached image changes nothing.
        c.insert(Path::new("a.png"), entry(1));
        assert_eq!(
            (c.bytes(), c.get(Path::new("a.png")).unwrap().0.elem_count()),
            (80, 10)
        );
        c.insert(Path::new("d.png"), entry(5));
        assert_eq!(c.bytes(), 100);
    }
}
