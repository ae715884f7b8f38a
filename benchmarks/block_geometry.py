"""Gradient signal and curvature per block type, and what each sigma allocation makes of them (runs on the CPU).

    python -m benchmarks.block_geometry --data-dir ../shared/data [--task sst2] [--batches 8] [--probes 3]

For MeZO (s = 1 everywhere) and each learned-optimizer file (its c * sigma on this model and batch size, as in a
run once the networks' loss history holds the first batch's loss), prints the terms of the second-order model of
one ZO step (zolightning/variance/geometry.py): signal gbar^T S gbar, minibatch norm E g^T S g, curvature tr(S H)
and 2 E g^T S H S g, the largest lr at which a step still lowers the loss, the best one-step decrease relative to
MeZO's, and the expected change at `--lr`. Hessian terms come from second differences of the loss at the training
eps, tr(H) by Hutchinson probes (mean +- standard error over probes and batches).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from benchmarks.geometry import GeometrySums, allocation_terms, kind_table, observe_batch
from benchmarks.timing import to_device
from zolightning.data import TaskDataModule
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm
from zolightning.variance.blocks import block_kind, trainable_named_parameters
from zolightning.variance.learned import LearnedVariance, learned_variance_for, sigma_by_kind

FILES = sorted(str(p) for p in (Path(__file__).parents[1] / "optimizers").glob("smollm2-135m-instruct.*.safetensors"))


def steady_scales(variance: LearnedVariance, walk, loss: float, steps: int) -> torch.Tensor:
    """c * sigma once the networks' history holds L+ = L- = `loss` (step 0's zero history gives other sigma)."""
    for _ in range(steps):
        scales = variance.scales(walk)
        variance.observe(loss, loss)
    return scales.detach().cpu()


def model_and_batches(args) -> tuple[torch.nn.Module, list, list[dict], float]:
    """The fp32 model on `args.device`, its trainable (name, tensor) pairs, `args.batches` training batches of
    `args.task` and the first batch's loss: what a geometry measurement runs on."""
    torch.manual_seed(args.seed)
    data = TaskDataModule(args.task, tokenizer=args.model, data_dir=args.data_dir, batch_size=args.batch_size,
                          seed=args.seed)  # fmt: skip
    data.setup()
    device = torch.device(args.device)
    model = load_causal_lm(args.model, dtype="float32", seed=args.seed).to(device)
    batches = [to_device(batch, device) for batch, _ in zip(data.train_dataloader(), range(args.batches))]
    with torch.no_grad():
        first_loss = float(batch_loss(model, batches[0])[0])
    return model, trainable_named_parameters(model), batches, first_loss


def allocations(model, walk, loss: float, args) -> dict[str, torch.Tensor]:
    """MeZO's ones, then every file's normalised c * sigma in a run, and the best file under the ceiling."""
    out, fit_batch = {"MeZO": torch.ones(len(walk))}, args.fit_batch_size or args.batch_size
    for path in args.files:
        name = Path(path).name.removeprefix("smollm2-135m-instruct.").removesuffix(".safetensors")
        variance = learned_variance_for(path, model, walk, fit_batch)
        out[name] = steady_scales(variance, walk, loss, args.history_steps)
        if args.ceiling and name.endswith(".best"):
            capped = learned_variance_for(path, model, walk, fit_batch, sigma_ceiling=args.ceiling)
            out[f"{name} cap {args.ceiling:g}"] = steady_scales(capped, walk, loss, args.history_steps)
    return out


def print_kinds(sums: GeometrySums, numels: list[int]) -> None:
    table = kind_table(sums, numels)
    total_signal = sum(row["signal"] for row in table.values())
    total_minibatch = sum(row["minibatch"] for row in table.values())
    names = list(sums.allocations)
    print(
        "| kind | tensors | elements | share of signal | share of minibatch g^2 | tr(H) | tr(H) per 1e6 elements | "
        + " | ".join(f"s: {n}" for n in names)
        + " |"
    )
    print("|---" * (7 + len(names)) + "|")
    by_kind = [sigma_by_kind(s, sums.kinds) for s in sums.allocations.values()]
    for kind, row in table.items():
        scales = [f"{means[kind]:.3f}" for means in by_kind]
        print(
            f"| {kind} | {row['tensors']} | {row['elements']:,} | {row['signal'] / total_signal:.3f} | "
            f"{row['minibatch'] / total_minibatch:.3f} | {row['trace']:.4g} +- {row['trace_sem']:.2g} | "
            f"{row['trace'] / row['elements'] * 1e6:.4g} | " + " | ".join(scales) + " |"
        )


def print_allocations(sums: GeometrySums, lrs: list[float]) -> None:
    terms = allocation_terms(sums)
    mezo = terms["MeZO"]
    print(
        "| allocation | signal / MeZO | minibatch g^T S g / MeZO | tr(S H) | 2 E g^T S H S g | second-order / MeZO | "
        "lr_max | best decrease / MeZO | " + " | ".join(f"E dL at lr {lr:g}" for lr in lrs) + " |"
    )
    print("|---" * (8 + len(lrs)) + "|")
    for name, t in terms.items():
        changes = " | ".join(f"{t.expected_change(lr):+.3g}" for lr in lrs)
        print(
            f"| {name} | {t.signal / mezo.signal:.3f} | {t.minibatch / mezo.minibatch:.3f} | "
            f"{t.trace:.4g} +- {t.trace_sem:.2g} | {t.gradient_term:.3g} +- {t.gradient_term_sem:.2g} | "
            f"{t.denominator / mezo.denominator:.3g} | {t.lr_max:.3g} | {t.best_decrease / mezo.best_decrease:.3f} | "
            f"{changes} |"
        )
    print(f"\nMeZO: signal {mezo.signal:.4g}, minibatch g^2 {mezo.minibatch:.4g} (n = {sums.batches} batches)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--fit-batch-size",
        type=int,
        help="the fit's batch size, for the embedding's effective size (default: --batch-size)",
    )
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--probes", type=int, default=3, help="Hutchinson probes per batch")
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-5, 3e-5])
    parser.add_argument("--files", nargs="*", default=FILES)
    parser.add_argument("--ceiling", type=float, default=2.0, help="also the best file under this sigma ceiling")
    parser.add_argument("--history-steps", type=int, default=10, help="steps of loss history before sigma is read")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for more batches and probes in the time")
    args = parser.parse_args(argv)
    model, named, batches, first_loss = model_and_batches(args)
    walk, device = [p for _, p in named], batches[0]["input_ids"].device
    sums = GeometrySums([block_kind(n) for n, _ in named], allocations(model, walk, first_loss, args))
    generator, start = torch.Generator(device=device).manual_seed(args.seed), time.perf_counter()
    for i, batch in enumerate(batches):
        observe_batch(sums, walk, lambda b=batch: batch_loss(model, b)[0], args.eps, args.probes, generator)
        print(f"batch {i + 1}/{args.batches} done, {time.perf_counter() - start:.0f} s", flush=True)
    print(
        f"\nmodel {args.model}, task {args.task}, batch {args.batch_size}, {args.batches} batches, "
        f"{args.probes} probes per batch, eps {args.eps:g}, seed {args.seed}\n"
    )
    print_kinds(sums, [p.numel() for p in walk])
    print()
    print_allocations(sums, args.lr)


if __name__ == "__main__":
    main()
