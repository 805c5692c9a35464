//! CLIP parity with Hugging Face transformers on a tiny random CLIP, in
//! every weights layout we read. Fixtures: `tests/scripts/gen_clip_fixtures.py`.

mod common;

use burn::prelude::*;
use common::*;
use mmrl::data::ClipTokenizer;
use mmrl::model::clip::loader::{load_clip, Layout, LoadedClip};
use mmrl::model::clip::{l2_normalize, Precision};
use mmrl::train::zeroshot;

fn load(rel: &str) -> LoadedClip<B> {
    load_clip::<B>(&clip_fixture(rel), &Default::default())
        .unwrap_or_else(|e| panic!("loading {rel}: {e}"))
}

fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn classes() -> Vec<String> {
    expected_json()["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// Text embeddings, image embeddings (from transformers' pixel values) and logits.
fn embeddings(clip: &LoadedClip<B>) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let device = Default::default();
    let tok = ClipTokenizer::from_file(&clip_fixture("tiny_hf/tokenizer.json")).unwrap();
    let text = zeroshot::class_text_features(
        &clip.model,
        &tok,
        &classes(),
        zeroshot::DEFAULT_TEMPLATE,
        &device,
    )
    .unwrap();
    let (pixels, shape) = tensor("expected.safetensors", "pixel_values");
    let images = Tensor::<B, 1>::from_floats(pixels.as_slice(), &device)
        .reshape([shape[0], shape[1], shape[2], shape[3]]);
    let image = clip.model.encode_image(images);
    let logits = clip.model.logits(image.clone(), text.clone());
    (
        to_vec(l2_normalize(text)),
        to_vec(l2_normalize(image)),
        to_vec(logits),
    )
}

fn assert_matches_transformers(rel: &str, suffix: &str, tol_embed: f32, tol_logits: f32) {
    let clip = load(rel);
    let (text, image, logits) = embeddings(&clip);
    let d_text = max_abs_diff(
        &text,
        &tensor("expected.safetensors", &format!("text_embeds{suffix}")).0,
    );
    let d_image = max_abs_diff(
        &image,
        &tensor("expected.safetensors", &format!("image_embeds{suffix}")).0,
    );
    let d_logits = max_abs_diff(
        &logits,
        &tensor("expected.safetensors", &format!("logits_per_image{suffix}")).0,
    );
    eprintln!("{rel}: max abs diff text {d_text:e}, image {d_image:e}, logits {d_logits:e}");
    assert_within(&format!("{rel}: text embeds"), d_text, tol_embed);
    assert_within(&format!("{rel}: image embeds"), d_image, tol_embed);
    assert_within(&format!("{rel}: logits"), d_logits, tol_logits);
}

#[test]
fn hf_folder_matches_transformers() {
    let clip = load("tiny_hf");
    assert_eq!(clip.layout, Layout::HuggingFace);
    assert!(clip.tokenizer.is_some());
    assert_matches_transformers("tiny_hf", "", 1e-4, 1e-3);
}

#[test]
fn openai_safetensors_matches_transformers() {
    let clip = load("tiny_openai.safetensors");
    assert_eq!(clip.layout, Layout::OpenAi);
    // Architecture inferred from shapes alone equals the published config.json.
    let hf = load("tiny_hf");
    assert_eq!(
        clip.config.text_config.hidden_size,
        hf.config.text_config.hidden_size
    );
    assert_eq!(clip.config.vision_config, hf.config.vision_config);
    assert_eq!(
        clip.config.text_config.vocab_size,
        hf.config.text_config.vocab_size
    );
    assert_eq!(
        clip.config.text_config.num_hidden_layers,
        hf.config.text_config.num_hidden_layers
    );
    assert_eq!(clip.config.projection_dim, hf.config.projection_dim);
    assert_matches_transformers("tiny_openai.safetensors", "", 1e-4, 1e-3);
}

/// `--precision bf16`: the blocks' weights and the token table in bf16,
/// against transformers' f32 outputs; the rounding shows, and stays a rounding.
#[test]
fn bf16_blocks_match_transformers_within_bf16_rounding() {
    if !runs_bf16() {
        return;
    }
    let f32_logits = embeddings(&load("tiny_hf")).2;
    let mut clip = load("tiny_hf");
    clip.model = clip.model.with_precision(Precision::Bf16);
    assert_eq!(clip.model.precision(), Precision::Bf16);
    let (text, image, logits) = embeddings(&clip);
    for (check, ours, key) in [
        ("bf16 text embeds", text, "text_embeds"),
        ("bf16 image embeds", image, "image_embeds"),
        ("bf16 logits", logits.clone(), "logits_per_image"),
    ] {
        assert_close_rel(
            check,
            &ours,
            &tensor("expected.safetensors", key).0,
            BF16_REL_TOL,
        );
    }
    assert!(
        max_abs_diff(&logits, &f32_logits) > 0.0,
        "bf16 changed nothing"
    );
}

#[test]
fn openai_pytorch_state_dict_matches_transformers() {
    assert_matches_transformers("tiny_openai.pt", "", 1e-4, 1e-3);
}

#[test]
fn half_precision_file_is_cast_on_load() {
    // Expected values: transformers with the same f16-rounded weights in f32.
    assert_matches_transformers("tiny_openai_f16.safetensors", "_f16w", 1e-4, 1e-3);
}

#[test]
fn tokenizer_ids_match_the_fixture_prompts() {
    let tok = ClipTokenizer::from_file(&clip_fixture("tiny_hf/tokenizer.json")).unwrap();
    let prompts: Vec<String> = expected_json()["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let batch = tok.encode_batch(&prompts).unwrap();
    let (ids, _) = tensor("expected.safetensors", "input_ids");
    let (eot, _) = tensor("expected.safetensors", "eot_index");
    let eot_ours: Vec<f32> = batch.eot.iter().map(|&e| e as f32).collect();
    assert_eq!(eot_ours, eot);
    // Up to the end token; transformers pads with the end token, we with 0.
    for (row, &e) in batch.eot.iter().enumerate() {
        let ours: Vec<f32> = batch.ids[row * 77..row * 77 + e as usize + 1]
            .iter()
            .map(|&v| v as f32)
            .collect();
        assert_eq!(
            ours,
            ids[row * 77..row * 77 + e as usize + 1].to_vec(),
            "row {row}"
        );
    }
}

#[test]
fn torchscript_archive_is_refused_with_conversion_hint() {
    let path = clip_fixture("tiny_openai_torchscript.pt");
    let Err(err) = load_clip::<B>(&path, &Default::default()) else {
        panic!("TorchScript is not a state dict");
    };
    let msg = err.to_string();
    assert!(msg.contains("TorchScript"), "{msg}");
    assert!(msg.contains("save_file"), "{msg}");
}
