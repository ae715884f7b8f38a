#!/usr/bin/env bash
# CPU pilot of the K-step meta-objective (issue #34): the same meta-training (configs/meta/horizon.yaml: COPA, the
# grid's lr range, same seeds and lr draws) at K = 1 and K = 4 for 40 meta steps each, without downstream runs, then
# each file's mean (c sigma)^2 per block type at the pretrained weights (SST-2's first batch as history).
#   bash benchmarks/horizon_pilot.sh [OUT_DIR] [SEED]   (about 20 min on 2 cores: K = 1 5 min, K = 4 15 min)
# SEED sets seed_everything, the networks' initialisation and directions (zo_seed) and the data order.
set -eu
out=${1:-/tmp/horizon_pilot} seed=${2:-0}
mkdir -p "$out"
for k in 1 4; do
  start=$(date +%s)
  zolightning meta fit --config configs/meta/horizon.yaml --data.data_dir ../shared/data \
    --trainer.accelerator cpu --trainer.max_steps 80 --trainer.val_check_interval 100000 --trainer.limit_val_batches 0 \
    --model.downstream null --model.horizon $k --model.output "$out/k$k.safetensors" --model.save_every_n_steps 0 \
    --seed_everything "$seed" --model.zo_seed "$seed" --data.seed "$seed" --trainer.log_every_n_steps 2 --trainer.logger.init_args.save_dir "$out/logs" \
    --trainer.logger.init_args.name "k$k" --trainer.enable_progress_bar false > "$out/k$k.log" 2>&1
  echo "K = $k: $(( $(date +%s) - start )) s"
done
python -m benchmarks.sigma_geometry --data-dir ../shared/data --scales-only --labels start "K=1" "K=4" \
  --files "$out/k1.start.safetensors" "$out/k1.safetensors" "$out/k4.safetensors"
