# Any comparison grid on one GPU lease, in the background so that it outlives each device call.
# After `source benchmarks/gpu/setup.sh join`:
#   GRID=configs/compare/X.yaml [ONLY=a,b] [PARALLEL=9] [FIT_ARGS="--data.eval_batch_size 64"] \
#     bash benchmarks/gpu/grid.sh start                      # setsid, returns at once; FIT_ARGS go to every fit
#   GRID=... BUDGET=540 bash benchmarks/gpu/grid.sh wait      # up to BUDGET s; call again until "grid done"
#   GRID=... bash benchmarks/gpu/grid.sh collect              # table, plots, event archive into $OUT
# Finished runs are skipped, so a grid cut by the end of a lease resumes on the next one (carry its runs folder).
set -u
GRID=${GRID:?set GRID to a grid YAML}
RUNS=$(sed -n 's/^out_dir: *//p' "$GRID")
NAME=$(basename "$GRID" .yaml)
LOG=~/zo/$NAME.log
ONLY_ARGS=()
[ -n "${ONLY:-}" ] && ONLY_ARGS=(--only "$ONLY")
archive() { tar czf "$OUT/${NAME}_runs.tgz" --exclude='*.ckpt' "$RUNS"; }
case "$1" in
start)
  mkdir -p ~/zo
  setsid nohup timeout -k 60 "${GRID_LIMIT:-3000}" python3 -m zolightning compare run "$GRID" \
    --parallel "${PARALLEL:-9}" "${ONLY_ARGS[@]}" -- --model.model "$GGUF" --data.data_dir "$DATA" ${FIT_ARGS:-} >>"$LOG" 2>&1 &
  echo "grid started: $GRID" ;;
wait)
  end=$((SECONDS + ${BUDGET:-540}))
  while pgrep -f "compare run $GRID" >/dev/null && [ $SECONDS -lt $end ]; do sleep 10; done
  pgrep -f "compare run $GRID" >/dev/null && echo "grid still running" || echo "grid done"
  grep -v Warning "$LOG" | grep -E "^\[|grid|failed" | tail -25
  archive ;;
collect)
  python3 -m zolightning compare table "$GRID" | tail -30
  cp "$RUNS"/results.md "$OUT/${NAME}_results.md"
  cp "$RUNS"/*.png "$OUT"/ 2>/dev/null
  archive ;;
esac
