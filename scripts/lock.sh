#!/usr/bin/env bash
# Regenerate the hash-pinned locks requirements/main.txt and requirements/test.txt from
# pyproject.toml, for Linux x86-64 / Python 3.11, with pip-tools in a throw-away venv under /tmp.
# Usage: scripts/lock.sh [pip-compile options]
#   scripts/lock.sh                            # keep current pins, add/remove what pyproject changed
#   scripts/lock.sh --upgrade                  # newest versions that pyproject allows
#   scripts/lock.sh --upgrade-package pyyaml   # move one package
# torch is left out of the locks (--unsafe-package torch): its pinned CPU build is installed first
# by scripts/install.sh from wherever pip finds it; its dependencies are locked. test.txt is
# compiled under main.txt as a constraint, so the two agree on every shared pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_TOOLS_VERSION=7.6.2
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

"$python" - <<'EOF'
import platform, sys
if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or platform.machine() != "x86_64":
    sys.exit(f"the locks are for Linux x86-64 / Python 3.11, not {sys.platform} "
             f"{platform.machine()} / Python {sys.version.split()[0]}; set PYTHON=...")
EOF

venv="$(mktemp -d /tmp/foundry3d-lock.XXXXXX)"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "pip-tools==$PIP_TOOLS_VERSION"

compile=("$venv/bin/pip-compile" -q --generate-hashes --strip-extras --unsafe-package torch
         --no-emit-index-url --no-emit-find-links)
mkdir -p requirements
export CUSTOM_COMPILE_COMMAND="scripts/lock.sh"  # what the locks' headers say to run
"${compile[@]}" "$@" -o requirements/main.txt pyproject.toml
"${compile[@]}" "$@" --extra test -c requirements/main.txt -o requirements/test.txt pyproject.toml
echo "wrote requirements/main.txt and requirements/test.txt"
