#!/usr/bin/env bash
# Create .venv at the repository root when missing and install foundry3d into it.
# Usage: scripts/install.sh [main|test]
# torch is installed first from its pinned CPU build so that nothing later pulls CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-main}"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
py=.venv/bin/python
$py -m pip install -q --disable-pip-version-check --upgrade pip wheel setuptools
$py -m pip install -q --disable-pip-version-check "torch==2.13.0"
if [ "$extra" = "test" ]; then
  $py -m pip install -q --disable-pip-version-check -e ".[test]"
else
  $py -m pip install -q --disable-pip-version-check -e .
fi

# CPU rendering uses OpenGL through EGL (Mesa llvmpipe); install the system libraries if absent.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libgl1 libgles2 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "note: EGL/Mesa libraries not found; the numba rasteriser will be used" >&2
  fi
fi

# The Khronos glTF validator (npm) that the test suite runs on every GLB it writes.
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tools --no-audit --no-fund --silent || echo "note: gltf-validator not installed; GLB validation tests will skip" >&2
fi
