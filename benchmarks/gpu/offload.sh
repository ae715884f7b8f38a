#!/usr/bin/env bash
# Issue #31 on one GPU: offloaded ZO (zo_offload), sharded ZO over gloo with two ranks on the GPU, fake-group scale.
#   on the GPU:  (carry .whl .carry/d)  bash benchmarks/gpu/offload.sh PART   -> $OUT/*.jsonl, $OUT/*.log
# PART a: GPU tests of offload, gloo-on-one-GPU equality (SmolLM2 shape, 200 steps, fp32 and bf16), 8B offload
#         vs resident, fake-group 8B at N = 2, 4, 8.   PART b: 32B offload (and resident if it fits), 70B fake group.
#         PART fit: the real `zolightning fit` on SST-2, resident vs zo_offload (SmolLM2 shape, random weights).
set -u
source benchmarks/gpu/setup.sh stash >/dev/null 2>&1 || { echo "setup failed"; exit 1; }
nvidia-smi -L
step() {  # $1: name, $2: seconds, rest: the command; its output to $OUT/$1.log, its JSON lines to $OUT/$1.jsonl
  local name=$1 limit=$2; shift 2
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "$name rc $?"
  grep -h '^{' "$OUT/$name.log" > "$OUT/$name.jsonl"; tail -c 1500 "$OUT/$name.jsonl"
}
case "${1:-a}" in
a)
  step gpu_tests 120 python -m pytest -q -x tests/test_gpu.py -k "streamed or fused_step"
  step sharded_gloo 200 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32,bfloat16
  step offload_8b 150 python -m benchmarks.offload_scale --shape 8b --batch 16 --seq 512 --steps 4 --resident
  for n in 2 4 8; do step "fake_8b_$n" 60 python -m benchmarks.sharded_scale --shape 8b --fake-world $n --steps 3; done
  ;;
b)
  step offload_32b 330 python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 3 --resident
  for n in 2 4 8; do step "fake_70b_$n" 80 python -m benchmarks.sharded_scale --shape 70b --fake-world $n --steps 3; done
  ;;
fit)
  step offload_fit 500 bash benchmarks/gpu/offload_fit.sh
  ;;
esac
