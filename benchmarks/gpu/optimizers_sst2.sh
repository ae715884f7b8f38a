# Issue #14's short table (configs/compare/sst2_optimizers_short.yaml) on one GPU. After `source benchmarks/gpu/setup.sh join`:
#   BUDGET=540 bash benchmarks/gpu/optimizers_sst2.sh start    # the grid in the background (setsid): it outlives the call
#   bash benchmarks/gpu/optimizers_sst2.sh wait                 # up to BUDGET s more; call again until "grid done"
#   bash benchmarks/gpu/optimizers_sst2.sh collect              # table, plots, archive into $OUT
# Finished runs are skipped (carry runs/sst2-optimizers-short to keep those of an earlier lease).
set -u
OPT=configs/compare/sst2_optimizers_short.yaml
archive() { tar czf "$OUT"/sst2_optimizers_runs.tgz --exclude='*.ckpt' runs/sst2-optimizers-short; }
case "$1" in
start)
  setsid nohup timeout -k 60 ${GRID_LIMIT:-3000} python3 -m zolightning compare run $OPT --parallel ${OPT_PARALLEL:-9} \
    -- --model.model "$GGUF" --data.data_dir "$DATA" >>~/zo/optimizers.log 2>&1 &
  echo "grid started" ;;
wait)
  end=$((SECONDS + ${BUDGET:-540}))
  while pgrep -f "compare run $OPT" >/dev/null && [ $SECONDS -lt $end ]; do sleep 10; done
  pgrep -f "compare run $OPT" >/dev/null && echo "grid still running" || echo "grid done"
  grep -v Warning ~/zo/optimizers.log | grep -E "^\[|grid|failed" | tail -25
  archive ;;
collect)
  python3 -m zolightning compare table $OPT | tail -30
  cp runs/sst2-optimizers-short/results.md "$OUT"/optimizers_results.md
  cp runs/sst2-optimizers-short/*.png "$OUT"/ 2>/dev/null
  archive ;;
esac
