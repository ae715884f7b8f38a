# Issue #14's short table (configs/compare/sst2_optimizers_short.yaml) beside issue #12's learned_last runs
# (configs/compare/sst2_learned.yaml), both grids at once on one GPU. After `source benchmarks/gpu/setup.sh join`:
#   BUDGET=540 bash benchmarks/gpu/optimizers_sst2.sh run       # resumable: call again until both are done
#   bash benchmarks/gpu/optimizers_sst2.sh collect              # tables, plots, archives into $OUT
set -u
OPT=configs/compare/sst2_optimizers_short.yaml
LEARNED=configs/compare/sst2_learned.yaml
FIT_ARGS=(-- --model.model "$GGUF" --data.data_dir "$DATA")
case "$1" in
run)
  timeout -k 60 ${BUDGET:-540} python3 -m zolightning compare run $OPT --parallel ${OPT_PARALLEL:-8} "${FIT_ARGS[@]}" >>"$OUT"/optimizers.log 2>&1 &
  timeout -k 60 ${BUDGET:-540} python3 -m zolightning compare run $LEARNED --only learned_last --parallel 3 \
    "${FIT_ARGS[@]}" >>"$OUT"/learned_last.log 2>&1 &
  wait
  grep -v Warning "$OUT"/optimizers.log | grep -E "^\[|grid|running|failed" | tail -20
  grep -E "^\[|grid|failed" "$OUT"/learned_last.log | tail -5
  tar czf "$OUT"/sst2_optimizers_runs.tgz --exclude='*.ckpt' runs/sst2-optimizers-short runs/sst2-learned ;;
collect)
  python3 -m zolightning compare table $OPT | tail -30
  cp runs/sst2-optimizers-short/results.md "$OUT"/optimizers_results.md
  tar czf "$OUT"/sst2_optimizers_runs.tgz --exclude='*.ckpt' runs/sst2-optimizers-short runs/sst2-learned ;;
esac
