#!/usr/bin/env bash
# Create .venv at the repository root when missing and install foundry3d into it from the lock
# (requirements/main.txt or requirements/test.txt, hash-pinned; regenerate with scripts/lock.sh).
# Usage: scripts/install.sh [main|test]   (VENV=path installs into another venv than .venv)
# torch is not in the lock: its pinned CPU build is installed first, without dependencies (they
# are in the lock), so that nothing pulls CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-main}"
case "$extra" in
  main|test) ;;
  *) echo "usage: scripts/install.sh [main|test]" >&2; exit 2 ;;
esac
venv="${VENV:-.venv}"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
py="$venv/bin/python"
$py -m pip install -q --disable-pip-version-check --upgrade pip wheel setuptools
pip=($py -m pip install -q --disable-pip-version-check)
"${pip[@]}" --no-deps "torch==2.13.0"
"${pip[@]}" --no-deps --require-hashes -r "requirements/$extra.txt"
"${pip[@]}" --no-deps -e .
# Byte-compile the project as pip does an installed package: a short-lived command (a cold
# `foundry3d search`) then skips compiling ~200 modules, also where PYTHONDONTWRITEBYTECODE is set.
$py -m compileall -q -j 0 foundry3d models storage intake tasks flows >/dev/null
$py -m pip check

# CPU rendering uses OpenGL through EGL (Mesa llvmpipe); install the system libraries if absent.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libgl1 libgles2 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "note: EGL/Mesa libraries not found; the numba rasteriser will be used" >&2
  fi
fi

# Node packages (tools/package.json, pinned by its lock): the gallery's 3D viewer and API docs,
# served by the app (never from a CDN), and the Khronos glTF validator the test suite runs on
# every GLB it writes. Without npm the gallery shows static previews and GLB checks skip.
if command -v npm >/dev/null 2>&1; then
  npm ci --prefix tools --no-audit --no-fund --silent ||
    echo "note: npm ci in tools/ failed; the gallery shows static previews, GLB checks skip" >&2
else
  echo "note: npm not found; the gallery shows static previews and GLB checks skip" >&2
fi
# Headless Chromium for the gallery's browser tests.
if [ "$extra" = "test" ] && { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; }; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium + chromium-driver are missing; the gallery browser tests will fail" >&2
  fi
fi
