"""Bitwise golden trajectories of every ZO rule, recorded on the code before the engine redesign (issue #30).

Every rule × {generator, philox reference} × {q = 1 isotropic in float64 and float32, q = 1 with learned
variance, q = 4} (learned variance and q > 1 where the rule allows them): 10 steps on the tiny model (CPU, one fixed
batch; the whole matrix takes about 1.5 minutes),
recording each step's L+, L−, g and a checksum of the weights (their float64 sum) as exact hex floats. A
refactor must reproduce them bit for bit. Re-record only for an intended change of the math:

    ZOLIGHTNING_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden_trajectories.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests.golden_rules import build_case_optimizer, golden_batch, rule_names
from zolightning.forward.scoring import batch_loss
from zolightning.models import load_causal_lm

GOLDEN = Path(__file__).parent / "golden" / "zo_trajectories.json"
RECORD = bool(os.environ.get("ZOLIGHTNING_RECORD_GOLDEN"))
STEPS = 10
SETTINGS = (  # (queries, variance, dtype)
    (1, "isotropic", "float64"),
    (1, "isotropic", "float32"),
    (1, "learned", "float32"),
    (4, "isotropic", "float32"),
)


def _cases() -> dict[str, dict]:
    cases = {}
    for name in rule_names():
        for noise in ("generator", "philox"):
            for queries, variance, dtype in SETTINGS:
                if name == "hizoo" and (queries > 1 or variance == "learned"):
                    continue  # one query, its own per-element scale
                key = f"{name}-{noise}-q{queries}-{variance}-{dtype}"
                cases[key] = {"name": name, "noise": noise, "queries": queries, "variance": variance, "dtype": dtype}
    return cases


CASES = _cases()


def _learned_variance(model, params, folder: Path):
    from zolightning.variance import BlockVarianceNets, LearnedOptimizerFile, describe_blocks
    from zolightning.variance.blocks import trainable_named_parameters
    from zolightning.variance.learned import learned_variance_for

    named = trainable_named_parameters(model)
    nets = BlockVarianceNets(len(named), generator=torch.Generator().manual_seed(11))
    sizes = [b.effective_size for b in describe_blocks(model, 4)]
    file = LearnedOptimizerFile(nets, [n for n, _ in named], [tuple(p.shape) for _, p in named], sizes, "tiny-llama",
                                {"golden": 1})  # fmt: skip
    path = folder / "golden.safetensors"
    file.save(path)
    return learned_variance_for(str(path), model, params, batch_size=4)


def run_case(case: dict, folder: Path) -> list[list[str]]:
    model = load_causal_lm("tiny-llama").to(getattr(torch, case["dtype"]))
    params = [p for p in model.parameters() if p.requires_grad]
    scales = _learned_variance(model, params, folder) if case["variance"] == "learned" else None
    optimizer = build_case_optimizer(case["name"], params, noise=case["noise"], queries=case["queries"],
                                     block_scales=scales, weight_decay=0.05)  # fmt: skip
    batch = golden_batch()
    rows = []
    for _ in range(STEPS):
        out = optimizer.step(lambda: batch_loss(model, batch)[0])
        checksum = sum(float(p.detach().double().sum()) for p in params)
        rows.append([float(v).hex() for v in (out.loss_plus, out.loss_minus, out.projected_grad, checksum)])
    return rows


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    if RECORD:
        folder = tmp_path_factory.mktemp("record")
        recorded = {key: run_case(case, folder) for key, case in CASES.items()}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=0) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("key", sorted(CASES))
def test_each_rule_follows_its_recorded_trajectory_bit_for_bit(key, golden, tmp_path):
    assert key in golden, f"no golden trajectory for {key}: record it (see the module docstring)"
    now, then = run_case(CASES[key], tmp_path), golden[key]
    for step, (a, b) in enumerate(zip(now, then)):
        assert a == b, f"{key}: step {step} differs: now {a}, recorded {b} (L+, L-, g, weight sum)"


def test_the_trajectories_cover_every_rule_and_move():
    recorded = json.loads(GOLDEN.read_text())
    assert set(recorded) == set(CASES)
    assert all(len({row[3] for row in rows}) > 1 for rows in recorded.values())  # the weights moved
