#!/usr/bin/env bash
# Installs, only where missing, the Vulkan loader and a software Vulkan device
# (Mesa's lavapipe) from the distribution's packages, so that the wgpu backend
# runs on a machine without a GPU. With a GPU, its vendor's driver provides
# the Vulkan device instead and wgpu picks the GPU first.
set -euo pipefail
[ "${MMRL_SKIP_VULKAN:-0}" = 1 ] && exit 0
missing=()
if ! ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1'; then missing+=(libvulkan1); fi
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then missing+=(mesa-vulkan-drivers); fi
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "wgpu needs a Vulkan loader and driver; install your distribution's vulkan-loader and mesa vulkan drivers (missing: ${missing[*]})" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "wgpu needs ${missing[*]}: run as root: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
echo "installing ${missing[*]} (Vulkan for the wgpu backend)" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null ||
  { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
