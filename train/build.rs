//! Embeds the recipes (`configs/<method>/*.toml`) in the binary, so that
//! `mmrl train` finds them wherever it runs. A new recipe file needs no code.

use std::fmt::Write;
use std::path::Path;

fn main() {
    // Read when the script runs, not when it was compiled: cargo may reuse a
    // build-script binary compiled in another checkout of the workspace.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let configs = Path::new(&manifest).join("../configs");
    println!("cargo:rerun-if-changed={}", configs.display());
    let mut files = Vec::new();
    let methods = std::fs::read_dir(&configs)
        .unwrap_or_else(|e| panic!("the recipes folder {}: {e}", configs.display()));
    {
        for method in methods.flatten().filter(|e| e.path().is_dir()) {
            for file in std::fs::read_dir(method.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "toml") {
                    let name = format!(
                        "{}/{}",
                        method.file_name().to_string_lossy(),
                        file.file_name().to_string_lossy()
                    );
                    files.push((name, path.canonicalize().expect("config path")));
                }
            }
        }
    }
    files.sort();
    let mut out = String::from("/// `(\"<method>/<file>.toml\", contents)` for every shipped recipe.\npub static RECIPES: &[(&str, &str)] = &[\n");
    for (name, path) in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        writeln!(
            out,
            "    ({name:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("recipes.rs");
    std::fs::write(dest, out).expect("write recipes.rs");
}
