"""Does a bf16 ZO run follow the float32 one? Same data, seed and lr, several precision/noise settings.

    python -m benchmarks.bf16_tracking --model tiny-llama --data-dir ../shared/data --steps 600 --lr 1e-3
    python -m benchmarks.bf16_tracking --model smollm2-135m-instruct --data-dir ... --device cuda --lr 3e-5

Runs ZOSGD from the same initial weights with: float32 (generator noise), float32 (philox), bf16 with the
generator path (+eps/-2eps/+eps rounded each time), bf16 philox with round-to-nearest updates, bf16 philox
with stochastic rounding. Prints the loss on fixed held-out batches (evaluated in float32) every `--every`
steps, and how far each run's final weights are from the float32 run with the same noise (relative L2).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.timing import to_device
from zolightning.data import TaskDataModule
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.optim import ZOOptimizer

SETTINGS = {  # name: (dtype, noise, stochastic rounding)
    "fp32 generator": (torch.float32, "generator", False),
    "fp32 philox": (torch.float32, "philox", False),
    "bf16 generator": (torch.bfloat16, "generator", False),
    "bf16 philox nearest": (torch.bfloat16, "philox", False),
    "bf16 philox stochastic": (torch.bfloat16, "philox", True),
}


@torch.no_grad()
def held_out_loss(weights: list[torch.Tensor], reference, batches: list[dict]) -> float:
    """Loss of `weights` (any dtype), copied into the float32 `reference` model."""
    for p, w in zip(reference.parameters(), weights):
        p.copy_(w)
    return sum(batch_loss(reference, b)[0].item() for b in batches) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = TaskDataModule(args.task, tokenizer=args.model, data_dir=args.data_dir, batch_size=16, seed=0)
    data.setup()
    loader = data.train_dataloader()
    train = [to_device(b, args.device) for _, b in zip(range(args.steps), loader)]
    held_out = [to_device(b, args.device) for b in list(data.val_dataloader())[0]][:4]
    reference = load_causal_lm(args.model).to(args.device)
    finals, curves = {}, {}
    for name, (dtype, noise, stochastic) in SETTINGS.items():
        model = load_causal_lm(args.model).to(device=args.device, dtype=dtype)
        optimizer = ZOOptimizer(model.parameters(), lr=args.lr, eps=args.eps, seed=0, noise=noise,
                          stochastic_rounding=stochastic)  # fmt: skip
        curve = []
        for step, batch in enumerate(train, 1):
            optimizer.step(lambda batch=batch, model=model: batch_loss(model, batch)[0])
            if step % args.every == 0:
                curve.append(held_out_loss(list(model.parameters()), reference, held_out))
        curves[name], finals[name] = curve, [p.detach().float().clone() for p in model.parameters()]
        print(f"{name}: done", flush=True)

    def distance(name: str) -> float:  # relative L2 distance to the float32 run with the same noise
        anchor = finals["fp32 generator" if "generator" in name else "fp32 philox"]
        norm = torch.sqrt(sum((w**2).sum() for w in anchor))
        return (torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(finals[name], anchor))) / norm).item()

    print(f"\n{args.model}, {args.task}, lr {args.lr}, eps {args.eps}, {args.steps} steps; held-out loss (fp32 eval)")
    print("| setting | " + " | ".join(f"step {s}" for s in range(args.every, args.steps + 1, args.every))
          + " | distance to fp32, same noise |")  # fmt: skip
    print("|---" * (len(curves["fp32 philox"]) + 2) + "|")
    for name, curve in curves.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in curve) + f" | {distance(name):.2e} |")


if __name__ == "__main__":
    main()
