"""Gradient accumulation of a ZO step: k micro-batches under the same z give the loss of the batch they make up."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from zolightning.data.encoding import collate
from zolightning.forward.scoring import batch_loss
from zolightning.models.tiny import build_tiny_llama
from zolightning.modules import ZOFineTuneModule
from zolightning.modules.micro_batches import MicroBatches, mean_objective
from zolightning.optim import ZOOptimizer


def _fit_steps(batches_per_step: list[list[dict]], dtype=torch.float64):
    model = build_tiny_llama("tiny-llama", seed=0).to(dtype).eval()
    optimizer = ZOOptimizer(model.parameters(), lr=1e-3, eps=1e-3, seed=5)
    losses = []
    for batches in batches_per_step:
        out = optimizer.step(lambda batches=batches: mean_objective(lambda b: batch_loss(model, b)[0], batches))
        losses.append(out.loss_plus)
    return losses, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("kind", ["classification", "lm"])
def test_four_micro_batches_of_four_step_as_one_batch_of_sixteen(tiny_data, kind):
    examples = tiny_data().splits["train"]
    if kind == "lm":
        from zolightning.data.encoding import as_lm_example

        examples = [as_lm_example(e) for e in examples]
    pad = tiny_data().pad_id
    big = [[collate(examples[16 * t : 16 * (t + 1)], pad, kind)] for t in range(3)]
    small = [[collate(examples[16 * t + 4 * i : 16 * t + 4 * (i + 1)], pad, kind) for i in range(4)] for t in range(3)]
    big_losses, big_weights = _fit_steps(big)
    small_losses, small_weights = _fit_steps(small)
    # float64: the same losses to the last few bits (the sums run in another order, and padding widths differ)
    assert small_losses == pytest.approx(big_losses, rel=1e-13, abs=0)
    for a, b in zip(big_weights, small_weights):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    one, _ = _fit_steps([[small[0][0]]])  # and one micro-batch alone is another loss: the test can fail
    assert one[0] != pytest.approx(big_losses[0], rel=1e-6)


def test_micro_batches_are_held_until_the_step_has_them_all():
    held = MicroBatches(3)
    assert held.add({"i": 0}) is None and held.add({"i": 1}) is None
    assert [b["i"] for b in held.add({"i": 2})] == [0, 1, 2]
    assert held.add({"i": 3}) is None
    with pytest.raises(ValueError, match=">= 1"):
        MicroBatches(0)


def _trainer(tmp_path, max_steps):
    return L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path, name="run"),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
        log_every_n_steps=1,
    )  # fmt: skip


def test_a_fit_with_accumulation_reads_the_batches_of_a_larger_batch(tmp_path, tiny_data):
    steps, seen = 3, {}
    for name, k, batch_size in (("big", 1, 16), ("micro", 4, 4)):
        module = ZOFineTuneModule(model="tiny-llama", lr=1e-3, noise="philox", accumulate_grad_batches=k)
        rows = seen[name] = []
        original = module._objective
        module._objective = lambda batch, rows=rows, original=original: (
            rows.append(batch["rows"].tolist()) or original(batch)
        )
        trainer = _trainer(tmp_path / name, steps)
        trainer.fit(module, datamodule=tiny_data(batch_size=batch_size))
        assert trainer.global_step == steps and module.optimizers().optimizer.num_steps == steps
        seen[name + "_weights"] = [p.detach().clone() for p in module.model.parameters()]
    # each probe reads the step's batch twice (L+ and L-): the micro run reads the same rows, in four pieces
    flat = [sorted(sum(seen["micro"][8 * t : 8 * t + 4], [])) for t in range(steps)]
    assert flat == [sorted(seen["big"][2 * t]) for t in range(steps)]
    for a, b in zip(seen["big_weights"], seen["micro_weights"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # float32: same steps up to summation order


def test_the_trainer_flag_reaches_the_module(tmp_path, data_dir):
    from tests.conftest import tiny_cli_args
    from zolightning.cli.main import main

    args = tiny_cli_args(tmp_path, data_dir, "--trainer.max_steps", "2", "--trainer.accumulate_grad_batches", "2")
    main(["fit", *args])
    config = (next(tmp_path.rglob("config.yaml"))).read_text()
    assert "accumulate_grad_batches: 2" in config
