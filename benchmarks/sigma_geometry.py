"""What the learned sigma learn, made visible (issue #34): per block type, sigma^2 against curvature and signal.

    python -m benchmarks.sigma_geometry --data-dir ../shared/data --files START.safetensors END.safetensors \
        [--labels start end] [--task sst2] [--batches 8] [--probes 2] [--png docs/sigma_geometry.png] [--scales-only]

For each file (the networks at the start and at the end of a meta-training: `*.start.safetensors` and the file
kept), c * sigma on this model once the loss history holds the first batch's loss, as in a run
(`block_geometry.steady_scales`); for each block type, the measured curvature per element (tr(H) by Hutchinson
probes over the type's tensors, divided by its elements) and gradient signal per element (||E g||^2 from minibatch
gradients, `benchmarks/geometry.py`). The plot puts each file's mean sigma^2 per type against both, one marker
shape per file; a JSON line per (file, type) holds the numbers. What a good allocation looks like, in the
second-order model of one step: more sigma^2 where the signal per element is high, less where the curvature is.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.block_geometry import model_and_batches, steady_scales
from benchmarks.geometry import GeometrySums, kind_table, observe_batch
from zolightning.forward.scoring import batch_loss
from zolightning.variance.blocks import block_kind, describe_blocks
from zolightning.variance.learned import LearnedVariance, learned_variance_for, sigma_by_kind
from zolightning.variance.networks import BlockVarianceNets


def rows(sums: GeometrySums, numels: list[int], labels: list[str]) -> list[dict]:
    table = kind_table(sums, numels)
    out = []
    for label, scales in zip(labels, sums.allocations.values()):
        sigma_sq = sigma_by_kind(scales.double() ** 2, sums.kinds)
        for kind, row in table.items():
            out.append({"file": label, "kind": kind, "sigma_sq": sigma_sq[kind], "elements": row["elements"],
                        "curvature_per_element": row["trace"] / row["elements"],
                        "signal_per_element": row["signal"] / row["elements"]})  # fmt: skip
    return out


def plot(table: list[dict], labels: list[str], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    kinds = sorted({r["kind"] for r in table})
    colours = {k: plt.cm.tab10(i % 10) for i, k in enumerate(kinds)}
    markers = ["o", "s", "^", "D"]
    for ax, x, name in zip(
        axes,
        ("curvature_per_element", "signal_per_element"),
        ("curvature per element, tr(H_b) / d_b", "gradient signal per element, ||E g_b||^2 / d_b"),
    ):
        for i, label in enumerate(labels):
            for r in (r for r in table if r["file"] == label):
                ax.scatter(abs(r[x]), r["sigma_sq"], color=colours[r["kind"]], marker=markers[i % 4],
                           facecolors="none" if i == 0 else colours[r["kind"]], s=50)  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel=name)
    axes[0].set_ylabel("mean (c sigma)^2 of the block type")
    handles = [plt.Line2D([], [], color=colours[k], marker="o", ls="", label=k) for k in kinds]
    handles += [plt.Line2D([], [], color="k", marker=markers[i % 4], ls="", label=lab, markerfacecolor="none" if i == 0
                           else "k") for i, lab in enumerate(labels)]  # fmt: skip
    axes[1].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--files", nargs="*", default=[])
    parser.add_argument("--start-seed", type=int, help="also the networks at initialisation (meta-training's zo_seed), "
                        "for files written before meta-training kept its *.start file")  # fmt: skip
    parser.add_argument("--labels", nargs="+")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--probes", type=int, default=2)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--history-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--png", type=Path, default=Path("docs/sigma_geometry.png"))
    parser.add_argument(
        "--scales-only",
        action="store_true",
        help="print each file's mean (c sigma)^2 per block type and stop (seconds, no geometry)",
    )
    args = parser.parse_args(argv)
    labels = args.labels or [Path(f).stem for f in args.files]
    if not args.files and args.start_seed is None:
        parser.error("name --files, --start-seed or both")
    model, named, batches, first_loss = model_and_batches(args)
    walk, device = [p for _, p in named], batches[0]["input_ids"].device
    variances = {label: learned_variance_for(f, model, walk, args.batch_size) for label, f in zip(labels, args.files)}
    if args.start_seed is not None:
        nets = BlockVarianceNets(len(walk), generator=torch.Generator().manual_seed(args.start_seed))
        variances = {"initialisation": LearnedVariance(nets, describe_blocks(model, args.batch_size))} | variances
        labels = list(variances)
    scales = {label: steady_scales(v, walk, first_loss, args.history_steps) for label, v in variances.items()}
    if args.scales_only:
        kinds = [block_kind(n) for n, _ in named]
        for label, s in scales.items():
            by_kind = sigma_by_kind(s.double() ** 2, kinds)
            print(json.dumps({"file": label, **{kind: round(v, 4) for kind, v in by_kind.items()}}))
        return
    sums = GeometrySums([block_kind(n) for n, _ in named], scales)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for batch in batches:
        observe_batch(sums, walk, lambda b=batch: batch_loss(model, b)[0], args.eps, args.probes, generator)
    table = rows(sums, [p.numel() for p in walk], labels)
    for row in table:
        print(json.dumps(row))
    plot(table, labels, args.png, f"{args.model} on {args.task}: learned sigma^2 per block type against the "
         f"block's geometry ({args.batches} batches of {args.batch_size}, {args.probes} probes)")  # fmt: skip


if __name__ == "__main__":
    main()
