#!/usr/bin/env bash
# Install the test dependencies and run the whole test suite (real PostgreSQL and S3 servers are
# started and stopped by the suite itself).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
export PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/ruff check .
# The slowest tests are listed at the end: CI must stay under 40 minutes.
.venv/bin/python -m pytest -q --durations=30 "$@"
