# Issue #33: one of several fits sharing a GPU runs out of memory; it fails alone, with the OOM in its status.json,
# while the others finish. Run after reliability.sh's set-up lines (wheels in /tmp/site, data in ~/zo/data):
#   bash benchmarks/gpu/oom_isolation.sh      # writes $OUT/oom_isolation.log and $OUT/oom_status/*.json
# A second process holds all but HEADROOM_GIB of the GPU, as other tenants would; three tiny-model fits share the
# rest (parallel 3 on GPU 0): two at the config's batch, one at a batch of 32768 that cannot fit.
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
DATA=$HOME/zo/data
HEADROOM_GIB=${HEADROOM_GIB:-4}
WORK=$(mktemp -d)
python3 - "$HEADROOM_GIB" > $WORK/hog.log 2>&1 <<'PY' &
import sys, time, torch
free, _ = torch.cuda.mem_get_info()
held = torch.empty(free - int(float(sys.argv[1]) * 2**30), dtype=torch.uint8, device="cuda")
print(f"holding {held.numel() / 2**30:.1f} GiB", flush=True)
time.sleep(3600)
PY
HOG=$!
sleep 20; cat $WORK/hog.log
cat > $WORK/grid.yaml <<YAML
name: oom-isolation
out_dir: $WORK/out
tasks: [sst2]
methods:
  small: {config: configs/tiny/sst2_mezo.yaml}
  small_too: {config: configs/tiny/sst2_mezo.yaml}
  huge_batch:
    config: configs/tiny/sst2_mezo.yaml
    args: {data.batch_size: 32768, data.num_train: 40000}
lrs: [1.0e-3]
seeds: [0]
args: {trainer.max_steps: 100, trainer.val_check_interval: 50, trainer.accelerator: gpu}
parallel: 3
devices: [0]
YAML
timeout -k 10 400 python3 -m zolightning compare run $WORK/grid.yaml -- --data.data_dir $DATA 2>&1 | tee $OUT/oom_isolation.log
echo "compare run exit: ${PIPESTATUS[0]}" | tee -a $OUT/oom_isolation.log
kill $HOG
mkdir -p $OUT/oom_status
for f in $WORK/out/sst2/*/lr*/seed0/status.json; do
  m=$(echo $f | sed 's|.*/sst2/\([^/]*\)/.*|\1|'); cp $f $OUT/oom_status/$m.json
  echo "$m: $(cat $f | tr -d '\n')" | tee -a $OUT/oom_isolation.log
done
nvidia-smi --query-gpu=memory.used,memory.total --format=csv | tee -a $OUT/oom_isolation.log
