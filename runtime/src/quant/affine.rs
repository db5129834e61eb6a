//! Weight rows as unsigned bytes with one affine map per group of values, `w = scale·u + offset`:
//! the form the CPU backend's int8 matrix-matrix kernel multiplies (`vpdpbusd` takes one operand
//! unsigned), decoded once per panel of weight rows and reused by every activation row.
//!
//! Every supported block format is exactly such a map per group, so nothing is lost but the
//! rounding of `scale·u + offset` against the format's own expression:
//! - Q8_0: `u = q + 128` (32 per group), `scale = d`, `offset = -128·d`;
//! - Q4_K: `u` the nibble (32 per group, the sub-block), `scale = d·sc`, `offset = -dmin·m`;
//! - Q6_K: `u` the 6-bit level (16 per group), `scale = d·sc`, `offset = -32·d·sc`.

use super::dequant::{q6_k_values, scale_min_k4};
use super::{check_len, f16_at, GgmlType, QuantError};

/// Values per affine group of `ty`, or `None` when the type has no decoder here.
pub fn affine_group(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::Q8_0 | GgmlType::Q4_K => Some(32),
        GgmlType::Q6_K => Some(16),
        _ => None,
    }
}

/// Decodes the weight row `w` of `u.len()` values into `u`, and the affine map of each group into
/// `scale` and `offset` (one per [`affine_group`] values).
pub fn decode_affine(
    ty: GgmlType,
    w: &[u8],
    u: &mut [u8],
    scale: &mut [f32],
    offset: &mut [f32],
) -> Result<(), QuantError> {
    let n = u.len();
    let group = affine_group(ty).ok_or(QuantError::Unsupported {
        ty,
        op: "affine decode",
    })?;
    check_len(ty, n, w.len())?;
    let groups = n / group;
    if scale.len() != groups || offset.len() != groups {
        return Err(QuantError::ByteLength {
            ty: GgmlType::F32,
            elements: groups,
            bytes: 4 * scale.len().min(offset.len()),
            expected: 4 * groups,
        });
    }
    let bs = ty.block_size();
    let per_block = bs / group;
    for (b, x) in w.chunks_exact(ty.type_size()).enumerate() {
        let u = &mut u[b * bs..(b + 1) * bs];
        let (scale, offset) = (
            &mut scale[b * per_block..(b + 1) * per_block],
            &mut offset[b * per_block..(b + 1) * per_block],
        );
        match ty {
            GgmlType::Q8_0 => {
                let d = f16_at(x);
                for (u, &q) in u.iter_mut().zip(&x[2..34]) {
                    *u = (q as i8 as i16 + 128) as u8;
                }
                scale[0] = d;
                offset[0] = -128.0 * d;
            }
            GgmlType::Q4_K => {
                let (d, dmin) = (f16_at(x), f16_at(&x[2..]));
                let (sc, qs) = (&x[4..16], &x[16..144]);
                // Whole slices, not indices, so that the compiler moves 16 bytes at a time.
                for (u, q) in u.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
                    let (lo, hi) = u.split_at_mut(32);
                    for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(q) {
                        *lo = q & 0x0f;
                        *hi = q >> 4;
                    }
                }
                for j in 0..8 {
                    let (s, m) = scale_min_k4(j, sc);
                    scale[j] = d * s as f32;
                    offset[j] = -(dmin * m as f32);
                }
            }
            GgmlType::Q6_K => {
                let q = q6_k_values(&x[0..128], &x[128..192]);
                let d = f16_at(&x[208..]);
                for (u, q) in u.iter_mut().zip(q) {
                    *u = (q + 32) as u8;
                }
                for (j, &s) in x[192..208].iter().enumerate() {
                    scale[j] = d * s as i8 as f32;
                    offset[j] = -32.0 * scale[j];
                }
            }
            _ => unreachable!("affine_group admits only the types above"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::quantize::quantize_to_vec;
    use super::super::{dequantize_row, GgmlType};

    /// `scale·u + offset` gives back what the format's own decoder gives, for every value.
    #[test]
    fn affine_maps_reproduce_the_dequantized_rows() {
        let n = 1024;
        for (seed, ty) in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K]
            .into_iter()
            .enumerate()
        {
            let mut x = super::super::test_values::xorshift_values(n, 11 + seed as u64);
            x[5] = -9.0;
            let w = quantize_to_vec(ty, &x).unwrap();
            let mut want = vec![0f32; n];
            dequantize_row(ty, &w, &mut want).unwrap();
            let g = super::affine_group(ty).unwrap();
            let (mut u, mut s, mut o) = (vec![0u8; n], vec![0f32; n / g], vec![0f32; n / g]);
            super::decode_affine(ty, &w, &mut u, &mut s, &mut o).unwrap();
            for (i, &want) in want.iter().enumerate() {
                let got = s[i / g] * u[i] as f32 + o[i / g];
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{ty} value {i}: {got} vs {want}"
                );
            }
        }
    }

    /// A type without an affine form and a row of the wrong length are errors, not panics.
    #[test]
    fn unsupported_types_and_short_rows_are_errors() {
        let (mut u, mut s, mut o) = (vec![0u8; 256], vec![0f32; 8], vec![0f32; 8]);
        assert!(super::decode_affine(GgmlType::Q5_K, &[0; 176], &mut u, &mut s, &mut o).is_err());
        assert!(super::decode_affine(GgmlType::Q4_K, &[0; 143], &mut u, &mut s, &mut o).is_err());
    }
}
