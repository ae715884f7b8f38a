"""Step time of ZO Fine-tuner's learned block variance vs the plain MeZO step, same model, batch and run.

    python benchmarks/variance_overhead.py --model smollm2-135m-instruct --data-dir ../shared/data \
        --variance-file optimizers/smollm2-135m-instruct.from-llama-3.2-1b.safetensors [--dtype bfloat16]

The two optimizers alternate in rounds (MeZO round, learned round, ...) so drift in clocks or load hits
both alike; each round times `--steps` consecutive steps between CUDA synchronisations.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zolightning.data import TaskDataModule
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim import ZOOptimizer
from zolightning.variance.learned import learned_variance_for


def _round(optimizer: ZOOptimizer, closure, steps: int) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step(closure)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--variance-file", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    data = TaskDataModule("sst2", tokenizer=args.model, data_dir=args.data_dir, batch_size=args.batch_size)
    data.setup()
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in next(iter(data.train_dataloader())).items()}
    model = load_causal_lm(args.model, dtype=args.dtype).cuda()
    params = list(model.parameters())
    scales = learned_variance_for(args.variance_file, model, params, args.batch_size)
    optimizers = {
        "mezo": ZOOptimizer(params, lr=1e-7, eps=1e-3),
        "learned": ZOOptimizer(params, lr=1e-7, eps=1e-3, block_scales=scales),
    }

    def closure():
        return batch_loss(model, batch)[0]

    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for optimizer in optimizers.values():  # warm-up
        _round(optimizer, closure, 3)
    for _ in range(args.rounds):
        for name, optimizer in optimizers.items():
            times[name].append(_round(optimizer, closure, args.steps))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        scales.scales(params)
    torch.cuda.synchronize()
    scales_ms = (time.perf_counter() - start) / args.steps * 1e3
    mezo, learned = statistics.median(times["mezo"]), statistics.median(times["learned"])
    eager = learned_variance_for(args.variance_file, model, params, args.batch_size)
    eager.cuda_graph = False
    eager.load_state_dict(scales.state_dict())
    graph_scales, eager_scales = scales.scales(params).clone(), eager.scales(params)
    difference = ((graph_scales - eager_scales).abs().max() / eager_scales.abs().max()).item()
    print(
        f"model {args.model} dtype {args.dtype} batch {args.batch_size}, {len(params)} blocks, "
        f"{args.rounds} rounds x {args.steps} steps each"
    )
    print("| step | median ms | spread (min-max) ms |\n|---|---|---|")
    for name, value in (("MeZO", mezo), ("learned variance", learned)):
        values = times["mezo" if name == "MeZO" else "learned"]
        print(f"| {name} | {value * 1e3:.2f} | {min(values) * 1e3:.2f}-{max(values) * 1e3:.2f} |")
    print(f"| block scales alone (features, networks, c) | {scales_ms:.2f} | |")
    print(f"CUDA-graph vs eager block scales: max relative difference {difference:.2e}")
    print(f"overhead of learned variance: {100 * (learned / mezo - 1):+.2f}% (target: at most +3%)")


if __name__ == "__main__":
    main()
