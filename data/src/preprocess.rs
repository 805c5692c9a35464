//! CLIP's image preprocessing, as OpenAI's `clip.load` transform and Hugging
//! Face's `CLIPImageProcessor` do it: decode to 8-bit RGB, resize the shorter
//! side with Pillow's bicubic filter (antialiased), center crop, scale to
//! [0, 1], normalise with CLIP's mean and std.

use std::path::Path;

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, RgbImage};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

// The digits as OpenAI publishes them (`clip/clip.py`), beyond f32 precision.
#[allow(clippy::excessive_precision)]
/// CLIP's normalisation mean (OpenAI `clip/clip.py`).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
/// CLIP's normalisation std (OpenAI `clip/clip.py`).
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// How the center crop's offset `(side - crop) / 2` is rounded when odd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CropRounding {
    /// Python's `round` (half to even): torchvision's `CenterCrop`, used by
    /// OpenAI's `clip.load`, open_clip and Dassl/CoOp/MMRL.
    #[default]
    HalfEven,
    /// Floor: Hugging Face transformers' `CLIPImageProcessor`.
    Floor,
}

impl CropRounding {
    /// The crop offset for an image side of `side` pixels.
    pub fn offset(self, side: usize, crop: usize) -> usize {
        let excess = side.saturating_sub(crop);
        match self {
            CropRounding::Floor => excess / 2,
            CropRounding::HalfEven => (excess as f64 / 2.0).round_ties_even() as usize,
        }
    }
}

/// What the model expects of its input images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// The shorter side is resized to this. Default 224.
    pub shortest_edge: usize,
    /// Side of the square center crop. Default 224.
    pub crop_size: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel std divided by after subtracting the mean.
    pub std: [f32; 3],
    /// Rounding of the center-crop offset. Default: half to even (OpenAI).
    #[serde(default)]
    pub crop_rounding: CropRounding,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self::for_image_size(224)
    }
}

impl PreprocessConfig {
    /// CLIP's preprocessing for a model with input resolution `size`, as
    /// OpenAI's `clip.load` (and Dassl) does it.
    pub fn for_image_size(size: usize) -> Self {
        Self {
            shortest_edge: size,
            crop_size: size,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            crop_rounding: CropRounding::HalfEven,
        }
    }

    /// Reads a Hugging Face `preprocessor_config.json` (`size.shortest_edge`,
    /// `crop_size`, `image_mean`, `image_std`); missing fields keep CLIP's values
    /// for `default_size`. The crop offset is floored, as transformers does.
    pub fn from_hf_json(path: &Path, default_size: usize) -> Result<Self> {
        let bad = |msg: String| Error::Config {
            path: path.into(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let mut config = Self::for_image_size(default_size);
        config.crop_rounding = CropRounding::Floor;
        let side = |v: &serde_json::Value, keys: &[&str]| -> Option<usize> {
            if let Some(n) = v.as_u64() {
                return Some(n as usize);
            }
            keys.iter()
                .find_map(|k| v.get(k)?.as_u64())
                .map(|n| n as usize)
        };
        if let Some(size) = v.get("size") {
            config.shortest_edge = side(size, &["shortest_edge", "height"])
                .ok_or_else(|| bad(format!("unsupported `size` {size}")))?;
        }
        if let Some(crop) = v.get("crop_size") {
            config.crop_size = side(crop, &["height"])
                .ok_or_else(|| bad(format!("unsupported `crop_size` {crop}")))?;
        }
        for (key, dst) in [
            ("image_mean", &mut config.mean),
            ("image_std", &mut config.std),
        ] {
            if let Some(arr) = v.get(key) {
                let vals: Vec<f32> = arr
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                *dst = vals
                    .try_into()
                    .map_err(|_| bad(format!("`{key}` must be 3 numbers, found {arr}")))?;
            }
        }
        Ok(config)
    }

    /// Floats per preprocessed image (`3 × crop × crop`).
    pub fn numel(&self) -> usize {
        3 * self.crop_size * self.crop_size
    }
}

/// Decodes an image file to 8-bit RGB: grayscale is replicated, alpha is
/// dropped (as Pillow's `convert("RGB")`), 16-bit channels keep their high
/// byte (as Pillow reads 16-bit PNGs).
pub fn load_rgb8(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    decode_rgb8(&bytes).map_err(|msg| Error::Image {
        path: path.into(),
        msg,
    })
}

/// [`load_rgb8`] on bytes in memory.
pub fn decode_rgb8(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    match reader.format() {
        None => {
            return Err("unknown image format (expected JPEG, PNG, BMP, WebP, TIFF or GIF)".into())
        }
        // The JPEG decoder fills a truncated file with gray; Pillow refuses
        // it ("image file is truncated"), and so do we.
        Some(image::ImageFormat::Jpeg) if !jpeg_has_end_marker(bytes) => {
            return Err("truncated JPEG (no end-of-image marker); re-copy the file".into())
        }
        Some(image::ImageFormat::Jpeg) => {
            if let Some(img) = decode_jpeg_like_pillow(bytes)? {
                return Ok(img);
            }
        }
        Some(_) => {}
    }
    let img = reader.decode().map_err(|e| e.to_string())?;
    Ok(to_rgb8(img))
}

/// Decodes a JPEG with libjpeg-turbo's decoder (islow IDCT, fancy
/// upsampling), as Pillow does, so pixels are bit-identical to the Python
/// pipelines'. `None` for CMYK/YCCK files, which go to the `image` crate.
fn decode_jpeg_like_pillow(bytes: &[u8]) -> std::result::Result<Option<RgbImage>, String> {
    // libjpeg errors unwind (without the panic hook) out of mozjpeg.
    let decoded = std::panic::catch_unwind(|| -> std::io::Result<Option<RgbImage>> {
        let decompress = mozjpeg::Decompress::new_mem(bytes)?;
        if matches!(
            decompress.color_space(),
            mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
        ) {
            return Ok(None);
        }
        let mut started = decompress.rgb()?;
        let (w, h) = (started.width() as u32, started.height() as u32);
        let pixels: Vec<[u8; 3]> = started.read_scanlines()?;
        started.finish()?;
        let raw: Vec<u8> = pixels.into_iter().flatten().collect();
        Ok(RgbImage::from_raw(w, h, raw))
    });
    match decoded {
        Ok(Ok(img)) => Ok(img),
        Ok(Err(e)) => Err(format!("invalid JPEG: {e}")),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "libjpeg error".into());
            Err(format!("invalid JPEG: {msg}"))
        }
    }
}

/// Whether a JPEG ends with its EOI marker (trailing padding allowed).
fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

fn to_rgb8(img: DynamicImage) -> RgbImage {
    let high = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageLuma16(i) => {
            let (w, h) = i.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let v = high(i.get_pixel(x, y)[0]);
                image::Rgb([v, v, v])
            })
        }
        DynamicImage::ImageLumaA16(i) => {
            let (w, h) = i.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let v = high(i.get_pixel(x, y)[0]);
                image::Rgb([v, v, v])
            })
        }
        DynamicImage::ImageRgb16(i) => {
            let (w, h) = i.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let p = i.get_pixel(x, y);
                image::Rgb([high(p[0]), high(p[1]), high(p[2])])
            })
        }
        DynamicImage::ImageRgba16(i) => {
            let (w, h) = i.dimensions();
            RgbImage::from_fn(w, h, |x, y| {
                let p = i.get_pixel(x, y);
                image::Rgb([high(p[0]), high(p[1]), high(p[2])])
            })
        }
        // 8-bit gray, gray+alpha, RGBA: replicate / drop alpha, no compositing.
        other => other.to_rgb8(),
    }
}

/// Output size of the shorter-side resize, `(width, height)`, computed as
/// transformers' `get_resize_output_image_size` and torchvision's `Resize` do.
pub fn resized_size(width: usize, height: usize, shortest_edge: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    let new_long = (shortest_edge as f64 * long as f64 / short as f64) as usize;
    if width <= height {
        (shortest_edge, new_long)
    } else {
        (new_long, shortest_edge)
    }
}

/// Shorter side to `shortest_edge` (Pillow bicubic with antialiasing), then
/// the center `crop_size` square (offsets rounded as `config.crop_rounding`).
pub fn resize_and_crop(img: &RgbImage, config: &PreprocessConfig) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (rw, rh) = resized_size(w, h, config.shortest_edge);
    let resized = if (rw, rh) == (w, h) {
        img.clone()
    } else {
        resize_bicubic(img, rw, rh)
    };
    let crop = config.crop_size;
    let top = config.crop_rounding.offset(rh, crop);
    let left = config.crop_rounding.offset(rw, crop);
    // A crop larger than the image pads with black, as transformers does.
    RgbImage::from_fn(crop as u32, crop as u32, |x, y| {
        let (sx, sy) = (left + x as usize, top + y as usize);
        let (ox, oy) = ((crop.saturating_sub(rw)) / 2, (crop.saturating_sub(rh)) / 2);
        if rw >= crop && rh >= crop {
            *resized.get_pixel(sx as u32, sy as u32)
        } else if (x as usize) >= ox
            && (y as usize) >= oy
            && (x as usize - ox) < rw
            && (y as usize - oy) < rh
        {
            *resized.get_pixel((x as usize - ox) as u32, (y as usize - oy) as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

/// Pillow-compatible bicubic (Catmull-Rom, a = -0.5) convolution resize.
///
/// Pillow runs the horizontal pass first, then the vertical one, and rounds
/// each pass's exact convolution to 8 bits (22-bit fixed point, half up).
/// fast_image_resize's 8-bit path runs the passes the other way round with
/// coarser fixed point, which moves values by a level or two near edges. So
/// we run two one-dimensional resizes in Pillow's order on f32 pixels and
/// round each result to 8 bits as Pillow does. A side that keeps its size is
/// not resampled, as in Pillow. Both images must be non-empty.
pub fn resize_bicubic(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let (w0, h0) = (img.width(), img.height());
    let (w1, h1) = (width as u32, height as u32);
    let mut buf = img.as_raw().clone();
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom));
    let mut pass = |buf: Vec<u8>, from: (u32, u32), to: (u32, u32)| -> Vec<u8> {
        let floats: Vec<u8> = buf.iter().flat_map(|&v| (v as f32).to_ne_bytes()).collect();
        let src = Image::from_vec_u8(from.0, from.1, floats, PixelType::F32x3)
            .expect("buffer length matches the image size");
        let mut dst = Image::new(to.0, to.1, PixelType::F32x3);
        resizer
            .resize(&src, &mut dst, &options)
            .expect("source and destination are both F32x3");
        dst.buffer()
            .chunks_exact(4)
            .map(|b| {
                let v = f32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
                (v + 0.5).floor().clamp(0.0, 255.0) as u8
            })
            .collect()
    };
    if w1 != w0 {
        buf = pass(buf, (w0, h0), (w1, h0));
    }
    if h1 != h0 {
        buf = pass(buf, (w1, h0), (w1, h1));
    }
    RgbImage::from_raw(w1, h1, buf).expect("buffer length matches the image size")
}

/// Scales to [0, 1] and normalises, channel-major: `[3, crop, crop]`.
pub fn normalize_chw(img: &RgbImage, config: &PreprocessConfig) -> Vec<f32> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut out = vec![0.0f32; 3 * w * h];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let v = p[c] as f32 / 255.0;
            out[c * w * h + i] = (v - config.mean[c]) / config.std[c];
        }
    }
    out
}

/// Decode, resize, crop and normalise one image file: `[3, crop, crop]`.
pub fn preprocess_file(path: &Path, config: &PreprocessConfig) -> Result<Vec<f32>> {
    let img = load_rgb8(path)?;
    Ok(normalize_chw(&resize_and_crop(&img, config), config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_keeps_aspect_and_truncates_like_transformers() {
        assert_eq!(resized_size(640, 480, 224), (298, 224));
        assert_eq!(resized_size(50, 80, 224), (224, 358));
        assert_eq!(resized_size(224, 224, 224), (224, 224));
    }

    #[test]
    fn crop_offsets_round_like_torchvision_or_transformers() {
        // (227 - 224) / 2 = 1.5: torchvision rounds to 2, transformers floors to 1.
        assert_eq!(CropRounding::HalfEven.offset(227, 224), 2);
        assert_eq!(CropRounding::Floor.offset(227, 224), 1);
        // 0.5 rounds to the even 0 in Python.
        assert_eq!(CropRounding::HalfEven.offset(225, 224), 0);
        assert_eq!(CropRounding::HalfEven.offset(229, 224), 2);
    }

    #[test]
    fn normalize_is_channel_major() {
        let img = RgbImage::from_fn(2, 1, |x, _| image::Rgb([255 * x as u8, 0, 0]));
        let cfg = PreprocessConfig::for_image_size(2);
        let v = normalize_chw(&img, &cfg);
        assert_eq!(v.len(), 6);
        assert!((v[1] - (1.0 - CLIP_MEAN[0]) / CLIP_STD[0]).abs() < 1e-6);
        assert!((v[2] - (0.0 - CLIP_MEAN[1]) / CLIP_STD[1]).abs() < 1e-6);
    }
}
