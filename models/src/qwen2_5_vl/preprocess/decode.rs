//! Image decoding (PNG, JPEG) under explicit size limits, and the conversion to RGB8 that Pillow
//! plus transformers' `convert_to_rgb` perform (alpha composited onto white, Pillow's bit-depth
//! reductions).

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageError, ImageReader};

use super::{PreprocessError, MEMORY_IMAGE};

/// Refuses images before their pixels are allocated. The defaults admit any photo a model would
/// reasonably see (the hub `max_pixels` is 12.8 Mpx) while keeping a hostile header from asking
/// for gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`.
    pub max_pixels: u64,
    /// Largest accepted width and height.
    pub max_dimension: u32,
    /// Cap on the decoder's allocations in bytes (the decoded buffer counts towards it; 16-bit
    /// RGBA needs 8 bytes per pixel).
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 64 * 1024 * 1024,
            max_dimension: 16_384,
            max_alloc: 1 << 30,
        }
    }
}

/// An RGB8 image, interleaved, row-major: `rgb.len() == width * height * 3`.
pub(super) struct Rgb8 {
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Decodes the file at `path` (format from its content) under `limits`.
pub(super) fn decode_path(path: &Path, limits: &DecodeLimits) -> Result<Rgb8, PreprocessError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|source| PreprocessError::Io {
        image: name.clone(),
        source,
    })?;
    decode_reader(BufReader::new(file), &name, limits)
}

/// Decodes an encoded image held in memory; errors name it `<memory>`.
pub(super) fn decode_bytes(bytes: &[u8], limits: &DecodeLimits) -> Result<Rgb8, PreprocessError> {
    decode_reader(Cursor::new(bytes), MEMORY_IMAGE, limits)
}

fn decode_reader<R: BufRead + Seek>(
    reader: R,
    name: &str,
    limits: &DecodeLimits,
) -> Result<Rgb8, PreprocessError> {
    let mut reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|source| PreprocessError::Io {
            image: name.to_owned(),
            source,
        })?;
    if reader.format().is_none() {
        return Err(PreprocessError::Unsupported {
            image: name.to_owned(),
            reason: "unrecognised format (PNG and JPEG are supported)".into(),
        });
    }
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_dimension);
    image_limits.max_image_height = Some(limits.max_dimension);
    image_limits.max_alloc = Some(limits.max_alloc);
    reader.limits(image_limits);

    // Building the decoder reads only the header; the decoders check the dimension limits here,
    // before any pixel buffer exists.
    let decoder = reader
        .into_decoder()
        .map_err(|e| image_error(e, name, limits))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize {
            image: name.to_owned(),
            width: width.into(),
            height: height.into(),
        });
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels || decoder.total_bytes() > limits.max_alloc {
        return Err(PreprocessError::TooLarge {
            image: name.to_owned(),
            reason: format!(
                "{width}x{height} ({pixels} pixels) exceeds the decode limits \
                 ({} pixels, {} bytes)",
                limits.max_pixels, limits.max_alloc
            ),
        });
    }
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| image_error(e, name, limits))?;
    let rgb = to_pil_rgb8(decoded, name)?;
    Ok(Rgb8 { rgb, width, height })
}

fn image_error(e: ImageError, name: &str, limits: &DecodeLimits) -> PreprocessError {
    match e {
        ImageError::Limits(err) => PreprocessError::TooLarge {
            image: name.to_owned(),
            reason: format!(
                "{err} (limits: {} pixels per side, {} pixels, {} bytes)",
                limits.max_dimension, limits.max_pixels, limits.max_alloc
            ),
        },
        ImageError::Unsupported(err) => PreprocessError::Unsupported {
            image: name.to_owned(),
            reason: err.to_string(),
        },
        source => PreprocessError::Decode {
            image: name.to_owned(),
            source,
        },
    }
}

/// Pillow's `alpha_composite(white, RGBA)` for one colour channel: its integer formula (7 extra
/// bits of precision, division by 255 via shifts), which differs from a float blend by one grey
/// level on some inputs. Verified against Pillow for all 65536 `(value, alpha)` pairs.
fn over_white(value: u8, alpha: u8) -> u8 {
    const PRECISION: u32 = 7;
    if alpha == 0 {
        return 255;
    }
    let (c, a) = (u32::from(value), u32::from(alpha));
    let blend = 255 * (255 - a);
    let out_a255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << PRECISION) / out_a255;
    let coef2 = 255 * (1 << PRECISION) - coef1;
    let tmp = c * coef1 + 255 * coef2 + (0x80 << PRECISION);
    ((((tmp >> 8) + tmp) >> 8) >> PRECISION) as u8
}

/// The RGB8 bytes HF obtains from `PIL.Image.open(path)` and the processor's `convert_to_rgb`
/// (transformers 5: images with alpha are composited onto white, everything else goes through
/// `Image.convert("RGB")`).
fn to_pil_rgb8(image: DynamicImage, name: &str) -> Result<Vec<u8>, PreprocessError> {
    Ok(match image {
        DynamicImage::ImageRgb8(img) => img.into_raw(),
        DynamicImage::ImageLuma8(img) => img.as_raw().iter().flat_map(|&l| [l, l, l]).collect(),
        DynamicImage::ImageRgba8(img) => img
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]].map(|c| over_white(c, p[3])))
            .collect(),
        DynamicImage::ImageLumaA8(img) => img
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [over_white(p[0], p[1]); 3])
            .collect(),
        // Pillow opens 16-bit colour PNGs as 8-bit modes keeping the high byte.
        DynamicImage::ImageRgb16(img) => img.as_raw().iter().map(|&v| high_byte(v)).collect(),
        // Pillow 13 keeps the *low* byte of 16-bit PNGs with alpha (a regression; older Pillow
        // kept the high byte). We follow the long-standing high-byte behaviour.
        DynamicImage::ImageRgba16(img) => img
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]].map(|c| over_white(high_byte(c), high_byte(p[3]))))
            .collect(),
        DynamicImage::ImageLumaA16(img) => img
            .as_raw()
            .chunks_exact(2)
            .flat_map(|p| [over_white(high_byte(p[0]), high_byte(p[1])); 3])
            .collect(),
        // Pillow opens 16-bit grey PNGs in mode `I;16`, and its conversion to RGB *clips* at 255
        // instead of rescaling, so most of such an image turns white in HF. Matching HF means
        // reproducing that.
        DynamicImage::ImageLuma16(img) => img
            .as_raw()
            .iter()
            .flat_map(|&v| [v.min(255) as u8; 3])
            .collect(),
        other => {
            return Err(PreprocessError::Unsupported {
                image: name.to_owned(),
                reason: format!("pixel format {:?}", other.color()),
            })
        }
    })
}

fn high_byte(v: u16) -> u8 {
    (v >> 8) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_white_matches_pillow_samples() {
        // From Pillow 13: `Image.alpha_composite(Image.new("RGBA", (1, 1), (255,) * 4),
        // Image.new("RGBA", (1, 1), (c, c, c, a))).convert("RGB").getpixel((0, 0))[0]`.
        for (c, a, expected) in [
            (0, 0, 255),
            (0, 255, 0),
            (200, 255, 200),
            (0, 128, 127),
            (0, 127, 128),
            (100, 1, 254),
            (10, 254, 11),
            (77, 77, 201),
        ] {
            assert_eq!(over_white(c, a), expected, "c={c} a={a}");
        }
    }
}
