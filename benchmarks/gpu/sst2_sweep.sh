# LR sweep of MeZO on SmolLM2/SST-2 (fp32), runs in parallel on one GPU, plus zero-shot validation.
#   source benchmarks/gpu/setup.sh join && bash benchmarks/gpu/sst2_sweep.sh STEPS LR [LR ...]
steps=$1; shift
common="--config configs/sst2/mezo.yaml --model.model $GGUF --data.data_dir $DATA --trainer.enable_progress_bar false"
python3 -m zolightning validate $common --trainer.logger.init_args.name zero-shot > $OUT/zero_shot.log 2>&1 &
for lr in "$@"; do
  python3 -m zolightning fit $common --model.lr $lr --trainer.max_steps $steps --trainer.val_check_interval 500 \
    --trainer.logger.init_args.name sweep-lr$lr > $OUT/sweep_lr$lr.log 2>&1 &
done
wait
grep -h -A8 "Validate metric" $OUT/zero_shot.log
python3 benchmarks/read_curves.py logs/sweep-lr*/version_0 | tee $OUT/sweep.md
tar czf $OUT/events.tgz logs/*/version_*/events* logs/*/version_*/config.yaml
