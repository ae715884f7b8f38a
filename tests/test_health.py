"""RunHealth: acts on a stall or a sustained rise of the smoothed training loss, not on noise; on by default."""

import random

import lightning as L
import pytest
import torch

from tests.conftest import tiny_cli_args
from zolightning.callbacks.health import RunHealth, UnhealthyRun
from zolightning.cli.main import main
from zolightning.modules import ZOFineTuneModule


def test_a_sustained_rise_triggers_after_patience_and_noise_does_not():
    guard = RunHealth(rise=0.1, patience=3, smoothing=1.0, warmup_intervals=2)
    assert not any(guard.observe(v) for v in [1.0, 0.8, 0.6, 0.6, float("nan"), 0.65])  # 8% above best: fine
    assert [guard.observe(0.7) for _ in range(3)] == [False, False, True]
    rng = random.Random(0)
    # interval means of SST-2 at lr 3e-5 scatter about ±0.08 around 0.57 (docs/runs): the defaults must hold
    noisy = RunHealth()
    assert not any(noisy.observe(0.57 + rng.uniform(-0.08, 0.08)) for _ in range(2000))
    with pytest.raises(ValueError, match="rise > 0"):
        RunHealth(rise=0)


@pytest.mark.parametrize("action", ["stop", "warn", "cut_lr"])
def test_the_guard_stops_warns_or_cuts_the_lr_of_a_diverging_fit(tmp_path, tiny_data, monkeypatch, action):
    module = ZOFineTuneModule(model="tiny-llama", lr=1e-3)
    losses = iter(torch.linspace(0.5, 5.0, 200))  # a loss that only climbs (two closures per step)
    monkeypatch.setattr(module, "_objective", lambda batch: next(losses))
    guard = RunHealth(rise=0.1, patience=2, smoothing=1.0, warmup_intervals=1, action=action)
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
    if action == "stop":
        with pytest.raises(UnhealthyRun, match="is diverging; lower lr"):
            trainer.fit(module, datamodule=tiny_data())
        assert guard.events == 1 and trainer.global_step < 60
        return
    trainer.fit(module, datamodule=tiny_data())
    assert guard.events >= 1 and trainer.global_step == 60
    assert (trainer.optimizers[0].param_groups[0]["lr"] < 1e-3) == (action == "cut_lr")


def test_a_stall_counts_exactly_zero_gradients_or_an_exactly_constant_loss():
    health = RunHealth(stall_intervals=3)
    assert not any(health.observe_progress(v, 0.1) for v in [0.7, 0.7001, 0.69, 0.7])  # moving: fine
    assert [health.observe_progress(0.5, 0.0) for _ in range(3)] == [False, False, True]  # g exactly 0
    steady = RunHealth(stall_intervals=3)
    assert [steady.observe_progress(0.6931472, g) for g in (0.3, -0.2, 0.1, 0.4)] == [False, False, False, True]
    assert not RunHealth(stall_intervals=0).observe_progress(0.5, 0.0)


def _tiny_fit(tmp_path, data_dir, *extra):
    return ["fit", *tiny_cli_args(tmp_path, data_dir, *extra)]


@pytest.mark.parametrize("lr", ["1e3", "1e30"])
def test_a_fit_saturated_by_an_absurd_lr_stops_with_one_line_and_a_failure_code(lr, tmp_path, data_dir, capsys):
    # before: every loss exactly ln 2 after step 1, g exactly 0, exit 0 and a "best" checkpoint (issue #33)
    with pytest.raises(SystemExit) as exit_info:
        main(_tiny_fit(tmp_path, data_dir, "--model.lr", lr, "--trainer.max_steps", "200"))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the run has stopped learning") and "lower lr" in err


def test_non_finite_step_sizes_are_refused_by_the_optimizer():
    from zolightning.optim import ZOOptimizer

    weight = torch.nn.Parameter(torch.ones(2))
    for lr, eps in ((float("nan"), 1e-3), (float("inf"), 1e-3), (1e-3, float("nan")), (3e38, 1e-3)):
        with pytest.raises(ValueError, match="lr"):
            ZOOptimizer([weight], lr=lr, eps=eps)


@pytest.mark.parametrize("lr", ["3e38", "-1"])
def test_lrs_no_step_survives_are_refused_before_step_1(lr, tmp_path, data_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(_tiny_fit(tmp_path, data_dir, "--model.lr", lr))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "lr" in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_health_is_on_by_default_and_a_configured_one_is_kept(tmp_path, tiny_data):
    module = ZOFineTuneModule(model="tiny-llama")
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=1, enable_progress_bar=False)
    module.trainer = trainer
    assert sum(isinstance(c, RunHealth) for c in module.configure_callbacks()) == 1
    mine = RunHealth(action="warn")
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=1, enable_progress_bar=False, callbacks=[mine])
    module.trainer = trainer
    assert not any(isinstance(c, RunHealth) for c in module.configure_callbacks())


def test_the_guard_is_enabled_from_the_command_line(capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                "configs/tiny/sst2_mezo.yaml",
                "--trainer.callbacks+=zolightning.callbacks.health.RunHealth",
                "--trainer.callbacks.action",
                "cut_lr",
                "--print_config",
            ]
        )
    printed = capsys.readouterr().out
    assert "zolightning.callbacks.health.RunHealth" in printed and "action: cut_lr" in printed


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
        guard = RunHealth()
        assert not any(guard.observe(v) for v in losses)


def test_the_defaults_stay_quiet_on_six_full_budget_sst2_curves(tmp_path):
    """20,000 steps each, lr 1e-5 linear and constant (docs/notebook.md): neither diverges, and no alarm."""
    import tarfile
    from pathlib import Path

    from zolightning.compare.results import read_scalars

    archive = Path(__file__).resolve().parents[1] / "docs/runs/sst2_schedule_h100_runs.tgz"
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    runs = sorted((tmp_path / "runs").glob("sst2-schedule/sst2/*/*/*/tb"))
    assert len(runs) == 6
    for run in runs:
        scalars = read_scalars(run)
        losses, g = scalars["train/loss"], scalars["zo/projected_grad"]
        assert len(losses) >= 1990
        guard, stall = RunHealth(), RunHealth()
        assert not any(guard.observe(losses[step]) for step in sorted(losses))
        assert not any(stall.observe_progress(losses[step], g.get(step)) for step in sorted(losses))
