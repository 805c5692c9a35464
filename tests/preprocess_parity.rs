//! Image preprocessing against transformers' `CLIPImageProcessorPil`, pixel
//! by pixel. Fixtures: `tests/scripts/gen_clip_fixtures.py`.

mod common;

use common::*;
use mmrl::data::preprocess::{
    load_rgb8, normalize_chw, resize_and_crop, CropRounding, PreprocessConfig,
};

const IMAGES: &[&str] = &CLIP_IMAGES;

fn stem(name: &str) -> &str {
    name.split('.').next().unwrap()
}

#[test]
fn resize_and_crop_224_matches_pillow_bicubic() {
    let config = PreprocessConfig {
        crop_rounding: CropRounding::Floor,
        ..PreprocessConfig::for_image_size(224)
    };
    let mut failures = Vec::new();
    for name in IMAGES {
        let img = load_rgb8(&clip_fixture(&format!("images/{name}"))).unwrap();
        let ours: Vec<f32> = resize_and_crop(&img, &config)
            .as_raw()
            .iter()
            .map(|&v| v as f32)
            .collect();
        let (theirs, shape) = tensor("preprocess.safetensors", &format!("{}.crop224", stem(name)));
        assert_eq!(shape, vec![224, 224, 3]);
        let max = max_abs_diff(&ours, &theirs);
        let off = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
        eprintln!(
            "{name}: max uint8 diff {max}, {off} of {} values differ",
            ours.len()
        );
        // Same decoder (libjpeg-turbo), bicubic kernel, pass order and
        // rounding as Pillow; Pillow's 22-bit fixed-point coefficients still
        // flip a few near-ties by one level (seen: at most 30 of 150 528).
        if max > 1.0 || off * 1000 > ours.len() {
            failures.push(format!("{name}: max diff {max}, {off} values differ"));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn pixel_values_match_transformers_and_open_clip() {
    let hf = PreprocessConfig {
        crop_rounding: CropRounding::Floor,
        ..PreprocessConfig::for_image_size(32)
    };
    check_pixel_values(&hf, "pixel_values32");
    // OpenAI / open_clip / Dassl: torchvision's CenterCrop rounds half to even,
    // which moves gray.png's crop by a row at 32 px.
    check_pixel_values(
        &PreprocessConfig::for_image_size(32),
        "pixel_values32_openai",
    );
}

fn check_pixel_values(config: &PreprocessConfig, key: &str) {
    let config = config.clone();
    for name in IMAGES {
        let img = load_rgb8(&clip_fixture(&format!("images/{name}"))).unwrap();
        let ours = normalize_chw(&resize_and_crop(&img, &config), &config);
        let (theirs, _) = tensor("preprocess.safetensors", &format!("{}.{key}", stem(name)));
        // One uint8 level is 1/255/std ≈ 0.015 after normalisation.
        let max = max_abs_diff(&ours, &theirs);
        eprintln!("{name} {key}: max normalised diff {max}");
        assert!(max <= 0.0151, "{name}: pixel values differ by {max}");
    }
}

#[test]
fn corrupt_and_non_images_name_the_file() {
    for bad in ["corrupt.jpg", "not_an_image.png", "missing.png"] {
        let path = clip_fixture(&format!("images/{bad}"));
        let err = match load_rgb8(&path) {
            Ok(_) => panic!("{bad} decoded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(bad), "{err}");
    }
}
