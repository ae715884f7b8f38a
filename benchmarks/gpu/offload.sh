#!/usr/bin/env bash
# Issue #31 on one GPU: offloaded ZO (zo_offload), sharded ZO over gloo with two ranks on the GPU, fake-group scale.
#   on the GPU:  (carry .whl .carry/d)  bash benchmarks/gpu/offload.sh PART   -> $OUT/PART.jsonl, $OUT/PART_logs.txt
# PART a: GPU tests of offload, gloo-on-one-GPU equality (SmolLM2 shape, 200 steps, fp32 and bf16), 8B offload
#         vs resident, fake-group 8B at N = 2, 4, 8.   PART b: 32B offload (and resident if it fits), 70B fake group.
#         PART fit: the real `zolightning fit` on SST-2, resident vs zo_offload (SmolLM2 shape, random weights).
set -u
source benchmarks/gpu/setup.sh stash >/dev/null 2>&1 || { echo "setup failed"; exit 1; }
nvidia-smi -L
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS where a run asks for deterministic algorithms
part=${1:-a}
step() {  # $1: name, $2: seconds, rest: the command; JSON lines to $OUT/$part.jsonl, the log's tail to the logs file
  local name=$1 limit=$2 rc; shift 2
  timeout -k 10 "$limit" "$@" > "/tmp/$name.log" 2>&1; rc=$?; echo "$name rc $rc"
  grep -h '^{' "/tmp/$name.log" | sed "s/^{/{\"step\": \"$name\", /" >> "$OUT/$part.jsonl"
  { echo "=== $name rc $rc: $*"; tail -n 40 "/tmp/$name.log"; } >> "$OUT/${part}_logs.txt"
  grep -h '^{' "/tmp/$name.log" | tail -c 1200
}
case "$part" in
a)
  step gpu_tests 120 python -m pytest -q tests/test_gpu.py -k "streamed or fused_step"
  step sharded_gloo 200 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32,bfloat16
  step offload_8b 150 python -m benchmarks.offload_scale --shape 8b --batch 16 --seq 512 --steps 4 --resident
  for n in 2 4 8; do step "fake_8b_$n" 60 python -m benchmarks.sharded_scale --shape 8b --fake-world $n --steps 3; done
  ;;
c)  # the second lease: the tests and the gloo equality again (after fixes), accumulation's peak, 32B
  step gpu_tests 60 python -m pytest -q tests/test_gpu.py -k "streamed or fused_step"
  step sharded_gloo 120 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32,bfloat16
  step accumulation 45 python -m benchmarks.accumulation_memory --shape smollm2 --batch 16 --micro 4 --seq 512
  step offload_32b 230 python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 2 --resident
  ;;
d)  # a short lease: the gloo equality, 32B, accumulation's peak
  step sharded_gloo 90 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32,bfloat16
  step offload_32b 200 python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 2 --resident
  step accumulation 30 python -m benchmarks.accumulation_memory --shape smollm2 --batch 16 --micro 4 --seq 512
  ;;
e)  # the last minutes of a lease: the gloo equality and accumulation's peak
  step sharded_gloo 90 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32,bfloat16
  step accumulation 30 python -m benchmarks.accumulation_memory --shape smollm2 --batch 16 --micro 4 --seq 512
  ;;
f)  # one full lease: the gloo equality, accumulation's peak, the fake group (8B again after the embedding and head
   # became their own units, then 70B), 32B offloaded last (the longest; the runs before it are kept if it is cut)
  step sharded_gloo 90 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32,bfloat16
  step accumulation 40 python -m benchmarks.accumulation_memory --shape smollm2 --batch 16 --micro 4 --seq 512
  for n in 2 4 8; do step "fake_8b_$n" 40 python -m benchmarks.sharded_scale --shape 8b --fake-world $n --steps 3; done
  for n in 2 4 8; do step "fake_70b_$n" 50 python -m benchmarks.sharded_scale --shape 70b --fake-world $n --steps 3; done
  step offload_32b 230 python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 2 --resident
  ;;
g)  # a lease split in three calls (the GGUF travels meanwhile), first call: all but 32B and the fit
  step sharded_gloo 90 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32,bfloat16
  step accumulation 40 python -m benchmarks.accumulation_memory --shape smollm2 --batch 16 --micro 4 --seq 512
  for n in 2 4 8; do step "fake_8b_$n" 40 python -m benchmarks.sharded_scale --shape 8b --fake-world $n --steps 3; done
  for n in 2 4 8; do step "fake_70b_$n" 50 python -m benchmarks.sharded_scale --shape 70b --fake-world $n --steps 3; done
  ;;
h)  # second call: 32B offloaded (the GPU tests of offload first, as a check of the machine)
  step gpu_tests 60 python -m pytest -q tests/test_gpu.py -k "streamed or fused_step"
  step offload_32b 280 python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 2 --resident
  ;;
i)  # the third lease, first call: host memory with the HostArena at 8B, the gloo equality over 200 fp32 steps
  step offload_8b 150 python -m benchmarks.offload_scale --shape 8b --batch 16 --seq 512 --steps 4
  step sharded_gloo_fp32 330 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes float32
  ;;
j)  # second call: the gloo equality over 200 bf16 steps, 32B offloaded with the HostArena (its build is 3 minutes)
  step sharded_gloo_bf16 300 python -m torch.distributed.run --nproc_per_node 2 -m benchmarks.sharded_on_one_gpu \
    --shape smollm2 --steps 200 --dtypes bfloat16
  step offload_32b 280 python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 2
  ;;
fit)  # the real fit, resident against zo_offload
  bash benchmarks/gpu/offload_fit.sh > /tmp/fit.log 2>&1; echo "fit rc $?"; grep -h "^{" /tmp/fit.log >> "$OUT/fit.jsonl"
  { echo "=== fit"; tail -n 30 /tmp/fit.log; tail -n 15 /tmp/fit_*.log 2>/dev/null; } >> "$OUT/fit_logs.txt"
  grep -h "^{" /tmp/fit.log
  ;;
b)
  step offload_32b 330 python -m benchmarks.offload_scale --shape 32b --batch 16 --seq 512 --steps 3 --resident
  for n in 2 4 8; do step "fake_70b_$n" 80 python -m benchmarks.sharded_scale --shape 70b --fake-world $n --steps 3; done
  ;;
esac
