//! The offline demo, shortened (`--quick`: the same world, CLIP and schedules,
//! scored on fewer test pictures): a small CLIP pretrained on the generated
//! world, then zero-shot CLIP, CoOp, MMRL, COMMA and the Multi-Modal Adapter
//! base-to-novel over seeds 1, 2, 3. Asserts what the methods promise:
//! zero-shot transfers to novel classes; MMRL gains on base without losing
//! novel; MMRL's HM beats zero-shot's and CoOp's; COMMA and the adapter keep
//! zero-shot's novel accuracy. And Ctrl-C during pretraining stops cleanly.

mod common;

use common::{assert_clean_failure, mmrl, mmrl_command, TempDir};
use serde_json::Value;

/// `mmrl demo --quick` into `out`, caching its CLIP in `cache`.
fn quick_demo<'a>(out: &'a std::path::Path, cache: &'a std::path::Path) -> [&'a str; 6] {
    let s = |p: &'a std::path::Path| p.to_str().unwrap();
    ["demo", "--quick", "--output", s(out), "--cache", s(cache)]
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {v}"))
}

#[test]
fn quick_demo_shows_each_methods_base_novel_behaviour() {
    let tmp = TempDir::new("demo");
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    let args = quick_demo(&out, &cache);
    let o = mmrl(&args);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("pretrain epoch 1/"), "progress: {stdout}");
    assert!(stdout.contains("| MMRL "), "table: {stdout}");

    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["seeds"], serde_json::json!([1, 2, 3]));
    let chance_novel = num(&r, &["chance", "novel"]);
    let zs = |k| num(&r, &["methods", "zeroshot", k]);
    let coop = |k| num(&r, &["methods", "coop", k]);
    let m = |k| num(&r, &["methods", "mmrl", k]);
    let shown = format!("{r:#}");
    assert!(
        zs("novel") >= 2.0 * chance_novel,
        "zero-shot transfers to novel classes: {shown}"
    );
    assert!(m("base") >= zs("base") + 5.0, "MMRL gains on base: {shown}");
    assert!(
        m("novel") >= zs("novel") - 5.0,
        "MMRL keeps zero-shot's novel accuracy: {shown}"
    );
    assert!(m("hm") > zs("hm"), "MMRL's HM beats zero-shot's: {shown}");
    assert!(m("hm") > coop("hm"), "MMRL's HM beats CoOp's: {shown}");
    let comma = |k| num(&r, &["methods", "comma", k]);
    assert!(
        comma("novel") >= zs("novel") - 5.0,
        "COMMA keeps zero-shot's novel accuracy: {shown}"
    );
    let mma = |k| num(&r, &["methods", "mm-adapter", k]);
    assert!(
        mma("novel") >= zs("novel") - 5.0,
        "the Multi-Modal Adapter keeps zero-shot's novel accuracy: {shown}"
    );

    // Each method's run is a full training run's output.
    for method in ["zeroshot", "coop", "mmrl", "comma", "mm-adapter"] {
        let run: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(method).join("results.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(run["method"], method);
        assert_eq!(run["seeds"].as_array().unwrap().len(), 3);
    }
    assert!(out.join("mmrl/seed1/mmrl.safetensors").is_file());
    assert!(out.join("coop/seed3/coop.safetensors").is_file());
    assert!(out.join("comma/seed1/comma.safetensors").is_file());
    assert!(out
        .join("mm-adapter/seed2/mm-adapter.safetensors")
        .is_file());
    // `mmrl report` on the demo's folder puts the five runs in one table,
    // each with the mean the demo reports.
    let o = mmrl(&["report", "--json", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let mut reported: Vec<&str> = runs.iter().map(|r| r["method"].as_str().unwrap()).collect();
    reported.sort();
    assert_eq!(
        reported,
        ["comma", "coop", "mm-adapter", "mmrl", "zeroshot"]
    );
    for run in &runs {
        let method = run["method"].as_str().unwrap();
        assert_eq!(run["mean"]["hm"], r["methods"][method]["hm"], "{method}");
    }

    // The cached CLIP is a standard Hugging Face folder: `mmrl zeroshot`
    // loads it and names a novel class it was never adapted to.
    let clip = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("pretrain.json").is_file())
        .expect("the pretrained CLIP is cached");
    let names = std::fs::read_to_string(out.join("world/classnames.txt")).unwrap();
    let classes: Vec<&str> = names
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    let z = mmrl(&[
        "zeroshot",
        "--clip",
        clip.to_str().unwrap(),
        "--images",
        out.join("world/test/c40").to_str().unwrap(),
        "--classes",
        &classes.join(","),
        "--json",
    ]);
    assert!(z.status.success(), "{}", String::from_utf8_lossy(&z.stderr));
    let zj: Value = serde_json::from_slice(&z.stdout).unwrap();
    let results = zj["results"].as_array().unwrap();
    let pictures = std::fs::read_dir(out.join("world/test/c40"))
        .unwrap()
        .count();
    assert_eq!(results.len(), pictures);

    // A folder that is not a demo output is never overwritten.
    let other = tmp.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let refused = mmrl(&[
        "demo",
        "--quick",
        "--output",
        other.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert_clean_failure(&refused, &["not empty", "--output"]);
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "keep me"
    );
}

/// Ctrl-C during the demo's pretraining stops it at the next batch (not
/// after the minutes pretraining takes, nor only at a second Ctrl-C), says
/// how to start over, and leaves nothing half-built in the cache.
#[test]
fn ctrl_c_during_pretraining_stops_cleanly() {
    let tmp = TempDir::new("demo-sigint");
    let out = tmp.path().join("out");
    let cache = tmp.path().join("cache");
    let mut child = mmrl_command(&quick_demo(&out, &cache))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Pretraining has started once its folder holds Burn's log folder.
    let building = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().contains(".building-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let start = std::time::Instant::now();
    while !building().iter().any(|p| p.join("log").exists()) && start.elapsed().as_secs() < 120 {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the demo ended before pretraining: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!building().is_empty(), "pretraining started");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let signalled = std::time::Instant::now();
    let o = child.wait_with_output().unwrap();
    let stopped_in = signalled.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("stopping at the next batch")
            && stderr.contains("the demo was interrupted")
            && stderr.contains("run the same command again"),
        "{stderr}"
    );
    // Pretraining takes minutes: a stop within seconds is the first signal's.
    assert!(
        stopped_in < 60.0,
        "stopped {stopped_in:.1} s after the signal"
    );
    assert!(
        building().is_empty(),
        "a half-built CLIP is left in the cache"
    );
    assert!(!out.join("results.json").exists());
}
