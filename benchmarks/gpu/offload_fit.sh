#!/usr/bin/env bash
# The real `zolightning fit` on SST-2, resident and zo_offload, same config (philox noise, eager forward, fp32):
# their step times and whether the final weights agree. SmolLM2's shape with seeded random weights (no model files
# on the GPU machine). Run by benchmarks/gpu/offload.sh fit (it sources setup.sh first); its logs in /tmp/fit_{resident,offload}.log, JSON lines on stdout.
set -u
python -m benchmarks.random_model_dir --shape smollm2 /tmp/smol >/dev/null || exit 1
common=(--config configs/sst2/mezo.yaml --model.model /tmp/smol --data.data_dir "$DATA" --trainer.max_steps 200
  --trainer.val_check_interval 100 --model.noise philox --model.fast_forward false --model.lr_schedule constant
  --model.dtype float32 --trainer.enable_progress_bar false --data.num_eval 200 --trainer.deterministic true)
for run in resident offload; do
  extra=(); [ "$run" = offload ] && extra=(--trainer.strategy zo_offload)
  timeout -k 10 220 python -m zolightning fit "${common[@]}" "${extra[@]}" --trainer.logger.init_args.save_dir "/tmp/fit_$run" \
    > "/tmp/fit_$run.log" 2>&1
  echo "$run rc $?"
done
python - <<'PY'
import glob, json, torch
from benchmarks.read_curves import scalars
out = {}
for run in ("resident", "offload"):
    ckpt = sorted(glob.glob(f"/tmp/fit_{run}/**/last.ckpt", recursive=True))[-1]
    out[run] = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    curves = scalars(glob.glob(f"/tmp/fit_{run}/**/events.out.tfevents.*", recursive=True)[0].rsplit("/", 1)[0])
    steps = curves["perf/step_seconds"]
    print(json.dumps({"run": run, "step_seconds_median": sorted(steps.values())[len(steps) // 2],
                      "tokens_per_sec_median": sorted(curves["perf/tokens_per_sec"].values())[len(steps) // 2],
                      "val_acc": curves["val/acc"], "last_train_loss": curves["train/loss"][max(curves["train/loss"])]}))
diffs = {k: (out["resident"][k].float() - out["offload"][k].float()).abs().max().item() for k in out["resident"]}
worst = max(diffs, key=diffs.get)
print(json.dumps({"weights_bitwise_equal": sum(d == 0 for d in diffs.values()), "tensors": len(diffs),
                  "max_abs_difference": diffs[worst], "worst_tensor": worst}))
PY
