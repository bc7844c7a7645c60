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
$py -m pip check

# CPU rendering uses OpenGL through EGL (Mesa llvmpipe); install the system libraries if absent.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1' || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq libegl1 libgl1 libgles2 libegl-mesa0 libgl1-mesa-dri >/dev/null
  else
    echo "note: EGL/Mesa libraries not found; the numba rasteriser will be used" >&2
  fi
fi

# The API's gallery and its browser tests (issue 15): the 3D viewer from npm into vendor/
# (served by the app, never from a CDN), and headless Chromium for the selenium tests.
if command -v npm >/dev/null 2>&1; then
  [ -f vendor/node_modules/@google/model-viewer/dist/model-viewer.min.js ] &&
    [ -f vendor/node_modules/swagger-ui-dist/swagger-ui-bundle.js ] ||
    npm install --silent --no-audit --no-fund --prefix vendor @google/model-viewer swagger-ui-dist >/dev/null ||
    echo "note: npm could not install the gallery's viewer; it shows static previews" >&2
else
  echo "note: npm not found; the gallery's asset page shows static previews, not the 3D viewer" >&2
fi
if [ "$extra" = "test" ] && { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; }; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium + chromium-driver are missing; the gallery browser tests will fail" >&2
  fi
fi
