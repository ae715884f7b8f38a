"""Two CPU processes (gloo) must take one identical ZO step per batch, equal to one process on both halves.

The runs use float64: in float32, the two layouts (two batches of 4 vs one of 8, padded differently)
round the losses differently by ~1e-7, which g = (L+ - L-) / (2 eps) amplifies by 1/eps; that is
rounding, not a data-parallel error, and float64 takes it out of the comparison.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zolightning.models import load_causal_lm

SCRIPT = Path(__file__).parent / "scripts" / "dp_train.py"


def _run(out: Path, devices: int, batch_size: int, noise: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(out),
            "--devices",
            str(devices),
            "--batch-size",
            str(batch_size),
            "--steps",
            "5",
            "--noise",
            noise,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("noise", ["generator", "philox"])
def test_two_ranks_match_each_other_and_one_process_on_the_combined_batch(tmp_path, noise):
    _run(tmp_path / "dp", devices=2, batch_size=4, noise=noise)
    _run(tmp_path / "single", devices=1, batch_size=8, noise=noise)
    rank0, rank1 = (torch.load(tmp_path / "dp" / f"rank{r}.pt") for r in range(2))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert not rank0["has_ddp_wrapper"] and not rank0["any_grad"]
    for a, b in zip(rank0["weights"], rank1["weights"]):
        assert torch.equal(a, b)
    for a, s, start in zip(rank0["weights"], single["weights"], load_causal_lm("tiny-llama").parameters()):
        assert ((a - s).norm() / s.norm()).item() < 1e-6
        assert ((s - start.double()).norm() / s.norm()).item() > 1e-4  # training moved the weights
