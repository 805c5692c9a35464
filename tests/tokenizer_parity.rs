//! The CLIP tokenizer against Hugging Face's fast tokenizer (real CLIP
//! vocabulary and the tiny one) on hard strings. Fixtures:
//! `tests/scripts/gen_clip_fixtures.py`.

mod common;

use common::*;
use mmrl::data::ClipTokenizer;

fn cases() -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(clip_fixture("tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn check(tok: &ClipTokenizer, field: &str) {
    let cases = cases();
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case[field]);
        let ours = tok.encode(text).unwrap();
        if ours != expected {
            failures.push(format!("{text:?}: ours {ours:?} vs {expected:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bundled_vocabulary_matches_hf_fast_tokenizer() {
    check(&ClipTokenizer::bundled(), "ids_full");
}

#[test]
fn bpe_gz_file_matches_hf_fast_tokenizer() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/assets/bpe_simple_vocab_16e6.txt.gz");
    check(&ClipTokenizer::from_path(&path).unwrap(), "ids_full");
}

#[test]
fn tokenizer_json_matches_hf_fast_tokenizer() {
    let tok = ClipTokenizer::from_file(&clip_fixture("tiny_hf/tokenizer.json")).unwrap();
    assert_eq!(tok.vocab_size(), 2514);
    check(&tok, "ids_tiny");
}
