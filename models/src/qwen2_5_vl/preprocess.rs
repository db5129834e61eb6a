//! Image preprocessing exactly as the HF Qwen2-VL image processor (PIL backend).
//!
//! The pipeline is the one of transformers' `Qwen2VLImageProcessorPil` (and the 4.x slow
//! `Qwen2VLImageProcessor`): decode and convert to RGB8 ([`load_image`]), pick the target size
//! with [`smart_resize`], resize with Pillow's bicubic filter (reproduced bit for bit in
//! `resample`), rescale and normalise in HF's float order, and flatten into the processor's patch
//! rows (merge-block-major, the still image repeated along time).
//!
//! - `decode`: PNG/JPEG decoding under [`DecodeLimits`], alpha over white, Pillow's bit-depth rules.
//! - `resample`: Pillow's fixed-point bicubic `Image.resize`.

mod decode;
mod resample;

use std::path::Path;

pub use decode::DecodeLimits;
pub use resample::PillowPassOrder;

/// The image processor's parameters, read from `preprocessor_config.json` (transformers 4.x) or
/// `processor_config.json` (transformers 5.x) by [`super::config`].
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessParams {
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f32,
}

impl Default for PreprocessParams {
    /// The class defaults of `Qwen2VLImageProcessor` (the hub checkpoints raise `max_pixels`).
    // The mean/std literals are HF's OPENAI_CLIP constants verbatim; their float32 rounding is
    // what numpy uses (checked in the tests).
    #[allow(clippy::excessive_precision)]
    fn default() -> Self {
        Self {
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            patch_size: 14,
            temporal_patch_size: 2,
            merge_size: 2,
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

/// The name errors give an image that did not come from a file.
pub const MEMORY_IMAGE: &str = "<memory>";

/// Why an image could not be preprocessed. Every variant names the image: its path, or
/// [`MEMORY_IMAGE`] for buffers.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("{image}: cannot read: {source}")]
    Io {
        image: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{image}: cannot decode the image: {source}")]
    Decode {
        image: String,
        #[source]
        source: image::ImageError,
    },
    #[error("{image}: unsupported image: {reason}")]
    Unsupported { image: String, reason: String },
    #[error("{image}: the image has zero size ({width}x{height})")]
    ZeroSize {
        image: String,
        width: u64,
        height: u64,
    },
    #[error(
        "{image}: the {width}x{height} image has aspect ratio {ratio:.1}; the HF processor rejects \
         ratios above 200"
    )]
    AspectRatio {
        image: String,
        width: u64,
        height: u64,
        ratio: f64,
    },
    #[error("{image}: image too large: {reason}")]
    TooLarge { image: String, reason: String },
    #[error("{image}: resize target out of bounds: {reason}")]
    ResizeOutOfBounds { image: String, reason: String },
    #[error("{image}: the pixel buffer holds {len} bytes, a {width}x{height} RGB8 image needs {expected}")]
    BufferSize {
        image: String,
        len: usize,
        width: u64,
        height: u64,
        expected: u128,
    },
    #[error("{image}: invalid preprocessing parameters: {reason}")]
    InvalidParams { image: String, reason: String },
}

impl PreprocessError {
    /// The image the error is about (a path or [`MEMORY_IMAGE`]).
    pub fn image(&self) -> &str {
        match self {
            Self::Io { image, .. }
            | Self::Decode { image, .. }
            | Self::Unsupported { image, .. }
            | Self::ZeroSize { image, .. }
            | Self::AspectRatio { image, .. }
            | Self::TooLarge { image, .. }
            | Self::ResizeOutOfBounds { image, .. }
            | Self::BufferSize { image, .. }
            | Self::InvalidParams { image, .. } => image,
        }
    }

    /// Re-labels the error with the image it is about, for errors raised by functions that only
    /// saw pixels.
    pub fn with_image(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        match &mut self {
            Self::Io { image, .. }
            | Self::Decode { image, .. }
            | Self::Unsupported { image, .. }
            | Self::ZeroSize { image, .. }
            | Self::AspectRatio { image, .. }
            | Self::TooLarge { image, .. }
            | Self::ResizeOutOfBounds { image, .. }
            | Self::BufferSize { image, .. }
            | Self::InvalidParams { image, .. } => *image = name,
        }
        self
    }
}

/// HF's aspect-ratio bound in `smart_resize`.
const MAX_ASPECT_RATIO: f64 = 200.0;

/// Largest side we let `smart_resize` produce. Pillow sizes are C `int`s; anything near this is a
/// misconfiguration (min/max pixels), not an image.
const MAX_TARGET_SIDE: usize = 1 << 20;

/// Largest area we let `smart_resize` produce (the hub `max_pixels` is 12.8 Mpx): a bad
/// `min_pixels` must be an error, not a multi-gigabyte allocation.
const MAX_TARGET_PIXELS: usize = 64 << 20;

/// Cap on the floats of one image's `pixel_values` (4 GiB), against absurd `temporal_patch_size`.
const MAX_PIXEL_VALUES: usize = 1 << 30;

/// HF's `smart_resize(height, width, factor, min_pixels, max_pixels)`: the `(height, width)` the
/// image is resized to, both multiples of `factor`, the area brought into `[min_pixels,
/// max_pixels]` while keeping the aspect ratio as far as the rounding allows.
///
/// Float operations follow the Python expression by expression (`round` is round-half-to-even, so
/// 70/28 = 2.5 rounds to 2). Errors name [`MEMORY_IMAGE`]; see [`PreprocessError::with_image`].
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), PreprocessError> {
    let out_of_bounds = |reason: String| PreprocessError::ResizeOutOfBounds {
        image: MEMORY_IMAGE.into(),
        reason,
    };
    if height == 0 || width == 0 {
        return Err(PreprocessError::ZeroSize {
            image: MEMORY_IMAGE.into(),
            width: width as u64,
            height: height as u64,
        });
    }
    if factor == 0 || max_pixels == 0 {
        return Err(out_of_bounds(format!(
            "factor ({factor}) and max_pixels ({max_pixels}) must be positive"
        )));
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(PreprocessError::AspectRatio {
            image: MEMORY_IMAGE.into(),
            width: width as u64,
            height: height as u64,
            ratio,
        });
    }
    // `f64 as usize` saturates, and every value below is finite and non-negative; the final
    // bounds check catches anything absurd.
    let snap = |x: f64| (x as usize).saturating_mul(factor);
    let mut h_bar = snap((h / f).round_ties_even());
    let mut w_bar = snap((w / f).round_ties_even());
    // Python ints do not overflow; saturating keeps the comparison's outcome.
    let area = |a: usize, b: usize| a.saturating_mul(b);
    let pixels = (height as f64) * (width as f64);
    if area(h_bar, w_bar) > max_pixels {
        let beta = (pixels / max_pixels as f64).sqrt();
        h_bar = factor.max(snap((h / beta / f).floor()));
        w_bar = factor.max(snap((w / beta / f).floor()));
    } else if area(h_bar, w_bar) < min_pixels {
        let beta = (min_pixels as f64 / pixels).sqrt();
        h_bar = snap((h * beta / f).ceil());
        w_bar = snap((w * beta / f).ceil());
    }
    if h_bar == 0
        || w_bar == 0
        || h_bar > MAX_TARGET_SIDE
        || w_bar > MAX_TARGET_SIDE
        || h_bar.saturating_mul(w_bar) > MAX_TARGET_PIXELS
    {
        return Err(out_of_bounds(format!(
            "{width}x{height} maps to {w_bar}x{h_bar} (factor {factor}, min_pixels {min_pixels}, \
             max_pixels {max_pixels})"
        )));
    }
    Ok((h_bar, w_bar))
}

/// One preprocessed image: the processor's `pixel_values` rows for it and its `image_grid_thw`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessedImage {
    /// Row-major `[n_patches, patch_dim]`, `patch_dim = 3 * temporal * patch * patch`.
    pub pixel_values: Vec<f32>,
    pub n_patches: usize,
    pub patch_dim: usize,
    /// `[grid_t, grid_h, grid_w]` in patches (`grid_t` is 1 for a still image).
    pub grid_thw: [usize; 3],
    pub resized_height: usize,
    pub resized_width: usize,
}

impl ProcessedImage {
    /// Number of `<|image_pad|>` tokens (= merged vision tokens): `t * h * w / merge_size²`.
    pub fn image_tokens(&self, merge_size: usize) -> usize {
        let [t, h, w] = self.grid_thw;
        t.saturating_mul(h)
            .saturating_mul(w)
            .checked_div(merge_size.saturating_mul(merge_size))
            .unwrap_or(0)
    }
}

/// Preprocesses an interleaved RGB8 image (`width * height * 3` bytes, row-major) exactly like the
/// HF PIL-backend processor does for a PIL `RGB` image. Errors name [`MEMORY_IMAGE`].
pub fn preprocess_rgb8(
    rgb: &[u8],
    width: u32,
    height: u32,
    params: &PreprocessParams,
) -> Result<ProcessedImage, PreprocessError> {
    let invalid = |reason: String| PreprocessError::InvalidParams {
        image: MEMORY_IMAGE.into(),
        reason,
    };
    let (p, m, t) = (
        params.patch_size,
        params.merge_size,
        params.temporal_patch_size,
    );
    if p == 0 || m == 0 || t == 0 {
        return Err(invalid(format!(
            "patch_size ({p}), merge_size ({m}) and temporal_patch_size ({t}) must be positive"
        )));
    }
    if params.image_std.iter().any(|&s| s == 0.0 || !s.is_finite())
        || params.image_mean.iter().any(|m| !m.is_finite())
        || !params.rescale_factor.is_finite()
    {
        return Err(invalid(format!(
            "image_std {:?} must be finite and non-zero, image_mean {:?} and rescale_factor {} \
             finite",
            params.image_std, params.image_mean, params.rescale_factor
        )));
    }
    let factor = p
        .checked_mul(m)
        .ok_or_else(|| invalid(format!("patch_size {p} * merge_size {m} overflows")))?;
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize {
            image: MEMORY_IMAGE.into(),
            width: width.into(),
            height: height.into(),
        });
    }
    let (w, h) = (width as usize, height as usize);
    let expected = u128::from(width) * u128::from(height) * 3;
    if rgb.len() as u128 != expected {
        return Err(PreprocessError::BufferSize {
            image: MEMORY_IMAGE.into(),
            len: rgb.len(),
            width: width.into(),
            height: height.into(),
            expected,
        });
    }

    let (rh, rw) = smart_resize(h, w, factor, params.min_pixels, params.max_pixels)?;
    let (gh, gw) = (rh / p, rw / p);
    let patch_dim = (3 * p * p).saturating_mul(t);
    if (gh * gw).saturating_mul(patch_dim) > MAX_PIXEL_VALUES {
        return Err(invalid(format!(
            "{} patches of {patch_dim} values exceed {MAX_PIXEL_VALUES} floats",
            gh * gw
        )));
    }
    let resized = resample::resize_rgb8_bicubic(rgb, w, h, rw, rh, PillowPassOrder::Pillow13);
    let lut = normalisation_table(params);
    let pixel_values = patchify(&resized, rw, gh, gw, p, m, t, &lut);
    Ok(ProcessedImage {
        pixel_values,
        n_patches: gh * gw,
        patch_dim,
        grid_thw: [1, gh, gw],
        resized_height: rh,
        resized_width: rw,
    })
}

/// Resizes an interleaved RGB8 image exactly as Pillow's `Image.resize((out_width, out_height),
/// Image.BICUBIC)`, with the pass order of the given Pillow generation. Errors name
/// [`MEMORY_IMAGE`].
pub fn resize_rgb8_bicubic(
    rgb: &[u8],
    width: u32,
    height: u32,
    out_width: u32,
    out_height: u32,
    order: PillowPassOrder,
) -> Result<Vec<u8>, PreprocessError> {
    if width == 0 || height == 0 || out_width == 0 || out_height == 0 {
        return Err(PreprocessError::ZeroSize {
            image: MEMORY_IMAGE.into(),
            width: width.min(out_width).into(),
            height: height.min(out_height).into(),
        });
    }
    let expected = u128::from(width) * u128::from(height) * 3;
    if rgb.len() as u128 != expected {
        return Err(PreprocessError::BufferSize {
            image: MEMORY_IMAGE.into(),
            len: rgb.len(),
            width: width.into(),
            height: height.into(),
            expected,
        });
    }
    let (ow, oh) = (out_width as usize, out_height as usize);
    if ow > MAX_TARGET_SIDE || oh > MAX_TARGET_SIDE || ow.saturating_mul(oh) > MAX_TARGET_PIXELS {
        return Err(PreprocessError::ResizeOutOfBounds {
            image: MEMORY_IMAGE.into(),
            reason: format!(
                "{out_width}x{out_height} exceeds {MAX_TARGET_SIDE} per side or \
                 {MAX_TARGET_PIXELS} pixels"
            ),
        });
    }
    Ok(resample::resize_rgb8_bicubic(
        rgb,
        width as usize,
        height as usize,
        out_width as usize,
        out_height as usize,
        order,
    ))
}

/// Decodes a PNG or JPEG file to RGB8 `(bytes, width, height)` as HF sees it after
/// `PIL.Image.open` and the processor's `convert_to_rgb` (alpha composited onto white, grey
/// replicated), under the default [`DecodeLimits`].
///
/// EXIF orientation is not applied, as `PIL.Image.open` does not apply it (transformers'
/// `load_image` URL/path helper does call `exif_transpose`, but then drops alpha instead of
/// compositing it).
pub fn load_image(path: impl AsRef<Path>) -> Result<(Vec<u8>, u32, u32), PreprocessError> {
    load_image_with_limits(path, &DecodeLimits::default())
}

/// [`load_image`] with explicit decode limits.
pub fn load_image_with_limits(
    path: impl AsRef<Path>,
    limits: &DecodeLimits,
) -> Result<(Vec<u8>, u32, u32), PreprocessError> {
    let img = decode::decode_path(path.as_ref(), limits)?;
    Ok((img.rgb, img.width, img.height))
}

/// [`load_image`] for an encoded image held in memory (errors name [`MEMORY_IMAGE`]).
pub fn decode_image(
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<(Vec<u8>, u32, u32), PreprocessError> {
    let img = decode::decode_bytes(bytes, limits)?;
    Ok((img.rgb, img.width, img.height))
}

/// [`load_image`] then [`preprocess_rgb8`]; errors name `path`.
pub fn preprocess_file(
    path: impl AsRef<Path>,
    params: &PreprocessParams,
) -> Result<ProcessedImage, PreprocessError> {
    let path = path.as_ref();
    let (rgb, width, height) = load_image(path)?;
    preprocess_rgb8(&rgb, width, height, params)
        .map_err(|e| e.with_image(path.display().to_string()))
}

/// The `f64` HF multiplies by. Configs store `rescale_factor` as a double (1/255); our field is
/// `f32`, so recover the double for the value every checkpoint uses.
fn rescale_factor_f64(factor: f32) -> f64 {
    const INV_255: f64 = 1.0 / 255.0;
    if factor == INV_255 as f32 {
        INV_255
    } else {
        f64::from(factor)
    }
}

/// `normalised[c][v]` for every channel and byte value, in HF's float order: `rescale` multiplies
/// the uint8 value in float64 and casts to float32, then `normalize` computes `(x - mean) / std`
/// in float32 (`mean`/`std` cast to float32).
fn normalisation_table(params: &PreprocessParams) -> [[f32; 256]; 3] {
    let scale = rescale_factor_f64(params.rescale_factor);
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let x = (v as f64 * scale) as f32;
            *out = (x - params.image_mean[c]) / params.image_std[c];
        }
    }
    lut
}

/// Flattens the resized image (`grid_h * p` rows of `width` RGB pixels) into the processor's
/// `[grid_h * grid_w, 3 * t * p * p]` rows: rows are merge-block-major
/// (`((R * (gw/m) + C') * m + dr) * m + dc`), elements `((c * t + ti) * p + py) * p + px`, the
/// still image repeated for every `ti`.
#[allow(clippy::too_many_arguments)]
fn patchify(
    resized: &[u8],
    width: usize,
    grid_h: usize,
    grid_w: usize,
    p: usize,
    m: usize,
    t: usize,
    lut: &[[f32; 256]; 3],
) -> Vec<f32> {
    let plane = p * p;
    let patch_dim = 3 * t * plane;
    let mut out = vec![0f32; grid_h * grid_w * patch_dim];
    let mut rows = out.chunks_exact_mut(patch_dim);
    for block_row in 0..grid_h / m {
        for block_col in 0..grid_w / m {
            for dr in 0..m {
                for dc in 0..m {
                    let Some(row) = rows.next() else {
                        return out;
                    };
                    let (y0, x0) = ((block_row * m + dr) * p, (block_col * m + dc) * p);
                    for (c, channel) in row.chunks_exact_mut(t * plane).enumerate() {
                        let (first, repeats) = channel.split_at_mut(plane);
                        for (py, line) in first.chunks_exact_mut(p).enumerate() {
                            let start = ((y0 + py) * width + x0) * 3 + c;
                            let pixels = resized[start..].iter().step_by(3);
                            for (o, &v) in line.iter_mut().zip(pixels) {
                                *o = lut[c][usize::from(v)];
                            }
                        }
                        for copy in repeats.chunks_exact_mut(plane) {
                            copy.copy_from_slice(first);
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB_MAX: usize = 12_845_056;
    const CLASS_MAX: usize = 1_003_520;
    const MIN: usize = 3136;

    #[test]
    fn smart_resize_matches_hf() {
        // (height, width, min_pixels, max_pixels, expected (height, width)), expected values from
        // transformers 5.23 `image_processing_pil_qwen2_vl.smart_resize(h, w, 28, min, max)`.
        let cases = [
            (480, 640, MIN, HUB_MAX, (476, 644)),
            (1080, 1920, MIN, HUB_MAX, (1092, 1932)),
            (1080, 1920, MIN, CLASS_MAX, (728, 1316)),
            (224, 224, MIN, HUB_MAX, (224, 224)),
            (70, 70, MIN, HUB_MAX, (56, 56)),
            (42, 42, MIN, HUB_MAX, (56, 56)),
            (14, 14, MIN, HUB_MAX, (56, 56)),
            (1, 200, MIN, HUB_MAX, (28, 812)),
            (3000, 4000, MIN, CLASS_MAX, (840, 1148)),
            (4000, 3000, MIN, HUB_MAX, (4004, 2996)),
            (99, 9999, MIN, HUB_MAX, (112, 9996)),
            (15, 2999, MIN, CLASS_MAX, (28, 2996)),
            (10, 10, MIN, CLASS_MAX, (56, 56)),
            (1, 1, MIN, CLASS_MAX, (56, 56)),
            (13, 2600, MIN, CLASS_MAX, (28, 812)),
            (5000, 25, MIN, CLASS_MAX, (5012, 28)),
            (300, 301, 200_704, CLASS_MAX, (448, 476)),
            (97, 131, MIN, 100_000, (84, 140)),
            (1234, 567, MIN, 62_720, (364, 168)),
            (98, 98, MIN, CLASS_MAX, (112, 112)),
            (126, 70, MIN, CLASS_MAX, (112, 56)),
        ];
        for (h, w, min, max, expected) in cases {
            let got = smart_resize(h, w, 28, min, max).unwrap();
            assert_eq!(got, expected, "smart_resize({h}, {w}, 28, {min}, {max})");
        }
    }

    #[test]
    fn smart_resize_errors() {
        assert!(matches!(
            smart_resize(1, 201, 28, MIN, HUB_MAX),
            Err(PreprocessError::AspectRatio { .. })
        ));
        assert!(matches!(
            smart_resize(0, 10, 28, MIN, HUB_MAX),
            Err(PreprocessError::ZeroSize { .. })
        ));
        assert!(matches!(
            smart_resize(10, 10, 0, MIN, HUB_MAX),
            Err(PreprocessError::ResizeOutOfBounds { .. })
        ));
        // min_pixels 0 lets a 10x10 image round to 0x0, which HF would only fail on later.
        assert!(matches!(
            smart_resize(10, 10, 28, 0, HUB_MAX),
            Err(PreprocessError::ResizeOutOfBounds { .. })
        ));
        assert!(matches!(
            smart_resize(10, 10, 28, usize::MAX, usize::MAX),
            Err(PreprocessError::ResizeOutOfBounds { .. })
        ));
    }

    #[test]
    fn default_mean_std_are_the_float32_casts_of_hf_constants() {
        // numpy casts the Python (float64) OPENAI_CLIP constants to float32.
        let p = PreprocessParams::default();
        let mean = [0.481_454_66_f64, 0.457_827_5, 0.408_210_73];
        let std = [0.268_629_54_f64, 0.261_302_58, 0.275_777_11];
        for c in 0..3 {
            assert_eq!(p.image_mean[c], mean[c] as f32);
            assert_eq!(p.image_std[c], std[c] as f32);
        }
        assert_eq!(
            rescale_factor_f64(p.rescale_factor),
            0.003_921_568_627_450_98
        );
    }

    #[test]
    fn normalisation_matches_numpy_values() {
        // From numpy: `(np.array([np.float64(v) * (1/255)], np.float32) - np.float32(mean[c])) /
        // np.float32(std[c])` for the (c, v) below, printed as float32.
        let lut = normalisation_table(&PreprocessParams::default());
        assert_eq!(lut[0][0], -1.792_262_6);
        assert_eq!(lut[2][255], 2.145_897);
        assert_eq!(lut[1][128], 0.168_897_32);
        // Multiplying by the f32 1/255 instead would change 126 of the 256 rescaled values.
        let value = |scale: f64| (3.0 * scale) as f32;
        assert_ne!(
            value(1.0 / 255.0),
            value(f64::from((1.0f64 / 255.0) as f32))
        );
    }

    /// An image whose bytes encode their own coordinates: R = y, G = x, B = 7.
    fn coordinate_image(width: usize, height: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(width * height * 3);
        for y in 0..height {
            for x in 0..width {
                v.extend_from_slice(&[y as u8, x as u8, 7]);
            }
        }
        v
    }

    #[test]
    fn patch_rows_follow_hf_order() {
        // 84 x 56 (w x h) is already a multiple of 28 and inside the pixel bounds, so the resize
        // is the identity and the values are the raw bytes (mean 0, std 1, scale 1).
        let (w, h) = (84usize, 56usize);
        let params = PreprocessParams {
            image_mean: [0.0; 3],
            image_std: [1.0; 3],
            rescale_factor: 1.0,
            ..PreprocessParams::default()
        };
        let out = preprocess_rgb8(&coordinate_image(w, h), w as u32, h as u32, &params).unwrap();
        assert_eq!(out.grid_thw, [1, 4, 6]);
        assert_eq!((out.resized_height, out.resized_width), (56, 84));
        assert_eq!((out.n_patches, out.patch_dim), (24, 1176));
        assert_eq!(out.pixel_values.len(), 24 * 1176);
        assert_eq!(out.image_tokens(2), 6);
        let (gw, mut checked) = (6, 0);
        for row in 0..24 {
            // row = ((R * (gw/2) + C') * 2 + dr) * 2 + dc
            let (dc, dr) = (row % 2, row / 2 % 2);
            let (cc, rr) = (row / 4 % (gw / 2), row / 4 / (gw / 2));
            for e in 0..1176 {
                // e = ((c * 2 + t) * 14 + py) * 14 + px
                let (px, py, c) = (e % 14, e / 14 % 14, e / 392);
                let y = (rr * 2 + dr) * 14 + py;
                let x = (cc * 2 + dc) * 14 + px;
                let expected = [y, x, 7][c] as f32;
                assert_eq!(
                    out.pixel_values[row * 1176 + e],
                    expected,
                    "row {row} elem {e}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 24 * 1176);
    }

    #[test]
    fn preprocess_rgb8_rejects_bad_input() {
        let p = PreprocessParams::default();
        assert!(matches!(
            preprocess_rgb8(&[], 0, 5, &p),
            Err(PreprocessError::ZeroSize { .. })
        ));
        let wide = vec![0u8; 300 * 3];
        let err = preprocess_rgb8(&wide, 300, 1, &p).unwrap_err();
        assert!(matches!(err, PreprocessError::AspectRatio { .. }), "{err}");
        assert!(err.to_string().starts_with("<memory>: "), "{err}");
        assert!(matches!(
            preprocess_rgb8(&[0; 10], 2, 2, &p),
            Err(PreprocessError::BufferSize { .. })
        ));
        let absurd = PreprocessParams {
            temporal_patch_size: usize::MAX / 2,
            ..p.clone()
        };
        assert!(matches!(
            preprocess_rgb8(&[0; 56 * 56 * 3], 56, 56, &absurd),
            Err(PreprocessError::InvalidParams { .. })
        ));
        let bad = PreprocessParams {
            patch_size: 0,
            ..p.clone()
        };
        assert!(matches!(
            preprocess_rgb8(&[0; 12], 2, 2, &bad),
            Err(PreprocessError::InvalidParams { .. })
        ));
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// A PNG signature and IHDR claiming `width x height` 8-bit RGB, then an empty IDAT (decoders
    /// read up to the first IDAT before reporting the header).
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png_chunk(&mut png, b"IHDR", &ihdr);
        png_chunk(&mut png, b"IDAT", &[]);
        png
    }

    fn encode_png(rgb: &[u8], width: u32, height: u32) -> Vec<u8> {
        use image::ImageEncoder;
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf)
            .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        buf
    }

    #[test]
    fn huge_header_is_refused_before_allocation() {
        let err =
            decode_image(&png_header(100_000, 100_000), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, PreprocessError::TooLarge { .. }), "{err}");
        // Within the per-side limit but over the pixel budget.
        let err = decode_image(&png_header(16_000, 16_000), &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, PreprocessError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        let png = encode_png(&coordinate_image(30, 20), 30, 20);
        let (rgb, w, h) = decode_image(&png, &DecodeLimits::default()).unwrap();
        assert_eq!((w, h), (30, 20));
        assert_eq!(rgb, coordinate_image(30, 20));
        for cut in [png.len() / 2, png.len() - 13, 40, 8, 3] {
            let err = decode_image(&png[..cut], &DecodeLimits::default()).unwrap_err();
            assert!(err.to_string().starts_with("<memory>: "), "{err}");
        }
        let err = decode_image(b"definitely not an image", &DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, PreprocessError::Unsupported { .. }), "{err}");
        assert!(decode_image(&png_header(0, 5), &DecodeLimits::default()).is_err());
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = std::env::temp_dir().join(format!("anatomy-preprocess-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.png");
        let err = preprocess_file(&missing, &PreprocessParams::default()).unwrap_err();
        assert!(matches!(err, PreprocessError::Io { .. }));
        assert_eq!(err.image(), missing.display().to_string());

        let wide = dir.join("wide.png");
        std::fs::write(&wide, encode_png(&vec![9u8; 300 * 3], 300, 1)).unwrap();
        let err = preprocess_file(&wide, &PreprocessParams::default()).unwrap_err();
        assert!(matches!(err, PreprocessError::AspectRatio { .. }), "{err}");
        assert_eq!(err.image(), wide.display().to_string());

        let ok = dir.join("ok.png");
        std::fs::write(&ok, encode_png(&coordinate_image(30, 20), 30, 20)).unwrap();
        let out = preprocess_file(&ok, &PreprocessParams::default()).unwrap();
        // 20x30 -> round to 28x28, below min_pixels -> scaled up to 56x84 (h x w).
        assert_eq!(out.grid_thw, [1, 4, 6]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
