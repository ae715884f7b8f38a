"""Each run of a comparison grid on its own line: the figures the harness's table averages over seeds.

    python -m benchmarks.per_run configs/compare/sst2_effective_lr.yaml

Reads the runs' logs under the grid's `out_dir` (as `zolightning compare table` does); runs without logs are
listed as missing.
"""

from __future__ import annotations

import sys

from zolightning.compare.grid import Grid
from zolightning.compare.results import summarize


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__)
        return 2
    for run in Grid.load(args[0]).runs():
        if not run.log_dir.exists():
            print(f"{run.run_id}: missing ({run.log_dir})")
            continue
        figures = summarize(run).figures
        print(
            f"{run.run_id}: final train loss {figures['final_loss']:.4f}, best dev {100 * figures['best_val']:.1f}, "
            f"last eval {100 * figures['last_eval']:.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
