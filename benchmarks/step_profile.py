"""Where one ZO step's GPU time goes: torch.profiler's kernel table for a rule, full-model or LoRA (GPU).

    python -m benchmarks.step_profile --dtype bfloat16                 # MeZO's step on the fast path
    python -m benchmarks.step_profile --dtype bfloat16 --lora          # the same with LoRA r 8 on q, v

SmolLM2's shape with random weights, batch 16 x 64, the fit's compiled, CUDA-graphed forward (as
`optimizer_family.py --fast-forward`); after warm-up, `--steps` steps are profiled and the kernels are listed by
their total CUDA time, with the sum per step.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.optimizer_family import scoring_model
from benchmarks.step_time import build_model, random_batch
from zolightning.forward.scoring import batch_loss
from zolightning.models.lora import add_lora
from zolightning.optim import build_zo_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--rule", default="zo_sgd")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--lora-dtype", default="model", choices=["model", "float32"], help="the adapters' dtype")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25, help="kernels listed")
    args = parser.parse_args()
    model = build_model(args.model, getattr(torch, args.dtype))
    model.requires_grad_(not args.lora)
    if args.lora:
        model, _ = add_lora(model, dtype=args.lora_dtype)
    batch = random_batch(model.config.vocab_size, 16, 64)
    scorer = scoring_model(model, batch, fast_forward=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_zo_optimizer(args.rule, params, lr=1e-7, eps=1e-3, noise="philox", sync=False)

    def step():
        optimizer.step(lambda: batch_loss(scorer, batch)[0])

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) / args.steps
    lora = f" + LoRA r 8 (q,v), {args.lora_dtype} adapters" if args.lora else ""
    label = f"{args.rule}{lora}, {args.dtype}"
    print(
        f"{label}: {total / 1000:.2f} ms of kernels per step, {sum(e.count for e in events) / args.steps:.0f} launches"
    )
    print("| kernel | per step (us) | calls per step |")
    print("|---|---|---|")
    for e in events[: args.rows]:
        print(f"| {e.key[:90]} | {e.device_time_total / args.steps:.1f} | {e.count / args.steps:.0f} |")


if __name__ == "__main__":
    main()
