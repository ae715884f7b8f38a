# Issue #12 on one GPU lease: meta-train SmolLM2's variance networks (configs/meta/multitask.yaml) in the
# background while MeZO and the re-targeted 1B file run SST-2 (configs/compare/sst2_learned.yaml), then the
# learned file's own SST-2 runs. Run after `source benchmarks/gpu/setup.sh join`; each phase fits in one call.
#   bash benchmarks/gpu/learned_sst2.sh start      # meta-training (setsid, outlives the call) + baselines
#   bash benchmarks/gpu/learned_sst2.sh baselines  # resume the baselines
#   bash benchmarks/gpu/learned_sst2.sh learned    # wait for meta-training, then the learned runs
#   bash benchmarks/gpu/learned_sst2.sh collect    # table, plots, archives into $OUT
set -u
META=~/zo/meta
GRID=configs/compare/sst2_learned.yaml
FIT_ARGS=(-- --model.model "$GGUF" --data.data_dir "$DATA")
budget=${BUDGET:-520}
case "$1" in
start)
  mkdir -p $META
  setsid nohup timeout -k 10 ${META_SECONDS:-1500} python3 -m zolightning meta fit \
    --config configs/meta/multitask.yaml --model.model "$GGUF" --data.data_dir "$DATA" \
    --trainer.max_steps ${META_STEPS:-1600} --model.output $META/smollm2-135m-instruct.meta-multitask.safetensors \
    --trainer.logger.init_args.save_dir $META/logs >$META/log.txt 2>&1 &
  timeout -k 60 $budget python3 -m zolightning compare run $GRID --only mezo,retargeted "${FIT_ARGS[@]}"
  tail -5 $META/log.txt ;;
baselines)
  timeout -k 60 $budget python3 -m zolightning compare run $GRID --only mezo,retargeted "${FIT_ARGS[@]}"
  tail -5 $META/log.txt ;;
learned)
  end=$((SECONDS + ${WAIT_META:-300}))
  while pgrep -f "zolightning meta fit" >/dev/null && [ $SECONDS -lt $end ]; do sleep 10; done
  pkill -TERM -f "zolightning meta fit"; sleep 5
  tail -20 $META/log.txt
  cp $META/smollm2-135m-instruct.meta-multitask.best.safetensors optimizers/ || exit 1
  timeout -k 60 $((budget - SECONDS)) python3 -m zolightning compare run $GRID "${FIT_ARGS[@]}" ;;
collect)
  python3 -m zolightning compare table $GRID
  cp runs/sst2-learned/results.md runs/sst2-learned/*.png "$OUT"/
  cp $META/*.best.safetensors "$OUT"/
  tar czf "$OUT"/sst2_learned_runs.tgz --exclude='*.ckpt' runs/sst2-learned -C ~/zo meta ;;
esac
