# GPU runs of issues #3, #4 and #5 on one H100, in three calls (each under the 600 s call limit):
#   source benchmarks/gpu/setup.sh join && bash benchmarks/gpu/suite_runs.sh overhead-meta-zeroshot
#   source benchmarks/gpu/setup.sh && bash benchmarks/gpu/suite_runs.sh sst2-meta-trained
#   source benchmarks/gpu/setup.sh && bash benchmarks/gpu/suite_runs.sh mezo-tasks
# Timed benchmarks run alone on the GPU; training runs then share it. Everything lands in $OUT/<phase>.tgz.
phase=$1
run=$HOME/zo/$phase
mkdir -p "$run"
meta_file=$HOME/zo/meta-copa.safetensors
args="--model.model $GGUF --data.data_dir $DATA --trainer.enable_progress_bar false"
guard="timeout 520"  # stop training runs early enough for the logs to be packed and returned

if [ "$phase" = overhead-meta-zeroshot ]; then
  for dtype in float32 bfloat16; do
    python3 benchmarks/variance_overhead.py --model "$GGUF" --data-dir "$DATA" --dtype $dtype --rounds 9 \
      --variance-file optimizers/smollm2-135m-instruct.from-llama-3.2-1b.safetensors > "$run/overhead_$dtype.md" 2>&1
  done
  python3 -m benchmarks.meta_memory --model "$GGUF" --data-dir "$DATA" > "$run/meta_memory.md" 2>&1
  (
    start=$(date +%s)
    $guard python3 -m zolightning meta fit --config configs/meta/copa.yaml $args --model.output "$meta_file" \
      > "$run/meta_copa.log" 2>&1
    echo "exit $? wall $(( $(date +%s) - start )) s" >> "$run/meta_copa.log"
  ) &
  $guard python3 -m zolightning fit --config configs/sst2/zo_finetuner.yaml $args --trainer.max_steps 200 \
    --trainer.val_check_interval 200 --trainer.logger.init_args.name sst2-learned-graph-check \
    > "$run/learned_fit.log" 2>&1 &
  for task in sst2 copa cb boolq wsc squad; do
    $guard python3 -m zolightning validate --config configs/$task/mezo.yaml $args \
      --trainer.logger.init_args.name zero-shot-$task > "$run/zero_shot_$task.log" 2>&1 &
  done
  wait
  cp "$meta_file" "$OUT/" 2>/dev/null
elif [ "$phase" = sst2-meta-trained ]; then
  for seed in 0 1; do
    $guard python3 -m zolightning fit --config configs/sst2/zo_finetuner.yaml $args --model.variance_file "$meta_file" \
      --model.zo_seed $seed --trainer.max_steps 2000 --trainer.val_check_interval 250 \
      --trainer.logger.init_args.name sst2-meta-copa-s$seed > "$run/sst2_meta_copa_s$seed.log" 2>&1 &
  done
  wait
elif [ "$phase" = mezo-tasks ]; then
  for task in copa cb boolq wsc squad; do
    $guard python3 -m zolightning fit --config configs/$task/mezo.yaml $args --trainer.max_steps 1000 \
      --trainer.val_check_interval 500 --trainer.logger.init_args.name $task-mezo-1000 \
      > "$run/${task}_mezo.log" 2>&1 &
  done
  wait
else
  echo "unknown phase $phase"; exit 2
fi
for f in "$run"/*; do echo "== $f"; grep -v "Warning\|warn(" "$f" | tail -25; done
python3 benchmarks/read_curves.py logs/*/version_* --tags val/acc eval/acc val/f1 eval/f1 > "$run/curves.md" 2>&1
tar czf "$OUT/$phase.tgz" -C "$HOME/zo" "$phase"
tar czf "$OUT/$phase-events.tgz" logs/*/version_*/events* logs/*/version_*/config.yaml
