#!/usr/bin/env bash
# Install (first run only), then fine-tune SmolLM2-135M-Instruct on SST-2 with MeZO.
#   bash scripts/train.sh --data.data_dir ../shared/data [--trainer.max_steps 20 ...any zolightning flag]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/zolightning fit --config configs/sst2/mezo.yaml "$@"
