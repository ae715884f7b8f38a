"""The lr-robustness analysis of a grid: usable lr ranges, the table lines and the metric-against-lr plot."""

import math

from zolightning.compare import Grid
from zolightning.compare.lr_sweep import plot_lr_sweep, robustness_lines, sweeps_lrs, usable_range
from zolightning.compare.results import FIGURES, RunResult

LRS = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4]
# accuracy (%) per method and lr, 3 seeds each differing by +-0.2: "flat" is usable over a wide range, "peaked" at one
# lr; "gap" fails at 3e-6 between two that succeed.
ACCURACY = {
    "flat": [70.0, 79.5, 80.0, 79.2, 60.0],
    "peaked": [60.0, 70.0, 82.0, 75.0, 50.0],
    "gap": [81.5, 70.0, 82.0, 81.2, math.nan],
}


def _results(tmp_path):
    grid = Grid.from_dict({"name": "sweep", "out_dir": str(tmp_path / "out"), "tasks": ["sst2"],
                           "methods": {m: {"config": "configs/tiny/{task}_mezo.yaml"} for m in ACCURACY},
                           "lrs": LRS, "seeds": [0, 1, 2], "baseline": "peaked"}, tmp_path / "g.yaml")  # fmt: skip
    results = []
    for run in grid.runs():
        value = ACCURACY[run.method][LRS.index(run.lr)] + 0.2 * (run.seed - 1)
        figures = dict.fromkeys(FIGURES, math.nan) | {"last_eval": value / 100, "final_loss": 1 - value / 100}
        results.append(RunResult(run, 100, figures))
    return grid, results


def test_the_usable_range_is_the_neighbouring_lrs_within_a_point_of_the_best(tmp_path):
    grid, results = _results(tmp_path)
    flat = usable_range(results, "sst2", "flat")
    assert (flat.best_lr, flat.low, flat.high) == (1e-5, 3e-6, 3e-5) and math.isclose(flat.width, 10)
    assert math.isclose(flat.best, 80.0)
    peaked = usable_range(results, "sst2", "peaked")
    assert (peaked.low, peaked.high, peaked.width) == (1e-5, 1e-5, 1.0)
    gap = usable_range(results, "sst2", "gap")  # 1e-6 is within a point but 3e-6 between them is not
    assert (gap.low, gap.high) == (1e-5, 3e-5) and gap.lrs_run == 4  # the diverged lr has no value
    lines = robustness_lines(grid, results)
    flat_row = next(line for line in lines if line.startswith("| sst2 | flat"))
    assert "3e-06 – 3e-05" in flat_row and flat_row.endswith("| 10× | 10 |")
    assert sweeps_lrs(grid)


def test_the_lr_sweep_plot_is_written(tmp_path):
    grid, results = _results(tmp_path)
    path = plot_lr_sweep(grid, "sst2", results, tmp_path / "plots")
    assert path is not None and path.stat().st_size > 10_000
    assert plot_lr_sweep(grid, "cb", results, tmp_path / "plots") is None  # no runs of that task
