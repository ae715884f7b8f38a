"""`zolightning compare ...`: run a grid of fits (methods × tasks × lrs × seeds) and tabulate it.

zolightning compare run configs/compare/sst2_schedule.yaml -- --data.data_dir ../shared/data
zolightning compare status configs/compare/sst2_schedule.yaml
zolightning compare table configs/compare/sst2_schedule.yaml      # results.md + PNG plots in the grid's out_dir
zolightning compare table GRID.yaml --best-lr   # plots: each method at its best lr by dev only
zolightning compare table GRID.yaml --x forwards  # plots against forward passes spent (HiZOO: 3 a step)

`run` is resumable: finished runs are skipped, cut runs resume from their last.ckpt. Arguments after `--` are
added to every fit (they do not change which runs count as finished).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from zolightning.compare.grid import Grid, GridError
from zolightning.compare.runner import GridRunner, progress, read_status


def _run(args: argparse.Namespace) -> int:
    grid = args.grid
    if args.parallel is not None:
        grid = dataclasses.replace(grid, parallel=args.parallel)
    if args.devices is not None:
        grid = dataclasses.replace(grid, devices=tuple(int(d) for d in args.devices.split(",") if d))
    runner = GridRunner(grid, args.fit_args, retry_failed=args.retry_failed, only=args.only)
    code = runner.run()
    print(_status_line(grid))
    return code


def _status_line(grid: Grid) -> str:
    states = [(read_status(r) or {}).get("state", "not started") for r in grid.runs()]
    counts = {s: states.count(s) for s in dict.fromkeys(states)}
    return f"grid {grid.name}: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def _status(args: argparse.Namespace) -> int:
    for run in args.grid.runs():
        status = read_status(run) or {}
        state = status.get("state", "not started")
        last = run.log_dir / "checkpoints" / "last.ckpt"
        if state == "running":
            note = f" ({progress(run)})"
        else:
            note = " (has last.ckpt)" if state != "done" and last.is_file() else ""
        print(f"{run.run_id:50s} {state}{note}")
    print(_status_line(args.grid))
    return 0


def _table(args: argparse.Namespace) -> int:
    from zolightning.compare.lr_sweep import plot_lr_sweep, robustness_lines, sweeps_lrs
    from zolightning.compare.plots import plot_task
    from zolightning.compare.results import best_lrs, summarize, table

    grid = args.grid
    results = [summarize(run, tail=args.tail) for run in grid.runs() if run.log_dir.is_dir()]
    if not results:
        print(f"error: no run of grid {grid.name} has logs under {grid.out_dir}", file=sys.stderr)
        return 2
    text = table(grid, results)
    lrs = best_lrs(results) if args.best_lr else None
    try:
        plots = (
            []
            if args.no_plots
            else [p for t in grid.tasks for p in plot_task(grid, t, grid.out_dir, lrs=lrs, x=args.x)]
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if sweeps_lrs(grid):
        text += "\n" + "\n".join(robustness_lines(grid, results)) + "\n"
        if not args.no_plots:
            plots += [p for t in grid.tasks if (p := plot_lr_sweep(grid, t, results, grid.out_dir))]
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    out = grid.out_dir / "results.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}" + "".join(f", {p}" for p in plots))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zolightning compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run every unfinished fit of the grid (resumes cut ones)")
    run.add_argument("grid", help="the grid YAML file")
    run.add_argument("--parallel", type=int, help="fits at once on each device (overrides the grid's)")
    run.add_argument("--devices", help="CUDA device indices, e.g. 0,1; empty string for the CPU")
    run.add_argument(
        "--only", help="run only the runs whose id (task/method/lrX/seedN) contains one of these comma-separated parts"
    )
    run.add_argument("--retry-failed", action="store_true", help="start failed runs again (else left alone)")
    run.set_defaults(action=_run)
    status = commands.add_parser("status", help="each run's state")
    status.add_argument("grid", help="the grid YAML file")
    status.set_defaults(action=_status)
    tab = commands.add_parser("table", help="results.md (mean ± std, paired tests) and plots from the logs")
    tab.add_argument("grid", help="the grid YAML file")
    tab.add_argument("--tail", type=float, default=0.1, help="fraction of the steps the final loss averages")
    tab.add_argument("--no-plots", action="store_true", help="write results.md only")
    tab.add_argument("--best-lr", action="store_true", help="plot each method at its best lr by dev only")
    tab.add_argument("--x", choices=("step", "forwards"), default="step", help="the plots' x axis")
    tab.set_defaults(action=_table)
    return parser


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:split])
    args.fit_args = argv[split + 1 :]  # options for every fit
    try:
        args.grid = Grid.load(args.grid)
        return args.action(args)
    except GridError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
