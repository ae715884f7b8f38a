# Where a fit's start-up goes on the GPU image (issue #11: launch to first step <= 20 s with warm caches).
#   call 1 (carry .whl .carry/a .carry/d .carry/s; .carry/s: the py-spy wheel):
#     source benchmarks/gpu/setup.sh stash && MODEL=tiny-llama bash benchmarks/gpu/startup_probe.sh
#   call 2, at once (carry .whl .carry/b): source benchmarks/gpu/setup.sh stash
#   call 3, at once (carry .whl .carry/c): source benchmarks/gpu/setup.sh join && MODEL=$GGUF bash benchmarks/gpu/startup_probe.sh
# With BYTECODE=write before `source`, Python writes its bytecode caches (see setup.sh).
# Prints whether the image writes bytecode and the import cost, then runs SST-2's bf16 fit to step ${STEPS:-3}
# ${RUNS:-2} times (the first fills the caches) under py-spy with idle samples kept (wall clock), each fit's log
# with seconds since launch, and the main thread's inclusive shares (benchmarks/spy_summary.py).
set -o pipefail
mkdir -p "$OUT"
[ -x /tmp/spy/bin/py-spy ] || python3 -m pip install -q --no-index --no-deps --target /tmp/spy .carry/s/*.whl
MODEL=${MODEL:-tiny-llama}
name=$(basename "$MODEL" .gguf)
python3 - <<'EOF' 2>&1 | tee "$OUT/bytecode_$name.log"
import os, sys, importlib.util
print("dont_write_bytecode", sys.dont_write_bytecode, "prefix", sys.pycache_prefix,
      "env", {k: v for k, v in os.environ.items() if k.startswith("PYTHON")})
for module in ("jsonargparse", "datasets", "gguf", "lightning", "torch", "zolightning"):
    origin = importlib.util.find_spec(module).origin
    cache = os.path.join(os.path.dirname(origin), "__pycache__")
    count = len(os.listdir(cache)) if os.path.isdir(cache) else 0
    print(f"{module}: {origin}, {count} files in __pycache__, writable {os.access(os.path.dirname(origin), os.W_OK)}")
EOF
for i in 1 2; do python3 -m benchmarks.import_cost 2>&1 | tee -a "$OUT/import_cost_$name.log"; done
stamp() { python3 -u -c "import sys, time
t0 = float(sys.argv[1])
for line in sys.stdin: print(f'{time.time() - t0:7.2f} {line}', end='')" "$1"; }
for run in $(seq 1 "${RUNS:-2}"); do
  t0=$(date +%s.%N)
  timeout -k 10 "${LIMIT:-200}" /tmp/spy/bin/py-spy record --idle -r "${RATE:-50}" -f raw -o "$OUT/startup_${name}_$run.txt" -- \
    python3 -m zolightning fit --config configs/sst2/mezo.yaml --model.model "$MODEL" --data.data_dir "$DATA" \
    --trainer.precision bf16-true --model.dtype bfloat16 --trainer.max_steps "${STEPS:-3}" --trainer.limit_val_batches 0 \
    --trainer.val_check_interval 100000 --trainer.enable_progress_bar false \
    --trainer.logger.init_args.save_dir /tmp/startup_logs 2>&1 | grep --line-buffered -vE "Warning|warn\(" | stamp "$t0" \
    | tee "$OUT/startup_${name}_$run.log"
  python3 -m benchmarks.spy_summary "$OUT/startup_${name}_$run.txt" --within _run_module_as_main --top "${TOP:-80}" \
    --only "zolightning|lightning/|torch/|transformers/|jsonargparse/|datasets/|triton/|tensorboard" \
    2>&1 | tee -a "$OUT/startup_${name}_$run.log"
done
