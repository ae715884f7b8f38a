"""How a method's result depends on its learning rate: the usable lr range and the metric-against-lr plot.

A method is robust to the lr when many lrs end near its best result. Here a method's usable range on a task is the
run of neighbouring lrs of the grid, around its best one, whose mean last-eval metric over seeds is within
`within` points of the best mean; its width is the ratio of the range's ends (1 when only the best lr is usable).
Neighbouring: a lr that fails between two that succeed ends the range, as it would for a user sweeping lrs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from zolightning.compare.grid import Grid
from zolightning.compare.results import RunResult, mean_std

FIGURE = "last_eval"  # the metric at the end of the run, on the eval split, as a fraction


@dataclass(frozen=True)
class LrRange:
    task: str
    method: str
    best_lr: float
    best: float  # mean last-eval metric over seeds at best_lr, in points
    low: float  # the usable range's ends
    high: float
    lrs_run: int

    @property
    def width(self) -> float:
        return self.high / self.low


def _means(results: list[RunResult], task: str, method: str, figure: str, scale: float = 100.0):
    """lr -> (mean, std) of `figure` × `scale` over seeds (points, by default); lrs without a value are left out."""
    lrs = sorted({r.run.lr for r in results if r.run.task == task and r.run.method == method})
    out = {}
    for lr in lrs:
        mean, std, n = mean_std(r.figures[figure] * scale for r in results
                                if (r.run.task, r.run.method, r.run.lr) == (task, method, lr))  # fmt: skip
        if n:
            out[lr] = (mean, std)
    return out


def usable_range(results: list[RunResult], task: str, method: str, within: float = 1.0) -> LrRange | None:
    means = _means(results, task, method, FIGURE)
    if not means:
        return None
    lrs = sorted(means)
    best_index = max(range(len(lrs)), key=lambda i: means[lrs[i]][0])
    best = means[lrs[best_index]][0]
    low = high = best_index
    while low > 0 and means[lrs[low - 1]][0] >= best - within:
        low -= 1
    while high < len(lrs) - 1 and means[lrs[high + 1]][0] >= best - within:
        high += 1
    return LrRange(task, method, lrs[best_index], best, lrs[low], lrs[high], len(lrs))


def robustness_lines(grid: Grid, results: list[RunResult], within: float = 1.0) -> list[str]:
    """Markdown: each method's best lr, best result and usable lr range per task; the width beside the baseline's."""
    lines = [f"### lr robustness: the lrs ending within {within:g} point of each method's best (last eval)", "",
             "| task | method | lrs run | best lr | best (points) | usable lrs | width | width / baseline's |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in grid.tasks:
        ranges = {m.name: usable_range(results, task, m.name, within) for m in grid.methods}
        baseline = ranges.get(grid.baseline)
        for name, r in ranges.items():
            if r is None:
                continue
            ratio = f"{r.width / baseline.width:.2g}" if baseline else "–"
            lines.append(f"| {task} | {name} | {r.lrs_run} | {r.best_lr:g} | {r.best:.1f} | {r.low:g} – {r.high:g} "
                         f"| {r.width:.3g}× | {ratio} |")  # fmt: skip
    return lines


def sweeps_lrs(grid: Grid) -> bool:
    """Whether the grid runs some method at 3 lrs or more (a sweep worth this analysis)."""
    return any(len(m.lrs or grid.lrs) >= 3 for m in grid.methods)


def plot_lr_sweep(grid: Grid, task: str, results: list[RunResult], out_dir: Path) -> Path | None:
    """`<task>_lr_sweep.png`: final training loss and last eval metric against the lr, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    drawn = False
    for i, method in enumerate(m.name for m in grid.methods):
        colour = plt.cm.tab10(i % 10)
        for axis, figure_name, scale in ((axes[0], "final_loss", 1.0), (axes[1], FIGURE, 100.0)):
            finite = {lr: v for lr, v in _means(results, task, method, figure_name, scale).items()
                      if math.isfinite(v[0])}  # fmt: skip
            if not finite:
                continue
            lrs = sorted(finite)
            mean = [finite[lr][0] for lr in lrs]
            std = [0.0 if math.isnan(finite[lr][1]) else finite[lr][1] for lr in lrs]
            axis.plot(lrs, mean, marker="o", color=colour, label=method)
            axis.fill_between(lrs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                              color=colour, alpha=0.15)  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(figure)
        return None
    axes[0].set(xscale="log", xlabel="lr", ylabel="final training loss", title="final training loss")
    axes[1].set(xscale="log", xlabel="lr", ylabel="last eval metric (%)", title="eval metric at the end")
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.suptitle(f"{grid.name}: {task}, each lr's mean ± std over seeds")
    figure.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{task}_lr_sweep.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
