# Where a real fit's host waits for the GPU, and how its host time splits (issue #11: fit step vs isolated step).
#   source benchmarks/gpu/setup.sh && MODEL=tiny-llama bash benchmarks/gpu/sync_probe.sh
#   source benchmarks/gpu/setup.sh join && MODEL=$GGUF bash benchmarks/gpu/sync_probe.sh
# SST-2's config with --model.model $MODEL, bf16, 300 steps, no validation; the probe (benchmarks/sync_probe.py)
# reports every synchronising CUDA call of steps 50-150 with its stack; then a cProfile of the same fit.
set -o pipefail
mkdir -p "$OUT"
MODEL=${MODEL:-tiny-llama}
name=$(basename "$MODEL" .gguf)
fit="python3 -m zolightning fit --config configs/sst2/mezo.yaml --model.model $MODEL --data.data_dir $DATA
  --trainer.precision bf16-true --model.dtype bfloat16 --trainer.max_steps ${STEPS:-300} --trainer.limit_val_batches 0
  --trainer.val_check_interval 100000 --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir /tmp/probe"
timeout -k 10 ${LIMIT:-200} $fit --trainer.callbacks+=benchmarks.sync_probe.SyncProbe 2>&1 \
  | grep -E -A9 "sync probe|sync x|steps/s|first step|rror" | tee "$OUT/sync_probe_$name.log"
[ "${PROFILE:-1}" = 0 ] && exit 0
timeout -k 10 ${LIMIT:-200} python3 -m cProfile -o /tmp/fit.prof -m zolightning $(echo $fit | cut -d' ' -f4-) 2>&1 \
  | grep "steps/s" | tee -a "$OUT/sync_probe_$name.log"
python3 - <<'PY' 2>&1 | cut -c1-180 | tee -a "$OUT/sync_probe_$name.log"
import pstats
s = pstats.Stats("/tmp/fit.prof")
s.sort_stats("tottime").print_stats(25)
s.sort_stats("cumulative").print_stats("zolightning|lightning/pytorch/loops|result.py|fetchers|dataloader|lightning_optimizer", 45)
PY
