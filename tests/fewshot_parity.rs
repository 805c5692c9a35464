//! Our port of CPython's `random` and Dassl's few-shot draw against Python
//! itself. Fixture: `tests/scripts/gen_fewshot_fixtures.py`.

use std::path::PathBuf;

use mmrl::data::few_shot::dassl_fewshot;
use mmrl::data::pyrandom::PyRandom;
use serde_json::Value;

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/pyrandom.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn nums(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn mersenne_twister_streams_match_cpython_for_every_seed_size() {
    let f = fixture();
    for s in f["streams"].as_array().unwrap() {
        let seed: i128 = s["seed"].as_str().unwrap().parse().unwrap();
        let mut r = PyRandom::new(seed);
        let ours: Vec<u64> = (0..8).map(|_| r.getrandbits(32) as u64).collect();
        assert_eq!(ours, nums(&s["getrandbits32"]), "seed {seed}");
    }
}

#[test]
fn randbelow_matches_cpython() {
    for c in fixture()["randbelow"].as_array().unwrap() {
        let mut r = PyRandom::new(c["seed"].as_i64().unwrap() as i128);
        let n = c["n"].as_u64().unwrap() as u32;
        let ours: Vec<u64> = (0..6).map(|_| r.randbelow(n) as u64).collect();
        assert_eq!(ours, nums(&c["draws"]), "seed {} n {n}", c["seed"]);
    }
}

#[test]
fn sample_matches_cpython_on_both_branches() {
    let f = fixture();
    let cases = f["samples"].as_array().unwrap();
    assert!(cases.len() > 100);
    for c in cases {
        let mut r = PyRandom::new(c["seed"].as_i64().unwrap() as i128);
        let (n, k) = (
            c["n"].as_u64().unwrap() as usize,
            c["k"].as_u64().unwrap() as usize,
        );
        let ours: Vec<u64> = r.sample(n, k).into_iter().map(|v| v as u64).collect();
        assert_eq!(ours, nums(&c["result"]), "seed {} n {n} k {k}", c["seed"]);
    }
}

#[test]
fn dassl_fewshot_draws_are_identical_to_pythons() {
    let f = fixture();
    let split = |name: &str| -> (Vec<String>, Vec<usize>) {
        f["split"][name]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| {
                (
                    it[0].as_str().unwrap().to_string(),
                    it[1].as_u64().unwrap() as usize,
                )
            })
            .unzip()
    };
    let (train_paths, train_labels) = split("train");
    let (val_paths, val_labels) = split("val");
    for d in f["dassl_fewshot"].as_array().unwrap() {
        let seed = d["seed"].as_i64().unwrap() as i128;
        let shots = d["shots"].as_u64().unwrap() as usize;
        let (train, val) = dassl_fewshot(&train_labels, &val_labels, shots, seed);
        let names = |idx: Vec<usize>, paths: &[String]| -> Vec<String> {
            idx.into_iter().map(|i| paths[i].clone()).collect()
        };
        let expect = |key: &str| -> Vec<String> {
            d[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            names(train, &train_paths),
            expect("train"),
            "seed {seed} shots {shots}"
        );
        assert_eq!(
            names(val, &val_paths),
            expect("val"),
            "seed {seed} shots {shots}"
        );
    }
}
