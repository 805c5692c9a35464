//! Dassl's training transform for CLIP (`INPUT.TRANSFORMS = ["random_resized_crop",
//! "random_flip", "normalize"]`): torchvision's `RandomResizedCrop` with Pillow's
//! bicubic filter, `RandomHorizontalFlip(0.5)`, `ToTensor`, CLIP's mean/std.
//!
//! The crop parameters are drawn as torchvision's `RandomResizedCrop.get_params`
//! draws them (data protocols spec, §6), from a ChaCha8 stream that
//! depends only on (seed, epoch, dataset index): see [`sample_rng`]. PyTorch's
//! own random numbers cannot be reproduced outside PyTorch, so the draws follow
//! the same distribution, not the same values.

use image::RgbImage;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::preprocess::{normalize_chw, resize_bicubic, PreprocessConfig, CLIP_MEAN, CLIP_STD};

/// Domain tag of the per-image augmentation streams (key bytes 0..8).
const AUG_DOMAIN: &[u8; 8] = b"mmrl-aug";
/// Domain tag of the per-epoch shuffling stream (key bytes 0..8).
const ORDER_DOMAIN: &[u8; 8] = b"mmrl-prm";

fn chacha_key(domain: &[u8; 8], seed: u64, epoch: u64) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(domain);
    key[8..16].copy_from_slice(&seed.to_le_bytes());
    key[16..24].copy_from_slice(&epoch.to_le_bytes());
    key
}

/// The random stream of one image's augmentation in one epoch.
///
/// Construction (stable; changing it changes every training run):
/// a ChaCha8 generator (`rand_chacha` 0.9, `ChaCha8Rng::from_seed`) keyed by the
/// 32 bytes `b"mmrl-aug" ‖ seed (u64 LE) ‖ epoch (u64 LE) ‖ 0u64`, with its
/// 64-bit stream (nonce) set to `index`, read from word 0. So each image's
/// draws depend only on (seed, epoch, dataset index), not on the batch
/// composition, the worker that decodes it or the images before it.
pub fn sample_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::from_seed(chacha_key(AUG_DOMAIN, seed, epoch));
    rng.set_stream(index);
    rng
}

/// The random stream that shuffles the training set in one epoch.
///
/// Construction (stable): ChaCha8 keyed by `b"mmrl-prm" ‖ seed (u64 LE) ‖
/// epoch (u64 LE) ‖ 0u64`, stream 0. The domain tag keeps it apart from every
/// [`sample_rng`] stream.
pub fn order_rng(seed: u64, epoch: u64) -> ChaCha8Rng {
    ChaCha8Rng::from_seed(chacha_key(ORDER_DOMAIN, seed, epoch))
}

/// Uniform in `[0, 1)`: the top 53 bits of one `u64`.
pub fn uniform01(rng: &mut impl RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform integer in `[0, hi]` (inclusive, as Python's `randint`), unbiased:
/// draws below `2^64 mod (hi + 1)` are rejected.
pub fn randint_inclusive(rng: &mut impl RngCore, hi: u64) -> u64 {
    let span = hi.wrapping_add(1);
    if span == 0 {
        return rng.next_u64(); // hi = u64::MAX: every value is fair
    }
    let threshold = span.wrapping_neg() % span;
    loop {
        let v = rng.next_u64();
        if v >= threshold {
            return v % span;
        }
    }
}

/// Fisher–Yates shuffle (from the last position down, `j = randint[0, i]`).
pub fn shuffle<T>(items: &mut [T], rng: &mut impl RngCore) {
    for i in (1..items.len()).rev() {
        let j = randint_inclusive(rng, i as u64) as usize;
        items.swap(i, j);
    }
}

/// One draw of the training transform: the crop box (in source pixels) and
/// whether the resized crop is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropParams {
    /// First row of the box.
    pub top: usize,
    /// First column of the box.
    pub left: usize,
    /// Rows in the box (≥ 1).
    pub height: usize,
    /// Columns in the box (≥ 1).
    pub width: usize,
    /// Mirror left–right after resizing.
    pub flip: bool,
}

/// `RandomResizedCrop(size, scale, ratio, bicubic)` → `RandomHorizontalFlip(flip_p)`
/// → `ToTensor` → `Normalize(mean, std)`, as Dassl builds it for CLIP.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainTransform {
    /// Output side (square). CLIP ViT-B/16: 224.
    pub size: usize,
    /// Range of the crop's area as a fraction of the image's. MMRL (0.5, 1),
    /// CoOp/Dassl default (0.08, 1).
    pub scale: (f64, f64),
    /// Range of the crop's aspect ratio (width / height), drawn log-uniformly.
    /// Default (3/4, 4/3).
    pub ratio: (f64, f64),
    /// Probability of the horizontal flip. Default 0.5.
    pub flip_p: f64,
    /// Per-channel mean subtracted after scaling to [0, 1]. Default CLIP's.
    pub mean: [f32; 3],
    /// Per-channel std divided by. Default CLIP's.
    pub std: [f32; 3],
}

impl TrainTransform {
    /// MMRL's configs: `scale = (0.5, 1.0)` (`INPUT.RRCROP_SCALE` in every MMRL yaml).
    pub fn mmrl(size: usize) -> Self {
        Self {
            size,
            scale: (0.5, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            flip_p: 0.5,
            mean: CLIP_MEAN,
            std: CLIP_STD,
        }
    }

    /// CoOp/CoCoOp configs: Dassl's default `scale = (0.08, 1.0)`.
    pub fn coop(size: usize) -> Self {
        Self {
            scale: (0.08, 1.0),
            ..Self::mmrl(size)
        }
    }

    /// Output side and mean/std taken from a model's preprocessing config
    /// (`crop_size`, `mean`, `std`); the crop scale is kept.
    pub fn with_preprocess(self, config: &PreprocessConfig) -> Self {
        Self {
            size: config.crop_size,
            mean: config.mean,
            std: config.std,
            ..self
        }
    }

    /// Floats per output image (`3 × size × size`).
    pub fn numel(&self) -> usize {
        3 * self.size * self.size
    }

    /// Draws the crop box for a `width × height` image, then the flip, as
    /// torchvision does: up to 10 tries of `t = area·U(scale)`,
    /// `r = exp(U(ln ratio.0, ln ratio.1))`, `w = round(√(t·r))`,
    /// `h = round(√(t/r))` (half to even); the first box that fits gets
    /// `top = randint[0, H−h]`, `left = randint[0, W−w]`. Otherwise the
    /// largest centered box with the aspect ratio clamped to `ratio`
    /// (offsets `(H−h)//2`, `(W−w)//2`). Finally `flip = U < flip_p`.
    ///
    /// An empty image (`width` or `height` 0) gives an empty box.
    pub fn draw(&self, width: usize, height: usize, rng: &mut impl RngCore) -> CropParams {
        let (top, left, h, w) = self.draw_box(width, height, rng);
        let flip = uniform01(rng) < self.flip_p;
        CropParams {
            top,
            left,
            height: h,
            width: w,
            flip,
        }
    }

    fn draw_box(
        &self,
        width: usize,
        height: usize,
        rng: &mut impl RngCore,
    ) -> (usize, usize, usize, usize) {
        let (wf, hf) = (width as f64, height as f64);
        let area = wf * hf;
        let (log_r0, log_r1) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target = area * (self.scale.0 + (self.scale.1 - self.scale.0) * uniform01(rng));
            let aspect = (log_r0 + (log_r1 - log_r0) * uniform01(rng)).exp();
            let w = (target * aspect).sqrt().round_ties_even();
            let h = (target / aspect).sqrt().round_ties_even();
            if 0.0 < w && w <= wf && 0.0 < h && h <= hf {
                let (w, h) = (w as usize, h as usize);
                let top = randint_inclusive(rng, (height - h) as u64) as usize;
                let left = randint_inclusive(rng, (width - w) as u64) as usize;
                return (top, left, h, w);
            }
        }
        // Fallback: the whole image, its aspect ratio clamped into `ratio`.
        let in_ratio = wf / hf;
        let (lo, hi) = (
            self.ratio.0.min(self.ratio.1),
            self.ratio.0.max(self.ratio.1),
        );
        let (w, h) = if in_ratio < lo {
            (width, ((wf / lo).round_ties_even() as usize).min(height))
        } else if in_ratio > hi {
            (((hf * hi).round_ties_even() as usize).min(width), height)
        } else {
            (width, height)
        };
        ((height - h) / 2, (width - w) / 2, h, w)
    }

    /// Crops `params`' box, resizes it to `size × size` with Pillow's bicubic
    /// filter and mirrors it if `params.flip`: the augmented image in 8 bits,
    /// as PIL holds it before `ToTensor`.
    pub fn augment_u8(&self, img: &RgbImage, params: &CropParams) -> RgbImage {
        let mut out = resized_crop(img, params, self.size);
        if params.flip {
            image::imageops::flip_horizontal_in_place(&mut out);
        }
        out
    }

    /// The transform for given parameters: `[3, size, size]`, normalised.
    pub fn apply_params(&self, img: &RgbImage, params: &CropParams) -> Vec<f32> {
        let out = self.augment_u8(img, params);
        let config = PreprocessConfig {
            mean: self.mean,
            std: self.std,
            ..PreprocessConfig::for_image_size(self.size)
        };
        normalize_chw(&out, &config)
    }

    /// Draws the parameters from `rng` and applies them: `[3, size, size]`,
    /// channel-major, normalised.
    pub fn apply(&self, img: &RgbImage, rng: &mut impl RngCore) -> Vec<f32> {
        let params = self.draw(img.width() as usize, img.height() as usize, rng);
        self.apply_params(img, &params)
    }
}

/// `img.crop((left, top, left + width, top + height)).resize((size, size), BICUBIC)`
/// in Pillow's terms (torchvision's `F.resized_crop` on a PIL image). The box
/// must lie inside the image.
pub fn resized_crop(img: &RgbImage, params: &CropParams, size: usize) -> RgbImage {
    let cropped = image::imageops::crop_imm(
        img,
        params.left as u32,
        params.top as u32,
        params.width as u32,
        params.height as u32,
    )
    .to_image();
    resize_bicubic(&cropped, size, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Image shapes (width, height), including ones far outside 3/4..4/3
    /// that make every try fail and take the fallback.
    const SHAPES: &[(usize, usize)] = &[
        (500, 375),
        (375, 500),
        (224, 224),
        (64, 48),
        (1, 1),
        (2, 1),
        (3, 200),
        (1000, 10),
        (10, 1000),
        (4000, 3),
        (17, 23),
    ];

    fn is_fallback(t: &TrainTransform, p: &CropParams, w: usize, h: usize) -> bool {
        let in_ratio = w as f64 / h as f64;
        let (fw, fh) = if in_ratio < t.ratio.0 {
            (w, (w as f64 / t.ratio.0).round_ties_even() as usize)
        } else if in_ratio > t.ratio.1 {
            ((h as f64 * t.ratio.1).round_ties_even() as usize, h)
        } else {
            (w, h)
        };
        (p.width, p.height, p.top, p.left) == (fw, fh, (h - fh) / 2, (w - fw) / 2)
    }

    #[test]
    fn crops_lie_inside_the_image_and_respect_scale_and_ratio() {
        for t in [TrainTransform::mmrl(224), TrainTransform::coop(224)] {
            for &(w, h) in SHAPES {
                let mut fallbacks = 0;
                for index in 0..300 {
                    let mut rng = sample_rng(7, 3, index);
                    let p = t.draw(w, h, &mut rng);
                    assert!(p.width >= 1 && p.height >= 1, "{w}x{h}: empty {p:?}");
                    assert!(p.left + p.width <= w, "{w}x{h}: {p:?}");
                    assert!(p.top + p.height <= h, "{w}x{h}: {p:?}");
                    if is_fallback(&t, &p, w, h) {
                        fallbacks += 1;
                        continue;
                    }
                    // Rounding w and h moves each side by at most half a pixel.
                    let (pw, ph) = (p.width as f64, p.height as f64);
                    let area = (w * h) as f64;
                    let max_area = (pw + 0.5) * (ph + 0.5) / area;
                    let min_area = (pw - 0.5) * (ph - 0.5) / area;
                    assert!(
                        max_area >= t.scale.0 - 1e-9 && min_area <= t.scale.1 + 1e-9,
                        "{w}x{h}: area fraction {min_area}..{max_area} outside {:?}",
                        t.scale
                    );
                    let (r_min, r_max) = ((pw - 0.5) / (ph + 0.5), (pw + 0.5) / (ph - 0.5));
                    assert!(
                        r_max >= t.ratio.0 - 1e-9 && r_min <= t.ratio.1 + 1e-9,
                        "{w}x{h}: aspect {r_min}..{r_max} outside {:?}",
                        t.ratio
                    );
                }
                let extreme = (w as f64 / h as f64) > 50.0 || (h as f64 / w as f64) > 50.0;
                if extreme {
                    assert_eq!(fallbacks, 300, "{w}x{h} must always fall back");
                }
            }
        }
    }

    #[test]
    fn fallback_clamps_the_aspect_ratio_and_centers() {
        let t = TrainTransform::mmrl(224);
        // 1000×10: no box with area ≥ 5000 and ratio ≤ 4/3 fits in 10 rows.
        let p = t.draw(1000, 10, &mut sample_rng(1, 0, 0));
        assert_eq!(
            (p.top, p.left, p.height, p.width),
            (0, (1000 - 13) / 2, 10, 13)
        );
        let p = t.draw(10, 1000, &mut sample_rng(1, 0, 0));
        // round(10 / 0.75) = round(13.33) = 13.
        assert_eq!(
            (p.top, p.left, p.height, p.width),
            ((1000 - 13) / 2, 0, 13, 10)
        );
    }

    #[test]
    fn draws_depend_only_on_seed_epoch_and_index() {
        let t = TrainTransform::coop(224);
        let draws = |seed, epoch, index| {
            let mut rng = sample_rng(seed, epoch, index);
            (0..4)
                .map(|_| t.draw(500, 375, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(1, 2, 3), draws(1, 2, 3));
        for other in [draws(2, 2, 3), draws(1, 3, 3), draws(1, 2, 4)] {
            assert_ne!(draws(1, 2, 3), other);
        }
        // The construction is pinned: the first u64 of a stream never changes.
        let mut rng = sample_rng(1, 0, 0);
        let first = rng.next_u64();
        let mut again = ChaCha8Rng::from_seed(chacha_key(b"mmrl-aug", 1, 0));
        again.set_stream(0);
        assert_eq!(first, again.next_u64());
        assert_ne!(
            sample_rng(1, 0, 0).next_u64(),
            order_rng(1, 0).next_u64(),
            "the shuffle stream is separate"
        );
    }

    #[test]
    fn flip_frequency_is_about_one_half() {
        let t = TrainTransform::mmrl(224);
        let n = 20_000;
        let flips = (0..n)
            .filter(|&i| t.draw(500, 375, &mut sample_rng(5, 0, i)).flip)
            .count();
        // Binomial(20000, 0.5): sd ≈ 71, allow ~5 sd.
        assert!((flips as i64 - n as i64 / 2).abs() < 350, "{flips} of {n}");
        let never = TrainTransform {
            flip_p: 0.0,
            ..t.clone()
        };
        assert!((0..200).all(|i| !never.draw(50, 50, &mut sample_rng(5, 0, i)).flip));
    }

    #[test]
    fn randint_is_inclusive_and_uniform() {
        let mut rng = sample_rng(0, 0, 0);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[randint_inclusive(&mut rng, 2) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (c as i64 - 10_000).abs() < 500),
            "{counts:?}"
        );
        assert_eq!(randint_inclusive(&mut rng, 0), 0);
        let u: Vec<f64> = (0..1000).map(|_| uniform01(&mut rng)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..100).collect();
        shuffle(&mut v, &mut order_rng(3, 1));
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn apply_gives_normalised_chw_of_the_drawn_box() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 128]));
        let t = TrainTransform::mmrl(32);
        let v = t.apply(&img, &mut sample_rng(9, 0, 1));
        assert_eq!(v.len(), t.numel());
        let p = t.draw(64, 48, &mut sample_rng(9, 0, 1));
        assert_eq!(v, t.apply_params(&img, &p));
        // The flip mirrors the resized crop.
        let a = t.augment_u8(&img, &CropParams { flip: false, ..p });
        let b = t.augment_u8(&img, &CropParams { flip: true, ..p });
        assert_eq!(a.get_pixel(0, 5), b.get_pixel(31, 5));
    }

    /// `tests/fixtures/data/augment/` (from `tests/scripts/gen_augment_fixtures.py`).
    fn fixture(rel: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/data/augment")
            .join(rel)
    }

    #[test]
    fn resized_crop_matches_pillow() {
        use crate::preprocess::load_rgb8;
        let text = std::fs::read_to_string(fixture("manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        let cases = manifest["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 5);
        let mut failures = Vec::new();
        for case in cases {
            let get = |k: &str| case[k].as_u64().unwrap() as usize;
            let name = case["name"].as_str().unwrap();
            let src = match case["image"].as_str().unwrap() {
                "rgb.jpg" => fixture("../../clip/images/rgb.jpg"),
                other => fixture(other),
            };
            let img = load_rgb8(&src).unwrap();
            let params = CropParams {
                top: get("top"),
                left: get("left"),
                height: get("height"),
                width: get("width"),
                flip: case["flip"].as_bool().unwrap(),
            };
            let t = TrainTransform::mmrl(get("size"));
            let ours = t.augment_u8(&img, &params);
            let theirs = load_rgb8(&fixture(case["expected"].as_str().unwrap())).unwrap();
            assert_eq!(ours.dimensions(), theirs.dimensions(), "{name}");
            let diffs: Vec<i16> = ours
                .as_raw()
                .iter()
                .zip(theirs.as_raw())
                .map(|(&a, &b)| (a as i16 - b as i16).abs())
                .collect();
            let max = diffs.iter().copied().max().unwrap_or(0);
            let off = diffs.iter().filter(|&&d| d != 0).count();
            eprintln!(
                "{name}: max uint8 diff {max}, {off} of {} values differ",
                diffs.len()
            );
            // As the test transform's parity test: Pillow's fixed-point
            // coefficients flip a few near-ties by one level.
            if max > 1 || off * 1000 > diffs.len() {
                failures.push(format!("{name}: max diff {max}, {off} values differ"));
            }
            // The normalised output is ToTensor + Normalize of those pixels.
            let v = t.apply_params(&img, &params);
            let config = PreprocessConfig::for_image_size(t.size);
            let expected = normalize_chw(&theirs, &config);
            let worst = v
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 0.0151,
                "{name}: normalised values differ by {worst}"
            );
        }
        assert!(failures.is_empty(), "{failures:?}");
    }
}
