"""Same seed twice: does `zolightning fit` log identical losses? (issue #33; meant for the GPU's compiled path)

    python -m benchmarks.determinism --data-dir $DATA --out $OUT/determinism -- --trainer.max_steps 200

Runs the same `zolightning fit` (default: the tiny model's config, on whatever accelerator Lightning picks, so on
a GPU the compiled, CUDA-graphed forward and the fused philox pass) `--runs` times into separate folders, then
compares every logged `train/loss` and `zo/projected_grad` value and the final weights bit for bit, and prints
one JSON line: identical or not, the largest difference, and the path each run took (from its log).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from zolightning.compare.results import read_scalars


def fit(config: str, data_dir: str, out: Path, extra: list[str]) -> tuple[dict, dict, str]:
    command = [sys.executable, "-m", "zolightning", "fit", "--config", config, "--data.data_dir", data_dir]
    command += ["--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.version", "run"]
    command += ["--trainer.enable_progress_bar", "false", *extra]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"fit failed ({result.returncode}): {result.stderr[-2000:]}")
    run = next(out.glob("*/run"))
    path_line = next((line for line in result.stderr.splitlines() if "ZO path on" in line), "?")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return read_scalars(run), last, path_line.split(": ", 1)[-1]


def largest_difference(a: dict[int, float], b: dict[int, float]) -> float:
    if a.keys() != b.keys():
        return float("inf")
    return max((abs(a[k] - b[k]) for k in a), default=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny/sst2_mezo.yaml")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("fit_args", nargs="*", help="after --: more `zolightning fit` options")
    args = parser.parse_args()
    results = [fit(args.config, args.data_dir, args.out / f"run{i}", args.fit_args) for i in range(args.runs)]
    (first_curves, first_weights, path), rest = results[0], results[1:]
    report = {"config": args.config, "options": args.fit_args, "path": path, "runs": args.runs}
    for tag in ("train/loss", "zo/projected_grad"):
        report[f"{tag} values"] = len(first_curves.get(tag, {}))
        report[f"{tag} max |diff|"] = max(largest_difference(first_curves[tag], c[tag]) for c, _, _ in rest)
    report["weights identical"] = all(
        all(torch.equal(first_weights[k], w[k]) for k in first_weights) for _, w, _ in rest
    )
    report["identical"] = report["weights identical"] and all(
        report[f"{tag} max |diff|"] == 0 for tag in ("train/loss", "zo/projected_grad")
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
