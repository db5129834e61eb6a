//! Painting a [`Scene`] into an RGB frame in the style of a laparoscopic cholecystectomy video:
//! a colour and texture per structure, shadowed crevices between tissues, silver instruments with
//! cylindrical shading and a cast shadow, the endoscope light's falloff (vignette), sensor noise.
//!
//! All noise is hashed from lattice coordinates and the scene's seed (no global state), so a frame
//! depends only on its scene and rendering parallelises without changing a byte.

use super::scene::{Scene, Structure};
use crate::rng::SplitMix64;

/// A well-mixed hash of a lattice point to `[0, 1)`.
pub fn hash2(x: i32, y: i32, seed: u64) -> f32 {
    let mut z = ((x as u32 as u64) << 32 | y as u32 as u64) ^ seed;
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// Smoothly interpolated value noise in `[0, 1)`.
pub fn value_noise(x: f32, y: f32, seed: u64) -> f32 {
    let (fx, fy) = (x.floor(), y.floor());
    let (ix, iy) = (fx as i32, fy as i32);
    let (tx, ty) = (x - fx, y - fy);
    let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
    let a = hash2(ix, iy, seed);
    let b = hash2(ix + 1, iy, seed);
    let c = hash2(ix, iy + 1, seed);
    let d = hash2(ix + 1, iy + 1, seed);
    let top = a + (b - a) * sx;
    let bottom = c + (d - c) * sx;
    top + (bottom - top) * sy
}

/// Fractal sum of `octaves` value-noise layers, normalised to `[0, 1)`.
pub fn fbm(x: f32, y: f32, seed: u64, octaves: u32) -> f32 {
    let (mut sum, mut amp, mut norm, mut f) = (0.0, 1.0, 0.0, 1.0);
    for o in 0..octaves {
        sum += amp * value_noise(x * f, y * f, seed.wrapping_add(o as u64 * 0x632B_E59B));
        norm += amp;
        amp *= 0.5;
        f *= 2.03;
    }
    sum / norm
}

/// Distance to the nearest jittered cell point (cellular noise), about `[0, 1]`: fat lobules.
fn worley(x: f32, y: f32, seed: u64) -> f32 {
    let (ix, iy) = (x.floor() as i32, y.floor() as i32);
    let mut best = f32::INFINITY;
    for cy in iy - 1..=iy + 1 {
        for cx in ix - 1..=ix + 1 {
            let px = cx as f32 + hash2(cx, cy, seed);
            let py = cy as f32 + hash2(cx, cy, seed ^ 0xABCD);
            best = best.min((px - x).powi(2) + (py - y).powi(2));
        }
    }
    best.sqrt()
}

type Rgb = [f32; 3];

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    let t = t.clamp(0.0, 1.0);
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// A thin line where a noise field crosses 0.5: vessels and fibres. 1 on the line, 0 away from it.
fn ridge(x: f32, y: f32, seed: u64, width: f32) -> f32 {
    let d = (fbm(x, y, seed, 2) - 0.5).abs();
    (1.0 - d / width).max(0.0)
}

/// The tissue colour of `s` at unit coordinates `(u, v)`, before lighting, with its glossiness.
fn tissue(s: Structure, u: f32, v: f32, seed: u64) -> (Rgb, f32) {
    let k = seed ^ (s.id() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    match s {
        Structure::Liver => {
            // Maroon-brown, smooth and glossy: darker and browner than the red wall.
            let n = fbm(u * 5.0, v * 5.0, k, 3);
            let m = value_noise(u * 28.0, v * 28.0, k ^ 1);
            let c = mix([70.0, 32.0, 24.0], [138.0, 74.0, 52.0], 0.75 * n + 0.25 * m);
            (c, 1.0)
        }
        Structure::Gallbladder => {
            let n = fbm(u * 4.0, v * 4.0, k, 3);
            let mut c = mix([140.0, 156.0, 118.0], [228.0, 232.0, 200.0], n);
            let vein = ridge(u * 7.0, v * 7.0, k ^ 2, 0.03);
            c = mix(c, [165.0, 95.0, 95.0], 0.55 * vein);
            (c, 1.0)
        }
        Structure::Omentum => {
            // Warping the cell lattice makes fat lobules of uneven size and shape.
            let wu = u + 0.05 * (fbm(u * 5.0, v * 5.0, k ^ 11, 2) - 0.5);
            let wv = v + 0.05 * (fbm(u * 5.0 + 9.0, v * 5.0, k ^ 11, 2) - 0.5);
            let w = worley(wu * 13.0, wv * 13.0, k);
            let lobule = 1.0 - (w * 1.1).min(1.0);
            let n = fbm(u * 6.0, v * 6.0, k ^ 3, 2);
            let mut c = mix(
                [175.0, 120.0, 40.0],
                [246.0, 214.0, 116.0],
                0.2 + 0.35 * lobule + 0.55 * n,
            );
            let vessel = ridge(u * 5.0, v * 5.0, k ^ 4, 0.02);
            c = mix(c, [150.0, 40.0, 30.0], 0.7 * vessel);
            (c, 0.3)
        }
        Structure::AbdominalWallCavity => {
            // Muscle fibres run in one direction: noise stretched along x.
            let streak = fbm(u * 3.0, v * 26.0, k, 3);
            let n = fbm(u * 4.0, v * 4.0, k ^ 5, 2);
            let mut c = mix(
                [150.0, 30.0, 36.0],
                [222.0, 92.0, 88.0],
                0.65 * streak + 0.35 * n,
            );
            let fascia = ((fbm(u * 2.5, v * 2.5, k ^ 6, 2) - 0.62) * 4.0).clamp(0.0, 0.5);
            c = mix(c, [214.0, 176.0, 164.0], fascia);
            (c, 0.2)
        }
        Structure::CysticPlate => {
            let speckle = value_noise(u * 45.0, v * 45.0, k);
            let n = fbm(u * 6.0, v * 6.0, k ^ 7, 2);
            let mut c = mix(
                [100.0, 14.0, 24.0],
                [178.0, 44.0, 46.0],
                0.5 * n + 0.5 * speckle,
            );
            let strand = ridge(u * 12.0, v * 12.0, k ^ 8, 0.035);
            c = mix(c, [222.0, 190.0, 180.0], 0.6 * strand);
            (c, 0.6)
        }
        Structure::Gut => {
            // Bowel loops: bands bent by low-frequency noise, shaded at each fold.
            let angle = hash2(0, 0, k) * std::f32::consts::PI;
            let (ca, sa) = (angle.cos(), angle.sin());
            let phase = 22.0 * (u * ca + v * sa) + 7.0 * fbm(u * 3.0, v * 3.0, k ^ 9, 2);
            let band = 0.5 + 0.5 * phase.sin();
            let n = fbm(u * 8.0, v * 8.0, k ^ 10, 2);
            let mut c = mix(
                [170.0, 70.0, 76.0],
                [238.0, 146.0, 140.0],
                0.35 + 0.4 * band + 0.25 * n,
            );
            let fold = (1.0 - band).powi(4);
            c = mix(c, [90.0, 28.0, 34.0], 0.8 * fold);
            (c, 0.8)
        }
    }
}

/// The frame of `scene` as row-major RGB8, `size * size * 3` bytes.
pub fn render(scene: &Scene) -> Vec<u8> {
    let size = scene.size;
    let mut rng = SplitMix64::new(scene.texture_seed);
    let seed = rng.next_u64();
    let noise_seed = rng.next_u64();
    let light = (
        0.5 + 0.3 * (rng.unit() as f32 - 0.5),
        0.45 + 0.3 * (rng.unit() as f32 - 0.5),
    );
    let falloff = 0.55 + 0.35 * rng.unit() as f32;
    let exposure = 0.92 + 0.16 * rng.unit() as f32;
    let sigma = 2.0 + 4.0 * rng.unit() as f32;
    let gloss_seed = rng.next_u64();
    // The shadow an instrument casts falls a few pixels down-right of it, away from the light.
    let shadow_off = ((size as f32 * 0.018).round() as usize).max(1);
    let edge = ((size as f32 * 0.009).round() as usize).max(1);

    let inv = 1.0 / size as f32;
    let mut out = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let i = y * size + x;
            let (u, v) = ((x as f32 + 0.5) * inv, (y as f32 + 0.5) * inv);
            let mut c = if scene.tool[i] != 0 {
                metal(scene.tool_shade[i])
            } else {
                let s = Structure::from_id(scene.labels[i]);
                let (mut c, gloss) = tissue(s, u, v, seed);
                // Crevices between tissues are darker, with a softer wider falloff that makes
                // each region read as a rounded surface; the gallbladder bulges the most.
                let l = scene.labels[i];
                let near = differing(scene, x, y, edge, l) as f32;
                let mid = differing(scene, x, y, 3 * edge, l) as f32;
                let far = if s == Structure::Gallbladder {
                    differing(scene, x, y, 6 * edge, l) as f32
                } else {
                    0.0
                };
                let crevice = 1.0 - 0.13 * near - 0.05 * mid - 0.04 * far;
                if x >= shadow_off
                    && y >= shadow_off
                    && scene.tool[i - shadow_off * size - shadow_off] != 0
                {
                    c = scale(c, 0.55);
                }
                c = scale(c, crevice);
                // Wet tissue reflects the light source in small bright patches.
                let g = fbm(u * 16.0, v * 16.0, gloss_seed, 2);
                let spec = ((g - 0.8) * 6.0).clamp(0.0, 1.0) * gloss;
                mix(c, [255.0, 248.0, 240.0], 0.8 * spec)
            };
            let r2 = ((u - light.0).powi(2) + (v - light.1).powi(2)) / 0.5;
            let lit = exposure * (1.0 - falloff * r2).max(0.12);
            c = scale(c, lit);
            let mut bytes = [0u8; 3];
            for (ch, b) in bytes.iter_mut().enumerate() {
                // Sum of two uniforms: a cheap, roughly bell-shaped sensor noise.
                let h = hash2(i as i32, ch as i32, noise_seed)
                    + hash2(ch as i32, i as i32, !noise_seed);
                *b = (c[ch] + sigma * (h - 1.0) * 1.7).round().clamp(0.0, 255.0) as u8;
            }
            out[i * 3..i * 3 + 3].copy_from_slice(&bytes);
        }
    }
    out
}

/// How many of the four pixels `r` away from `(x, y)` carry another label than `l`.
fn differing(scene: &Scene, x: usize, y: usize, r: usize, l: u8) -> usize {
    let size = scene.size;
    let at = |x: usize, y: usize| scene.labels[y * size + x] != l;
    usize::from(x >= r && at(x - r, y))
        + usize::from(x + r < size && at(x + r, y))
        + usize::from(y >= r && at(x, y - r))
        + usize::from(y + r < size && at(x, y + r))
}

fn scale(c: Rgb, f: f32) -> Rgb {
    [c[0] * f, c[1] * f, c[2] * f]
}

/// Brushed steel on a cylinder: brightest a little off-axis, dark at the silhouette; the jaws and
/// the hook wire (|shade| > 1) are darker, worn metal.
fn metal(shade: f32) -> Rgb {
    if shade.abs() > 1.0 {
        return [92.0, 94.0, 100.0];
    }
    let body = (1.0 - shade * shade).max(0.0).sqrt();
    let highlight = (-((shade + 0.35) / 0.14).powi(2)).exp();
    let g = 70.0 + 120.0 * body + 70.0 * highlight;
    [g * 0.96, g * 0.98, g]
}
