#!/usr/bin/env bash
# Install everything and run the main job on the embedded defaults
# (SQLite file + local object folder under ./foundry-data, Prefect without a server, CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh main
export PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/foundry3d library sample
.venv/bin/foundry3d run examples/catalog.yaml "$@"
