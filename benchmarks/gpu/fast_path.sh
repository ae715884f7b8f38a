# Issue #11 on one GPU: the default (fast) path inside real `zolightning fit` runs.
#   call 1 (carry .whl .carry/a): source benchmarks/gpu/setup.sh stash && bash benchmarks/gpu/fast_path.sh check
#   call 2 (carry .whl .carry/b): source benchmarks/gpu/setup.sh join && bash benchmarks/gpu/fast_path.sh throughput
#   then, on the same machine:    source benchmarks/gpu/setup.sh && bash benchmarks/gpu/fast_path.sh accuracy
set -o pipefail
mkdir -p "$OUT"
tiny="--config configs/tiny/sst2_mezo.yaml --data.data_dir $DATA --trainer.accelerator gpu --trainer.enable_progress_bar false"
if [ "$1" = check ]; then  # GPU tests, then the tiny model through the auto path on CUDA (no GGUF needed)
  ZOLIGHTNING_TEST_DATA=$DATA python3 -m pytest -q tests/test_gpu.py 2>&1 | tail -5
  timeout -k 10 240 python3 -m zolightning fit $tiny --trainer.max_steps 60 --trainer.logger.init_args.save_dir /tmp/logs \
    2>&1 | grep -E "ZO path|compil|first step|steps/s|validation|recompil|Error|error" | tee "$OUT/check.log"
  python3 -m benchmarks.read_curves /tmp/logs/tiny-sst2-mezo/version_0 --tags perf/recompiles perf/eager_batches val/acc
elif [ "$1" = throughput ]; then
  timeout -k 10 ${LIMIT:-560} python3 -m benchmarks.fit_throughput --model "$GGUF" --data-dir "$DATA" \
    --cases ${CASES:-sst2-bf16 sst2-bf16 sst2-fp32 boolq-bf16} --steps ${STEPS:-600} --log-dir "$OUT" ${FIT_ARGS:+--fit-args="$FIT_ARGS"} 2>&1 | tee -a "$OUT/throughput.log"
elif [ "$1" = accuracy ]; then  # the fast default vs the reference path, same lr, 3 seeds, 2,000 steps, all at once
  c="--config configs/sst2/mezo.yaml --model.model $GGUF --data.data_dir $DATA --trainer.enable_progress_bar false"
  c="$c --trainer.max_steps ${STEPS:-2000} --trainer.val_check_interval 500 --trainer.logger.init_args.save_dir /tmp/acc"
  for seed in 0 1 2; do
    timeout -k 10 560 python3 -m zolightning fit $c --model.zo_seed $seed \
      --trainer.logger.init_args.name fast-s$seed > "$OUT/fast-s$seed.log" 2>&1 &
    timeout -k 10 560 python3 -m zolightning fit $c --model.zo_seed $seed --model.noise generator \
      --model.fast_forward false --trainer.logger.init_args.name reference-s$seed > "$OUT/ref-s$seed.log" 2>&1 &
  done
  wait
  python3 -m benchmarks.read_curves /tmp/acc/*/version_0 --tags val/acc eval/acc train/loss | tee "$OUT/accuracy.md"
  tar czf "$OUT/accuracy_events.tgz" -C /tmp/acc .
fi
