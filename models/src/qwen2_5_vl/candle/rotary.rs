//! Rotary cos/sin tables: M-RoPE for the language model and the 2-D (h, w) rotary of the vision
//! tower. Both are laid out for [`super::ops::apply_rotary`] (rotate-half pairing: the angle of
//! frequency `j` sits at dims `j` and `j + head_dim/2`).
//!
//! The tables are computed on the host in f32, the precision HF uses (f32 `inv_freq`, f32 position
//! products, f32 cos/sin), and are constants for autograd.

use candle_core::{Device, Result, Tensor};

/// HF's `1 / theta^(2j / dim)` for `j < dim / 2`, in f32.
fn inv_freq(theta: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|j| 1.0f32 / (theta as f32).powf((2 * j) as f32 / dim as f32))
        .collect()
}

/// Turns one row of `head_dim / 2` angles per token into `[n, head_dim]` cos and sin tables.
fn tables(angles: Vec<f32>, n: usize, half: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let mut cos = Vec::with_capacity(n * half * 2);
    let mut sin = Vec::with_capacity(n * half * 2);
    for row in angles.chunks(half) {
        for _ in 0..2 {
            cos.extend(row.iter().map(|a| a.cos()));
            sin.extend(row.iter().map(|a| a.sin()));
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, 2 * half), device)?,
        Tensor::from_vec(sin, (n, 2 * half), device)?,
    ))
}

/// M-RoPE tables `[L, head_dim]` (f32) for positions `(t, h, w)`: frequency `j` takes its
/// position component from the `mrope_section` chunk it falls in (t, then h, then w).
pub fn mrope_tables(
    positions: &[[i64; 3]],
    head_dim: usize,
    theta: f64,
    mrope_section: &[usize],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv = inv_freq(theta, head_dim);
    let half = inv.len();
    // component[j] for each frequency j; sections beyond the third wrap like HF's `i % 3`.
    let mut component = Vec::with_capacity(half);
    for (i, &len) in mrope_section.iter().enumerate() {
        component.extend(std::iter::repeat_n(i % 3, len));
    }
    if component.len() != half {
        candle_core::bail!(
            "mrope_section {mrope_section:?} does not cover head_dim/2 = {half} frequencies"
        );
    }
    let mut angles = Vec::with_capacity(positions.len() * half);
    for p in positions {
        angles.extend(inv.iter().zip(&component).map(|(f, &c)| p[c] as f32 * f));
    }
    tables(angles, positions.len(), half, device)
}

/// Vision rotary tables `[n, head_dim]` (f32) for per-patch `(h, w)` coordinates: the first
/// `head_dim / 4` frequencies rotate with `h`, the next `head_dim / 4` with `w`.
pub fn vision_tables(
    coords: &[[usize; 2]],
    head_dim: usize,
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let inv = inv_freq(theta, head_dim / 2);
    let half = 2 * inv.len();
    let mut angles = Vec::with_capacity(coords.len() * half);
    for &[h, w] in coords {
        angles.extend(inv.iter().map(|f| h as f32 * f));
        angles.extend(inv.iter().map(|f| w as f32 * f));
    }
    tables(angles, coords.len(), half, device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_positions_are_plain_rope() {
        let dev = Device::Cpu;
        let pos: Vec<[i64; 3]> = (0..5).map(|i| [i; 3]).collect();
        let (cos, sin) = mrope_tables(&pos, 16, 1e6, &[2, 3, 3], &dev).unwrap();
        let cos = cos.to_vec2::<f32>().unwrap();
        let sin = sin.to_vec2::<f32>().unwrap();
        for (i, (c, s)) in cos.iter().zip(&sin).enumerate() {
            for j in 0..8 {
                let a = i as f32 / 1e6f32.powf(2. * j as f32 / 16.);
                assert!((c[j] - a.cos()).abs() < 1e-6 && (c[j + 8] - a.cos()).abs() < 1e-6);
                assert!((s[j] - a.sin()).abs() < 1e-6 && (s[j + 8] - a.sin()).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn sections_pick_components() {
        let dev = Device::Cpu;
        let (_, sin) = mrope_tables(&[[1, 2, 3]], 16, 10.0, &[2, 3, 3], &dev).unwrap();
        let sin = sin.to_vec2::<f32>().unwrap();
        let inv = inv_freq(10.0, 16);
        let comp = [1., 1., 2., 2., 2., 3., 3., 3.];
        for j in 0..8 {
            assert!(
                (sin[0][j] - (comp[j] * inv[j]).sin()).abs() < 1e-6,
                "freq {j}"
            );
        }
        assert!(mrope_tables(&[[0; 3]], 16, 10.0, &[2, 2, 2], &dev).is_err());
    }

    #[test]
    fn vision_halves_use_h_then_w() {
        let dev = Device::Cpu;
        let (cos, _) = vision_tables(&[[3, 5]], 16, 10_000.0, &dev).unwrap();
        let cos = cos.to_vec2::<f32>().unwrap();
        let inv = inv_freq(10_000.0, 8);
        for j in 0..4 {
            assert!((cos[0][j] - (3. * inv[j]).cos()).abs() < 1e-6);
            assert!((cos[0][4 + j] - (5. * inv[j]).cos()).abs() < 1e-6);
            assert_eq!(cos[0][j], cos[0][8 + j]);
        }
    }
}
