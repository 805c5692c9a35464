#!/usr/bin/env bash
# Keeps a cached cargo target dir from growing without bound. Cargo never
# deletes old artifacts: each change of compiler or build profile leaves the
# previous test binaries behind (once 68 GB, which filled CI's disk). When the
# compiler or the profiles in Cargo.toml differ from those that built the
# cache, the debug build is dropped; incremental state is always dropped.
# Usage: scripts/prune-target.sh TARGET_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/prune-target.sh TARGET_DIR}"
[ -d "$target" ] || exit 0
stamp="$target/.mmrl-build-stamp"
want="$( { rustc -V; sed -n '/^\[profile/,$p' Cargo.toml; } | cksum)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "prune-target: compiler or build profile changed; removing $target/debug" >&2
  rm -rf "$target/debug"
fi
rm -rf "$target/debug/incremental" "$target/release/incremental"
printf '%s\n' "$want" > "$stamp"
