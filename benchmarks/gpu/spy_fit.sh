# Where a real fit's host time goes per training step (issue #11), sampled by py-spy.
#   (carry .carry/s: the py-spy wheel; pip install --target /tmp/spy .carry/s/*.whl)
#   source benchmarks/gpu/setup.sh && MODEL=tiny-llama bash benchmarks/gpu/spy_fit.sh
#   source benchmarks/gpu/setup.sh join && MODEL=$GGUF bash benchmarks/gpu/spy_fit.sh
# SST-2's config, bf16, ${STEPS:-1500} steps, no validation; prints benchmarks/spy_summary.py's shares.
set -o pipefail
mkdir -p "$OUT"
[ -x /tmp/spy/bin/py-spy ] || python3 -m pip install -q --no-index --no-deps --target /tmp/spy .carry/s/*.whl
MODEL=${MODEL:-tiny-llama}
name=$(basename "$MODEL" .gguf)
timeout -k 10 ${LIMIT:-240} /tmp/spy/bin/py-spy record --nonblocking -r ${RATE:-100} -f raw -o "$OUT/spy_$name.txt" -- \
  python3 -m zolightning fit --config configs/sst2/mezo.yaml --model.model $MODEL --data.data_dir $DATA \
  --trainer.precision bf16-true --model.dtype bfloat16 --trainer.max_steps ${STEPS:-1500} --trainer.limit_val_batches 0 \
  --trainer.val_check_interval 100000 --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir /tmp/spy_logs \
  2>&1 | grep -E "steps/s|rror|py-spy>" | tee "$OUT/spy_$name.log"
python3 -m benchmarks.spy_summary "$OUT/spy_$name.txt" --top ${TOP:-70} 2>&1 | tee -a "$OUT/spy_$name.log"
