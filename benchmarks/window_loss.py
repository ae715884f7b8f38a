"""Mean training loss of each seed's run over a window of steps, and the paired difference between two methods:
for grids cut before they finished, where `zolightning compare table` leaves out runs that stopped at different
steps (the window must be one every run reached).

    python -m benchmarks.window_loss runs/squad-sigma-ceiling/squad mezo learned_cap2 --lr 3e-05 --start 250 --end 340

The baseline may be read over its own window (`--baseline-start/--baseline-end`), e.g. at the same forward passes
when the method spends 3 a step and the baseline 2: method steps 900-999 against baseline steps 1350-1499.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.read_curves import scalars
from zolightning.compare.results import paired_test


def window_means(method_dir: Path, start: int, end: int, lr: str | None = None) -> dict[int, float]:
    """seed -> mean `train/loss` logged at steps start..end, in the lr folder `lr<lr>` (or the only one)."""
    folders = sorted(method_dir.glob("lr*")) if lr is None else [method_dir / f"lr{lr}"]
    if len(folders) != 1 or not folders[0].is_dir():
        found = ", ".join(f.name.removeprefix("lr") for f in sorted(method_dir.glob("lr*"))) or "none"
        raise SystemExit(f"{method_dir}: name one lr with --lr (found: {found})")
    means = {}
    for run in sorted(folders[0].glob("seed*")):
        curve = scalars(run / "tb")["train/loss"]
        values = [v for step, v in curve.items() if start <= step <= end]
        if max(curve) < end:
            raise SystemExit(f"{run} stopped at step {max(curve)}, before the window's end {end}")
        means[int(run.name.removeprefix("seed"))] = statistics.fmean(values)
    return means


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task_dir", type=Path, help="<grid out_dir>/<task>")
    parser.add_argument("baseline")
    parser.add_argument("method")
    parser.add_argument("--lr", help="the lr folder's value, e.g. 3e-05 for lr3e-05 (needed when there are several)")
    parser.add_argument("--start", type=int, required=True)
    parser.add_argument("--end", type=int, required=True)
    parser.add_argument("--baseline-start", type=int, help="the baseline's own window (default: the method's)")
    parser.add_argument("--baseline-end", type=int)
    args = parser.parse_args()
    base_window = (args.baseline_start or args.start, args.baseline_end or args.end)
    base = window_means(args.task_dir / args.baseline, *base_window, args.lr)
    other = window_means(args.task_dir / args.method, args.start, args.end, args.lr)
    for name, means in ((args.baseline, base), (args.method, other)):
        print(f"{name}: " + ", ".join(f"seed {s} {v:.3f}" for s, v in sorted(means.items())))
    diffs = [other[s] - base[s] for s in sorted(set(base) & set(other))]
    mean, p, n = paired_test(other, base)
    spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
    window = f"steps {args.start}-{args.end}"
    if base_window != (args.start, args.end):
        window += f" against the baseline's {base_window[0]}-{base_window[1]}"
    print(f"{args.method} - {args.baseline}, {window}: {mean:+.3f} ± {spread:.3f} (paired t, p = {p:.2f}, n = {n})")


if __name__ == "__main__":
    main()
