//! Positions: the language model's 3-D M-RoPE position ids (HF `get_rope_index`), and for the vision
//! tower the per-patch rotary coordinates, the attention windows and the window reordering.
//!
//! Patch order everywhere is the processor's: merge-block-major, i.e. for merged cell (R, C) in raster
//! order, its four patches (dr, dc) = (0,0), (0,1), (1,0), (1,1).

/// An image (or video) grid in patches: `[t, h, w]`.
pub type GridThw = [usize; 3];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PositionError {
    #[error("the prompt has {found} image placeholder tokens but the images need {expected} (grids {grids:?})")]
    ImageTokenCount {
        found: usize,
        expected: usize,
        grids: Vec<GridThw>,
    },
    #[error("image grid {grid:?} is not divisible by the merge size {merge}")]
    BadGrid { grid: GridThw, merge: usize },
}

/// M-RoPE positions of a prompt: one `[t, h, w]` triple per token, and the offset between a token's
/// index and its position that decoding continues from.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeIndex {
    pub positions: Vec<[i64; 3]>,
    /// `max(position) + 1 - len`: a token generated at sequence index `i` gets position `i + rope_delta`.
    pub rope_delta: i64,
}

impl RopeIndex {
    /// Positions component-major (`[3, len]` flattened), the layout HF's `position_ids` uses.
    pub fn component_major(&self) -> Vec<i64> {
        (0..3)
            .flat_map(|c| self.positions.iter().map(move |p| p[c]))
            .collect()
    }
}

/// HF `get_rope_index` for a prompt holding images: text advances all three components together;
/// the `t*h*w/merge²` placeholder tokens of an image get `(cur, cur + row, cur + col)` over the merged
/// grid, and the text after it continues at `cur + max(h', w')`.
pub fn rope_index(
    input_ids: &[u32],
    image_grids: &[GridThw],
    image_token_id: u32,
    merge: usize,
) -> Result<RopeIndex, PositionError> {
    let expected: usize = image_grids
        .iter()
        .map(|g| g[0] * g[1] * g[2] / (merge * merge))
        .sum();
    let found = input_ids.iter().filter(|&&t| t == image_token_id).count();
    if found != expected {
        return Err(PositionError::ImageTokenCount {
            found,
            expected,
            grids: image_grids.to_vec(),
        });
    }
    for g in image_grids {
        if merge == 0 || g[1] % merge != 0 || g[2] % merge != 0 {
            return Err(PositionError::BadGrid { grid: *g, merge });
        }
    }
    let mut positions = Vec::with_capacity(input_ids.len());
    let mut cur: i64 = 0;
    let mut i = 0;
    let mut grids = image_grids.iter();
    while i < input_ids.len() {
        if input_ids[i] != image_token_id {
            positions.push([cur; 3]);
            cur += 1;
            i += 1;
            continue;
        }
        // Counts matched above, so every run of placeholders has its grid.
        let Some(&[t, h, w]) = grids.next() else {
            break;
        };
        let (hm, wm) = (h / merge, w / merge);
        for _ in 0..t {
            for r in 0..hm {
                for c in 0..wm {
                    positions.push([cur, cur + r as i64, cur + c as i64]);
                }
            }
        }
        i += t * hm * wm;
        cur += hm.max(wm) as i64;
    }
    let max = positions.iter().flatten().copied().max().unwrap_or(-1);
    Ok(RopeIndex {
        rope_delta: max + 1 - positions.len() as i64,
        positions,
    })
}

/// The `(h, w)` patch coordinates the vision 2-D rotary uses, one per patch in processor order,
/// repeated for each temporal group.
pub fn vision_rotary_coords(grids: &[GridThw], merge: usize) -> Vec<[usize; 2]> {
    let mut out = Vec::new();
    for &[t, h, w] in grids {
        for _ in 0..t {
            for r in 0..h / merge {
                for c in 0..w / merge {
                    for dr in 0..merge {
                        for dc in 0..merge {
                            out.push([r * merge + dr, c * merge + dc]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// Window attention layout of the vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowLayout {
    /// For each position of the window-ordered sequence of merged cells, the raster-order cell index.
    pub window_index: Vec<usize>,
    /// Boundaries of the attention windows in patches (window order), starting at 0, no repeats.
    pub cu_window_seqlens: Vec<usize>,
    /// Boundaries of the full-attention segments (one per frame) in patches.
    pub cu_seqlens: Vec<usize>,
}

impl WindowLayout {
    /// The inverse permutation: for raster cell `i`, its position in window order.
    pub fn reverse_index(&self) -> Vec<usize> {
        let mut rev = vec![0; self.window_index.len()];
        for (pos, &cell) in self.window_index.iter().enumerate() {
            rev[cell] = pos;
        }
        rev
    }
}

/// HF `get_window_index`: windows of `window_cells`² merged cells tiled over each frame (the grid
/// padded up, windows enumerated row-major and cells row-major inside each), padding dropped.
pub fn window_layout(grids: &[GridThw], merge: usize, window_cells: usize) -> WindowLayout {
    let unit = merge * merge;
    let mut window_index = Vec::new();
    let mut cu_window_seqlens = vec![0usize];
    let mut cu_seqlens = vec![0usize];
    let mut offset = 0;
    for &[t, h, w] in grids {
        let (hm, wm) = (h / merge, w / merge);
        // HF pads by `window - hm % window`: a whole empty window when already divisible. Empty
        // windows add no cells and their repeated boundary is dropped below, so this is harmless.
        let (nwh, nww) = (hm.div_ceil(window_cells), wm.div_ceil(window_cells));
        for frame in 0..t {
            let base = offset + frame * hm * wm;
            for wy in 0..nwh {
                for wx in 0..nww {
                    let mut count = 0;
                    for r in wy * window_cells..((wy + 1) * window_cells).min(hm) {
                        for c in wx * window_cells..((wx + 1) * window_cells).min(wm) {
                            window_index.push(base + r * wm + c);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        let last = *cu_window_seqlens.last().unwrap_or(&0);
                        cu_window_seqlens.push(last + count * unit);
                    }
                }
            }
            let last = *cu_seqlens.last().unwrap_or(&0);
            cu_seqlens.push(last + h * w);
        }
        offset += t * hm * wm;
    }
    WindowLayout {
        window_index,
        cu_window_seqlens,
        cu_seqlens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_the_reference_notes() {
        // 34x46 patch grid -> 17x23 merged = 391 image tokens after `n` text tokens.
        let n = 5;
        let mut ids = vec![1u32; n];
        ids.extend(std::iter::repeat_n(9u32, 391));
        ids.extend([2, 3]);
        let r = rope_index(&ids, &[[1, 34, 46]], 9, 2).unwrap();
        let n = n as i64;
        assert_eq!(r.positions[4], [4, 4, 4]);
        assert_eq!(r.positions[5], [n, n, n]);
        assert_eq!(r.positions[5 + 22], [n, n, n + 22]);
        assert_eq!(r.positions[5 + 23], [n, n + 1, n]);
        assert_eq!(r.positions[5 + 390], [n, n + 16, n + 22]);
        assert_eq!(r.positions[5 + 391], [n + 23; 3]);
        assert_eq!(r.positions[5 + 392], [n + 24; 3]);
        assert_eq!(r.rope_delta, n + 25 - ids.len() as i64);
        let cm = r.component_major();
        assert_eq!(cm.len(), 3 * ids.len());
        assert_eq!(cm[ids.len() + 5 + 390], n + 16);
    }

    #[test]
    fn text_only_is_arange() {
        let r = rope_index(&[5, 6, 7], &[], 9, 2).unwrap();
        assert_eq!(r.positions, vec![[0; 3], [1; 3], [2; 3]]);
        assert_eq!(r.rope_delta, 0);
    }

    #[test]
    fn placeholder_count_mismatch_is_an_error() {
        let e = rope_index(&[9, 9, 9], &[[1, 4, 4]], 9, 2).unwrap_err();
        assert!(matches!(
            e,
            PositionError::ImageTokenCount {
                found: 3,
                expected: 4,
                ..
            }
        ));
    }

    #[test]
    fn windows_of_the_reference_example() {
        // 17x23 merged cells -> 5 x 6 = 30 windows of 4x4 cells.
        let l = window_layout(&[[1, 34, 46]], 2, 4);
        assert_eq!(l.window_index.len(), 391);
        assert_eq!(l.cu_window_seqlens.len(), 31);
        assert_eq!(l.cu_window_seqlens[1], 64);
        assert_eq!(*l.cu_window_seqlens.last().unwrap(), 391 * 4);
        assert_eq!(&l.window_index[..5], &[0, 1, 2, 3, 23]);
        assert_eq!(l.cu_seqlens, vec![0, 34 * 46]);
        let mut sorted = l.window_index.clone();
        sorted.sort();
        assert_eq!(sorted, (0..391).collect::<Vec<_>>());
        let rev = l.reverse_index();
        assert!(rev.iter().enumerate().all(|(i, &p)| l.window_index[p] == i));
    }

    #[test]
    fn rotary_coords_follow_merge_blocks() {
        let c = vision_rotary_coords(&[[1, 4, 6]], 2);
        assert_eq!(c.len(), 24);
        assert_eq!(&c[..5], &[[0, 0], [0, 1], [1, 0], [1, 1], [0, 2]]);
        assert_eq!(c[23], [3, 5]);
    }
}
