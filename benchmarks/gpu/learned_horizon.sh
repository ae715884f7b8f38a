#!/usr/bin/env bash
# Issue #34 on one GPU: the K-step meta-training's cost, the meta-training itself in chunks, the lr-robustness grid.
#   on the GPU (the GGUF joined: setup.sh's third call):  bash benchmarks/gpu/learned_horizon.sh PART [SECONDS]
# PART cost: one meta step's time and peak memory at K = 1, 4, 8 beside a first-order step (benchmarks/meta_memory);
#   without the joined GGUF, on SmolLM2's shape with random weights (time and memory do not depend on the values).
# PART meta: configs/meta/horizon.yaml for SECONDS (default 420) of training, resumed from the shipped file when
#   there is one; the files written (last, best, start), the downstream curves and the event file come back.
# PART grid: configs/compare/lr_robustness.yaml for SECONDS; the finished runs' event files come back in a tarball.
set -u
part=${1:-cost} seconds=${2:-420}
mode=join; [ "$part" = cost ] && mode=stash  # the cost needs no GGUF (it runs on random weights without one)
source benchmarks/gpu/setup.sh $mode >/dev/null 2>&1 || { echo "setup failed"; exit 1; }
nvidia-smi -L
shipped=zolightning/optimizers/smollm2-135m-instruct.meta-horizon.safetensors
case "$part" in
cost)
  model=$GGUF; [ -s "$GGUF" ] || { python -m benchmarks.random_model_dir --shape smollm2 /tmp/smol >/dev/null; model=/tmp/smol; }
  timeout -k 10 "$seconds" python -m benchmarks.meta_memory --model "$model" --data-dir "$DATA" --task copa \
    --horizons 1,4,8 --repeats 5 | tee "$OUT/meta_cost.jsonl"
  ;;
meta)
  resume=(); [ -f "$shipped" ] && resume=(--model.resume_from "$shipped")
  timeout -k 10 $((seconds + 120)) python -m zolightning meta fit --config configs/meta/horizon.yaml \
    --model.model "$GGUF" --data.data_dir "$DATA" --trainer.max_time "$(printf "00:00:%02d:%02d" $((seconds / 60)) $((seconds % 60)))" \
    --trainer.enable_progress_bar false "${resume[@]}" > /tmp/meta.log 2>&1; echo "meta rc $?"
  tail -n 25 /tmp/meta.log; tail -n 60 /tmp/meta.log > "$OUT/meta_log.txt"
  cp optimizers/smollm2-135m-instruct.meta-horizon*.safetensors optimizers/*.downstream.jsonl "$OUT/" 2>/dev/null
  find logs/meta-horizon -name "events.out.tfevents.*" -exec cp {} "$OUT/" \; 2>/dev/null
  cat optimizers/*.downstream.jsonl 2>/dev/null | cut -c 1-160
  ;;
grid)
  timeout -k 10 "$seconds" python -m zolightning compare run configs/compare/lr_robustness.yaml \
    -- --model.model "$GGUF" --data.data_dir "$DATA" > /tmp/grid.log 2>&1; echo "grid rc $?"
  tail -n 20 /tmp/grid.log
  tar czf "$OUT/grid_runs.tgz" --exclude "*.ckpt" runs/lr-robustness 2>/dev/null
  python -m zolightning compare table configs/compare/lr_robustness.yaml | tee "$OUT/grid_table.md"
  ;;
esac
