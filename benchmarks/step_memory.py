"""Peak GPU memory and time of one ZO step vs inference on the same batch.

    python -m benchmarks.step_memory --model smollm2-135m-instruct --data-dir ../shared/data [--dtype bfloat16]

Inference = the forward that scores one training batch, under no_grad. The ZO step = two such forwards
plus the perturbation passes; its extra memory should be one float32 noise tensor of the largest block.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import peak_mib, timed, to_device
from zolightning.data import TaskDataModule
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim import ZOOptimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    device = torch.device("cuda")
    data = TaskDataModule("sst2", tokenizer=args.model, data_dir=args.data_dir, batch_size=args.batch_size)
    data.setup()
    batch = to_device(next(iter(data.train_dataloader())), device)
    model = load_causal_lm(args.model, dtype=args.dtype).to(device)
    optimizer = ZOOptimizer(model.parameters(), lr=1e-7, eps=1e-3)
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20

    def forward():
        with torch.no_grad():
            return batch_loss(model, batch)[0].item()

    def step():
        optimizer.step(lambda: batch_loss(model, batch)[0])

    forward()
    inference_peak, step_peak = peak_mib(forward), peak_mib(step)
    forward_s, step_s = timed(forward, args.repeats), timed(step, args.repeats)
    largest = max(p.numel() for p in model.parameters()) * 4 / 2**20
    print(f"model {args.model} dtype {args.dtype} batch {args.batch_size} x {tuple(batch['input_ids'].shape)} tokens")
    print("| quantity | value |\n|---|---|")
    print(f"| weights | {weights_mib:.1f} MiB |")
    print(f"| inference peak (one scoring forward) | {inference_peak:.1f} MiB |")
    print(f"| ZO step peak | {step_peak:.1f} MiB |")
    print(f"| step peak / inference peak | {step_peak / inference_peak:.3f} |")
    print(f"| largest block as float32 noise | {largest:.1f} MiB |")
    print(f"| forward (median) | {forward_s * 1e3:.1f} ms |")
    print(f"| ZO step (median) | {step_s * 1e3:.1f} ms |")
    print(f"| step / 2 forwards | {step_s / (2 * forward_s):.2f} |")


if __name__ == "__main__":
    main()
