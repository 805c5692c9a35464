#!/usr/bin/env bash
# The project's checks, in the order CI runs them: formatting, lints, the
# workspace tests on the CPU backend (ndarray), and a type-check of the GPU
# backends (wgpu, cuda), which need no GPU to compile.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (workspace, ndarray)"
cargo test --workspace

step "cargo check --features wgpu"
cargo check --workspace --all-targets --features wgpu

step "cargo check --features cuda"
cargo check --workspace --all-targets --features cuda
