"""Where `zolightning`'s start-up import time goes (issue #11's warm start): seconds to import the CLI, the
slowest modules (`python -X importtime`), and which modules register PyTorch custom ops on import (slow in
some images: `torch.library.custom_op` registration measured at 0.1-0.3 s per op).

    python -m benchmarks.import_cost
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
import traceback


def slowest_imports(limit: int = 15) -> list[str]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import zolightning.cli.main"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    rows = []
    for line in done.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[0].split(":")[1]), int(parts[1]), parts[2].rstrip()))
    return [f"{own / 1e6:6.2f} s own {total / 1e6:6.2f} s total {name}" for own, total, name in
            sorted(rows, key=lambda r: -r[0])[:limit]]  # fmt: skip


def custom_op_registrations() -> tuple[float, collections.Counter]:
    from torch._library import custom_ops

    counts: collections.Counter[str] = collections.Counter()
    original = custom_ops.CustomOpDef._register_to_dispatcher

    def counted(self, *args, **kwargs):
        frames = [f for f in traceback.extract_stack()[:-1] if "torch/_library" not in f.filename
                  and "torch/library" not in f.filename]  # fmt: skip
        counts[frames[-1].filename.split("site-packages/")[-1] if frames else "?"] += 1
        return original(self, *args, **kwargs)

    custom_ops.CustomOpDef._register_to_dispatcher = counted
    start = time.perf_counter()
    import zolightning.cli.main  # noqa: F401

    return time.perf_counter() - start, counts


def main() -> None:
    print("\n".join(slowest_imports()))
    seconds, counts = custom_op_registrations()
    print(f"import zolightning.cli.main: {seconds:.1f} s (torch already imported), custom ops registered by:")
    for where, n in counts.most_common(10):
        print(f"  {n:4d}  {where}")


if __name__ == "__main__":
    main()
