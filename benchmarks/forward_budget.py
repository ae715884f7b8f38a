"""Training loss against forward passes spent, for runs of one grid task: rules that spend 3 forwards a step
(HiZOO) or 4-5 (Conserve) on MeZO's axis. A run's count is its logged `train/forwards`; runs from before that
was logged need the rule's fixed count per step (`--per-step`), and rules whose count varies must have it logged.

    python -m benchmarks.forward_budget runs/sst2-optimizers-short/sst2 zo_sgd@3e-05 hizoo_equal_forwards@3e-05 \
        --per-step zo_sgd=2 hizoo=3 --out docs/sst2_equal_forwards.png

Prints each series' forwards at its last step and its mean loss over the last 10 % of its steps.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from zolightning.compare.plots import forwards_axis, seed_band
from zolightning.compare.results import final_loss, read_scalars, steps_run


def series_curves(task_dir: Path, series: str) -> list[dict[str, dict[int, float]]]:
    """Every seed's scalars of `method@lr` (the lr as its folder writes it, e.g. 3e-05)."""
    method, _, lr = series.partition("@")
    runs = sorted((task_dir / method / f"lr{lr}").glob("seed*/tb"))
    if not runs:
        raise SystemExit(f"{task_dir / method / f'lr{lr}'}: no seed*/tb runs (write the series as method@lr)")
    return [read_scalars(run) for run in runs]


def x_of(series: str, curves: list[dict], per_step: dict[str, float]):
    """steps → forward passes: the logged counts, else the method's fixed count per step."""
    logged = forwards_axis(curves)
    if logged is not None:
        return logged
    method = series.partition("@")[0]
    if method not in per_step:
        raise SystemExit(f"{series}: no train/forwards logged; give its fixed count, e.g. --per-step {method}=2")
    return lambda steps: np.asarray(steps) * per_step[method]


def tail_loss(curves: list[dict]) -> tuple[float, float]:
    """mean ± std over seeds of `compare table`'s final training loss."""
    means = [final_loss(c["train/loss"], steps_run(c)) for c in curves]
    return statistics.fmean(means), statistics.stdev(means) if len(means) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task_dir", type=Path, help="<grid out_dir>/<task>")
    parser.add_argument("series", nargs="+", help="method@lr, e.g. zo_sgd@3e-05")
    parser.add_argument("--per-step", nargs="*", default=[], help="method=N for runs without train/forwards")
    parser.add_argument("--smoothing", type=float, default=0.9)
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args()
    per_step = {k: float(v) for k, _, v in (item.partition("=") for item in args.per_step)}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5))
    for series in args.series:
        curves = series_curves(args.task_dir, series)
        to_x = x_of(series, curves, per_step)
        steps, mean, std = seed_band([c["train/loss"] for c in curves], args.smoothing)
        forwards = to_x(steps)
        axis.plot(forwards, mean, label=f"{series} (n={len(curves)})")
        axis.fill_between(forwards, mean - std, mean + std, alpha=0.2)
        loss, spread = tail_loss(curves)
        print(f"{series:40s} forwards {forwards[-1]:7.0f}  last-10% loss {loss:.4f} ± {spread:.4f}")
    axis.set(title="training loss (smoothed, mean ± std over seeds)", xlabel="forward passes", ylabel="loss")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
