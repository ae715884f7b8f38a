"""PNG curves of a grid: loss and accuracy with a band of ± one std over seeds, and σ per block type."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zolightning.compare.grid import Grid, RunSpec
from zolightning.compare.results import main_metric, read_scalars


def _smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's exponential smoothing, de-biased so the first points are not pulled towards 0."""
    out, average = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        out[i] = average / (1 - weight ** (i + 1))
    return out


def seed_band(curves: list[dict[int, float]], smoothing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Steps every seed logged, the mean over seeds and the std (0 with one seed)."""
    steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    if not steps:
        return None
    values = np.array([[c[s] for s in steps] for c in curves], dtype=float)
    if smoothing:
        values = np.stack([_smooth(row, smoothing) for row in values])
    return np.array(steps) + 1, values.mean(0), values.std(0, ddof=1) if len(curves) > 1 else np.zeros(len(steps))


def forwards_axis(curves: list[dict[str, dict[int, float]]]):
    """x as `seed_band` returns it (step + 1) → the mean forward passes over seeds by then, linear between the logged
    counts (`train/forwards`); None when a run has no count (runs from before it was logged)."""
    counts = [c.get("train/forwards", {}) for c in curves]
    steps = sorted(set.intersection(*(set(c) for c in counts))) if all(counts) else []
    if not steps:
        return None
    mean = np.mean([[c[s] for s in steps] for c in counts], axis=0)
    return lambda x: np.interp(x, [0, *(np.array(steps) + 1)], [0, *mean])


def _group(grid: Grid, task: str, lrs: dict[tuple[str, str], float] | None) -> dict[tuple[str, float], list[RunSpec]]:
    """Runs of `task` by (method, lr), in the grid's order."""
    groups: dict[tuple[str, float], list[RunSpec]] = {}
    for run in grid.runs():
        if run.task == task and (lrs is None or lrs.get((task, run.method)) == run.lr):
            groups.setdefault((run.method, run.lr), []).append(run)
    return groups


def _styles(keys: list[tuple[str, float]], plt) -> dict[tuple[str, float], dict]:
    """One colour per method (a method's lrs share it, told apart by line style), a label per line."""
    methods = list(dict.fromkeys(method for method, _ in keys))
    # tab10, then Dark2's: 18 hues that differ (tab20 pairs each hue with its paler twin)
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]
    dashes = ["-", "--", ":", "-."]
    styles = {}
    for method in methods:
        lrs = [lr for m, lr in keys if m == method]
        for i, lr in enumerate(lrs):
            label = method if len(lrs) == 1 else f"{method}, lr {lr:g}"
            color = palette[methods.index(method) % len(palette)]
            styles[(method, lr)] = {"color": color, "linestyle": dashes[i % len(dashes)], "label": label}
    return styles


def plot_task(
    grid: Grid,
    task: str,
    out_dir: Path,
    smoothing: float = 0.9,
    lrs: dict[tuple[str, str], float] | None = None,
    x: str = "step",
) -> list[Path]:
    """`<task>_curves.png` (loss, dev and eval metric) and, for learned variance, `<task>_sigma.png`.

    Args:
        lrs: (task, method) → the one lr to draw for that method (e.g. its best by dev); None draws every lr.
        x: `step`, or `forwards` (forward passes spent: rules with 3 a step or q queries on one budget axis).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {label: [read_scalars(r.log_dir) for r in runs] for label, runs in _group(grid, task, lrs).items()}
    groups = {label: [c for c in curves if c] for label, curves in groups.items()}
    groups = {label: curves for label, curves in groups.items() if curves}
    if not groups:
        return []
    metric = main_metric(next(iter(groups.values()))[0])
    name = {"acc": "accuracy (%)", "f1": "F1 (%)"}[metric]
    panels = [("train/loss", "training loss (smoothed)", "loss", smoothing, 1.0)]
    panels += [(f"val/{metric}", f"dev {metric}", f"dev {name}", 0.0, 100.0)]
    panels += [(f"eval/{metric}", f"eval {metric}", f"eval {name}", 0.0, 100.0)]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    styles = _styles(list(groups), plt)
    to_x = {key: (lambda steps: steps) if x == "step" else forwards_axis(curves) for key, curves in groups.items()}
    if missing := [styles[key]["label"] for key, axis in to_x.items() if axis is None]:
        raise ValueError(f"no forward counts (train/forwards) logged by {', '.join(missing)}: plot them by step")
    for axis, (tag, title, ylabel, weight, scale) in zip(axes, panels):
        for key, curves in groups.items():
            band = seed_band([c.get(tag, {}) for c in curves], weight)
            if band is not None:
                steps, mean, std = band[0], band[1] * scale, band[2] * scale
                steps, style = to_x[key](steps), styles[key]
                marker = "o" if len(steps) < 40 else None
                axis.plot(steps, mean, marker=marker, **{**style, "label": f"{style['label']} (n={len(curves)})"})
                axis.fill_between(steps, mean - std, mean + std, alpha=0.15, color=style["color"])
        axis.set(title=title, xlabel="step" if x == "step" else "forward passes", ylabel=ylabel)
        axis.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    columns = max(min(len(labels), 4), 1)
    if labels:  # below the panels: never over a curve
        figure.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False)
    chosen = "" if lrs is None else ", each method at its best lr by dev"
    figure.suptitle(f"{grid.name}: {task} (mean ± std over seeds{chosen})")
    rows = -(-len(labels) // columns)
    figure.tight_layout(rect=(0, 0.04 + 0.05 * rows, 1, 1))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / f"{task}_curves.png"]
    figure.savefig(written[0], dpi=80)
    plt.close(figure)
    sigma = _plot_sigma(grid, task, groups, out_dir, plt)
    return written + ([sigma] if sigma else [])


def _plot_sigma(grid: Grid, task: str, groups: dict, out_dir: Path, plt) -> Path | None:
    with_sigma = {label: curves for label, curves in groups.items() if any(t.startswith("sigma/") for t in curves[0])}
    if not with_sigma:
        return None
    figure, axes = plt.subplots(1, len(with_sigma), figsize=(6 * len(with_sigma), 4.2), squeeze=False)
    for axis, (key, curves) in zip(axes[0], with_sigma.items()):
        label = key[0] if len({lr for m, lr in with_sigma if m == key[0]}) == 1 else f"{key[0]}, lr {key[1]:g}"
        for tag in sorted(t for t in curves[0] if t.startswith("sigma/")):
            band = seed_band([c.get(tag, {}) for c in curves], 0.0)
            if band is not None:
                axis.plot(band[0], band[1], label=tag.removeprefix("sigma/"))
        axis.set(title=f"{label}: mean σ per block type", xlabel="step", yscale="log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    path = out_dir / f"{task}_sigma.png"
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
