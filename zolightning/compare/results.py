"""A grid's results, regenerated from its TensorBoard logs: per-run figures, mean ± std, paired tests.

The final training loss is the paper's metric: the mean of the logged `train/loss` (each point already an
interval mean) over the last `tail` fraction of the run's steps. Accuracy (or F1 for generation tasks) is
reported on the dev split (`val/*`, the one that picks checkpoints) and the eval split (`eval/*`): the best
dev value, eval at that step (what a best-by-dev checkpoint gives), and both at the last evaluation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from zolightning.compare.grid import Grid, RunSpec

ACCURACIES = ("best_val", "eval_at_best", "last_val", "last_eval")
FIGURES = ("final_loss", *ACCURACIES, "step_seconds", "forwards")


def read_scalars(log_dir: Path | str) -> dict[str, dict[int, float]]:
    """tag → {step: value}; a resumed run's later events replace the earlier ones at the same step. The one reader
    of TensorBoard files (the harness's tables, the benchmarks' curves)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return {}
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    curves: dict[str, dict[int, float]] = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            curves.setdefault(tag, {})[event.step] = event.value
    return curves


def main_metric(curves: dict[str, dict[int, float]]) -> str:
    return "acc" if "val/acc" in curves else "f1"


@dataclass(frozen=True)
class RunResult:
    run: RunSpec
    steps: int
    figures: dict[str, float]  # FIGURES; nan where the run has no such value


def steps_run(curves: dict[str, dict[int, float]]) -> int:
    """Steps a run logged: its last logged step + 1 over every tag."""
    return max((max(curve) for curve in curves.values() if curve), default=-1) + 1


def final_loss(loss: dict[int, float], steps: int, tail: float = 0.1) -> float:
    """The paper's metric: mean training loss over the last `tail` of the run's steps."""
    start = steps * (1 - tail)
    return statistics.fmean([v for s, v in loss.items() if s + 1 >= start] or [loss[max(loss)]])


def summarize(run: RunSpec, tail: float = 0.1) -> RunResult:
    curves = read_scalars(run.log_dir)
    loss = curves.get("train/loss", {})
    steps = steps_run(curves)
    figures = dict.fromkeys(FIGURES, math.nan)
    if loss:
        figures["final_loss"] = final_loss(loss, steps, tail)
    step_seconds = list(curves.get("perf/step_seconds", {}).values())
    if step_seconds:  # median: robust to the first step's compile and to validation pauses
        figures["step_seconds"] = statistics.median(step_seconds)
    forwards = curves.get("train/forwards", {})
    if forwards:  # the optimizer's count at the last logged step (runs before the count: nan)
        figures["forwards"] = forwards[max(forwards)]
    metric = main_metric(curves)
    val, evaluation = curves.get(f"val/{metric}", {}), curves.get(f"eval/{metric}", {})
    if val:
        best_step = max(val, key=lambda s: (val[s], -s))  # the first step with the best value, as a checkpoint
        last_step = max(val)
        figures.update(best_val=val[best_step], last_val=val[last_step])
        figures.update(eval_at_best=evaluation.get(best_step, math.nan), last_eval=evaluation.get(last_step, math.nan))
    return RunResult(run, steps, figures)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


def _cell(values: Iterable[float], scale: float, digits: int) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "–"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if n > 1 else f"{mean * scale:.{digits}f}"


def paired_test(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of (a - b) over the seeds both have, and the two-sided p of a paired t-test (nan below 2 pairs)."""
    from scipy.stats import ttest_rel

    seeds = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    if not seeds:
        return math.nan, math.nan, 0
    diffs = [a[s] - b[s] for s in seeds]
    if len(seeds) < 2 or all(d == diffs[0] for d in diffs):
        return statistics.fmean(diffs), math.nan, len(seeds)
    return statistics.fmean(diffs), float(ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue), len(seeds)


def _by_setting(results: list[RunResult]) -> dict[tuple[str, str, float], list[RunResult]]:
    """(task, method, lr) → its runs, one per seed."""
    groups: dict[tuple[str, str, float], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.run.task, result.run.method, result.run.lr), []).append(result)
    return groups


def table(grid: Grid, results: list[RunResult]) -> str:
    """Markdown: one row per task × method × lr (mean ± std over seeds), then paired tests vs the baseline."""
    groups = _by_setting(results)
    lines = [
        f"## {grid.name}: mean ± std over seeds",
        "",
        "| task | method | lr | seeds | steps | final train loss | best dev | eval at best dev | last dev "
        "| last eval | step s (median) | forwards |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method, lr), group in groups.items():
        cells = [_cell((r.figures["final_loss"] for r in group), 1, 4)]
        cells += [_cell((r.figures[f] for r in group), 100, 1) for f in ACCURACIES]
        cells += [_cell((r.figures["step_seconds"] for r in group), 1, 3), _count(r.figures["forwards"] for r in group)]
        steps = "/".join(sorted({str(r.steps) for r in group}))
        lines.append(f"| {task} | {method} | {lr:g} | {len(group)} | {steps} | " + " | ".join(cells) + " |")
    lines += ["", *_paired_lines(grid, groups)]
    return "\n".join(lines) + "\n"


def _paired_lines(grid: Grid, groups: dict[tuple[str, str, float], list[RunResult]]) -> list[str]:
    """Each method against the baseline at every lr both ran, and at each one's best lr when there are several."""
    lines = [
        f"### Paired by seed: each method − {grid.baseline} (t-test, two-sided p)",
        "",
        "| task | lr | method | pairs | Δ final train loss | p | Δ last eval (points) | p |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = [m.name for m in grid.methods]
    pairs = [(m, grid.baseline) for m in names if m != grid.baseline] or list(combinations(names, 2))
    uneven = 0
    for task in grid.tasks:
        settings = [(lr, lr, f"{lr:g}") for lr in grid.all_lrs()]
        for method, baseline in pairs:
            if len(grid.all_lrs()) > 1:
                la, lb = _best_lr(groups, task, method), _best_lr(groups, task, baseline)
                settings_here = [*settings, (la, lb, f"best by dev: {la:g} vs {lb:g}")] if la and lb else settings
            else:
                settings_here = settings
            settings_here = [*settings_here, *_cross_lr_settings(groups, task, method, baseline)]
            for la, lb, label in settings_here:
                row, left_out = _pair_row(groups.get((task, method, la), []), groups.get((task, baseline, lb), []))
                uneven += left_out
                if row:
                    lines.append(f"| {task} | {label} | {method} | {row}")
    if uneven:
        lines += ["", f"{uneven} pair(s) left out: the two runs stopped at different steps (unfinished runs)."]
    return lines


def _cross_lr_settings(groups: dict, task: str, method: str, baseline: str) -> list[tuple[float, float, str]]:
    """Each lr of a method run at fewer lrs than the baseline, and the best-by-dev lr of any method, against each
    other lr of the baseline ("is it more than a larger lr?")."""
    own = sorted({lr for t, m, lr in groups if t == task and m == method})
    theirs = sorted({lr for t, m, lr in groups if t == task and m == baseline})
    if len(own) >= len(theirs):
        own = [lr for lr in [_best_lr(groups, task, method)] if lr is not None and len(theirs) > 1]
    return [(la, lb, f"{la:g} vs {lb:g}") for la in own for lb in theirs if lb != la]


def _pair_row(runs_a: list[RunResult], runs_b: list[RunResult]) -> tuple[str | None, int]:
    """The table cells of a paired comparison (None without pairs), and how many pairs were left out: stopped at
    unequal steps, unless each run reached its own max_steps (a budget of equal forwards, not a cut run)."""
    a, b = ({r.run.seed: r for r in runs} for runs in (runs_a, runs_b))
    common = set(a) & set(b)
    equal = sorted(s for s in common if a[s].steps == b[s].steps or (_finished(a[s]) and _finished(b[s])))
    loss = paired_test(*({s: x[s].figures["final_loss"] for s in equal} for x in (a, b)))
    acc = paired_test(*({s: x[s].figures["last_eval"] * 100 for s in equal} for x in (a, b)))
    if not (loss[2] or acc[2]):
        return None, len(common) - len(equal)
    cells = f"{max(loss[2], acc[2])} | {_delta(loss[0], 4)} | {_p(loss[1])} | {_delta(acc[0], 1)} | {_p(acc[1])} |"
    return cells, len(common) - len(equal)


def _finished(result: RunResult) -> bool:
    return result.run.max_steps is not None and result.steps >= result.run.max_steps


def best_lrs(results: list[RunResult]) -> dict[tuple[str, str], float]:
    """(task, method) → its lr with the highest mean best-dev value, for methods with a dev curve."""
    groups = _by_setting(results)
    best = {(t, m): _best_lr(groups, t, m) for t, m, _ in groups}
    return {key: lr for key, lr in best.items() if lr is not None}


def _best_lr(groups: dict, task: str, method: str) -> float | None:
    """The method's lr with the highest mean best-dev value over seeds (chosen on dev, never on eval)."""
    scored = [
        (mean_std(r.figures["best_val"] for r in group)[0], lr)
        for (t, m, lr), group in groups.items()
        if t == task and m == method
    ]
    scored = [(value, lr) for value, lr in scored if not math.isnan(value)]
    return max(scored)[1] if scored else None


def _count(values: Iterable[float]) -> str:
    """Forward passes over seeds: one number when the rule spends a fixed count a step."""
    mean, std, n = mean_std(values)
    return "–" if n == 0 else f"{mean:.0f}" if n == 1 or std == 0 else f"{mean:.0f} ± {std:.0f}"


def _delta(value: float, digits: int) -> str:
    return "–" if math.isnan(value) else f"{value:+.{digits}f}"


def _p(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"
