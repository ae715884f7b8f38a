"""Where a fit's host time goes, from a py-spy sampling profile (low overhead, unlike cProfile).

    py-spy record -r 200 -f raw -o fit.txt -- python -m zolightning fit ...
    python -m benchmarks.spy_summary fit.txt --within "advance (lightning/pytorch/loops/training_epoch_loop.py"

Keeps the samples whose stack contains `--within` (default: the training loop's iteration), then prints each
function's inclusive share of them (how much of an iteration runs in it or below it), slowest first, for the
frames matching `--only`. Lines are `share  samples  function (file)`; line numbers are dropped so that a
function counts once.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

LOOP = "advance (lightning/pytorch/loops/training_epoch_loop.py"


def inclusive_shares(lines: list[str], within: str, only: str) -> tuple[int, list[tuple[str, int]]]:
    pattern = re.compile(only)
    counts: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if within not in stack or not n.isdigit():
            continue
        total += int(n)
        frames = {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")}
        for frame in frames:
            if pattern.search(frame):
                counts[frame] += int(n)
    return total, counts.most_common()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="py-spy's raw (collapsed stacks) output")
    parser.add_argument("--within", default=LOOP, help="keep samples whose stack contains this frame text")
    parser.add_argument("--only", default=r"zolightning|lightning/|torch/_dynamo|torch/_inductor|torch/utils/data",
                        help="regex of the frames to list")  # fmt: skip
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args(argv)
    total, shares = inclusive_shares(args.profile.read_text().splitlines(), args.within, args.only)
    print(f"{total} samples within {args.within!r}")
    for frame, n in shares[: args.top]:
        print(f"{n / max(total, 1):6.1%} {n:7d}  {frame}")


if __name__ == "__main__":
    main()
