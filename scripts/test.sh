#!/usr/bin/env bash
# Install (first run only), then lint and run the test suite (CPU, about 3 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q "$@"
