#!/usr/bin/env bash
# Sets up a fresh machine and builds the `mmrl` binary (release, CPU).
# Needs a Rust toolchain (rustup) and a C compiler; no downloads at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cc >/dev/null 2>&1; then
  echo "a C compiler is needed (the JPEG decoder is libjpeg-turbo's): apt-get install build-essential" >&2
  exit 1
fi
cargo build --release --bin mmrl "$@"
echo "built target/release/mmrl"
