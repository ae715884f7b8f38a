"""Print the scalar curves of one or more TensorBoard runs as a table (for docs/notebook.md).

python benchmarks/read_curves.py logs/sst2-mezo/version_0 [more run dirs] [--tags eval/acc val/acc]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from zolightning.compare.results import read_scalars as scalars  # the one TensorBoard reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--tags", nargs="+", default=["val/acc", "eval/acc"])
    args = parser.parse_args()
    for run in args.runs:
        curves = scalars(run)
        print(f"## {run}")
        steps = sorted({s for tag in args.tags for s in curves.get(tag, {})})
        print("| step | " + " | ".join(args.tags) + " |")
        print("|---" * (len(args.tags) + 1) + "|")
        for step in steps:
            cells = [f"{curves.get(t, {}).get(step, float('nan')):.4f}" for t in args.tags]
            print(f"| {step + 1} | " + " | ".join(cells) + " |")
        timing = list(curves.get("perf/step_seconds", {}).values())
        if timing:
            print(f"median seconds/step: {statistics.median(timing):.4f} over {len(timing)} logged steps")
        memory = list(curves.get("perf/peak_mem_gib", {}).values())
        if memory:
            print(f"peak GPU memory (allocated): {max(memory):.3f} GiB")
        print()


if __name__ == "__main__":
    main()
