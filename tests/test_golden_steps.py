"""Golden outputs of every ZO rule, recorded before the engine redesign (issue #30) and asserted after it.

Each case runs a few steps of one rule on the tiny model (CPU, fixed batch) and compares what it saw (L+, L−, g
per step) and where the weights went (each tensor's update projected on a fixed random direction) with
`tests/golden/zo_steps.json`. Re-record only for an intended change of the math, never for a refactor:

    ZOLIGHTNING_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_steps.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.golden_rules import PINNED, golden_batch
from tests.zo_factory import make_optimizer
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm

GOLDEN = Path(__file__).parent / "golden" / "zo_steps.json"
RECORD = bool(os.environ.get("ZOLIGHTNING_RECORD_GOLDEN"))
STEPS = 4


class FixedScales:
    """Block scales that differ per tensor (what a learned variance hands the optimizer), without networks."""

    def scales(self, params):
        return [0.5 + (i % 3) * 0.5 for i in range(len(params))]

    def observe(self, loss_plus: float, loss_minus: float) -> None:
        pass


def _cases() -> dict[str, dict]:
    cases = {}
    for name in PINNED:
        for noise in ("generator", "philox"):
            cases[f"{name}-{noise}"] = {"name": name, "noise": noise}
        if name != "hizoo":  # one query by definition (its curvature pairs L0 with one direction)
            cases[f"{name}-q3"] = {"name": name, "noise": "generator", "queries": 3}
        cases[f"{name}-wd"] = {"name": name, "noise": "philox", "weight_decay": 0.1}
    cases["zo_sgd-block_scales"] = {"name": "zo_sgd", "noise": "generator", "block_scales": True}
    cases["zo_sgd_momentum-block_scales"] = {"name": "zo_sgd_momentum", "noise": "generator", "block_scales": True}
    cases["lozo-interval2"] = {"name": "lozo", "noise": "generator", "lozo_interval": 2, "lozo_rank": 2}
    return cases


CASES = _cases()


def run_case(case: dict) -> dict:
    model = load_causal_lm("tiny-llama")
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    options = {k: v for k, v in case.items() if k not in ("name", "block_scales")}
    if case.get("block_scales"):
        options["block_scales"] = FixedScales()
    optimizer = make_optimizer(case["name"], params, lr=1e-3, eps=1e-3, seed=3, **options)
    batch = golden_batch()
    seen = []
    for _ in range(STEPS):
        out = optimizer.step(lambda: batch_loss(model, batch)[0])
        seen.append([float(out.loss_plus), float(out.loss_minus), float(out.projected_grad)])
    directions = torch.Generator().manual_seed(2)
    moved = [
        float(((p.detach() - b).double() * torch.randn(p.shape, generator=directions, dtype=torch.float64)).sum())
        for p, b in zip(params, before)
    ]
    return {"seen": seen, "moved": moved}


@pytest.fixture(scope="module")
def golden():
    if RECORD:
        recorded = {key: run_case(case) for key, case in CASES.items()}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("key", sorted(CASES))
def test_each_rule_takes_its_recorded_steps(key, golden):
    assert key in golden, f"no golden output for {key}: record it (see the module docstring)"
    now, then = run_case(CASES[key]), golden[key]
    torch.testing.assert_close(torch.tensor(now["seen"]), torch.tensor(then["seen"]), rtol=1e-5, atol=1e-6)
    # an update is lr·g·z summed over queries: compared relative to its own size
    moved, recorded = torch.tensor(now["moved"]), torch.tensor(then["moved"])
    torch.testing.assert_close(moved, recorded, rtol=1e-4, atol=1e-4 * float(recorded.abs().max()))


def test_the_golden_file_covers_every_rule_and_path():
    recorded = json.loads(GOLDEN.read_text())
    assert set(recorded) == set(CASES)
    assert all(any(step[2] != 0 for step in case["seen"]) for case in recorded.values())  # steps that moved
