# Issue #6 on one H100: step-time benchmark (random SmolLM2/Llama-1B/3B shapes: no model file needed), then bf16
# vs fp32 MeZO on SST-2 (2,500 steps) with the fused philox path (needs the GGUF and data of setup.sh).
#   source benchmarks/gpu/setup.sh && bash benchmarks/gpu/step_time.sh bench    (split with MODELS=, OPTIONS=)
#   source benchmarks/gpu/setup.sh join && bash benchmarks/gpu/step_time.sh sst2-bf16      (under 10 min)
set -o pipefail
mkdir -p "$OUT"
if [ "$1" = bench ]; then
  python3 -m pytest -q tests/test_gpu.py 2>&1 | tail -15  # the kernel and the CUDA-graph forward, checked first
  for model in ${MODELS:-smollm2 llama-1b llama-3b}; do  # MODELS=llama-3b ... to split across calls
    timeout "${LIMIT:-200}" python3 -m benchmarks.step_time --model "$model" --dtype bfloat16 \
      ${OPTIONS:---noise philox --fast-forward} 2>&1 | grep -v Converting
  done | tee -a "$OUT/step_time.md"
elif [ "$1" = sst2-bf16 ]; then
  c="--config configs/sst2/mezo.yaml --model.model $GGUF --data.data_dir $DATA --trainer.enable_progress_bar false"
  c="$c --trainer.max_steps 2500 --trainer.val_check_interval 250 --model.noise philox"
  timeout 560 python3 -m zolightning fit $c --trainer.precision bf16-true --model.dtype bfloat16 \
    --model.stochastic_rounding true --trainer.logger.init_args.name sst2-bf16-philox-sr > "$OUT/bf16_sr.log" 2>&1 &
  timeout 560 python3 -m zolightning fit $c --trainer.precision bf16-true --model.dtype bfloat16 \
    --trainer.logger.init_args.name sst2-bf16-philox-rn > "$OUT/bf16_rn.log" 2>&1 &
  timeout 560 python3 -m zolightning fit $c --trainer.logger.init_args.name sst2-fp32-philox > "$OUT/fp32.log" 2>&1 &
  wait
  python3 -m benchmarks.read_curves logs/sst2-*-philox*/version_0 | tee "$OUT/curves.md"
  tar czf "$OUT/events.tgz" logs/sst2-*-philox*/version_0
fi
