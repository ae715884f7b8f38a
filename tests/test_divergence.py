"""DivergenceGuard: acts on a sustained rise of the smoothed training loss, not on noise."""

import random

import lightning as L
import pytest
import torch

from zolightning.cli import main
from zolightning.divergence import DivergenceGuard
from zolightning.modules import ZOFineTuneModule


def test_a_sustained_rise_triggers_after_patience_and_noise_does_not():
    guard = DivergenceGuard(rise=0.1, patience=3, smoothing=1.0, warmup_intervals=2)
    assert not any(guard.observe(v) for v in [1.0, 0.8, 0.6, 0.6, float("nan"), 0.65])  # 8% above best: fine
    assert [guard.observe(0.7) for _ in range(3)] == [False, False, True]
    rng = random.Random(0)
    # interval means of SST-2 at lr 3e-5 scatter about ±0.08 around 0.57 (docs/runs): the defaults must hold
    noisy = DivergenceGuard()
    assert not any(noisy.observe(0.57 + rng.uniform(-0.08, 0.08)) for _ in range(2000))
    with pytest.raises(ValueError, match="rise > 0"):
        DivergenceGuard(rise=0)


@pytest.mark.parametrize("action", ["stop", "cut_lr"])
def test_the_guard_stops_or_cuts_the_lr_of_a_diverging_fit(tmp_path, tiny_data, monkeypatch, action):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3)
    losses = iter(torch.linspace(0.5, 5.0, 200))  # a loss that only climbs (two closures per step)
    monkeypatch.setattr(module, "_objective", lambda batch: next(losses))
    guard = DivergenceGuard(rise=0.1, patience=2, smoothing=1.0, warmup_intervals=1, action=action)
    trainer = L.Trainer(
        max_steps=60,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        log_every_n_steps=2,
        callbacks=[guard],
    )
    trainer.fit(module, datamodule=tiny_data())
    assert guard.events >= 1
    if action == "stop":
        assert trainer.global_step < 60
    else:
        assert trainer.global_step == 60 and trainer.optimizers[0].param_groups[0]["lr"] < 1e-3


def test_the_guard_is_enabled_from_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                "configs/tiny/sst2_mezo.yaml",
                "--trainer.callbacks+=zolightning.divergence.DivergenceGuard",
                "--trainer.callbacks.action",
                "cut_lr",
                "--print_config",
            ]
        )
    printed = capsys.readouterr().out
    assert "zolightning.divergence.DivergenceGuard" in printed and "action: cut_lr" in printed


def test_the_defaults_stay_quiet_on_six_real_sst2_curves():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs/runs/fast_vs_reference_sst2_h100.md").read_text()
    curves = [
        [float(v) for v in re.findall(r"^\| \d+ \| \S+ \| \S+ \| (\S+) \|$", block, re.M)]
        for block in text.split("## ")[1:]
    ]
    assert len(curves) == 6 and all(len(c) == 200 for c in curves)  # 2,000 steps, logged every 10
    for losses in curves:
        guard = DivergenceGuard()
        assert not any(guard.observe(v) for v in losses)


def test_the_defaults_stay_quiet_on_six_full_budget_sst2_curves(tmp_path):
    """20,000 steps each, lr 1e-5 linear and constant (docs/results.md): neither diverges, and no alarm."""
    import tarfile
    from pathlib import Path

    from zolightning.compare.results import read_scalars

    archive = Path(__file__).resolve().parents[1] / "docs/runs/sst2_schedule_h100_runs.tgz"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    runs = sorted((tmp_path / "runs").glob("sst2-schedule/sst2/*/*/*/tb"))
    assert len(runs) == 6
    for run in runs:
        losses = read_scalars(run)["train/loss"]
        assert len(losses) >= 1990
        guard = DivergenceGuard()
        assert not any(guard.observe(losses[step]) for step in sorted(losses))
