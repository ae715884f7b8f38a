"""Bitwise golden meta-training on the tiny model, recorded on the one-step objective before the horizon option
(issue #34): 3 meta steps on COPA with fixed and ranged look-ahead lrs; each step's meta loss, L±, g and the
networks' weights (float64 sum and sum of squares) as exact hex floats. `--model.horizon 1` must reproduce them bit
for bit. Re-record only for an intended change of the math:

    ZOLIGHTNING_RECORD_GOLDEN=1 .venv/bin/python -m pytest tests/test_meta_golden.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from zolightning.modules.meta_variance import MetaVarianceModule

GOLDEN = Path(__file__).parent / "golden" / "meta_steps.json"
RECORD = bool(os.environ.get("ZOLIGHTNING_RECORD_GOLDEN"))
CASES = {"fixed": {"lr_update": 1e-2}, "ranged": {"lr_update_range": (1e-3, 1e-1)}}


class _Record(L.Callback):
    def __init__(self):
        self.steps: list[dict] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        logged = trainer.callback_metrics
        nets = torch.cat([p.detach().double().flatten() for p in module.nets.parameters()])
        self.steps.append(
            {key: float(logged[key]).hex() for key in ("meta/loss", "meta/zo_loss", "meta/projected_grad")}
            | {"nets_sum": nets.sum().item().hex(), "nets_square": nets.square().sum().item().hex()}
        )


def _trajectory(tmp_path, tiny_data, settings: dict, **options) -> list[dict]:
    torch.manual_seed(0)
    module = MetaVarianceModule(
        model="tiny-llama", output=str(tmp_path / "m.safetensors"), save_every_n_steps=0, **settings, **options
    )
    record = _Record()
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[record])  # fmt: skip
    trainer.fit(module, datamodule=tiny_data(task="copa", num_train=12, max_length=256))
    return record.steps


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_one_step_objective_is_unchanged_bitwise(case, tmp_path, tiny_data):
    steps = _trajectory(tmp_path, tiny_data, CASES[case])
    assert len(steps) == 3
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if RECORD:
        GOLDEN.write_text(json.dumps(golden | {case: steps}, indent=1) + "\n")
    assert steps == golden[case]
