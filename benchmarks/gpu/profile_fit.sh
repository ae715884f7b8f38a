# Where a fit step's host time goes: cProfile of `zolightning fit` (tiny model on the GPU: host-bound, no GGUF
# needed), beside fit_throughput's fit-vs-isolated figures for the same model.
#   source benchmarks/gpu/setup.sh && bash benchmarks/gpu/profile_fit.sh
set -o pipefail
mkdir -p "$OUT"
timeout -k 10 200 python3 -m benchmarks.fit_throughput --model tiny-llama --data-dir "$DATA" --cases sst2-bf16 \
  --steps ${STEPS:-600} --log-dir "$OUT" 2>&1 | grep "^{" | tee "$OUT/tiny_throughput.log"
timeout -k 10 200 python3 -m cProfile -o "$OUT/fit.prof" -m zolightning fit --config configs/tiny/sst2_mezo.yaml \
  --data.data_dir "$DATA" --trainer.accelerator gpu --trainer.max_steps ${STEPS:-600} --trainer.val_check_interval 100000 \
  --trainer.limit_val_batches 0 --trainer.enable_progress_bar false --trainer.logger.init_args.save_dir /tmp/prof \
  2>&1 | grep "steps/s"
python3 -c "import pstats; pstats.Stats('$OUT/fit.prof').sort_stats('tottime').print_stats(30)" | cut -c1-170 | tail -40
python3 -c "import pstats; pstats.Stats('$OUT/fit.prof').sort_stats('cumulative').print_stats('zolightning|lightning/pytorch/loops|result.py', 40)" | cut -c1-170 | tail -45
