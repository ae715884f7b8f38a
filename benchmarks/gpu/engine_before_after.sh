#!/usr/bin/env bash
# The engine redesign (#30) on one GPU, before and after, back to back: every rule's step time and peak memory.
#   here:        rm -rf .carry/old && mkdir -p .carry/old && git archive 3d44442 zolightning benchmarks configs optimizers | tar -x -C .carry/old
#   on the GPU:  (carry .whl .carry/old)  bash benchmarks/gpu/engine_before_after.sh   -> $OUT/{before,after}_{1,2}.md
set -u
source benchmarks/gpu/setup.sh stash >/dev/null 2>&1 || { echo "setup failed"; exit 1; }
nvidia-smi -L
run() {  # $1: before|after, $2: round, $3: the checkout whose zolightning runs
  (cd "$3" && PYTHONPATH=/tmp/site:$PWD timeout -k 10 240 python -m benchmarks.optimizer_family --model smollm2 \
    --dtype bfloat16 --fast-forward --repeats 40 > "$OUT/$1_$2.md" 2>&1; echo "$1 $2 rc $?")
}
for round in 1 2; do  # alternating, so that a drift of the GPU's clocks falls on both
  run before "$round" .carry/old
  run after "$round" .
done
grep -h "^| " "$OUT"/*.md | head -40
