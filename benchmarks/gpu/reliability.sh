# GPU checks of issue #33 and the optimizer-family figures that issue #30's redesign must keep (one call):
#   carry .whl .carry/d (tar cJf .carry/d/data.tar.xz -C .. shared/data/sst2); no GGUF needed (tiny model and
#   the SmolLM2 shape with random weights).
#   bash benchmarks/gpu/reliability.sh        # writes $OUT/determinism.jsonl, $OUT/optimizer_family_*.md
set -u
mkdir -p ~/zo
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -d ~/zo/data ] || tar xJf .carry/d/data.tar.xz -C ~/zo --strip-components=1
DATA=$HOME/zo/data
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
# 1. the compiled fast path, same seed three times (tiny model: fp32, then bf16 weights)
for extra in "" "--trainer.precision bf16-true --model.dtype bfloat16"; do
  timeout -k 10 240 python3 -m benchmarks.determinism --data-dir $DATA --out /tmp/det$RANDOM --runs 3 -- \
    --trainer.accelerator gpu --trainer.max_steps 300 --trainer.val_check_interval 300 \
    --trainer.limit_val_batches 1 $extra | tee -a $OUT/determinism.jsonl
done
# 2. every rule's step on the fast path, before the engine redesign (#30)
for d in bfloat16 float32; do
  timeout -k 10 240 python3 -m benchmarks.optimizer_family --model smollm2 --dtype $d --fast-forward --repeats 40 \
    2>&1 | tee $OUT/optimizer_family_$d.md
done
