//! Rotary tables in the layout `Backend::rope` reads: per row `head_dim/2` cosines then
//! `head_dim/2` sines, computed in f32 as HF does (f32 `inv_freq`, f32 angle products).
//!
//! M-RoPE picks each frequency's position component from its `mrope_section` (t, h, w); the vision
//! rotary gives the first half of the frequencies the patch row and the second half its column.

/// HF's `1 / theta^(2j / dim)` for `j < dim / 2`.
pub fn inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| 1.0f32 / theta.powf((2 * j) as f32 / dim as f32))
        .collect()
}

/// The position component (0 = t, 1 = h, 2 = w) of each of the `head_dim/2` frequencies, or
/// `None` when the sections do not cover them exactly (llama.cpp pads the list with zeros).
pub fn mrope_components(sections: &[i64], half: usize) -> Option<Vec<usize>> {
    let mut comp = Vec::with_capacity(half);
    for (i, &len) in sections.iter().enumerate() {
        let len = usize::try_from(len).ok()?;
        if len > 0 && i >= 3 {
            return None;
        }
        comp.extend(std::iter::repeat_n(i, len));
    }
    (comp.len() == half).then_some(comp)
}

/// Appends the M-RoPE rows of `positions` to `out` (cleared first; its capacity is reused).
pub fn mrope_table(positions: &[[i64; 3]], inv: &[f32], comp: &[usize], out: &mut Vec<f32>) {
    out.clear();
    for p in positions {
        let angle = |j: usize| p[comp[j]] as f32 * inv[j];
        out.extend((0..inv.len()).map(|j| angle(j).cos()));
        out.extend((0..inv.len()).map(|j| angle(j).sin()));
    }
}

/// The vision rotary rows of per-patch `(row, col)` coordinates.
pub fn vision_table(coords: &[[usize; 2]], head_dim: usize, theta: f32, out: &mut Vec<f32>) {
    let inv = inv_freq(theta, head_dim / 2);
    out.clear();
    let mut angles = Vec::with_capacity(head_dim / 2);
    for &[h, w] in coords {
        angles.clear();
        angles.extend(inv.iter().map(|f| h as f32 * f));
        angles.extend(inv.iter().map(|f| w as f32 * f));
        out.extend(angles.iter().map(|a| a.cos()));
        out.extend(angles.iter().map(|a| a.sin()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_mrope_is_plain_rope() {
        let inv = inv_freq(1e6, 16);
        let comp = mrope_components(&[2, 3, 3, 0], 8).unwrap();
        let mut a = Vec::new();
        mrope_table(&[[5, 5, 5]], &inv, &comp, &mut a);
        for j in 0..8 {
            assert!((a[j] - (5.0 * inv[j]).cos()).abs() < 1e-6);
            assert!((a[8 + j] - (5.0 * inv[j]).sin()).abs() < 1e-6);
        }
        let mut b = Vec::new();
        mrope_table(&[[5, 0, 9]], &inv, &comp, &mut b);
        // Frequencies 0..2 follow t, 2..5 h, 5..8 w.
        assert_eq!(b[0], a[0]);
        assert_eq!(b[2], 1.0);
        assert!((b[7] - (9.0 * inv[7]).cos()).abs() < 1e-6);
        assert!(mrope_components(&[2, 3, 2], 8).is_none());
        assert!(mrope_components(&[2, 3, 2, 1], 8).is_none());
    }

    #[test]
    fn vision_rows_then_columns() {
        let mut t = Vec::new();
        vision_table(&[[2, 3]], 8, 10_000.0, &mut t);
        let inv = inv_freq(10_000.0, 4);
        assert_eq!(t.len(), 8);
        assert!((t[0] - 2.0f32.cos()).abs() < 1e-6);
        assert!((t[2] - 3.0f32.cos()).abs() < 1e-6);
        assert!((t[4 + 3] - (3.0 * inv[1]).sin()).abs() < 1e-6);
    }
}
